"""`lmforge eval-predictions`: scoring an existing predictions file, and its errors."""

from __future__ import annotations

import json
import math

from lmforge.cli import main


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + tail, encoding="utf-8")
    return path


def test_scores_a_predictions_file(tmp_path, capsys):
    file = _write(tmp_path / "generated_predictions.jsonl", [
        {"prompt": "p1", "predict": "the cat sat", "label": "the cat sat down"},
        {"prompt": "p2", "predict": "我喜欢北京", "label": "我喜欢上海"},
    ])
    assert main(["eval-predictions", str(file)]) == 0
    scores = json.loads((tmp_path / "predictions_score.json").read_text(encoding="utf-8"))
    bleu = (round(100 * math.exp(1 - 16 / 11), 4) + round(100 * (1 / 40) ** 0.25, 4)) / 2
    assert scores == {
        "bleu-4": round(bleu, 4),
        "rouge-1": round((round(600 / 7, 4) + round(200 / 3, 4)) / 2, 4),
        "rouge-2": 65.0,
        "rouge-l": round((round(600 / 7, 4) + round(200 / 3, 4)) / 2, 4),
    }
    out = capsys.readouterr().out
    assert f"bleu-4: {scores['bleu-4']:.4f}" in out and "rouge-2: 65.0000" in out


def test_output_option(tmp_path):
    file = _write(tmp_path / "preds.jsonl", [{"predict": "a b", "label": "a b"}])
    target = tmp_path / "scores" / "s.json"
    assert main(["eval-predictions", str(file), "--output", str(target)]) == 0
    assert json.loads(target.read_text())["rouge-1"] == 100.0
    assert not (tmp_path / "predictions_score.json").exists()


def test_bad_lines_are_named(tmp_path, capsys):
    good = {"prompt": "p", "predict": "a", "label": "a"}
    cases = [
        (_write(tmp_path / "a.jsonl", [good], tail="{not json}\n"), "a.jsonl line 2: not valid JSON"),
        (_write(tmp_path / "b.jsonl", [good, {"prompt": "p", "predict": "a"}]), "b.jsonl line 2: field 'label' is missing."),
        (_write(tmp_path / "c.jsonl", [{"predict": 3, "label": "a"}]), "c.jsonl line 1: field 'predict' must be a string, got int."),
        (_write(tmp_path / "d.jsonl", [good], tail='{"prompt": "p", "pre'),
         "d.jsonl line 2: not valid JSON (Unterminated string starting at). The last line is incomplete"),
        (_write(tmp_path / "e.jsonl", []), "e.jsonl holds no predictions."),
        (tmp_path / "missing.jsonl", "missing.jsonl does not exist"),
    ]
    for path, message in cases:
        assert main(["eval-predictions", str(path)]) == 1
        err = capsys.readouterr().err
        assert message in err, (message, err)
        assert err.startswith("lmforge eval-predictions: error:")
