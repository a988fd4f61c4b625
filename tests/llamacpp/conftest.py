"""llama.cpp checks: they need the `llamacpp` extra (llama-cpp-python), so they run as their own command:

    .venv/bin/python -m pytest -m llamacpp tests/llamacpp

Every test here is marked `llamacpp`, which the default `pytest` run deselects. Without
llama-cpp-python these tests fail (they never skip): `import llama_cpp` is part of what they check.
"""

from __future__ import annotations

import pytest

from tests.export.conftest import quickstart_export  # noqa: F401 (the shared session fixture)


@pytest.fixture(scope="session")
def llama_cpp():
    import llama_cpp

    return llama_cpp


def load_gguf(llama_cpp, path, logits_all: bool = False):
    """A llama.cpp model of the GGUF at `path`, quiet, on this machine's cores."""
    import os

    return llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=os.cpu_count() or 1, logits_all=logits_all,
                           verbose=False)
