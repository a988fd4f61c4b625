"""Run one LLaMA Board job: `python -m lmforge.webui.runner JOB_FILE`.

The board starts this runner in a session (and process group) of its own: the job goes on when the
board stops or the browser closes, and Abort (SIGTERM to the group) reaches every process of the
job, every rank of a distributed run included. The runner starts the job's command with its output
in the job's log, records its pid, then its end (exit code, and whether it was aborted) in the job
file, atomically. Only the standard library is imported: the runner itself costs nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def update(path: Path, **changes) -> dict:
    job = json.loads(path.read_text(encoding="utf-8"))
    job.update(changes)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(job, indent=2), encoding="utf-8")
    os.replace(temporary, path)
    return job


def main(argv: list[str]) -> int:
    path = Path(argv[0])
    job = json.loads(path.read_text(encoding="utf-8"))
    aborted = []
    # SIGTERM reaches the whole group: the command stops by itself (a checkpoint first, for training);
    # the runner only notes it and waits for the command to end.
    signal.signal(signal.SIGTERM, lambda signum, frame: aborted.append(signum))
    env = {**os.environ, "LMFORGE_PROGRESS": "lines", "PYTHONUNBUFFERED": "1", **job.get("env", {})}
    with open(job["log"], "ab") as log:
        try:
            process = subprocess.Popen(job["command"], stdout=log, stderr=subprocess.STDOUT, cwd=job["cwd"], env=env,
                                       stdin=subprocess.DEVNULL)
        except OSError as err:
            log.write(f"lmforge webui: error: cannot start {job['command'][0]}: {err.strerror}\n".encode())
            update(path, status="failed", exit_code=127, ended=time.time())
            return 127
        update(path, status="running", runner_pid=os.getpid(), pid=process.pid, started=time.time())
        code = process.wait()
    status = "aborted" if aborted else ("finished" if code == 0 else "failed")
    update(path, status=status, exit_code=code, ended=time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
