"""What the board shows of its jobs, read from their files on every refresh: status, progress, log, loss, results."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from lmforge.webui import locales
from lmforge.webui.jobs import Job, JobManager, loss_points, read_progress


def status_text(job: Job | None, lang: str) -> str:
    """The job's heading, its state in words and, for a failed job, lmforge's one-line error."""
    if job is None:
        return locales.message(lang, "no_job")
    # Gradio's Markdown sanitizes HTML: the texts go in as they are, so that they read as the log wrote them.
    lines = [f"**{locales.message(lang, 'job_heading', id=job.id, kind=_command(job), output=job.output_dir)}**",
             locales.message(lang, f"status_{job.status}", code=job.exit_code)]
    if job.status in ("failed", "lost", "aborted"):
        error = job.error_line()
        if error and not error.startswith("lmforge train: error: Stopped by SIGTERM"):
            lines.append(f"❌ {error}")
        elif error:
            lines.append(error)
    return "\n\n".join(lines)


def _command(job: Job) -> str:
    """The lmforge command the job runs (train, eval, export)."""
    return job.command[3] if len(job.command) > 3 else job.kind


def progress_html(job: Job | None, lang: str) -> str:
    """A progress bar with step, total, elapsed and remaining time, from the run's trainer_log.jsonl."""
    record = read_progress(job.output_dir) if job is not None and job.kind == "train" else None
    if not record or not record.get("total_steps"):
        return ""
    current, total = int(record.get("current_steps", 0)), int(record["total_steps"])
    percent = round(100 * current / total, 1) if total else 0.0
    label = locales.message(lang, "progress_label", current=current, total=total,
                            elapsed=record.get("elapsed_time", "?"), remaining=record.get("remaining_time", "?"))
    return (f'<div class="lmforge-progress" data-current="{current}" data-total="{total}">'
            f'<progress max="{total}" value="{current}" style="width:100%"></progress>'
            f'<div>{html.escape(label)} ({percent}%)</div></div>')


def train_view(jobs: JobManager, lang: str) -> tuple:
    job = jobs.latest(("train",))
    points = loss_points(job.output_dir) if job is not None else []
    frame = pd.DataFrame(points, columns=["step", "loss"])
    summary = ""
    if points:
        summary = f"{len(points)} logged steps · last loss {points[-1][1]:.4f} (step {points[-1][0]})"
    return (status_text(job, lang), progress_html(job, lang), job.log_tail() if job else "", frame, summary)


def predict_view(jobs: JobManager, lang: str) -> tuple:
    job = jobs.latest(("predict",))
    results = ""
    if job is not None:
        folder = Path(job.output_dir)
        found = [p for p in (folder / "all_results.json", folder / "results.json") if p.is_file()]
        if job.status == "finished" and found:
            results = json.dumps(_scores(json.loads(found[0].read_text(encoding="utf-8"))), indent=2)
        elif job.active:
            results = locales.message(lang, "results_pending")
    return status_text(job, lang), results, job.log_tail() if job else ""


def _scores(results: dict) -> dict:
    """The scores of a results file: a benchmark's `_scores` (its file also holds every answer chosen), or the
    prediction's metrics."""
    return results.get("_scores") or {key: value for key, value in results.items() if not isinstance(value, dict)}


def export_view(jobs: JobManager, lang: str) -> tuple:
    job = jobs.latest(("export",))
    files = ""
    if job is not None and job.status == "finished":
        folder = Path(job.output_dir)
        if not folder.is_absolute():
            folder = Path(job.cwd) / folder
        listed = sorted(p for p in folder.rglob("*") if p.is_file())
        files = "\n".join(f"{p.relative_to(folder)}  ({_size(p.stat().st_size)})" for p in listed)
    return status_text(job, lang), files, job.log_tail() if job else ""


def jobs_view(jobs: JobManager) -> tuple:
    import gradio as gr

    every = jobs.jobs()
    rows = [[job.id, job.kind, job.status, "" if job.exit_code is None else job.exit_code, job.output_dir]
            for job in every]
    frame = pd.DataFrame(rows, columns=["id", "kind", "status", "exit", "output"])
    queued = [job.id for job in every if job.status == "queued"]
    return frame, gr.update(choices=queued, value=queued[0] if queued else None)


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)
