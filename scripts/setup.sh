#!/usr/bin/env bash
# Set up lmforge from a fresh clone: a .venv with the package and everything the tests need,
# then the quick start on the bundled tiny model. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip

# Install torch before anything else and pin it for every later install: left to choose freely,
# pip takes the newest CUDA build (several GB) even on a machine without a GPU.
if command -v nvidia-smi >/dev/null 2>&1; then
  $PIP install -q "torch>=2.4" numpy
else
  # numpy with it, so torch's first import (just below) finds it and prints no warning.
  $PIP install -q "torch==2.13.0" numpy || $PIP install -q torch numpy --index-url https://download.pytorch.org/whl/cpu
fi
TORCH_VERSION=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
echo "torch==${TORCH_VERSION}" > .venv/constraints.txt
$PIP install -q -c .venv/constraints.txt -e ".[api,webui,metrics,gguf,vision,dev]"

# The web page tests drive Debian's Chromium through Playwright (no browser download); CPU training runs
# under jemalloc where it is installed (docs/performance.md: less memory and time than glibc's malloc).
MISSING=()
command -v chromium >/dev/null 2>&1 || MISSING+=(chromium)
[ -e /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ] || [ -e /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 ] \
  || MISSING+=(libjemalloc2)
if [ ${#MISSING[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${MISSING[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${MISSING[@]}" >/dev/null
  else
    echo "warning: install ${MISSING[*]} (apt-get install ${MISSING[*]}): Chromium for the browser tests," \
      "jemalloc for CPU training's memory allocator" >&2
  fi
fi

bash scripts/quickstart.sh
