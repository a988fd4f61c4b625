"""`lmforge eval CONFIG`: accuracy on an MMLU / CMMLU / C-Eval style multiple-choice benchmark.

For every question of the task's split, the few-shot conversation is encoded by the template
(the `fewshot` template is the usual choice), the model reads the prompt once, and the answer is
the letter among A/B/C/D whose token gets the highest probability at the last position.
Accuracy is reported per category (STEM, Social Sciences, Humanities, Other) and on average;
`save_dir` receives `results.json` (every subject's chosen letters, plus the scores) and
`results.log` (the printed scores), written together at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError
from lmforge.eval.prompts import SupportSampler, build_messages
from lmforge.eval.tasks import CATEGORIES, CHOICES, load_task, parse_task
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import RunConfig

logger = get_logger(__name__)


def check_save_dir(save_dir: str | None, overwrite: bool) -> Path | None:
    """Refuse to mix new results into an earlier evaluation's folder."""
    if not save_dir:
        return None
    path = Path(save_dir)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise UserError(f"save_dir '{path}' already exists. Set overwrite_save_dir: true to replace it, "
                        "or choose another save_dir.")
    return path


def choice_token_ids(tokenizer) -> list[int]:
    """The id each letter's answer starts with: the last token of `encode("A")` (no special tokens)."""
    return [tokenizer.encode(letter, add_special_tokens=False)[-1] for letter in CHOICES]


def choose_letters(model, prompts: list[list[int]], choice_ids: list[int], batch_size: int, pad_id: int) -> list[str]:
    """The most probable letter after each prompt, computed in batches.

    Prompts are batched by length (less padding) and left-padded with explicit position ids, so each
    row's last position is its own last token and only that position's logits are computed.
    """
    import torch

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    letters: list[str] = [""] * len(prompts)
    device = model.device
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = [prompts[i] for i in rows]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
        scores = torch.softmax(logits[:, -1, choice_ids].float(), dim=-1)
        for row, choice in zip(rows, scores.argmax(dim=-1).tolist()):
            letters[row] = CHOICES[choice]
    return letters


def run_eval(cfg: RunConfig) -> dict[str, float]:
    """Evaluate the configured model on the task; return the accuracy (x100) per category and on average."""
    ev = cfg.eval
    parse_task(ev.task)
    save_dir = check_save_dir(ev.save_dir, ev.overwrite_save_dir)
    hub_options = {"download_mode": ev.download_mode, "cache_dir": cfg.model.cache_dir, "token": cfg.model.hf_hub_token}
    # Data problems surface before the model loads.
    subjects = load_task(ev.task_dir, ev.task, need_dev=ev.n_shot > 0, hub_options=hub_options)
    from tqdm.auto import tqdm

    from lmforge.chat.hf_engine import HFEngine

    engine = HFEngine(cfg)
    tokenizer, template, model = engine.tokenizer, engine.template, engine.model
    model.eval()
    choice_ids = choice_token_ids(tokenizer)
    sampler = SupportSampler(ev.seed)
    chosen: dict[str, dict[str, str]] = {}
    correct: dict[str, list[bool]] = {"Average": [], **{c: [] for c in CATEGORIES}}
    per_subject: dict[str, float] = {}
    for subject in tqdm(subjects, desc="Evaluating", unit="subject", file=sys.stderr, dynamic_ncols=True):
        prompts = []
        for question in subject.target:
            messages = build_messages(question, sampler.draw(subject.dev, ev.n_shot), subject.name, ev.lang)
            prompt_ids, _ = template.encode_oneturn(tokenizer, messages)
            prompts.append(list(prompt_ids))
        letters = choose_letters(model, prompts, choice_ids, ev.batch_size, tokenizer.pad_token_id)
        hits = [letter == q.answer for letter, q in zip(letters, subject.target)]
        correct.setdefault(subject.category, []).extend(hits)
        correct["Average"].extend(hits)
        chosen[subject.key] = {str(i): letter for i, letter in enumerate(letters)}
        per_subject[subject.key] = round(100 * sum(hits) / len(hits), 2) if hits else 0.0
    scores = {name: round(100 * sum(hits) / len(hits), 2) for name, hits in correct.items() if hits}
    report = "\n".join(f"{name:>15}: {value:.2f}" for name, value in scores.items())
    print(report)
    if save_dir is not None:
        _save(save_dir, {**chosen, "_scores": scores, "_subject_scores": per_subject}, report)
        logger.info(f"Results written to {save_dir}")
    return scores


def _save(save_dir: Path, results: dict, report: str) -> None:
    """results.json and results.log appear together: written in a staging folder, then renamed."""
    import json

    from lmforge.utils.atomic import publish_dir, staging_dir

    staging = staging_dir(save_dir.parent, save_dir.name)
    (staging / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (staging / "results.log").write_text(report + "\n", encoding="utf-8")
    publish_dir(staging, save_dir)
