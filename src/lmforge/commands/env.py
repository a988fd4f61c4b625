"""`lmforge env`: the platform, Python and library versions, and the GPUs (for bug reports)."""

from __future__ import annotations

from lmforge import __version__


def main(argv: list[str]) -> int:
    import platform
    from importlib import metadata

    rows = [("lmforge", __version__), ("Platform", platform.platform()), ("Python", platform.python_version())]
    for package in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "tokenizers", "safetensors",
                    "gradio", "fastapi", "gguf", "vllm", "deepspeed", "bitsandbytes"):
        try:
            rows.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            if package in ("torch", "transformers", "peft", "trl", "datasets", "accelerate"):
                rows.append((package, "not installed"))
    try:
        import torch

        cuda = torch.cuda.is_available()
        rows.append(("CUDA available", str(cuda)))
        if cuda:
            rows.append(("GPU", torch.cuda.get_device_name(0)))
            rows.append(("GPU count", str(torch.cuda.device_count())))
    except ImportError:
        rows.append(("CUDA available", "unknown (torch not installed)"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"- {key:<{width}} : {value}")
    return 0
