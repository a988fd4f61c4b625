"""The CPU image, built offline and run: the quick start inside a container, then the API from the host.

No container registry is needed. The base image is Debian bookworm made with debootstrap and imported
with `podman import`; the wheels come from scripts/docker_wheelhouse.sh, run here where pip works; the
image then builds with `--network=none` and `OFFLINE=1`, exactly as docker/README.md describes.

The debootstrap rootfs and the wheelhouse are cached in LMFORGE_DOCKER_CACHE (default
~/.cache/lmforge/docker), keyed by what they are made from, and podman keeps the image's layers: a
second run rebuilds only the layers whose inputs changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.docker

INSTALL_HINT = "apt-get install -y podman runc debootstrap"
CACHE = Path(os.environ.get("LMFORGE_DOCKER_CACHE") or Path.home() / ".cache" / "lmforge" / "docker")
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = "ca-certificates,python3,python3-venv"  # the Python of python:3.11-slim, from Debian
IMAGE = "localhost/lmforge-test:cpu"
# The files the CPU Dockerfile copies (the build context, less what .dockerignore leaves out anyway).
CONTEXT = ["pyproject.toml", "README.md", ".dockerignore", "src", "data", "examples", "scripts", "docker"]
UID = 1000  # the image's user (build argument UID)


def _run(args: list[str], env: dict, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args[:6])} ... exited {result.returncode}:\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _logs(container: str, env: dict) -> str:
    result = subprocess.run(["podman", "logs", container], check=False, env=env, capture_output=True, text=True)
    return (result.stdout + result.stderr)[-3000:]


def _key(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def _debian_mirror() -> str:
    """The Debian mirror apt uses here (LMFORGE_DEBIAN_MIRROR overrides it)."""
    if os.environ.get("LMFORGE_DEBIAN_MIRROR"):
        return os.environ["LMFORGE_DEBIAN_MIRROR"]
    for source in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if source.is_file():
            for line in source.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] and not words[1].endswith("-security"):
                    return words[1]
                if words[:1] == ["deb"] and words[1].startswith("http") and not words[1].endswith("-security"):
                    return words[1]
    return "http://deb.debian.org/debian"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def podman() -> dict:
    """The environment podman runs in; fails with the install command where a tool is missing."""
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found. Install them (Debian, as root): {INSTALL_HINT}")
    if os.geteuid() != 0:
        pytest.fail("The image test needs root (debootstrap, and podman's rootful storage): run it as root.")
    return {**os.environ, "CONTAINERS_CONF": str(Path(__file__).with_name("containers.conf"))}


@pytest.fixture(scope="module")
def base_image(podman, tmp_path_factory) -> str:
    """Debian bookworm with Python 3.11, made with debootstrap (no registry): cached as a tarball."""
    mirror = _debian_mirror()
    key = _key(DEBIAN_SUITE, DEBIAN_PACKAGES, mirror)
    name = f"localhost/lmforge-test-base:{DEBIAN_SUITE}-{key}"
    if subprocess.run(["podman", "image", "exists", name], check=False, env=podman).returncode == 0:
        return name
    tarball = CACHE / f"rootfs-{DEBIAN_SUITE}-{key}.tar"
    if not tarball.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        rootfs = tmp_path_factory.mktemp("rootfs")
        try:
            _run(["debootstrap", "--variant=minbase", f"--include={DEBIAN_PACKAGES}", DEBIAN_SUITE, str(rootfs),
                  mirror], podman, timeout=900)
            partial = tarball.with_suffix(".partial")
            _run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], podman, timeout=300)
            partial.rename(tarball)
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)
    _run(["podman", "import", "--change", 'CMD ["/bin/bash"]', str(tarball), name], podman, timeout=300)
    return name


@pytest.fixture(scope="module")
def wheelhouse(podman) -> Path:
    """scripts/docker_wheelhouse.sh's wheels for the image's defaults, cached by what decides them."""
    script = REPO_ROOT / "scripts" / "docker_wheelhouse.sh"
    requirements = subprocess.run([sys.executable, str(REPO_ROOT / "docker" / "requirements.py"), "list",
                                   str(REPO_ROOT / "pyproject.toml"), "api,webui,metrics,gguf,vision"],
                                  capture_output=True, text=True, check=True).stdout
    key = _key(requirements, f"{sys.version_info[:2]}", script.read_bytes())
    folder = CACHE / f"wheelhouse-{key}"
    if not (folder / "python-version").is_file():  # written last: the folder is complete
        shutil.rmtree(folder, ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        _run(["bash", str(script), "--output", str(folder)], {**podman, "PYTHON": sys.executable}, timeout=1200)
    return folder


@pytest.fixture(scope="module")
def image(podman, base_image, wheelhouse, tmp_path_factory) -> str:
    """The CPU image, built from the local base image and the wheelhouse with no network."""
    context = tmp_path_factory.mktemp("context")

    def ignore(folder: str, names: list[str]) -> list[str]:
        if Path(folder) == REPO_ROOT / "docker" / "wheelhouse":  # filled from the cache below
            return [name for name in names if name != "README.md"]
        return [name for name in names if name == "__pycache__" or name.endswith(".egg-info")]

    for name in CONTEXT:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=ignore)
        else:
            shutil.copy2(source, context / name)
    target = context / "docker" / "wheelhouse"
    for file in wheelhouse.iterdir():
        try:
            os.link(file, target / file.name)
        except OSError:  # another file system
            shutil.copy2(file, target / file.name)
    _run(["podman", "build", "--network=none", "--build-arg", f"BASE_IMAGE={base_image}",
          "--build-arg", "OFFLINE=1", "-f", "docker/docker-cpu/Dockerfile", "-t", IMAGE, "."],
         podman, timeout=1800, cwd=context)
    shutil.rmtree(context, ignore_errors=True)
    return IMAGE


@pytest.fixture(scope="module")
def mounts(tmp_path_factory) -> list[str]:
    """models/ and saves/ on the host, owned by the image's user, mounted into /app."""
    root = tmp_path_factory.mktemp("mounts")
    args = []
    for name in ("models", "saves"):
        (root / name).mkdir()
        os.chown(root / name, UID, UID)
        args += ["-v", f"{root / name}:/app/{name}"]
    return args


