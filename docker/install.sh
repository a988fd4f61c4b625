#!/bin/sh
# Install torch and lmforge's dependencies into the image's venv (/opt/lmforge); run by the Dockerfiles as
#
#   install.sh cpu|cuda
#
# with their build arguments in the environment: EXTRAS, PIP_INDEX, TORCH_INDEX, TORCH_VERSION, and OFFLINE
# (1: everything from the wheelhouse mounted at /wheelhouse, with --no-index: no network is needed).
set -eu
cd "$(dirname "$0")"
FLAVOR=$1

if [ "$OFFLINE" = 1 ]; then
    python_version=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    wheelhouse_version=$(cat /wheelhouse/python-version 2>/dev/null || echo none)
    if [ "$wheelhouse_version" != "$python_version" ]; then
        echo "docker/wheelhouse holds wheels for Python $wheelhouse_version, and this image has Python" \
             "$python_version: run scripts/docker_wheelhouse.sh --flavor $FLAVOR with a Python $python_version" \
             "(PYTHON=...) before an OFFLINE=1 build." >&2
        exit 1
    fi
    from="--no-index --find-links /wheelhouse"
    torch_from=$from
else
    from="--index-url $PIP_INDEX"
    torch_from="--index-url $TORCH_INDEX"
fi

# torch first, from its own index, and held to that version: left to choose, pip takes a CUDA build from PyPI.
pip install $torch_from "torch==$TORCH_VERSION"
echo "torch==$TORCH_VERSION" > /opt/lmforge/constraints.txt
python requirements.py list pyproject.toml "$EXTRAS" > requirements.txt
# setuptools builds lmforge and the source-only packages against what is installed (DeepSpeed needs torch;
# its operators compile on first use).
pip install $from "setuptools>=77" wheel
if ! DS_BUILD_OPS=0 pip install $from --no-build-isolation -c /opt/lmforge/constraints.txt -r requirements.txt; then
    if [ "$OFFLINE" = 1 ]; then
        echo "The wheelhouse lacks requirements of EXTRAS=$EXTRAS (it was collected for" \
             "$(cat /wheelhouse/extras 2>/dev/null || echo 'unknown extras')): run" \
             "scripts/docker_wheelhouse.sh --flavor $FLAVOR --extras $EXTRAS" >&2
    fi
    exit 1
fi
if [ "$FLAVOR" = cpu ]; then
    python requirements.py check-cpu
fi
