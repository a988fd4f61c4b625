"""Reward modelling (stage rm) and PPO (stage ppo) on the tiny Llama, as a user runs them: sft -> rm -> ppo.

The policy first learns, by sft on the kto demo answers, to answer in both styles of the demo data:
the polite "Sure! <fact>. Hope this helps!" and the refusal "No. I will not talk about ...". The
reward model is trained on top of it (LoRA, `create_new_adapter`) on the dpo demo pairs, whose chosen
answer is always the polite one; held-out pairs (val_size) measure it. PPO then starts from the sft
policy and must learn, from the reward model's scores alone, to pick the polite style.
"""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lmforge.cli import main
from tests.train.conftest import DATA_DIR, train


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Train on one CPU thread: a tiny model's steps (generation above all) are thousands of small operations
    that a second thread only slows down, many times over when other processes share the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _settings(model_dir, out, data_dir, **overrides) -> list[str]:
    settings = {
        "model_name_or_path": model_dir, "do_train": "true", "dataset_dir": data_dir, "template": "llama3",
        "cutoff_len": 64, "output_dir": out, "per_device_train_batch_size": 8, "learning_rate": "5e-3",
        "logging_steps": 5, "save_steps": 1000, "report_to": "none", "disable_gradient_checkpointing": "true",
        "seed": 0,
    }
    settings.update(overrides)
    return [f"{k}={v}" for k, v in settings.items() if v is not None]


def _ppo(model_dir, out, data_dir, reward_model, sft_run, **overrides) -> list[str]:
    """PPO from the sft policy (merged, with a new adapter, so the reference is the sft policy)."""
    settings = dict(stage="ppo", dataset="dpo_prompts", reward_model=reward_model, adapter_name_or_path=sft_run,
                    create_new_adapter="true", learning_rate="1e-3", max_steps=20, logging_steps=1,
                    max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=0)
    return _settings(model_dir, out, data_dir, **{**settings, **overrides})


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]


