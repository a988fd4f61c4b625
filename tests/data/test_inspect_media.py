"""`lmforge data preview` and `check` on the bundled image and video demos, with the tiny Qwen2-VL."""

from __future__ import annotations

import pytest

from tests.conftest import DATA_DIR
from tests.data.test_inspect import run

pytest.importorskip("PIL")
pytest.importorskip("av")


@pytest.fixture(scope="module")
def vl_args(tmp_path_factory) -> list[str]:
    from lmforge.testing.tiny_vl import build_tiny_vl_model

    model = build_tiny_vl_model(tmp_path_factory.mktemp("tiny-vl"))
    return [f"model_name_or_path={model}", f"dataset_dir={DATA_DIR}", "template=qwen2_vl", "stage=sft",
            "cutoff_len=512"]


def test_check_keeps_every_row_of_both_demos(capsys, vl_args):
    code, out, _ = run(capsys, "check", *vl_args, "dataset=mllm_demo,mllm_video_demo")
    assert code == 0, out
    lines = out.splitlines()
    assert "  mllm_demo: 4 loaded, 4 kept, 0 dropped" in lines
    assert "  mllm_video_demo: 3 loaded, 3 kept, 0 dropped" in lines
    assert "  7 train samples after tokenization" in lines
