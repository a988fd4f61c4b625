"""`lmforge eval-predictions FILE`: score an existing generated_predictions.jsonl with BLEU-4 / ROUGE.

Predictions made anywhere (another server, another tool) are scored exactly as `do_predict`
scores its own, so the numbers can be compared. The means are printed and written to
`predictions_score.json` next to the file (or to `--output`).
"""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.errors import UserError

SCORE_FILE = "predictions_score.json"


def read_predictions(path: Path) -> list[tuple[str, str]]:
    """(predict, label) of every line; a malformed line is an error naming its line number."""
    if not path.is_file():
        raise UserError(f"{path} does not exist (expected a generated_predictions.jsonl file).")
    pairs = []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            cut = number == len(lines) and not text.endswith("\n")
            hint = (" The last line is incomplete: the file was probably cut off by an interrupted run; "
                    "delete that line to score the rest.") if cut else ""
            raise UserError(f"{path} line {number}: not valid JSON ({err.msg}).{hint}") from None
        if not isinstance(record, dict):
            raise UserError(f"{path} line {number}: expected an object with 'predict' and 'label', got {type(record).__name__}.")
        for key in ("predict", "label"):
            if not isinstance(record.get(key), str):
                problem = "is missing" if key not in record else f"must be a string, got {type(record[key]).__name__}"
                raise UserError(f"{path} line {number}: field '{key}' {problem}.")
        pairs.append((record["predict"], record["label"]))
    if not pairs:
        raise UserError(f"{path} holds no predictions.")
    return pairs


def score_file(path: Path) -> dict[str, float]:
    """Mean BLEU-4 / ROUGE-1/2/L of a predictions file (LLaMA-Factory's key names, no prefix)."""
    from lmforge.eval.similarity import SimilarityScorer

    scorer = SimilarityScorer()
    pairs = read_predictions(path)
    for predict, label in pairs:
        scorer.score(predict, label)
    return scorer.means()
