"""What the machine computes natively: the probes that precision and speed defaults are decided from."""

from __future__ import annotations


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AVX512-BF16 or AMX), as oneDNN reports it.

    Without it torch emulates bf16, which lmforge's benchmark measured about 30x slower than float32.
    """
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has AMX bf16 tiles (Intel Xeon since Sapphire Rapids), from Linux's /proc/cpuinfo flags.

    With them a bf16 matrix product is several times faster than a float32 one (5x for a 0.5B model's MLP
    shape in lmforge's benchmark); AVX512-BF16 alone gives much less and has not been measured here.
    """
    try:
        with open(cpuinfo, encoding="utf-8") as info:
            for line in info:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split(":", 1)[1].split()
    except OSError:
        pass
    return False


def cuda_has_bf16() -> bool:
    """Whether a CUDA GPU is present and computes bf16 natively (compute capability 8.0 or newer)."""
    import torch

    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability() >= (8, 0)


def other_accelerator() -> bool:
    """An Apple (mps) or Intel (xpu) GPU, which transformers uses when `use_cpu` is off."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return bool((mps and mps.is_available()) or (xpu and xpu.is_available()))


def cpu_only() -> bool:
    """No CUDA, mps or xpu device: training runs on the CPU."""
    import torch

    return not torch.cuda.is_available() and not other_accelerator()
