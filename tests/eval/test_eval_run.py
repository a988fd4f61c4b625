"""`lmforge eval` end to end on the tiny benchmarks: files, scores, and the scoring itself."""

from __future__ import annotations

import json

import pytest

from lmforge.cli import main
from lmforge.eval.prompts import SupportSampler, build_messages
from lmforge.eval.tasks import load_task


def _eval(model_dir, task_dir, save_dir, *extra):
    return main(["eval", f"model_name_or_path={model_dir}", "template=fewshot", f"task_dir={task_dir}",
                 f"save_dir={save_dir}", *extra])


def test_prompt_wording(llama_tokenizer, task_dir):
    from lmforge.data.templates import get_template

    template = get_template("fewshot", llama_tokenizer)
    subject = load_task(str(task_dir), "tiny_mmlu_test", need_dev=True)[0]
    prompt, answer = template.encode_oneturn(llama_tokenizer, build_messages(subject.target[0], subject.dev[:1],
                                                                             subject.name, "en"))
    assert llama_tokenizer.decode(prompt) == (
        "The following are multiple choice questions (with answers) about arithmetic.\n\n"
        "What is 3 + 4?\nA. 8\nB. 5\nC. 17\nD. 7\nAnswer:D\n\n"
        "What is 18 + 27?\nA. 46\nB. 43\nC. 55\nD. 45\nAnswer:"
    )
    assert llama_tokenizer.decode(answer) == "D\n\n"
    zh = load_task(str(task_dir), "tiny_cmmlu_test", need_dev=False)[1]
    prompt, _ = template.encode_oneturn(llama_tokenizer, build_messages(zh.target[0], [], zh.name, "zh"))
    assert llama_tokenizer.decode(prompt) == (
        "以下是中国关于世界首都考试的单项选择题，请选出其中的正确答案。\n\n"
        "西班牙的首都是哪里？\nA. 内罗毕\nB. 巴黎\nC. 马德里\nD. 奥斯陆\n答案："
    )


