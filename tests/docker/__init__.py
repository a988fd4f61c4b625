"""The Docker image, built and run for real with podman: its own command, as root,

    apt-get install -y podman runc debootstrap
    .venv/bin/python -m pytest -m docker tests/docker

Every test here is marked `docker`, which the default `pytest` run deselects. Without podman, runc or
debootstrap, or when not run as root, they fail (they never skip), naming what to install.
"""
