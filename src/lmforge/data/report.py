"""Counting the rows that are dropped or look wrong, and the columns nobody reads, instead of losing them silently.

Every stage that can reject a row (format conversion, tokenization, packing) keeps the row and
writes a short reason key into its `_drop` column ("" for a valid row), next to `_dataset` (the
dataset name) and `_row` (its 0-based index in the source file). A processor may also flag a row it
keeps (an empty answer) in `_warn`, a list of {dataset, row, reason}: a list, so that a packed block
can carry the flags of all its samples. `collect_drops` counts both into a `DropReport` and returns
only the valid rows, so users see "dataset X: 2 rows dropped, invalid_role_order (rows 3, 17)"
rather than LLaMA-Factory's "Cannot find valid samples". The report also holds the columns of a
file that no `columns` mapping reads (`UnreadColumn`, found by `mapping.py`).

What each reason means is in `reasons.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmforge.data.columns import META_COLUMNS, WARN_COLUMN

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

_BATCH_ROWS = 65536
UNREAD_COLUMN = "unread_column"  # the reason code of an `UnreadColumn` (a column, not a row)


@dataclass
class DropEntry:
    """Rows of one dataset dropped at one stage for one reason: how many, and the first row numbers."""

    dataset: str
    stage: str
    reason: str
    count: int = 0
    rows: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class UnreadColumn:
    """A column of a dataset's file that no `columns` key of its entry reads; `why` says so with the fix."""

    dataset: str
    column: str
    source: str
    why: str

    @property
    def message(self) -> str:
        return f"{self.dataset}: column '{self.column}' of {self.source} is not read ({self.why})"


def _add(entries: dict[tuple[str, str, str], DropEntry], max_rows: int, dataset: str, reason: str,
         rows: list[int], stage: str, count: int | None) -> None:
    entry = entries.setdefault((dataset, stage, reason), DropEntry(dataset, stage, reason))
    entry.count += len(rows) if count is None else count
    room = max_rows - len(entry.rows)
    if room > 0:
        entry.rows.extend(int(r) for r in rows[:room])


