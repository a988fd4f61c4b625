"""`lmforge data preview` and `lmforge data check`: see what training will see, before it runs.

preview: the first samples rendered through the template, trained text marked [[...]], with token
counts. check: every row validated; rows loaded and dropped (by reason, with row numbers), token
lengths against cutoff_len, and how much truncation cuts. Exit code 1 when any row is dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from lmforge.errors import UserError

MARK_OPEN, MARK_CLOSE = "[[", "]]"
PERCENTILES = (50, 90, 95, 99)


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="lmforge data", add_help=False)
    parser.add_argument("action", choices=("preview", "check"))
    parser.add_argument("--num", type=int, default=3, help="preview: number of samples to show")
    parser.add_argument("--split", choices=("train", "eval"), default="train")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    if not argv or argv[0] not in ("preview", "check"):
        raise UserError("Usage: lmforge data {preview,check} CONFIG.yaml [key=value ...] [--num N] [--json]")
    own, rest = [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in ("--num", "--split"):
            own += argv[i : i + 2]
            i += 2
            continue
        if token == "--json" or i == 0:
            own.append(token)
        else:
            rest.append(token)
        i += 1
    return parser.parse_args(own), rest


def prepare(config_argv: list[str]):
    """Config, tokenizer and template of a run, exactly as `lmforge train` prepares them."""
    from lmforge.config import parse_config
    from lmforge.data.pipeline import prepare_template
    from lmforge.model.loader import load_tokenizer

    cfg = parse_config("data", config_argv)
    tokenizer = load_tokenizer(cfg.model)
    template = prepare_template(cfg.data, tokenizer)
    return cfg, tokenizer, template


def mark_trained(tokenizer, input_ids: list[int], labels: list[int] | None) -> str:
    """Decode `input_ids`, wrapping each run of supervised tokens in [[ ]]."""
    from lmforge.data.processors import IGNORE_INDEX

    if labels is None or len(labels) != len(input_ids):
        return tokenizer.decode(input_ids, skip_special_tokens=False)
    parts, start = [], 0
    for i in range(1, len(input_ids) + 1):
        if i == len(input_ids) or (labels[i] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            text = tokenizer.decode(input_ids[start:i], skip_special_tokens=False)
            parts.append(f"{MARK_OPEN}{text}{MARK_CLOSE}" if labels[start] != IGNORE_INDEX else text)
            start = i
    return "".join(parts)


def _split_name(args) -> str:
    from lmforge.data.pipeline import EVAL, TRAIN

    return TRAIN if args.split == "train" else EVAL


def preview(args, cfg, tokenizer, template) -> int:
    from lmforge.data.pipeline import load_aligned
    from lmforge.data.processors import IGNORE_INDEX, get_processor
    from lmforge.data.report import DropReport

    data = cfg.data
    if not data.streaming:
        data.max_samples = min(data.max_samples or args.num, args.num) if data.val_size == 0 else data.max_samples
    # Packed blocks mix samples; the preview shows each sample on its own.
    unpacked = dataclasses.replace(data, packing=False, neat_packing=False)
    report = DropReport()
    splits = load_aligned(cfg, report, cfg.finetune.stage)
    name = _split_name(args)
    if name not in splits:
        raise UserError(f"This config has no {args.split} split (set {'eval_dataset or val_size' if args.split == 'eval' else 'dataset'}).")
    processor = get_processor(cfg.finetune.stage, unpacked, template, tokenizer)
    rows = list(splits[name].take(args.num))
    out = processor.process({key: [row[key] for row in rows] for key in rows[0]}) if rows else {"input_ids": []}
    samples = []
    for i in range(len(out["input_ids"])):
        ids = list(out["input_ids"][i])
        labels = list(out["labels"][i]) if "labels" in out else None
        trained = sum(1 for t in labels if t != IGNORE_INDEX) if labels else len(ids)
        samples.append({
            "dataset": out["_dataset"][i], "row": out["_row"][i], "dropped": out["_drop"][i] or None,
            "tokens": len(ids), "trained_tokens": trained, "text": mark_trained(tokenizer, ids, labels),
        })
    if args.json:
        print(json.dumps({"template": template.name, "samples": samples}, ensure_ascii=False, indent=2))
        return 0
    print(f"Template: {template.name}   cutoff_len: {data.cutoff_len}   (trained text inside {MARK_OPEN} {MARK_CLOSE})")
    for n, sample in enumerate(samples, 1):
        status = f"dropped: {sample['dropped']}" if sample["dropped"] else (
            f"{sample['tokens']} tokens, {sample['trained_tokens']} trained")
        print(f"\n--- sample {n}: {sample['dataset']} row {sample['row']} ({status}) ---")
        print(sample["text"])
    return 0


def _percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def length_stats(lengths: list[int], cutoff_len: int) -> dict[str, Any]:
    """Length percentiles and how many samples cutoff_len truncates, and by how much."""
    values = sorted(lengths)
    over = [v - cutoff_len for v in values if v > cutoff_len]
    return {
        "samples": len(values),
        "min": values[0] if values else 0,
        **{f"p{q}": _percentile(values, q) for q in PERCENTILES},
        "max": values[-1] if values else 0,
        "over_cutoff": len(over),
        "truncated_tokens_total": sum(over),
        "truncated_tokens_max": max(over) if over else 0,
    }


def check(args, cfg, tokenizer, template) -> int:
    from lmforge.data.pipeline import load_aligned, tokenize_split
    from lmforge.data.processors import get_processor
    from lmforge.data.report import DropReport

    data = cfg.data
    if data.streaming:
        raise UserError("`lmforge data check` reads every row; set streaming: false to check a dataset.")
    report = DropReport()
    splits = load_aligned(cfg, report, cfg.finetune.stage)
    # Full lengths: the same processor without truncation and without packing.
    full = dataclasses.replace(data, cutoff_len=10**9, packing=False, neat_packing=False, drop_overlong=False)
    result: dict[str, Any] = {"template": template.name, "stage": cfg.finetune.stage, "cutoff_len": data.cutoff_len,
                              "splits": {}}
    for name, dataset in splits.items():
        measure = get_processor(cfg.finetune.stage, full, template, tokenizer)
        lengths = [len(ids) for ids, drop in zip(*_columns(dataset.map(
            measure, batched=True, remove_columns=dataset.column_names, features=measure.features,
            load_from_cache_file=False, desc=f"Measuring {name}"), "input_ids", "_drop")) if not drop]
        tokenized, dropped_tokens = tokenize_split(dataset, data, get_processor(cfg.finetune.stage, data, template,
                                                                                 tokenizer), report, name)
        result["splits"][name] = {"rows": len(dataset), "samples": len(tokenized),
                                  "lengths": length_stats(lengths, data.cutoff_len),
                                  "packing_dropped_tokens": dropped_tokens}
    seen = {}
    for entry in report.to_dict()["seen"]:
        if entry["stage"] == "convert":
            seen[entry["dataset"]] = entry["count"]
    result["datasets"] = {name: {"rows": count, "dropped": report.count(name)} for name, count in seen.items()}
    result["drops"] = report.to_dict()["drops"]
    result["dropped_total"] = report.count()
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        print(render_check(result, report))
    return 1 if result["dropped_total"] else 0


def _columns(dataset, *names):
    return [dataset[name] for name in names]


def render_check(result: dict[str, Any], report) -> str:
    """The human-readable `data check` report."""
    lines = [f"Template {result['template']}, stage {result['stage']}, cutoff_len {result['cutoff_len']}", "", "Rows:"]
    for name, info in result["datasets"].items():
        lines.append(f"  {name}: {info['rows']} loaded, {info['rows'] - info['dropped']} kept, {info['dropped']} dropped")
    lines += ["", "Dropped rows:"]
    lines += [f"  {line}" for line in report.summary_lines()] or ["  none"]
    for name, split in result["splits"].items():
        stats = split["lengths"]
        lines += ["", f"Token lengths ({name}, {stats['samples']} samples, before truncation):"]
        lines.append("  " + ", ".join(f"{k} {stats[k]}" for k in ("min", *(f"p{q}" for q in PERCENTILES), "max")))
        if stats["over_cutoff"]:
            lines.append(
                f"  {stats['over_cutoff']} samples exceed cutoff_len {result['cutoff_len']} and get truncated: "
                f"{stats['truncated_tokens_total']} tokens cut in all, at most {stats['truncated_tokens_max']} from one sample"
            )
        else:
            lines.append(f"  no sample exceeds cutoff_len {result['cutoff_len']}")
        if split["packing_dropped_tokens"]:
            lines.append(f"  packing leaves out {split['packing_dropped_tokens']} tokens after the last full block")
        lines.append(f"  {split['samples']} {name} samples after tokenization")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args, config_argv = _parse(argv)
    cfg, tokenizer, template = prepare(config_argv)
    out = sys.stdout
    try:
        return preview(args, cfg, tokenizer, template) if args.action == "preview" else check(args, cfg, tokenizer, template)
    finally:
        out.flush()