def _direct_letters(model_dir, task_dir, task, n_shot, seed, lang):
    """The A/B/C/D argmax at the last prompt position, one unpadded prompt at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.data.templates import get_template

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    template = get_template("fewshot", tokenizer)
    letter_ids = [tokenizer.convert_tokens_to_ids(letter) for letter in "ABCD"]
    sampler = SupportSampler(seed)
    letters, gold = {}, {}
    for subject in load_task(str(task_dir), task, need_dev=n_shot > 0):
        letters[subject.key], gold[subject.key] = [], []
        for question in subject.target:
            messages = build_messages(question, sampler.draw(subject.dev, n_shot), subject.name, lang)
            ids, _ = template.encode_oneturn(tokenizer, messages)
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1]
            letters[subject.key].append("ABCD"[int(logits[letter_ids].argmax())])
            gold[subject.key].append(question.answer)
    return letters, gold


def test_accuracy_equals_direct_argmax(tiny_llama_dir, task_dir, tmp_path, capsys):
    save = tmp_path / "eval"
    assert _eval(tiny_llama_dir, task_dir, save, "task=tiny_mmlu_test", "n_shot=2", "batch_size=3", "seed=7") == 0
    printed = capsys.readouterr().out
    results = json.loads((save / "results.json").read_text(encoding="utf-8"))
    assert sorted(p.name for p in save.iterdir()) == ["results.json", "results.log"]

    letters, gold = _direct_letters(tiny_llama_dir, task_dir, "tiny_mmlu_test", n_shot=2, seed=7, lang="en")
    for subject, chosen in letters.items():
        assert results[subject] == {str(i): letter for i, letter in enumerate(chosen)}
    hits = {s: [a == b for a, b in zip(letters[s], gold[s])] for s in letters}
    categories = {"arithmetic": "STEM", "world_capitals": "Social Sciences", "opposites": "Humanities",
                  "time_units": "Other"}
    expected = {"Average": round(100 * sum(map(sum, hits.values())) / sum(map(len, hits.values())), 2)}
    expected.update({categories[s]: round(100 * sum(h) / len(h), 2) for s, h in hits.items()})
    assert results["_scores"] == expected
    report = "\n".join(f"{name:>15}: {value:.2f}" for name, value in expected.items())
    assert (save / "results.log").read_text(encoding="utf-8") == report + "\n"
    assert report in printed


@pytest.mark.parametrize("task", ["tiny_ceval_validation", "tiny_cmmlu_test"])
def test_chinese_benchmarks(tiny_llama_dir, task_dir, tmp_path, task):
    save = tmp_path / task
    assert _eval(tiny_llama_dir, task_dir, save, f"task={task}", "lang=zh", "n_shot=1") == 0
    results = json.loads((save / "results.json").read_text(encoding="utf-8"))
    subjects = load_task(str(task_dir), task, need_dev=False)
    for subject in subjects:
        assert len(results[subject.key]) == len(subject.target)
        assert set(results[subject.key].values()) <= set("ABCD")
    assert set(results["_scores"]) == {"Average", "STEM", "Social Sciences", "Humanities", "Other"}


def test_existing_save_dir_is_refused(tiny_llama_dir, task_dir, tmp_path, capsys):
    save = tmp_path / "eval"
    save.mkdir()
    (save / "results.log").write_text("earlier results\n")
    assert _eval(tiny_llama_dir, task_dir, save, "task=tiny_mmlu_test", "n_shot=0") == 1
    assert (f"save_dir '{save}' already exists. Set overwrite_save_dir: true to replace it, or choose another "
            "save_dir.") in capsys.readouterr().err
    assert (save / "results.log").read_text() == "earlier results\n"
    assert _eval(tiny_llama_dir, task_dir, save, "task=tiny_mmlu_test", "n_shot=0", "overwrite_save_dir=true") == 0
    assert (save / "results.log").read_text().startswith("        Average: ")
    assert not list(tmp_path.glob(".staging-*"))


def test_fine_tuning_on_dev_answers_raises_the_score(tiny_llama_dir, task_dir, tmp_path, capsys):
    """tiny_letters: each subject always answers with its own letter; the fine-tuned model must read it."""
    from lmforge.eval.prompts import WORDINGS, format_question
    from lmforge.train.run import run
    from lmforge.config import parse_config

    rows = []
    for subject in load_task(str(task_dir), "tiny_letters_test", need_dev=True):
        for question in subject.dev:
            header = WORDINGS["en"].header.format(subject=subject.name)
            rows.append({"instruction": header + format_question(question, WORDINGS["en"]), "output": question.answer})
    data = tmp_path / "data"
    data.mkdir()
    (data / "letters.json").write_text(json.dumps(rows), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps({"letters": {"file_name": "letters.json"}}))
    out = tmp_path / "adapter"
    run(parse_config("train", [
        f"model_name_or_path={tiny_llama_dir}", "stage=sft", "do_train=true", "finetuning_type=lora", "lora_target=all",
        "dataset=letters", f"dataset_dir={data}", "template=fewshot", "cutoff_len=256", f"output_dir={out}",
        "per_device_train_batch_size=8", "learning_rate=5e-3", "num_train_epochs=12", "report_to=none",
        "disable_gradient_checkpointing=true", "logging_steps=10", "save_strategy=no",
    ]))
    common = ["task=tiny_letters_test", "n_shot=0"]
    assert _eval(tiny_llama_dir, task_dir, tmp_path / "before", *common) == 0
    assert _eval(tiny_llama_dir, task_dir, tmp_path / "after", *common, f"adapter_name_or_path={out}",
                 "finetuning_type=lora") == 0
    before = json.loads((tmp_path / "before" / "results.json").read_text())["_scores"]["Average"]
    after = json.loads((tmp_path / "after" / "results.json").read_text())["_scores"]["Average"]
    print(before, after)
    assert after >= 75.0 and after >= before + 25.0, (before, after)
