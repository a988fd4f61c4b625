"""Counting the rows that are dropped, instead of losing them silently.

Every stage that can reject a row (format conversion, tokenization, packing) keeps the row and
writes a short reason key into its `_drop` column ("" for a valid row), next to `_dataset` (the
dataset name) and `_row` (its 0-based index in the source file). `collect_drops` then counts those
reasons into a `DropReport` and returns only the valid rows, so users see "dataset X: 2 rows dropped,
invalid_role_order (rows 3, 17)" rather than LLaMA-Factory's "Cannot find valid samples".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmforge.data.columns import META_COLUMNS

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

_BATCH_ROWS = 65536


@dataclass
class DropEntry:
    """Rows of one dataset dropped at one stage for one reason: how many, and the first row numbers."""

    dataset: str
    stage: str
    reason: str
    count: int = 0
    rows: list[int] = field(default_factory=list)


class DropReport:
    """Counts of dropped rows by (dataset, stage, reason), keeping the first `max_rows` row numbers of each."""

    def __init__(self, max_rows: int = 5) -> None:
        self.max_rows = max_rows
        self._entries: dict[tuple[str, str, str], DropEntry] = {}
        self._seen: dict[tuple[str, str], int] = {}

    def record(
        self, dataset: str, reason: str, row: int | Iterable[int], stage: str = "convert", count: int | None = None
    ) -> None:
        """Count dropped rows: one row number, or several (`count` defaults to how many are given)."""
        rows = [row] if isinstance(row, int) else list(row)
        entry = self._entries.setdefault((dataset, stage, reason), DropEntry(dataset, stage, reason))
        entry.count += len(rows) if count is None else count
        room = self.max_rows - len(entry.rows)
        if room > 0:
            entry.rows.extend(int(r) for r in rows[:room])

    def record_seen(self, dataset: str, stage: str, count: int) -> None:
        """Count rows that a stage examined (valid or not), so summaries can say "2 of 5"."""
        self._seen[(dataset, stage)] = self._seen.get((dataset, stage), 0) + count

    def merge(self, other: DropReport) -> DropReport:
        """Add `other`'s counts into this report (row numbers are kept up to `max_rows`); returns self."""
        for entry in other.entries():
            self.record(entry.dataset, entry.reason, entry.rows, stage=entry.stage, count=entry.count)
        for (dataset, stage), count in other._seen.items():
            self.record_seen(dataset, stage, count)
        return self

    def entries(self, dataset: str | None = None, stage: str | None = None) -> list[DropEntry]:
        """The entries, in the order they were first recorded, optionally for one dataset and/or stage."""
        return [
            entry
            for entry in self._entries.values()
            if (dataset is None or entry.dataset == dataset) and (stage is None or entry.stage == stage)
        ]

    def count(self, dataset: str | None = None, reason: str | None = None, stage: str | None = None) -> int:
        """How many rows were dropped, optionally filtered by dataset, reason and stage."""
        return sum(e.count for e in self.entries(dataset, stage) if reason is None or e.reason == reason)

    def rows(self, dataset: str, reason: str, stage: str | None = None) -> list[int]:
        """The first row numbers dropped for `reason` in `dataset`."""
        found: list[int] = []
        for entry in self.entries(dataset, stage):
            if entry.reason == reason:
                found.extend(entry.rows)
        return found[: self.max_rows]

    def seen(self, dataset: str, stage: str) -> int:
        """How many rows of `dataset` the stage examined (0 when it did not say)."""
        return self._seen.get((dataset, stage), 0)

    def describe(self, dataset: str, stage: str | None = None) -> str:
        """One line of reasons for a dataset: "invalid_role_order: 1 row (row 3); odd_message_count: ..."."""
        parts = []
        for entry in self.entries(dataset, stage):
            noun = "row" if entry.count == 1 else "rows"
            shown = ", ".join(str(r) for r in entry.rows)
            more = ", ..." if entry.count > len(entry.rows) else ""
            parts.append(f"{entry.reason}: {entry.count} {noun} ({noun} {shown}{more})")
        return "; ".join(parts)

    def summary_lines(self) -> list[str]:
        """Human-readable lines, one per (dataset, stage) with drops."""
        lines = []
        groups: dict[tuple[str, str], None] = {}
        for entry in self._entries.values():
            groups.setdefault((entry.dataset, entry.stage), None)
        for dataset, stage in groups:
            dropped = self.count(dataset, stage=stage)
            seen = self.seen(dataset, stage)
            of = f" of {seen}" if seen else ""
            lines.append(f"{dataset} [{stage}]: dropped {dropped}{of} rows: {self.describe(dataset, stage)}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form: {"total": N, "drops": [{dataset, stage, reason, count, rows}], "seen": [...]}."""
        return {
            "total": self.count(),
            "drops": [
                {"dataset": e.dataset, "stage": e.stage, "reason": e.reason, "count": e.count, "rows": list(e.rows)}
                for e in self._entries.values()
            ],
            "seen": [{"dataset": d, "stage": s, "count": c} for (d, s), c in self._seen.items()],
        }

    def __len__(self) -> int:
        return self.count()

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __repr__(self) -> str:
        return f"DropReport({self.to_dict()['drops']})"


def collect_drops(dataset: Dataset | IterableDataset, report: DropReport, stage: str) -> Dataset | IterableDataset:
    """Count the `_drop` reasons of `dataset` into `report` and return only its valid rows.

    A map-style dataset is scanned once (only the three meta columns are read) and filtered with an
    index mapping, so rows are not copied. An `IterableDataset` is filtered lazily and counted as rows
    pass; each dropped source row is counted once even over several epochs, and rows seen are not
    counted (the stream has no length). Counts made inside DataLoader worker processes stay there.
    """
    from datasets import IterableDataset

    if isinstance(dataset, IterableDataset):
        return dataset.filter(_StreamingDropCounter(report, stage))
    if "_drop" not in dataset.column_names:
        return dataset

    import numpy as np
    import pyarrow.compute as pc

    columns = [c for c in META_COLUMNS if c in dataset.column_names]
    meta = dataset.select_columns(columns).with_format("arrow")
    dropped_at: list[np.ndarray] = []
    for start in range(0, len(meta), _BATCH_ROWS):
        batch = meta[start : start + _BATCH_ROWS]
        drops = batch.column("_drop")
        names = batch.column("_dataset") if "_dataset" in columns else None
        _record_seen(report, stage, names, len(batch))
        mask = pc.fill_null(pc.not_equal(drops, ""), False)
        positions = pc.indices_nonzero(mask).to_numpy()
        if len(positions) == 0:
            continue
        dropped_at.append(positions + start)
        reasons = drops.take(positions).to_pylist()
        sources = names.take(positions).to_pylist() if names is not None else [""] * len(positions)
        rows = batch.column("_row").take(positions).to_pylist() if "_row" in columns else (positions + start).tolist()
        for reason, source, row in zip(reasons, sources, rows, strict=True):
            report.record(source or "", reason, -1 if row is None else int(row), stage=stage)
    if not dropped_at:
        return dataset
    keep = np.ones(len(dataset), dtype=bool)
    keep[np.concatenate(dropped_at)] = False
    return dataset.select(np.flatnonzero(keep))


def _record_seen(report: DropReport, stage: str, names, total: int) -> None:
    if names is None:
        report.record_seen("", stage, total)
        return
    import pyarrow.compute as pc

    for item in pc.value_counts(names).to_pylist():
        report.record_seen(item["values"] or "", stage, int(item["counts"]))


class _StreamingDropCounter:
    """The predicate of a lazy streaming filter that records each rejected row as it passes."""

    def __init__(self, report: DropReport, stage: str) -> None:
        self.report = report
        self.stage = stage
        self._counted: set[tuple[str, int, str]] = set()

    def __call__(self, example: dict[str, Any]) -> bool:
        reason = example.get("_drop") or ""
        if not reason:
            return True
        dataset = example.get("_dataset") or ""
        row = example.get("_row")
        row = -1 if row is None else int(row)
        # Only dropped rows are remembered (a set of every row would grow with the stream).
        key = (dataset, row, reason)
        if row < 0 or key not in self._counted:
            self._counted.add(key)
            self.report.record(dataset, reason, row, stage=self.stage)
        return False