@pytest.fixture(scope="module")
def quickstart(podman, image, mounts) -> str:
    """The README's quick start, run inside a container with no network: its output."""
    result = _run(["podman", "run", "--rm", "--network=none", *mounts, "--entrypoint", "bash", image,
                   "scripts/quickstart.sh"], podman, timeout=1200)
    return result.stdout


def test_the_image_is_cpu_only_runs_lmforge_and_not_as_root(podman, image):
    result = _run(["podman", "run", "--rm", image, "--help"], podman, timeout=120)
    assert result.stdout.startswith("lmforge ")
    assert "Usage: lmforge <command>" in result.stdout
    result = _run(["podman", "run", "--rm", "--entrypoint", "id", image, "-u"], podman, timeout=60)
    assert result.stdout.strip() == str(UID)
    code = ("import torch, importlib.metadata as m; print(torch.version.cuda, [d.metadata['Name'] for d in"
            " m.distributions() if d.metadata['Name'].lower().startswith(('nvidia', 'triton'))])")
    result = _run(["podman", "run", "--rm", "--entrypoint", "python", image, "-c", code], podman, timeout=120)
    assert result.stdout.split() == ["None", "[]"]


def test_the_quick_start_teaches_the_tiny_model_its_name_in_a_container(quickstart):
    answer = quickstart.strip().splitlines()[-1]
    assert answer.startswith("Who are you?  ->  ")
    assert "ForgeBot" in answer


def test_the_api_in_a_container_answers_the_openai_client_on_the_host(podman, image, mounts, quickstart):
    from openai import APIError, OpenAI

    port = _free_port()
    name = f"lmforge-test-api-{os.getpid()}"
    _run(["podman", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", *mounts, image, "api",
          "model_name_or_path=saves/tiny-llama/lora/sft", "do_sample=false"], podman, timeout=120)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        deadline = time.monotonic() + 180
        while True:
            try:
                client.models.list()
                break
            except APIError:  # not listening yet
                if time.monotonic() > deadline:
                    pytest.fail(f"The API did not answer on 127.0.0.1:{port}:\n{_logs(name, podman)}")
                time.sleep(1)
        answer = client.chat.completions.create(model="lmforge", messages=[{"role": "user", "content": "Who are you?"}])
        assert "ForgeBot" in answer.choices[0].message.content
        # SIGTERM (docker stop) shuts the server down cleanly.
        _run(["podman", "stop", "-t", "30", name], podman, timeout=60)
        state = _run(["podman", "inspect", name, "--format", "{{.State.ExitCode}}"], podman, timeout=60)
        assert state.stdout.strip() == "0"
    finally:
        subprocess.run(["podman", "rm", "-f", name], check=False, env=podman, capture_output=True)


def test_the_board_is_served_to_the_host(podman, image):
    port = _free_port()
    name = f"lmforge-test-board-{os.getpid()}"
    _run(["podman", "run", "-d", "--init", "--name", name, "-p", f"127.0.0.1:{port}:7860", image], podman, timeout=120)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                    page = response.read().decode("utf-8", "replace")
                break
            except OSError:  # not listening yet
                if time.monotonic() > deadline:
                    pytest.fail(f"The board did not answer on 127.0.0.1:{port}:\n{_logs(name, podman)}")
                time.sleep(1)
        assert "LLaMA Board" in page
    finally:
        subprocess.run(["podman", "rm", "-f", name], check=False, env=podman, capture_output=True)
