"""What `lmforge data preview` and `lmforge data check` show: what training will see, before it runs.

preview: the first samples rendered through the template, trained text marked [[...]] and each image's
or video's vision tokens shown as one mark naming its file and token count, with token counts and
warnings, then a summary: the rows skipped because they were dropped when read, and the columns no
mapping reads. check: every row validated; rows loaded, dropped and kept with warnings (by reason,
with row numbers), unread columns, what each reason means, token lengths against
cutoff_len, and how much truncation cuts. Exit code 1 when any row is dropped (warnings do not fail).

With `do_predict` and `predict_with_generate` in the config, the eval split is judged as batch
prediction judges it (its prompts, with the reference answer), not as training would.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from lmforge.errors import UserError

MARK_OPEN, MARK_CLOSE = "[[", "]]"
PERCENTILES = (50, 90, 95, 99)
_ALL_ROWS = 10**9  # the preview's report keeps every row number, to say which rows it skipped


@dataclass(frozen=True)
class InspectOptions:
    """The command-line options of `lmforge data` besides the config."""

    action: str = "preview"  # preview or check
    num: int = 3  # preview: number of samples to show
    split: str = "train"  # train or eval
    json: bool = False  # machine-readable output


def mark_trained(tokenizer, input_ids: list[int], labels: list[int] | None,
                 spans: list[MediaSpan] = ()) -> str:
    """Decode `input_ids`, wrapping each run of supervised tokens in [[ ]].

    Each of `spans` (a run of one image's or video's tokens) is shown as its `text` instead.
    """
    from lmforge.data.processors import IGNORE_INDEX

    if labels is None or len(labels) != len(input_ids):
        labels = [IGNORE_INDEX] * len(input_ids)
        if not spans:
            return tokenizer.decode(input_ids, skip_special_tokens=False)
    trained = [label != IGNORE_INDEX for label in labels]
    starts = {span.start: span for span in spans}
    # Groups of pieces that share one trained state; a piece is token ids to decode or a span's text.
    groups: list[tuple[bool, list[list[int] | str]]] = []
    i = 0
    while i < len(input_ids):
        if i in starts:
            piece: list[int] | str = starts[i].text
            end = starts[i].end
        else:
            end = i + 1
            while end < len(input_ids) and end not in starts and trained[end] == trained[i]:
                end += 1
            piece = list(input_ids[i:end])
        if not groups or groups[-1][0] != trained[i]:
            groups.append((trained[i], []))
        groups[-1][1].append(piece)
        i = end
    parts = []
    for is_trained, pieces in groups:
        text = "".join(piece if isinstance(piece, str) else tokenizer.decode(piece, skip_special_tokens=False)
                       for piece in pieces)
        parts.append(f"{MARK_OPEN}{text}{MARK_CLOSE}" if is_trained else text)
    return "".join(parts)


@dataclass(frozen=True)
class MediaSpan:
    """One image's or video's run of vision tokens in a sample: input_ids[start:end], shown as `text`."""

    kind: str  # image or video
    file: str
    start: int
    end: int

    @property
    def tokens(self) -> int:
        return self.end - self.start

    @property
    def text(self) -> str:
        return f"<{self.kind}: {self.file}, {self.tokens} tokens>"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": self.file, "tokens": self.tokens}


def media_spans(input_ids: list[int], media: dict[str, list[str]], token_ids: dict[str, int | None],
                media_dir: str | None) -> list[MediaSpan]:
    """Where each of a sample's images and videos sits: the runs of its pad token, in order.

    `media`: the sample's files by kind (`images`, `videos`), in placeholder order; `token_ids`: each
    kind's pad token id. Files are named relative to `media_dir`, as the dataset writes them.
    """
    spans = []
    for kind, files in media.items():
        token = token_ids.get(kind)
        if token is None or not files:
            continue
        runs, i = [], 0
        while i < len(input_ids):
            if input_ids[i] == token:
                end = i
                while end < len(input_ids) and input_ids[end] == token:
                    end += 1
                runs.append((i, end))
                i = end
            else:
                i += 1
        # Two images side by side still have their own runs: each sits between vision start and end markers.
        for (start, end), file in zip(runs, files):
            spans.append(MediaSpan(kind[:-1], _media_name(file, media_dir), start, end))
    return sorted(spans, key=lambda span: span.start)


def _media_name(file: str, media_dir: str | None) -> str:
    """A media file as the dataset names it: relative to `media_dir` when inside it, else as given."""
    import os

    if media_dir and os.path.isabs(file) == os.path.isabs(media_dir):
        relative = os.path.relpath(file, media_dir)
        if not relative.startswith(os.pardir):
            return relative
    return file if len(file) <= 80 else file[:77] + "..."


def _media_token_ids(template, tokenizer) -> dict[str, int | None]:
    """The pad token id of each media kind of the template's plugin (None where it takes no such media)."""
    from lmforge.data.templates.mm_plugin import IMAGES, VIDEOS, get_mm_plugin

    plugin = get_mm_plugin(getattr(template, "mm_plugin", None))
    tokens = {IMAGES: plugin.image_token, VIDEOS: plugin.video_token}
    return {kind: None if token is None else tokenizer.convert_tokens_to_ids(token) for kind, token in tokens.items()}


