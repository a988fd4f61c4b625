"""LLaMA Board's jobs: lmforge commands run as child processes, one at a time, that outlive the page.

A job is a folder `llamaboard_cache/jobs/<id>/` holding `job.json` (what runs, where it stands),
`job.log` (the command's console output) and, for an export, the YAML it runs; a training or
prediction runs `<output_dir>/training_args.yaml`, written there as LLaMA-Factory does. The board
only reads these files, so a reloaded page, a second browser or a restarted `lmforge webui` sees the
same jobs. `runner.py` runs each job in a process group of its own: Abort sends SIGTERM to the whole
group, and a training saves a checkpoint before it stops (the same Start resumes from it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from lmforge.utils.atomic import write_json_atomic, write_text_atomic

ACTIVE = ("queued", "starting", "running")
LOG_TAIL_LINES = 60


@dataclass
class Job:
    id: str
    kind: str  # train, predict, export
    command: list[str]
    config: str  # the YAML the command runs
    output_dir: str
    log: str
    cwd: str
    env: dict = field(default_factory=dict)  # added to the board's environment (e.g. FORCE_TORCHRUN)
    status: str = "queued"  # queued, starting, running, finished, failed, aborted, cancelled, lost
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    pid: int | None = None
    runner_pid: int | None = None

    @property
    def folder(self) -> Path:
        return Path(self.log).parent

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with open(self.log, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 64_000))
                text = handle.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        # Progress bars redraw with carriage returns: keep the last state of each line.
        shown = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
        return "\n".join(shown[-lines:])

    def error_line(self) -> str | None:
        """lmforge's one-line error, when the command printed one."""
        for line in reversed(self.log_tail(200).splitlines()):
            if line.startswith("lmforge ") and ": error: " in line:
                return line
        return None


def _alive(pid: int | None) -> bool:
    """Whether `pid` is a live job runner (not a zombie, not a reused pid)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"lmforge.webui.runner" in handle.read()
    except OSError:
        return False


class JobManager:
    """Submit, queue, start, abort and list the jobs under `cache_dir`; `cwd` is where the commands run."""

    def __init__(self, cache_dir: Path, cwd: Path) -> None:
        self.jobs_dir = Path(cache_dir) / "jobs"
        self.cwd = Path(cwd)
        self._lock = threading.RLock()
        self._children: dict[str, subprocess.Popen] = {}  # runners started by this process, reaped by poll()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading -----------------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        """Every job, newest first, with the state of the ones whose runner is gone brought up to date."""
        found = []
        for path in sorted(self.jobs_dir.glob("*/job.json")):
            job = self._read(path)
            if job is not None:
                found.append(job)
        return sorted(found, key=lambda job: job.created, reverse=True)

    def get(self, job_id: str) -> Job | None:
        return self._read(self.jobs_dir / job_id / "job.json")

    def latest(self, kinds: tuple[str, ...]) -> Job | None:
        """The running job of one of `kinds`, else the newest one that was not cancelled (queued ones are listed
        with every job, not shown as the tab's job)."""
        jobs = [job for job in self.jobs() if job.kind in kinds]
        running = [job for job in jobs if job.status in ("starting", "running")]
        shown = [job for job in jobs if job.status not in ("queued", "cancelled")]
        return (running or shown or jobs or [None])[0]

    def _read(self, path: Path) -> Job | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            job = Job(**{key: data[key] for key in Job.__dataclass_fields__ if key in data})
        except (OSError, ValueError, TypeError, KeyError):
            return None
        child = self._children.get(job.id)
        if child is not None and child.poll() is not None:
            self._children.pop(job.id, None)
        if job.status in ("starting", "running") and not _alive(job.runner_pid):
            # The runner records every end; a runner that is gone without one was killed (or the machine
            # restarted). Read the file once more: the runner may have written its end just now.
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("status") in ("starting", "running"):
                data["status"] = "lost"
                write_json_atomic(path, data)
            job = Job(**{key: data[key] for key in Job.__dataclass_fields__ if key in data})
        return job

    # -- changing ----------------------------------------------------------------------------------
    def submit(self, kind: str, command: str, settings: dict, output_dir: str, env: dict | None = None) -> Job:
        """Queue `lmforge COMMAND` on `settings` (written as YAML) with `env` added to the environment; start it at
        once when nothing runs."""
        with self._lock:
            job_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid() % 1000:03d}{int(time.time() * 1000) % 1000:03d}"
            folder = self.jobs_dir / job_id
            folder.mkdir(parents=True)
            text = yaml.safe_dump(settings, sort_keys=False, allow_unicode=True)
            if command != "train":  # export and eval refuse a folder that is not empty: the YAML stays here
                config = folder / f"{command}_args.yaml"
            else:
                config = Path(output_dir) / "training_args.yaml"
                if not config.is_absolute():
                    config = self.cwd / config
                config.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(config, text)
            job = Job(id=job_id, kind=kind, command=[sys.executable, "-m", "lmforge", command, str(config)],
                      config=str(config), output_dir=str(output_dir), log=str(folder / "job.log"), cwd=str(self.cwd),
                      env=dict(env or {}))
            self._write(job)
        self.schedule()
        return self.get(job_id) or job

    def schedule(self) -> None:
        """Start the oldest queued job when no job is running."""
        with self._lock:
            jobs = self.jobs()
            if any(job.status in ("starting", "running") for job in jobs):
                return
            queued = sorted((job for job in jobs if job.status == "queued"), key=lambda job: job.created)
            if queued:
                self._start(queued[0])

    def _start(self, job: Job) -> None:
        path = self.jobs_dir / job.id / "job.json"
        # A session of its own: the job outlives this process and its terminal, and is one process group.
        runner = subprocess.Popen([sys.executable, "-m", "lmforge.webui.runner", str(path)], cwd=job.cwd,
                                  start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        self._children[job.id] = runner
        job.status, job.runner_pid = "starting", runner.pid
        self._write(job)

    def abort(self, job_id: str) -> Job | None:
        """Stop a running job (SIGTERM to its process group: training checkpoints first) or cancel a queued one."""
        with self._lock:
            job = self.get(job_id)
            if job is None:
                return None
            if job.status == "queued":
                job.status, job.ended = "cancelled", time.time()
                self._write(job)
            elif job.status in ("starting", "running") and _alive(job.runner_pid):
                try:
                    os.killpg(job.runner_pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            return job

    def _write(self, job: Job) -> None:
        write_json_atomic(self.jobs_dir / job.id / "job.json", asdict(job))

    # -- the scheduler -----------------------------------------------------------------------------
    def start_scheduler(self, every_s: float = 1.0) -> None:
        """Start queued jobs as the running ones end, in a background thread."""
        def loop():
            while not self._stop.wait(every_s):
                try:
                    self.schedule()
                except Exception:  # noqa: BLE001 - a bad job file must not stop the queue
                    pass

        self._thread = threading.Thread(target=loop, name="lmforge-board-jobs", daemon=True)
        self._thread.start()

    def stop_scheduler(self) -> None:
        self._stop.set()


def read_progress(output_dir: str) -> dict | None:
    """The last record of `trainer_log.jsonl` in `output_dir` (steps, loss, times), or None."""
    path = Path(output_dir) / "trainer_log.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue  # a line being written
    return None


def loss_points(output_dir: str) -> list[tuple[int, float]]:
    """(step, loss) of every logged training step in `output_dir`."""
    points = []
    try:
        lines = (Path(output_dir) / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return points
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "loss" in record and "current_steps" in record:
            points.append((int(record["current_steps"]), float(record["loss"])))
    return points
