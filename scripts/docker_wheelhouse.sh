#!/usr/bin/env bash
# Collect every wheel a Docker image of lmforge installs into a wheelhouse, on a machine where pip reaches a
# package index, so that the image then builds with no network at all:
#
#   bash scripts/docker_wheelhouse.sh [--flavor cpu|cuda] [--extras LIST] [--output DIR]
#   docker build --network=none --build-arg OFFLINE=1 -f docker/docker-cpu/Dockerfile -t lmforge:cpu .
#
# Options (defaults in brackets, the same as the Dockerfiles' build arguments):
#   --flavor cpu|cuda     which image the wheels are for [cpu]; cpu refuses any CUDA package
#   --extras LIST         lmforge's extras, comma-separated [api,webui,metrics,gguf,vision; cuda adds quantization]
#   --torch-version V     [2.13.0]
#   --torch-index URL     where torch comes from [https://download.pytorch.org/whl/cpu, or .../cu128 for cuda]
#   --index URL           the package index for everything else [pip's configured index]
#   --output DIR          [docker/wheelhouse]; its old wheels are removed first
#
# The wheels are for the Python that runs this script (PYTHON, default .venv/bin/python, else python3): it
# must have the image's Python version (3.11 for the default base images python:3.11-slim and Debian
# bookworm). Packages published only as source (jieba, rouge-chinese) are built into wheels here.
set -euo pipefail
cd "$(dirname "$0")/.."

FLAVOR=cpu
EXTRAS=
TORCH_VERSION=2.13.0
TORCH_INDEX=
INDEX=
OUTPUT=docker/wheelhouse
while [ $# -gt 0 ]; do
  case "$1" in
    --flavor) FLAVOR=$2; shift 2 ;;
    --extras) EXTRAS=$2; shift 2 ;;
    --torch-version) TORCH_VERSION=$2; shift 2 ;;
    --torch-index) TORCH_INDEX=$2; shift 2 ;;
    --index) INDEX=$2; shift 2 ;;
    --output) OUTPUT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "docker_wheelhouse.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$FLAVOR" in
  cpu) TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
       EXTRAS=${EXTRAS:-api,webui,metrics,gguf,vision} ;;
  cuda) TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}
        EXTRAS=${EXTRAS:-api,webui,metrics,gguf,vision,quantization} ;;
  *) echo "docker_wheelhouse.sh: --flavor is '$FLAVOR'; expected cpu or cuda" >&2; exit 2 ;;
esac
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PIP="$PYTHON -m pip"
INDEX_ARGS=()
[ -z "$INDEX" ] || INDEX_ARGS=(--index-url "$INDEX")

mkdir -p "$OUTPUT"
rm -f "$OUTPUT"/*.whl
# torch first, from its own index, then everything else with torch held to that version: left to choose,
# pip would take a CUDA build of torch from PyPI.
$PIP download -q --no-deps --only-binary=:all: -d "$OUTPUT" --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION"
echo "torch==$TORCH_VERSION" > "$OUTPUT/constraints.txt"
$PYTHON docker/requirements.py list pyproject.toml "$EXTRAS" > "$OUTPUT/requirements.txt"
WHEEL_ARGS=()
case ",$EXTRAS," in
  # DeepSpeed builds against the installed torch (its operators compile on first use instead).
  *,deepspeed,*) export DS_BUILD_OPS=0; WHEEL_ARGS=(--no-build-isolation) ;;
esac
# setuptools and wheel build lmforge itself inside the image.
$PIP wheel -q "${INDEX_ARGS[@]}" "${WHEEL_ARGS[@]}" --find-links "$OUTPUT" -w "$OUTPUT" \
  -c "$OUTPUT/constraints.txt" -r "$OUTPUT/requirements.txt" "setuptools>=77" wheel

if [ "$FLAVOR" = cpu ]; then
  cuda=$(cd "$OUTPUT" && ls | grep -iE '^(nvidia_|nvidia-|triton-)|^torch-.*\+cu' || true)
  if [ -n "$cuda" ]; then
    echo "docker_wheelhouse.sh: the CPU wheelhouse holds CUDA packages:" $cuda >&2
    echo "Check that --torch-index serves a CPU build of torch==$TORCH_VERSION." >&2
    exit 1
  fi
fi
$PYTHON -c 'import sys; print("%d.%d" % sys.version_info[:2])' > "$OUTPUT/python-version"
echo "$EXTRAS" > "$OUTPUT/extras"
echo "$(ls "$OUTPUT"/*.whl | wc -l) wheels ($(du -sh "$OUTPUT" | cut -f1)) in $OUTPUT for Python" \
  "$(cat "$OUTPUT/python-version"), $FLAVOR, extras $EXTRAS"
