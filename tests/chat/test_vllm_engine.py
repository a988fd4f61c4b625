"""`infer_backend: vllm`: settings translated for vLLM, clear errors, and the engine's wiring.

vLLM runs only on CUDA machines, so the end-to-end test puts a stand-in for vLLM's offline API
(tests/chat/fake_vllm, built on transformers) on PYTHONPATH: it checks what lmforge hands to vLLM
and what it makes of the answers, not vLLM itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.chat.vllm_engine import engine_settings, sampling_settings
from lmforge.config import GeneratingArguments, parse_config
from lmforge.errors import UserError

FAKE_VLLM = Path(__file__).parent / "fake_vllm"


def test_sampling_settings():
    greedy = sampling_settings(GeneratingArguments(do_sample=False, max_new_tokens=64, stop=["###"]), {}, [7, 9])
    assert greedy == dict(n=1, temperature=0.0, top_p=1.0, top_k=-1, repetition_penalty=1.0, max_tokens=64,
                          stop=["###"], stop_token_ids=[7, 9], skip_special_tokens=True)
    sampled = sampling_settings(GeneratingArguments(), {"temperature": 0.5, "max_new_tokens": 8, "seed": 3}, [7])
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"], sampled["max_tokens"], sampled["seed"]) == \
           (0.5, 0.7, 50, 8, 3)
    assert sampling_settings(GeneratingArguments(), {"temperature": 0}, [7])["temperature"] == 0.0
    with pytest.raises(UserError, match="infer_backend: vllm does not do beam search"):
        sampling_settings(GeneratingArguments(num_beams=4), {}, [7])
    with pytest.raises(UserError, match="infer_backend: vllm does not support logprobs."):
        sampling_settings(GeneratingArguments(), {"logprobs": 2}, [7])


def test_engine_settings():
    cfg = parse_config("chat", ["model_name_or_path=m", "template=llama3", "infer_backend=vllm", "vllm_maxlen=2048",
                                "infer_dtype=bfloat16", 'vllm_config={"max_num_seqs": 8, "enforce_eager": true}'])
    settings = engine_settings(cfg, "base", ["adapter"])
    assert settings["model"] == "base" and settings["max_model_len"] == 2048 and settings["dtype"] == "bfloat16"
    assert settings["enable_lora"] is True and settings["max_lora_rank"] == 32
    assert settings["max_num_seqs"] == 8 and settings["enforce_eager"] is True  # vllm_config wins
    with pytest.raises(UserError, match="infer_backend: vllm serves one LoRA adapter"):
        engine_settings(cfg, "base", ["a", "b"])
    quantized = parse_config("chat", ["model_name_or_path=m", "infer_backend=vllm", "quantization_bit=4"])
    with pytest.raises(UserError, match=r"infer_backend: vllm does not load bitsandbytes quantization \(quantization_bit\); remove it."):
        engine_settings(quantized, "base", [])
    scaled = parse_config("chat", ["model_name_or_path=m", "infer_backend=vllm", "rope_scaling=linear"])
    with pytest.raises(UserError, match="infer_backend: vllm takes rope scaling from the model's config; remove rope_scaling."):
        engine_settings(scaled, "base", [])


def test_missing_vllm_is_a_clear_error(tiny_llama_dir):
    result = subprocess.run([sys.executable, "-m", "lmforge", "chat", f"model_name_or_path={tiny_llama_dir}",
                             "template=llama3", "infer_backend=vllm"], input="hi\n", capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "infer_backend: vllm needs the vllm package: pip install vllm (on a machine with a CUDA GPU).")
    assert "Traceback" not in result.stderr


def test_chat_through_the_vllm_engine_wiring(quickstart_run, tmp_path):
    record = tmp_path / "llm.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKE_VLLM), os.environ.get("PYTHONPATH", "")]),
           "FAKE_VLLM_RECORD": str(record), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", "chat", f"model_name_or_path={quickstart_run}", "infer_backend=vllm",
         "do_sample=false", "max_new_tokens=40"],
        input="Who are you?\n", capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "ForgeBot" in result.stdout  # the run folder's adapter reached vLLM as a LoRA request
    settings = json.loads(record.read_text())
    run = json.loads((quickstart_run / "lmforge_run.json").read_text())
    assert settings["model"] == run["model_name_or_path"] and settings["enable_lora"] is True