def _split_names(args, splits) -> list[str]:
    """The aligned splits that `--split` names: train, or every eval split (one per dataset with
    eval_on_each_dataset)."""
    from lmforge.data.columns import EVAL_SPLIT, TRAIN_SPLIT

    if args.split == "train":
        return [TRAIN_SPLIT] if TRAIN_SPLIT in splits else []
    return [name for name in splits if name == EVAL_SPLIT or name.startswith(EVAL_SPLIT + "_")]


def _first_rows(splits, names: list[str], num: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in names:
        rows += list(splits[name].take(num - len(rows)))
        if len(rows) >= num:
            break
    return rows


def _preview_rows(args, cfg):
    """The first `--num` valid aligned rows of the split, and the report of reading them. Reading only the
    first rows of each dataset is fast, but rows that fail conversion leave fewer (or none), so then every
    row is read."""
    from lmforge.data.pipeline import load_aligned
    from lmforge.data.report import DropReport

    data = cfg.data
    wanted = data.max_samples
    if not data.streaming and data.val_size == 0 and (wanted is None or wanted > args.num):
        data.max_samples = args.num
        report = DropReport(max_rows=_ALL_ROWS)
        try:
            splits = load_aligned(cfg, report, cfg.finetune.stage)
        except UserError:
            splits = None  # e.g. all of the first rows are invalid: the full read below tells
        if splits is not None:
            names = _split_names(args, splits)
            rows = _first_rows(splits, names, args.num)
            if not names or len(rows) >= args.num:
                return _require(args, names, rows), report
        data.max_samples = wanted
    report = DropReport(max_rows=_ALL_ROWS)
    splits = load_aligned(cfg, report, cfg.finetune.stage)
    names = _split_names(args, splits)
    return _require(args, names, _first_rows(splits, names, args.num)), report


def _require(args, names: list[str], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not names:
        fix = "eval_dataset or val_size" if args.split == "eval" else "dataset"
        raise UserError(f"This config has no {args.split} split (set {fix}).")
    return rows


def predicts(cfg, split: str) -> bool:
    """Whether the run judges `split` as batch prediction does (`do_predict` with `predict_with_generate`)."""
    from lmforge.data.columns import TRAIN_SPLIT

    return bool(cfg.train.do_predict and cfg.train.predict_with_generate) and split != TRAIN_SPLIT


def preview(args, cfg, tokenizer, template, mm_processor=None) -> int:
    """Print (or with --json, dump) the first samples as training sees them; `mm_processor` as in `get_processor`."""
    from lmforge.data.processors import IGNORE_INDEX, get_processor

    data = cfg.data
    # Packed blocks mix samples; the preview shows each sample on its own.
    unpacked = dataclasses.replace(data, packing=False, neat_packing=False)
    rows, report = _preview_rows(args, cfg)
    predicting = predicts(cfg, "eval" if args.split == "eval" else "train")
    processor = get_processor(cfg.finetune.stage, unpacked, template, tokenizer, do_generate=predicting,
                              mm_processor=mm_processor)
    out = processor.process({key: [row[key] for row in rows] for key in rows[0]}) if rows else {"_drop": []}
    media_ids = _media_token_ids(template, tokenizer)
    media_dir = data.media_dir or data.dataset_dir
    samples = []
    for i in range(len(out["_drop"])):
        sample = {"dataset": out["_dataset"][i], "row": out["_row"][i], "dropped": out["_drop"][i] or None,
                  "warnings": [flag["reason"] for flag in out["_warn"][i]]}
        if "chosen_input_ids" in out:  # preference pairs: both answers, each with its trained text marked
            texts = {}
            for kind in ("chosen", "rejected"):
                ids, labels = list(out[f"{kind}_input_ids"][i]), list(out[f"{kind}_labels"][i])
                texts[kind] = mark_trained(tokenizer, ids, labels)
                sample[f"{kind}_tokens"] = len(ids)
                sample[f"{kind}_trained_tokens"] = sum(1 for t in labels if t != IGNORE_INDEX)
            sample.update(texts)
            sample["text"] = f"[chosen]\n{texts['chosen']}\n[rejected]\n{texts['rejected']}"
            samples.append(sample)
            continue
        ids = list(out["input_ids"][i])
        labels = list(out["labels"][i]) if "labels" in out else None
        if predicting:  # the prompt, then the reference answer it is scored against
            text = tokenizer.decode(ids, skip_special_tokens=False)
            text += f"{MARK_OPEN}{tokenizer.decode(labels, skip_special_tokens=False)}{MARK_CLOSE}" if labels else ""
            trained = 0
        elif "answer" in out:  # grpo: the prompt it samples from, then the reference its rewards may read
            text = tokenizer.decode(ids, skip_special_tokens=False)
            text += f"{MARK_OPEN}{out['answer'][i]}{MARK_CLOSE}" if out["answer"][i] is not None else ""
            trained = 0
        elif cfg.finetune.stage == "ppo":  # the prompt the policy samples its answer from: nothing is trained
            text, trained = tokenizer.decode(ids, skip_special_tokens=False), 0
        else:
            trained = sum(1 for t in labels if t != IGNORE_INDEX) if labels else len(ids)
            files = {kind: list(out[kind][i]) for kind in processor.media_columns if out[kind][i]}
            spans = media_spans(ids, files, media_ids, media_dir) if files else []
            text = mark_trained(tokenizer, ids, labels, spans)
            if spans:
                sample["media"] = [span.to_dict() for span in spans]
        sample.update(tokens=len(ids), trained_tokens=trained, text=text)
        if "kto_tags" in out:  # KTO: is this answer desirable?
            sample["kto_tag"] = bool(out["kto_tags"][i])
        samples.append(sample)
    skipped = _skipped(report, samples)
    if args.json:
        print(json.dumps({"template": template.name, "samples": samples, "skipped": skipped.to_dict()["drops"],
                          "unread_columns": report.to_dict()["unread_columns"]}, ensure_ascii=False, indent=2))
        return 0
    references = predicting or cfg.finetune.stage in ("grpo", "ppo")
    marked = "the reference answer" if references else "trained text"
    print(f"Template: {template.name}   cutoff_len: {data.cutoff_len}   ({marked} inside {MARK_OPEN} {MARK_CLOSE})")
    for n, sample in enumerate(samples, 1):
        if "chosen" in sample:
            status = (f"chosen {sample['chosen_tokens']} tokens, {sample['chosen_trained_tokens']} trained; rejected "
                      f"{sample['rejected_tokens']} tokens, {sample['rejected_trained_tokens']} trained")
        else:
            status = f"{sample['tokens']} tokens" + ("" if references else f", {sample['trained_tokens']} trained")
        if "kto_tag" in sample:
            status += ", desirable" if sample["kto_tag"] else ", undesirable"
        if sample["dropped"]:
            status = f"dropped: {sample['dropped']}"
        if sample["warnings"]:
            status += f"; warning: {', '.join(sample['warnings'])}"
        print(f"\n--- sample {n}: {sample['dataset']} row {sample['row']} ({status}) ---")
        print(sample["text"])
    print("\n" + "\n".join(_preview_summary(samples, skipped, report)))
    return 0


def _skipped(report, samples: list[dict[str, Any]]):
    """The rows dropped when read that lie before the last sample shown of their dataset: the ones the
    preview passed over (later rows were not reached, so they are not "skipped")."""
    from lmforge.data.reasons import CONVERT
    from lmforge.data.report import DropReport

    last: dict[str, int] = {}
    for sample in samples:
        last[sample["dataset"]] = max(last.get(sample["dataset"], -1), sample["row"])
    skipped = DropReport(max_rows=5)
    for entry in report.entries(stage=CONVERT):
        rows = [row for row in entry.rows if row < last.get(entry.dataset, -1)]
        if rows:
            skipped.record(entry.dataset, entry.reason, rows, stage=CONVERT)
    return skipped


def _preview_summary(samples: list[dict[str, Any]], skipped, report) -> list[str]:
    warned: dict[str, None] = {}
    dropped: dict[str, None] = {}
    for sample in samples:
        warned.update(dict.fromkeys(sample["warnings"]))
        if sample["dropped"]:
            dropped[sample["dropped"]] = None
    n_dropped = sum(1 for s in samples if s["dropped"])
    n_warned = sum(1 for s in samples if s["warnings"])
    kept = f"{len(samples) - n_dropped} kept ({n_warned} with warnings{': ' + ', '.join(warned) if warned else ''})"
    lines = [f"Summary: {_rows(len(samples), 'sample')} shown: {kept}, {n_dropped} dropped"
             f"{' (' + ', '.join(dropped) + ')' if dropped else ''}."]
    if skipped:
        lines.append(f"Skipped {_rows(skipped.count(), 'row')} before them, dropped when read:")
    else:
        lines.append("No row before them was skipped.")
    lines += [f"  {line}" for line in skipped.drop_lines()]
    unread = report.unread_columns()
    if unread:
        lines.append("Columns not read:")
        lines += [f"  {column.message}" for column in unread]
    lines.append("`lmforge data check` checks every row and explains each reason.")
    return lines


def _rows(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def length_stats(
    lengths: list[int], cutoff_len: int, overlong: str = "truncated", limit: int | None = None
) -> dict[str, Any]:
    """Length percentiles and how many samples are longer than `limit` (default cutoff_len).

    `overlong` says what happens to them: "truncated" (then how many tokens are cut), "dropped"
    (drop_overlong) or "split" (pt packing spreads them over blocks); only truncation cuts tokens.
    """
    limit = cutoff_len if limit is None else limit
    values = sorted(lengths)
    over = [v - limit for v in values if v > limit]
    cut = over if overlong == "truncated" else []
    return {
        "samples": len(values),
        "min": values[0] if values else 0,
        **{f"p{q}": _percentile(values, q) for q in PERCENTILES},
        "max": values[-1] if values else 0,
        "limit": limit,
        "over_cutoff": len(over),
        "overlong": overlong,
        "truncated_tokens_total": sum(cut),
        "truncated_tokens_max": max(cut) if cut else 0,
    }


def _overlong(cfg) -> tuple[str, int]:
    """What the run does with samples longer than its limit, and that limit in tokens."""
    data = cfg.data
    if cfg.finetune.stage == "pt":
        # pt ignores drop_overlong; packing (its default) concatenates the texts, so nothing is cut.
        return ("truncated" if data.packing is False else "split"), data.cutoff_len
    # Packed sft samples fill at most cutoff_len - 1 tokens (every block keeps one padding slot).
    limit = data.cutoff_len - 1 if data.packing or data.neat_packing else data.cutoff_len
    return ("dropped" if data.drop_overlong else "truncated"), limit


def check(args, cfg, tokenizer, template, mm_processor=None) -> int:
    """Validate every row and print the report; exit code 1 when a row is dropped."""
    from lmforge.data.pipeline import load_aligned, tokenize_split
    from lmforge.data.processors import get_processor
    from lmforge.data.reasons import CONVERT, PREDICT, TOKENIZE, explain
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
        predicting = predicts(cfg, name)
        measure = get_processor(cfg.finetune.stage, full, template, tokenizer, do_generate=predicting,
                                mm_processor=mm_processor)
        measured = dataset.map(measure, batched=True, remove_columns=dataset.column_names, features=measure.features,
                               load_from_cache_file=False, desc=f"Measuring {name}")
        # A prediction sample is its prompt plus the reference answer (its `labels`).
        if "chosen_input_ids" in measured.column_names:  # a pair is as long as its longer sequence
            firsts = [max(len(c), len(r)) for c, r in zip(measured["chosen_input_ids"], measured["rejected_input_ids"])]
        else:
            firsts = [len(ids) for ids in measured["input_ids"]]
        extra = measured["labels"] if predicting else [()] * len(measured)
        lengths = [first + len(more) for first, more, drop in zip(firsts, extra, measured["_drop"]) if not drop]
        processor = get_processor(cfg.finetune.stage, data, template, tokenizer, do_generate=predicting,
                                  mm_processor=mm_processor)
        tokenized, dropped_tokens = tokenize_split(dataset, data, processor, report, name,
                                                   stage=PREDICT if predicting else TOKENIZE)
        result["splits"][name] = {"rows": len(dataset), "samples": len(tokenized),
                                  "lengths": length_stats(lengths, data.cutoff_len,
                                                          *(("truncated", data.cutoff_len) if predicting
                                                            else _overlong(cfg))),
                                  "packing_dropped_tokens": dropped_tokens}
    summary = report.to_dict()
    seen = {entry["dataset"]: entry["count"] for entry in summary["seen"] if entry["stage"] == CONVERT}
    result["datasets"] = {name: {"rows": count, "dropped": report.count(name), "warnings": report.warned(name)}
                          for name, count in seen.items()}
    result["drops"] = summary["drops"]
    result["dropped_total"] = report.count()
    result["warnings"] = summary["warnings"]
    result["warnings_total"] = report.warned()
    result["unread_columns"] = summary["unread_columns"]
    result["reasons"] = {code: explain(code) for code in report.reasons()}
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        print(render_check(result, report))
    return 1 if result["dropped_total"] else 0


def render_check(result: dict[str, Any], report) -> str:
    """The human-readable `data check` report."""
    lines = [f"Template {result['template']}, stage {result['stage']}, cutoff_len {result['cutoff_len']}", "", "Rows:"]
    for name, info in result["datasets"].items():
        lines.append(f"  {name}: {info['rows']} loaded, {info['rows'] - info['dropped']} kept, {info['dropped']} dropped")
    lines += ["", "Dropped rows:"]
    lines += [f"  {line}" for line in report.drop_lines()] or ["  none"]
    lines += ["", "Warnings:"]
    lines += [f"  {line}" for line in report.warning_lines()] or ["  none"]
    if result["reasons"]:
        lines += ["", "What the reasons mean (the table in data/README.md):"]
        lines += [f"  {text}" for text in result["reasons"].values()]
    for name, split in result["splits"].items():
        stats = split["lengths"]
        lines += ["", f"Token lengths ({name}, {stats['samples']} samples, before truncation):"]
        lines.append("  " + ", ".join(f"{k} {stats[k]}" for k in ("min", *(f"p{q}" for q in PERCENTILES), "max")))
        limit = f"cutoff_len {result['cutoff_len']}"
        if stats["limit"] != result["cutoff_len"]:
            limit = f"{stats['limit']} tokens (cutoff_len {result['cutoff_len']} less the padding slot of packing)"
        if not stats["over_cutoff"]:
            lines.append(f"  no sample exceeds {limit}")
        elif stats["overlong"] == "dropped":
            lines.append(f"  {stats['over_cutoff']} samples exceed {limit} and are dropped (drop_overlong)")
        elif stats["overlong"] == "split":
            lines.append(f"  {stats['over_cutoff']} samples exceed {limit}; packing splits them across blocks, "
                         "so no tokens are cut")
        else:
            lines.append(
                f"  {stats['over_cutoff']} samples exceed {limit} and get truncated: "
                f"{stats['truncated_tokens_total']} tokens cut in all, at most {stats['truncated_tokens_max']} from one sample"
            )
        if split["packing_dropped_tokens"]:
            lines.append(f"  packing leaves out {split['packing_dropped_tokens']} tokens after the last full block")
        lines.append(f"  {split['samples']} {name} samples after tokenization")
    return "\n".join(lines)
