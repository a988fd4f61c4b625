"""Few-shot prompts of the multiple-choice benchmarks (the wording of MMLU / CMMLU / C-Eval evaluations).

A conversation is the `n_shot` support questions with their answer letters, then the target
question; the subject header opens the first user turn. The template turns it into token ids.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from lmforge.eval.tasks import CHOICES, Question


@dataclass(frozen=True)
class EvalWording:
    header: str  # formatted with the subject's display name
    choice: str
    answer_cue: str


WORDINGS = {
    "en": EvalWording("The following are multiple choice questions (with answers) about {subject}.\n\n",
                      "\n{choice}. {content}", "\nAnswer:"),
    "zh": EvalWording("以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
                      "\n{choice}. {content}", "\n答案："),
}


def format_question(question: Question, wording: EvalWording) -> str:
    """The question, its `A. ...` option lines and the answer cue."""
    options = [wording.choice.format(choice=c, content=question.choices[c]) for c in CHOICES if c in question.choices]
    return "".join([question.question, *options, wording.answer_cue])


def build_messages(target: Question, support: Sequence[Question], subject_name: str, lang: str) -> list[dict]:
    """The few-shot conversation, ending with the target question and its (gold) answer letter."""
    wording = WORDINGS[lang]
    messages = []
    for example in (*support, target):
        messages.append({"role": "user", "content": format_question(example, wording)})
        messages.append({"role": "assistant", "content": example.answer})
    messages[0]["content"] = wording.header.format(subject=subject_name) + messages[0]["content"]
    return messages


class SupportSampler:
    """Draws the few-shot examples: a fresh seeded shuffle of the dev rows for every target question."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def draw(self, dev: Sequence[Question], n_shot: int) -> list[Question]:
        return self.rng.sample(list(dev), min(n_shot, len(dev)))
