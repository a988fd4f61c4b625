"""`lmforge eval-predictions FILE`: score a generated_predictions.jsonl with BLEU-4 and ROUGE."""

from __future__ import annotations

from pathlib import Path

from lmforge.commands.common import ArgumentParser


def main(argv: list[str]) -> int:
    from lmforge.eval.score import SCORE_FILE, score_file
    from lmforge.utils.atomic import write_json_atomic

    parser = ArgumentParser(prog="lmforge eval-predictions",
                                     description="Score a generated_predictions.jsonl with BLEU-4 and ROUGE.")
    parser.add_argument("file", help="a JSON-lines file with 'predict' and 'label' on every line")
    parser.add_argument("--output", help=f"where the scores are written (default: {SCORE_FILE} next to FILE)")
    args = parser.parse_args(argv)
    path = Path(args.file)
    scores = score_file(path)
    for name, value in scores.items():
        print(f"{name}: {value:.4f}")
    output = Path(args.output) if args.output else path.with_name(SCORE_FILE)
    write_json_atomic(output, scores)
    print(f"Scores written to {output}")
    return 0
