"""The memory allocator of a training process on a CPU: jemalloc where it is installed.

glibc's malloc serves a CPU training step's tensors from one heap that only shrinks from its top: the
activations of one step are freed around oneDNN's kernels and the optimizer state made in between, and the
holes they leave are kept. jemalloc sorts allocations by size into separate runs and gives unused pages back
after a few seconds. Measured on a 2-core AMX machine (bf16, LoRA; benchmarks/README.md): the 0.5B model's
sft peak 1727-1762 -> 1698-1705 MiB and its dpo 1758-1780 -> 1708-1715 MiB, and each run 5-15% faster (the
tiny model's too). PyTorch's own CPU launcher (`torch.backends.xeon.run_cpu`) preloads it for the same
reasons.

A process cannot change its allocator once running: `lmforge train` starts itself again with jemalloc in
`LD_PRELOAD` before it imports anything heavy (torchrun's ranks inherit it). The switch is
`LMFORGE_ALLOCATOR`: `jemalloc` (the default: used when found) or `system`. An allocator the user preloads
(jemalloc, tcmalloc, mimalloc) is left alone, and so are runs that may use a GPU, where it was not measured.
"""

from __future__ import annotations

import os
import sys
import sysconfig

ENV = "LMFORGE_ALLOCATOR"
CHOICES = ("jemalloc", "system")
_LIBRARY = "libjemalloc.so.2"
_PRELOADED_KINDS = ("jemalloc", "tcmalloc", "mimalloc")


def find_jemalloc() -> str | None:
    """The path of jemalloc's shared library (Debian/Ubuntu `libjemalloc2`, Fedora `jemalloc`, conda's), or None."""
    folders = [os.path.join(sys.prefix, "lib")]
    if os.environ.get("CONDA_PREFIX"):
        folders.append(os.path.join(os.environ["CONDA_PREFIX"], "lib"))
    multiarch = sysconfig.get_config_var("MULTIARCH")
    for root in ("/usr/local/lib", "/usr/lib", "/lib"):
        if multiarch:
            folders.append(os.path.join(root, multiarch))
        folders.append(root)
    folders += ["/usr/lib64", "/lib64"]
    for folder in folders:
        path = os.path.join(folder, _LIBRARY)
        if os.path.isfile(path):
            return path
    return None


def preloaded(environ=None) -> str | None:
    """The allocator named in `LD_PRELOAD` (jemalloc, tcmalloc or mimalloc) of `environ` (this process's), or None."""
    environ = os.environ if environ is None else environ  # looked up now: os.environ may have been replaced
    for entry in environ.get("LD_PRELOAD", "").replace(":", " ").split():
        name = os.path.basename(entry)
        for kind in _PRELOADED_KINDS:
            if kind in name:
                return kind
    return None


def active() -> str:
    """The allocator this process runs on: "jemalloc", "tcmalloc", "mimalloc" or "system" (from its mappings)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            text = maps.read()
    except OSError:
        return "system"
    for kind in _PRELOADED_KINDS:
        if f"lib{kind}" in text:
            return kind
    return "system"


def gpu_device_present() -> bool:
    """An NVIDIA or AMD GPU (or WSL's GPU) has a device node here: a run may use it (torch is not imported)."""
    return any(os.path.exists(node) for node in ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg"))


def restart_with_jemalloc(argv: list[str], on_cpu: bool) -> None:
    """Replace this process with `python -m lmforge ARGV` under jemalloc, where that applies; else return.

    It applies when this process is that very command line (`lmforge ARGV` or `python -m lmforge ARGV`: a
    program that calls lmforge's `main` in its own process keeps its allocator and its process), on Linux, for a
    run on the CPU (`on_cpu`: `use_cpu`, or no GPU device node), when no allocator is preloaded already and
    jemalloc is installed. The caller has checked `LMFORGE_ALLOCATOR`.
    """
    program = sys.argv[0] if sys.argv else ""
    is_cli = os.path.basename(program) == "lmforge" or program.endswith(os.path.join("lmforge", "__main__.py"))
    if not is_cli or sys.argv[1:] != argv or not sys.platform.startswith("linux") or not on_cpu or preloaded():
        return
    library = find_jemalloc()
    if library is None:
        return
    environ = dict(os.environ)
    environ["LD_PRELOAD"] = ":".join(filter(None, [library, environ.get("LD_PRELOAD", "")]))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, "-m", "lmforge", *argv], environ)
    except OSError:
        return  # the run goes on with the system allocator