class DropReport:
    """Counts of dropped rows, and of kept rows with warnings, by (dataset, stage, reason), keeping the first
    `max_rows` row numbers of each; plus the unread columns of each dataset."""

    def __init__(self, max_rows: int = 5) -> None:
        self.max_rows = max_rows
        self._entries: dict[tuple[str, str, str], DropEntry] = {}
        self._warnings: dict[tuple[str, str, str], DropEntry] = {}
        self._seen: dict[tuple[str, str], int] = {}
        self._unread: dict[tuple[str, str], UnreadColumn] = {}

    def record(
        self, dataset: str, reason: str, row: int | Iterable[int], stage: str = "convert", count: int | None = None
    ) -> None:
        """Count dropped rows: one row number, or several (`count` defaults to how many are given)."""
        rows = [row] if isinstance(row, int) else list(row)
        _add(self._entries, self.max_rows, dataset, reason, rows, stage, count)

    def warn(
        self, dataset: str, reason: str, row: int | Iterable[int], stage: str = "tokenize", count: int | None = None
    ) -> None:
        """Count kept rows that look wrong (an empty answer), as `record` counts dropped ones."""
        rows = [row] if isinstance(row, int) else list(row)
        _add(self._warnings, self.max_rows, dataset, reason, rows, stage, count)

    def add_unread(self, unread: UnreadColumn) -> None:
        """Note a column no mapping reads (once per dataset and column, however often the dataset is loaded)."""
        self._unread.setdefault((unread.dataset, unread.column), unread)

    def unread_columns(self, dataset: str | None = None) -> list[UnreadColumn]:
        """The unread columns, in the order they were found, optionally of one dataset."""
        return [u for u in self._unread.values() if dataset is None or u.dataset == dataset]

    def warnings(self, dataset: str | None = None, stage: str | None = None) -> list[DropEntry]:
        """The warning entries (kept rows), optionally for one dataset and/or stage."""
        return [
            entry
            for entry in self._warnings.values()
            if (dataset is None or entry.dataset == dataset) and (stage is None or entry.stage == stage)
        ]

    def warned(self, dataset: str | None = None, reason: str | None = None, stage: str | None = None) -> int:
        """How many kept rows have a warning (a row with two warnings counts under each)."""
        return sum(e.count for e in self.warnings(dataset, stage) if reason is None or e.reason == reason)

    def record_seen(self, dataset: str, stage: str, count: int) -> None:
        """Count rows that a stage examined (valid or not), so summaries can say "2 of 5"."""
        self._seen[(dataset, stage)] = self._seen.get((dataset, stage), 0) + count

    def merge(self, other: DropReport) -> DropReport:
        """Add `other`'s counts into this report (row numbers are kept up to `max_rows`); returns self."""
        for entry in other.entries():
            self.record(entry.dataset, entry.reason, entry.rows, stage=entry.stage, count=entry.count)
        for entry in other.warnings():
            self.warn(entry.dataset, entry.reason, entry.rows, stage=entry.stage, count=entry.count)
        for (dataset, stage), count in other._seen.items():
            self.record_seen(dataset, stage, count)
        for unread in other.unread_columns():
            self.add_unread(unread)
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

    def describe(self, dataset: str, stage: str | None = None, warnings: bool = False) -> str:
        """One line of reasons for a dataset: "invalid_role_order: 1 row (row 3); odd_message_count: ..."."""
        return describe_entries(self.warnings(dataset, stage) if warnings else self.entries(dataset, stage))

    def summary_lines(self) -> list[str]:
        """Human-readable lines: `drop_lines`, then `warning_lines`."""
        return self.drop_lines() + self.warning_lines()

    def drop_lines(self) -> list[str]:
        """One line per (dataset, stage) with drops: "chat [convert]: dropped 2 of 6 rows: <reasons>"."""
        lines = []
        for (dataset, stage), entries in _groups(self._entries.values()).items():
            dropped = sum(e.count for e in entries)
            seen = self.seen(dataset, stage)
            rows = f"{dropped} of {seen} rows" if seen else f"{dropped} row" if dropped == 1 else f"{dropped} rows"
            lines.append(f"{dataset} [{stage}]: dropped {rows}: {describe_entries(entries)}")
        return lines

    def warning_lines(self) -> list[str]:
        """One line per (dataset, stage) with flagged kept rows, then one per unread column."""
        lines = [
            f"{dataset} [{stage}]: kept rows with warnings: {describe_entries(entries)}"
            for (dataset, stage), entries in _groups(self._warnings.values()).items()
        ]
        return lines + [unread.message for unread in self._unread.values()]

    def reasons(self) -> list[str]:
        """Every reason code in the report (drops, warnings, unread columns), in the order first met."""
        codes = {e.reason: None for e in (*self._entries.values(), *self._warnings.values())}
        if self._unread:
            codes[UNREAD_COLUMN] = None
        return list(codes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form: {"total": N, "drops": [{dataset, stage, reason, count, rows}], "seen": [...],
        "warnings": [like drops], "unread_columns": [{dataset, column, source, message}]}."""
        return {
            "total": self.count(),
            "drops": [_entry_dict(e) for e in self._entries.values()],
            "seen": [{"dataset": d, "stage": s, "count": c} for (d, s), c in self._seen.items()],
            "warnings": [_entry_dict(e) for e in self._warnings.values()],
            "unread_columns": [
                {"dataset": u.dataset, "column": u.column, "source": u.source, "message": u.message}
                for u in self._unread.values()
            ],
        }

    def __len__(self) -> int:
        return self.count()

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __repr__(self) -> str:
        return f"DropReport({self.to_dict()['drops']})"


def describe_entries(entries: Iterable[DropEntry]) -> str:
    """"invalid_role_order: 1 row (row 3); odd_message_count: 2 rows (rows 4, 9)" for the given entries."""
    parts = []
    # By row number: a packed block records its samples' flags in packing order.
    for entry in sorted(entries, key=lambda e: min(e.rows, default=-1)):
        noun = "row" if entry.count == 1 else "rows"
        shown = ", ".join(str(r) for r in sorted(entry.rows))
        more = ", ..." if entry.count > len(entry.rows) else ""
        parts.append(f"{entry.reason}: {entry.count} {noun} ({noun} {shown}{more})")
    return "; ".join(parts)


def _groups(entries: Iterable[DropEntry]) -> dict[tuple[str, str], list[DropEntry]]:
    groups: dict[tuple[str, str], list[DropEntry]] = {}
    for entry in entries:
        groups.setdefault((entry.dataset, entry.stage), []).append(entry)
    return groups


def _entry_dict(entry: DropEntry) -> dict[str, Any]:
    return {"dataset": entry.dataset, "stage": entry.stage, "reason": entry.reason, "count": entry.count,
            "rows": sorted(entry.rows)}


def collect_drops(
    dataset: Dataset | IterableDataset, report: DropReport, stage: str, count_seen: bool = True
) -> Dataset | IterableDataset:
    """Count the `_drop` reasons (and the `_warn` flags of kept rows) of `dataset` into `report` and return
    only its valid rows.

    A map-style dataset is scanned once (only the meta columns are read) and filtered with an
    index mapping, so rows are not copied. An `IterableDataset` is filtered lazily and counted as rows
    pass; each dropped source row is counted once even over several epochs, and rows seen are not
    counted (the stream has no length). Counts made inside DataLoader worker processes stay there.
    `count_seen=False` leaves the rows seen to the caller (packed rows are blocks, not source rows).
    """
    from datasets import IterableDataset

    if isinstance(dataset, IterableDataset):
        return dataset.filter(_StreamingDropCounter(report, stage))
    if "_drop" not in dataset.column_names:
        return dataset

    import numpy as np
    import pyarrow.compute as pc

    columns = [c for c in (*META_COLUMNS, WARN_COLUMN) if c in dataset.column_names]
    meta = dataset.select_columns(columns).with_format("arrow")
    dropped_at: list[np.ndarray] = []
    for start in range(0, len(meta), _BATCH_ROWS):
        batch = meta[start : start + _BATCH_ROWS]
        drops = batch.column("_drop")
        names = batch.column("_dataset") if "_dataset" in columns else None
        if count_seen:
            _record_seen(report, stage, names, len(batch))
        mask = pc.fill_null(pc.not_equal(drops, ""), False)
        if WARN_COLUMN in columns:
            _record_warnings(report, stage, batch.column(WARN_COLUMN).filter(pc.invert(mask)))
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


def _record_warnings(report: DropReport, stage: str, flags) -> None:
    """Count the {dataset, row, reason} flags of a `_warn` column (of kept rows only)."""
    import pyarrow.compute as pc

    flat = pc.list_flatten(flags)
    for flag in flat.to_pylist() if len(flat) else []:
        report.warn(flag["dataset"] or "", flag["reason"], int(flag["row"]), stage=stage)


def count_rows_seen(dataset: Dataset, report: DropReport, stage: str) -> None:
    """Count the rows of a map-style `dataset` as seen at `stage`, by their `_dataset`."""
    if "_dataset" not in dataset.column_names:
        report.record_seen("", stage, len(dataset))
        return
    names = dataset.select_columns(["_dataset"]).with_format("arrow")
    for start in range(0, len(names), _BATCH_ROWS):
        batch = names[start : start + _BATCH_ROWS]
        _record_seen(report, stage, batch.column("_dataset"), len(batch))


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
            for flag in example.get(WARN_COLUMN) or []:
                if self._first_time(flag["dataset"] or "", int(flag["row"]), flag["reason"]):
                    self.report.warn(flag["dataset"] or "", flag["reason"], int(flag["row"]), stage=self.stage)
            return True
        dataset = example.get("_dataset") or ""
        row = example.get("_row")
        row = -1 if row is None else int(row)
        if self._first_time(dataset, row, reason):
            self.report.record(dataset, reason, row, stage=self.stage)
        return False

    def _first_time(self, dataset: str, row: int, reason: str) -> bool:
        # Only flagged rows are remembered (a set of every row would grow with the stream).
        key = (dataset, row, reason)
        if row >= 0 and key in self._counted:
            return False
        self._counted.add(key)
        return True