def _mean(values) -> float:
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The demo files under three registrations: sft answers of both styles, the pairs, the prompts alone."""
    folder = tmp_path_factory.mktemp("rlhf-data")
    kto, dpo = str(DATA_DIR / "kto_en_demo.json"), str(DATA_DIR / "dpo_en_demo.json")
    (folder / "dataset_info.json").write_text(json.dumps({
        "mixed_answers": {"file_name": kto, "columns": {"prompt": "instruction", "query": "input", "response": "output"}},
        "dpo_en_demo": {"file_name": dpo, "ranking": True, "columns": {
            "prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}},
        "dpo_prompts": {"file_name": dpo, "columns": {"prompt": "instruction"}},  # rows without any answer
    }))
    return folder


@pytest.fixture(scope="module")
def sft_run(tiny_llama_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    train(*_settings(tiny_llama_dir, out, data_dir, stage="sft", dataset="mixed_answers", max_steps=25))
    return out


@pytest.fixture(scope="module")
def reward_run(tiny_llama_dir, data_dir, sft_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "run"
    metrics = train(*_settings(tiny_llama_dir, out, data_dir, stage="rm", dataset="dpo_en_demo",
                               adapter_name_or_path=sft_run, create_new_adapter="true", max_steps=8,
                               per_device_train_batch_size=4, val_size=10, do_eval="true"))
    return out, metrics


def test_reward_model_learns_to_score_the_chosen_answer_higher(tiny_llama_dir, data_dir, sft_run, reward_run,
                                                                 tmp_path):
    from safetensors.torch import load_file

    out, metrics = reward_run
    common = dict(stage="rm", dataset="dpo_en_demo", val_size=10, do_train="false", per_device_eval_batch_size=10)
    # Before: the sft policy with a fresh value head, on the same held-out pairs.
    before = train(*_settings(tiny_llama_dir, tmp_path / "before", data_dir, adapter_name_or_path=sft_run,
                              do_eval="true", **common))
    assert before["eval_accuracy"] == 0.5  # an untrained head scores every text alike: chance
    assert metrics["eval_accuracy"] >= 0.9
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] == metrics["eval_accuracy"]
    assert json.loads((out / "lmforge_run.json").read_text())["stage"] == "rm"
    assert {"adapter_model.safetensors", "adapter_config.json", "value_head.safetensors"} <= {
        p.name for p in out.iterdir()}
    head = load_file(str(out / "value_head.safetensors"))
    assert {k: tuple(v.shape) for k, v in head.items()} == {"v_head.summary.weight": (1, 128),
                                                            "v_head.summary.bias": (1,)}
    # do_predict on the finished run (its adapter after the sft one) writes both scores of every held-out pair.
    predicted = train(*_settings(tiny_llama_dir, tmp_path / "predict", data_dir, do_predict="true",
                                 adapter_name_or_path=f"{sft_run},{out}", **common))
    lines = [json.loads(line) for line in (tmp_path / "predict" / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 10 and all(set(line) == {"chosen", "rejected"} for line in lines)
    assert sum(line["chosen"] > line["rejected"] for line in lines) >= 9
    assert predicted["predict_accuracy"] >= 0.9
    assert json.loads((tmp_path / "predict" / "predict_results.json").read_text())["predict_accuracy"] == \
        predicted["predict_accuracy"]


def _polite_share(run, prompts: list[str]) -> float:
    """The share of greedy answers of `lmforge chat model_name_or_path=<run>` that start politely."""
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.commands.common import load_config

    engine = HFEngine(load_config("chat", [f"model_name_or_path={run}", "do_sample=false", "max_new_tokens=4"]))
    answers = [engine.chat([{"role": "user", "content": p}]).text for p in prompts]
    return sum(answer.startswith("Sure") for answer in answers) / len(answers)


@pytest.mark.parametrize("seed", [0, 1])
def test_ppo_raises_the_reward(seed, tiny_llama_dir, data_dir, sft_run, reward_run, tmp_path):
    out = tmp_path / "ppo"
    train(*_ppo(tiny_llama_dir, out, data_dir, reward_run[0], sft_run, seed=seed))
    log = _log(out)
    rewards = [entry["reward"] for entry in log]
    assert len(rewards) == 20 and all("kl" in entry and "loss" in entry for entry in log)
    first, last = _mean(rewards[:4]), _mean(rewards[-4:])
    assert last > first + 0.5, rewards
    run = json.loads((out / "lmforge_run.json").read_text())
    assert run["stage"] == "ppo" and run["adapter_name_or_path"] == [str(sft_run)]
    # The policy's adapter and the critic's head; not the reward model's adapter.
    assert {"adapter_model.safetensors", "adapter_config.json", "value_head.safetensors"} <= {
        p.name for p in out.iterdir()}
    assert not (out / "reward").exists()
    # The run folder chats, and its greedy answers are polite more often than the sft policy's.
    prompts = [row["instruction"] for row in json.loads((DATA_DIR / "dpo_en_demo.json").read_text())[:12]]
    assert _polite_share(out, prompts) > _polite_share(sft_run, prompts)


class _Scorer(BaseHTTPRequestHandler):
    """A reward API: records each request, answers one score per text (its length mod 7), or `reply` if set."""

    requests: list[dict] = []
    reply: bytes | None = None

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        payload = self.reply or json.dumps({"scores": [len(text) % 7 for text in body["messages"]]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def scorer():
    _Scorer.requests, _Scorer.reply = [], None
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scorer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/score", _Scorer
    server.shutdown()
    server.server_close()


def test_api_reward_model(tiny_llama_dir, data_dir, scorer, tmp_path):
    url, handler = scorer
    out = tmp_path / "ppo"
    train(*_settings(tiny_llama_dir, out, data_dir, stage="ppo", dataset="dpo_prompts", reward_model=url,
                     reward_model_type="api", max_steps=2, logging_steps=1, max_new_tokens=4))
    assert len(handler.requests) == 2
    instructions = [row["instruction"] for row in json.loads((DATA_DIR / "dpo_en_demo.json").read_text())]
    header = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    for request, entry in zip(handler.requests, _log(out)):
        assert set(request) == {"model", "messages"} and request["model"] == "model"
        assert len(request["messages"]) == 8
        for text in request["messages"]:  # the rendered prompt, then the sampled answer
            assert text.startswith(header)
            assert text[len(header):].split("<|eot_id|>")[0] in instructions
        assert entry["reward"] == pytest.approx(_mean([len(t) % 7 for t in request["messages"]]), abs=1e-5)


def _one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.rstrip("\n").splitlines()[-1]


def test_reward_model_errors_are_one_line(tiny_llama_dir, tiny_qwen_dir, data_dir, sft_run, reward_run, scorer,
                                          tmp_path, capsys):
    from lmforge.train.value_head import VALUE_HEAD_FILE

    out = tmp_path / "ppo"
    base = ["train", *_settings(tiny_llama_dir, out, data_dir, stage="ppo", dataset="dpo_prompts", max_steps=1,
                                max_new_tokens=4)]
    why = "Train one with stage: rm and point reward_model at its output_dir."
    assert _one_line_error([*base, f"reward_model={sft_run}"], capsys) == (
        f"lmforge train: error: reward_model '{sft_run}' is a stage sft run, not a reward model; train one with "
        "stage: rm and point reward_model at its output_dir.")
    assert _one_line_error([*base, f"reward_model={tiny_llama_dir}"], capsys) == (
        f"lmforge train: error: reward_model '{tiny_llama_dir}' is not a reward model: it has no "
        f"value_head.safetensors. {why}")
    # A reward model of another architecture: an rm adapter recorded as trained on the tiny Qwen2 ...
    other = tmp_path / "rm-on-qwen"
    shutil.copytree(reward_run[0], other)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(tiny_qwen_dir)}))
    mismatch = ("model, but the policy is a llama model; the reward model reads the policy's tokens, so it must have "
                "the policy's architecture and tokenizer.")
    assert _one_line_error([*base, f"reward_model={other}"], capsys) == (
        f"lmforge train: error: reward_model '{other}' was trained on a qwen2 {mismatch}")
    # ... and a full Qwen2 reward model.
    full = tmp_path / "full-qwen-rm"
    shutil.copytree(tiny_qwen_dir, full)
    shutil.copy(reward_run[0] / VALUE_HEAD_FILE, full / VALUE_HEAD_FILE)
    assert _one_line_error([*base, f"reward_model={full}", "reward_model_type=full"], capsys) == (
        f"lmforge train: error: reward_model '{full}' is a qwen2 {mismatch}")
    assert _one_line_error([*base, f"reward_model={reward_run[0]}", "reward_model_type=full"], capsys) == (
        f"lmforge train: error: reward_model '{reward_run[0]}' is a LoRA reward model (no config.json); set "
        "reward_model_type: lora, or reward_model to its base model and reward_model_adapters to this folder.")
    # An API that answers something else than one score per text.
    url, handler = scorer
    handler.reply = b'{"score": 1}'
    assert _one_line_error([*base, f"reward_model={url}", "reward_model_type=api"], capsys) == (
        f"lmforge train: error: reward_model API {url} answered '{{\"score\": 1}}'; expected JSON "
        '{"scores": [...]} with one number for each of the 8 texts.')


@pytest.mark.parametrize("stage", ["rm", "ppo"])
def test_resumes_where_it_stopped(stage, tiny_llama_dir, data_dir, scorer, tmp_path):
    """A run stopped after its step-2 checkpoint and started again ends with the same weights (adapter and value
    head) and log as one never stopped (CPU, one thread, same seed)."""
    import torch
    from transformers import TrainerCallback

    from lmforge.commands.common import load_config
    from lmforge.train.run import run
    from tests.train.conftest import load_safetensors

    class StopAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    def config(out):
        if stage == "rm":
            settings = dict(dataset="dpo_en_demo")
        else:  # the scorer API is the reward model: no reward model to train first
            settings = dict(dataset="dpo_prompts", reward_model=scorer[0], reward_model_type="api", max_new_tokens=4)
        return load_config("train", _settings(tiny_llama_dir, out, data_dir, stage=stage, max_steps=4, save_steps=2,
                                              logging_steps=1, per_device_train_batch_size=4, **settings))

    run(config(tmp_path / "whole"))
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path / "stopped"), callbacks=[StopAtStep3()])
    assert [p.name for p in (tmp_path / "stopped").glob("checkpoint-*")] == ["checkpoint-2"]
    run(config(tmp_path / "stopped"))
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        whole, resumed = (load_safetensors(tmp_path / run_name / name) for run_name in ("whole", "stopped"))
        assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    logs = [[{k: v for k, v in e.items() if "time" not in k and k != "throughput"} for e in _log(tmp_path / n)]
            for n in ("whole", "stopped")]
    assert logs[0] == logs[1]
    assert [e["current_steps"] for e in logs[0] if "loss" in e] == [1, 2, 3, 4]  # each step logged once


def _pair_batch(tokenizer, template, rows: list[int]) -> dict:
    """dpo_en_demo pairs `rows`, batched as the reward model trains on them: the chosen rows, then the rejected."""
    from lmforge.config import DataArguments
    from lmforge.data.collator import PairwiseDataCollator
    from lmforge.data.processors.pairwise import PairwiseProcessor

    demo = json.loads((DATA_DIR / "dpo_en_demo.json").read_text())
    processor = PairwiseProcessor(DataArguments(cutoff_len=64), template, tokenizer)
    features = [processor.encode([{"role": "user", "content": demo[row]["instruction"]}],
                                 {"role": "assistant", "content": demo[row]["chosen"]},
                                 {"role": "assistant", "content": demo[row]["rejected"]}, None, None) for row in rows]
    return PairwiseDataCollator.from_tokenizer(tokenizer)(features)


def test_a_lora_reward_model_scores_as_its_merged_full_copy(tiny_llama_dir, data_dir, sft_run, reward_run):
    """ppo's two ways to load an rm LoRA run agree: inside the policy (type lora) and merged into its own copy
    of the base (type full, the sft and rm adapters as reward_model_adapters)."""
    import torch

    from lmforge.commands.common import load_config
    from lmforge.model.tokenizer import load_tokenizer_and_template
    from lmforge.train.common import load_trainable_model
    from lmforge.train.reward_model import attach_adapter_reward, load_full_reward

    lora_cfg = load_config("train", _ppo(tiny_llama_dir, "x", data_dir, reward_run[0], sft_run))
    full_cfg = load_config("train", _ppo(tiny_llama_dir, "x", data_dir, tiny_llama_dir, sft_run,
                                         reward_model_type="full",
                                         reward_model_adapters=f"{sft_run},{reward_run[0]}"))
    tokenizer, template = load_tokenizer_and_template(lora_cfg.model, lora_cfg.data)
    policy = load_trainable_model(lora_cfg, tokenizer, template)
    lora = attach_adapter_reward(lora_cfg, policy, "llama3")
    full = load_full_reward(full_cfg, tokenizer, policy.config, torch.device("cpu"), torch.float32, "llama3")
    batch = _pair_batch(tokenizer, template, list(range(12)))
    scores = lora(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(scores, full(batch["input_ids"], batch["attention_mask"]), atol=1e-4)
    assert (scores[:12] > scores[12:]).float().mean() >= 0.9


def test_a_full_reward_model(tiny_llama_dir, data_dir, tmp_path):
    """finetuning_type full: the weights and the value head in one folder, which do_predict and ppo both read."""
    import torch

    from lmforge.commands.common import load_config
    from lmforge.model.tokenizer import load_tokenizer_and_template
    from lmforge.train.reward_model import load_full_reward

    out = tmp_path / "rm"
    common = dict(stage="rm", dataset="dpo_en_demo", val_size=10, per_device_train_batch_size=4,
                  per_device_eval_batch_size=10)
    train(*_settings(tiny_llama_dir, out, data_dir, finetuning_type="full", learning_rate="1e-3", max_steps=4,
                     **common))
    assert {"model.safetensors", "config.json", "value_head.safetensors"} <= {p.name for p in out.iterdir()}
    train(*_settings(out, tmp_path / "predict", data_dir, do_train="false", do_predict="true", **common))
    predicted = [json.loads(line) for line in (tmp_path / "predict" / "generated_predictions.jsonl").read_text()
                 .splitlines()]
    # The same held-out pairs, scored by the reward model as ppo loads it.
    cfg = load_config("train", _settings(tiny_llama_dir, "x", data_dir, stage="ppo", dataset="dpo_prompts",
                                         reward_model=out, reward_model_type="full"))
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    scorer = load_full_reward(cfg, tokenizer, _model_config(tiny_llama_dir), torch.device("cpu"), torch.float32,
                              "llama3")
    rows = _held_out_rows(tiny_llama_dir, data_dir)
    batch = _pair_batch(tokenizer, template, rows)
    scores = scorer(batch["input_ids"], batch["attention_mask"]).tolist()
    expected = [line["chosen"] for line in predicted] + [line["rejected"] for line in predicted]
    assert scores == pytest.approx(expected, abs=1e-3)


def _model_config(model_dir):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


def _held_out_rows(model_dir, data_dir) -> list[int]:
    """The dpo_en_demo rows of the val_size=10 split, in the order the eval dataset has them."""
    from lmforge.commands.common import load_config
    from lmforge.data.pipeline import load_aligned
    from lmforge.data.report import DropReport

    cfg = load_config("train", _settings(model_dir, "x", data_dir, stage="rm", dataset="dpo_en_demo", val_size=10))
    return list(load_aligned(cfg, DropReport(), "rm")["validation"]["_row"])
