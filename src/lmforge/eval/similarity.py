"""BLEU-4 and ROUGE of generated answers against references, scored the way LLaMA-Factory scores them.

- BLEU-4: nltk's `sentence_bleu` over *characters* (so Chinese and English are treated alike),
  with smoothing method 3.
- ROUGE-1/2/L: F-scores of rouge-chinese over jieba words; an empty side scores 0.

Every per-sample score is x100 and rounded to 4 places, then averaged, so numbers are comparable
with LLaMA-Factory's `predict_results.json`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from lmforge.errors import UserError

METRICS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")
_PACKAGES = {"jieba": "jieba", "nltk": "nltk", "rouge_chinese": "rouge-chinese"}


def require_metric_packages() -> None:
    """Fail early, before any model is loaded, when the metric packages are missing."""
    import importlib

    missing = []
    for module, pip in _PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(pip)
    if missing:
        raise UserError(
            f"BLEU/ROUGE scoring needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed. "
            "Install them with: pip install 'lmforge[metrics]'"
        )


class SimilarityScorer:
    """Scores (prediction, reference) pairs; keeps the per-sample scores for the means."""

    def __init__(self) -> None:
        require_metric_packages()
        import jieba
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from rouge_chinese import Rouge

        jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict..." chatter on every run
        self._cut = jieba.cut
        self._bleu = sentence_bleu
        self._smoothing = SmoothingFunction().method3
        self._rouge = Rouge()
        self.scores: dict[str, list[float]] = {name: [] for name in METRICS}

    def words(self, text: str) -> list[str]:
        """jieba words of a text, whitespace dropped (as rouge-chinese sees them)."""
        return " ".join(self._cut(text)).split()

    def score(self, prediction: str, reference: str) -> dict[str, float]:
        """Scores of one pair (x100, rounded to 4 places); also recorded for `means`."""
        hypothesis, gold = self.words(prediction), self.words(reference)
        result: dict[str, float] = {}
        if not hypothesis or not gold:
            result.update({"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0})
        else:
            rouge = self._rouge.get_scores(" ".join(hypothesis), " ".join(gold))[0]
            result.update({name: round(rouge[name]["f"] * 100, 4) for name in ("rouge-1", "rouge-2", "rouge-l")})
        if prediction:
            bleu = self._bleu([list(reference)], list(prediction), smoothing_function=self._smoothing)
        else:
            bleu = 0.0  # nltk warns and returns 0 for an empty hypothesis; say it without the warning
        result["bleu-4"] = round(bleu * 100, 4)
        for name in METRICS:
            self.scores[name].append(result[name])
        return result

    def means(self, prefix: str = "") -> dict[str, float]:
        """The mean of every metric over the pairs scored so far (0 when none)."""
        return {f"{prefix}{name}": (round(sum(v) / len(v), 4) if v else 0.0) for name, v in self.scores.items()}


def compute_similarity(predictions: Sequence[str], references: Sequence[str], prefix: str = "") -> dict[str, float]:
    """Mean BLEU-4 / ROUGE-1/2/L of aligned predictions and references."""
    scorer = SimilarityScorer()
    for prediction, reference in _pairs(predictions, references):
        scorer.score(prediction, reference)
    return scorer.means(prefix)


def _pairs(predictions: Sequence[str], references: Sequence[str]) -> Iterable[tuple[str, str]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    return zip(predictions, references)
