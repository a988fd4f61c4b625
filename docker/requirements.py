"""What the Docker images install, read from pyproject.toml, and the CPU image's check.

    python requirements.py list PYPROJECT EXTRAS   the requirement lines of lmforge with EXTRAS
                                                   (comma-separated), one a line, for `pip install -r`
    python requirements.py check-cpu               fails if a CUDA build of torch or any CUDA package
                                                   is installed

The Dockerfiles install these requirements in a layer of their own, before lmforge's source is copied, so a
change to the source rebuilds only the small last layer. scripts/docker_wheelhouse.sh uses the same list, so
the offline wheelhouse holds exactly what the image installs.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """lmforge's dependencies plus those of `extras`; an unknown extra is an error naming the valid ones."""
    if tomllib is None:
        raise SystemExit("docker/requirements.py needs Python 3.11 or newer (tomllib).")
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"Unknown extra(s) in EXTRAS: {', '.join(unknown)}. "
                         f"The extras of lmforge are: {', '.join(optional)}.")
    lines = list(project["dependencies"])
    for extra in extras:
        lines += [line for line in optional[extra] if line not in lines]
    return lines


def cuda_packages() -> list[str]:
    """The installed distributions that only a CUDA build of torch brings."""
    names = {(dist.metadata["Name"] or "").lower() for dist in metadata.distributions()}
    return sorted(name for name in names if name.startswith(("nvidia-", "nvidia_", "cuda-")) or name == "triton")


def main(argv: list[str]) -> int:
    if argv[:1] == ["list"] and len(argv) == 3:
        extras = [extra.strip() for extra in argv[2].split(",") if extra.strip()]
        print("\n".join(requirements(Path(argv[1]), extras)))
        return 0
    if argv == ["check-cpu"]:
        import torch

        found = cuda_packages()
        if torch.version.cuda or found:
            print(f"The CPU image holds a CUDA build: torch {torch.__version__} (CUDA {torch.version.cuda}), "
                  f"CUDA packages: {', '.join(found) or 'none'}. Install torch from the CPU index "
                  "(TORCH_INDEX) or collect the wheelhouse with scripts/docker_wheelhouse.sh.", file=sys.stderr)
            return 1
        print(f"torch {torch.__version__}: a CPU build, no CUDA packages")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
