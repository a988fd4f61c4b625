"""BLEU-4 / ROUGE scores checked against values worked out by hand."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from lmforge.eval.similarity import SimilarityScorer, compute_similarity


@pytest.fixture(scope="module")
def scorer():
    return SimilarityScorer()


def test_english_pair_matches_hand_computation(scorer):
    # Words: [the, cat, sat] vs [the, cat, sat, down].
    # ROUGE-1: P = 3/3, R = 3/4 -> F = 2PR/(P+R) = 6/7. ROUGE-2: bigrams 2/2 and 2/3 -> F = 4/5.
    # ROUGE-L: LCS = 3 words, as ROUGE-1 -> 6/7.
    # BLEU-4 over characters: the prediction is a prefix of the reference, so every clipped n-gram
    # precision is 1 and only the brevity penalty remains: exp(1 - 16/11).
    scores = scorer.score("the cat sat", "the cat sat down")
    assert scorer.words("the cat sat") == ["the", "cat", "sat"]
    assert scores["rouge-1"] == round(600 / 7, 4)
    assert scores["rouge-2"] == 80.0
    assert scores["rouge-l"] == round(600 / 7, 4)
    assert scores["bleu-4"] == round(100 * math.exp(1 - 16 / 11), 4)


def test_chinese_pair_matches_hand_computation(scorer):
    # jieba words: [我, 喜欢, 北京] vs [我, 喜欢, 上海].
    # ROUGE-1: 2 of 3 both ways -> 2/3. ROUGE-2: {我 喜欢} of 2 bigrams -> 1/2. ROUGE-L: LCS 2 -> 2/3.
    # BLEU-4 over characters (5 vs 5, no brevity penalty): 1-grams 3/5, 2-grams 2/4 (我喜, 喜欢),
    # 3-grams 1/3 (我喜欢), 4-grams 0/2 -> smoothing method 3 makes it 1/(2 * 2).
    # Geometric mean: (3/5 * 1/2 * 1/3 * 1/4) ** (1/4) = (1/40) ** 0.25.
    assert scorer.words("我喜欢北京") == ["我", "喜欢", "北京"]
    scores = scorer.score("我喜欢北京", "我喜欢上海")
    assert scores["rouge-1"] == round(200 / 3, 4)
    assert scores["rouge-2"] == 50.0
    assert scores["rouge-l"] == round(200 / 3, 4)
    assert scores["bleu-4"] == round(100 * (1 / 40) ** 0.25, 4)


def test_means_and_empty_sides():
    means = compute_similarity(["the cat sat", "", "我喜欢北京"], ["the cat sat down", "nothing", "我喜欢上海"],
                               prefix="predict_")
    bleu = (round(100 * math.exp(1 - 16 / 11), 4) + 0 + round(100 * (1 / 40) ** 0.25, 4)) / 3
    assert means["predict_bleu-4"] == round(bleu, 4)
    assert means["predict_rouge-2"] == round((80 + 0 + 50) / 3, 4)
    assert set(means) == {"predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l"}


def test_missing_metric_package_is_a_clear_error(tmp_path):
    predictions = tmp_path / "generated_predictions.jsonl"
    predictions.write_text('{"prompt": "q", "predict": "a", "label": "a"}\n', encoding="utf-8")
    code = ("import sys; sys.modules['rouge_chinese'] = None; from lmforge.cli import main; "
            f"sys.exit(main(['eval-predictions', {str(predictions)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert "BLEU/ROUGE scoring needs rouge-chinese, which is not installed" in result.stderr
    assert "pip install 'lmforge[metrics]'" in result.stderr
    assert "Traceback" not in result.stderr
