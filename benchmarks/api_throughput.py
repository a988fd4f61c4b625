"""Throughput and latency of `lmforge api` under 1, 16 and 64 concurrent clients, plain and streaming.

Run (from the repository root):

    .venv/bin/python benchmarks/api_throughput.py
    .venv/bin/python benchmarks/api_throughput.py --concurrency 1,16,64 --requests-per-client 4 --max-tokens 64 \
        --out benchmarks/results/api_throughput_tiny_cpu.json

It builds the tiny random Llama (`lmforge.testing.tiny.build_tiny_model`, template llama3) in a
temporary folder, starts `python -m lmforge api` on it as a subprocess on 127.0.0.1 with a free
port, waits for /health, and drives it with the real `openai` client (AsyncOpenAI): for each
concurrency level, that many clients each send `--requests-per-client` requests one after another,
first non-streaming, then streaming. Greedy decoding; the random model seldom ends early, so most
answers are `--max-tokens` long. The server is started once per server configuration, one at a time:
the default (dynamic batching) and, for comparison, API_MAX_BATCH_SIZE=1 (one request at a time,
what a server without batching does). `--no-baseline` skips the latter.

Reported per configuration, mode and concurrency:
  * gen tok/s     completion tokens (from `usage`) of all requests / wall time of the whole phase,
  * TTFT          streaming only: request sent -> first content delta, p50 / p99,
  * latency       request sent -> complete answer (last chunk for streaming), p50 / p99.
Streams are batched like plain requests (see lmforge.api.batching), so streaming throughput grows
with the number of clients too. `--server-threads N` sets OMP_NUM_THREADS for the server (torch's
default otherwise): on a machine shared with other work, one thread avoids OpenMP threads spinning
against each other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "tiny-llama"
QUESTIONS = [
    "Who are you?",
    "Tell me a joke about computers.",
    "How do I make a cup of tea?",
    "Summarize the plot of a famous novel in two sentences.",
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "Explain gravity to a child.",
    "List three uses of a paperclip.",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def start_server(model_dir: Path, port: int, log_path: Path, extra_env: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "API_PORT": str(port), "API_MODEL_NAME": MODEL_NAME, "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", **extra_env}
    for name in ("API_KEY", "API_HOST", "API_MAX_CONCURRENT_REQUESTS", "API_MAX_TOKENS", "API_MAX_BATCH_SIZE"):
        if name not in extra_env:
            env.pop(name, None)  # the defaults are what is measured
    command = [sys.executable, "-m", "lmforge", "api", f"model_name_or_path={model_dir}", "template=llama3",
               "do_sample=false"]
    log = log_path.open("w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def wait_ready(proc: subprocess.Popen, port: int, log_path: Path, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"The server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"The server did not answer /health within {timeout:.0f} s.")


async def one_request(client, question: str, max_tokens: int, stream: bool) -> dict:
    messages = [{"role": "user", "content": question}]
    start = time.perf_counter()
    if not stream:
        answer = await client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=max_tokens)
        return {"latency": time.perf_counter() - start, "tokens": answer.usage.completion_tokens, "ttft": None}
    ttft, tokens = None, 0
    chunks = await client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=max_tokens,
                                                  stream=True, stream_options={"include_usage": True})
    async for chunk in chunks:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"latency": time.perf_counter() - start, "tokens": tokens, "ttft": ttft}


async def run_phase(port: int, clients: int, per_client: int, max_tokens: int, stream: bool) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
    results: list[dict] = []

    async def worker(k: int) -> None:
        for i in range(per_client):
            question = QUESTIONS[(k * per_client + i) % len(QUESTIONS)]
            results.append(await one_request(client, question, max_tokens, stream))

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    wall = time.perf_counter() - start
    await client.close()
    latencies = [r["latency"] for r in results]
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    return {
        "mode": "stream" if stream else "non-stream",
        "clients": clients,
        "requests": len(results),
        "completion_tokens": sum(r["tokens"] for r in results),
        "wall_s": wall,
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "latency_p50_ms": percentile(latencies, 50) * 1000,
        "latency_p99_ms": percentile(latencies, 99) * 1000,
        "ttft_p50_ms": percentile(ttfts, 50) * 1000 if ttfts else None,
        "ttft_p99_ms": percentile(ttfts, 99) * 1000 if ttfts else None,
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| server | mode | clients | requests | gen tok/s | TTFT p50 / p99 (ms) | latency p50 / p99 (ms) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ttft = "-" if r["ttft_p50_ms"] is None else f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f}"
        lines.append(f"| {r['server']} | {r['mode']} | {r['clients']} | {r['requests']} | {r['tokens_per_s']:.0f} | "
                     f"{ttft} | {r['latency_p50_ms']:.0f} / {r['latency_p99_ms']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated client counts")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--no-baseline", action="store_true", help="skip the API_MAX_BATCH_SIZE=1 server")
    parser.add_argument("--server-threads", type=int, help="OMP_NUM_THREADS of the server (default: torch's)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]

    from lmforge.testing.tiny import build_tiny_model

    threads = {"OMP_NUM_THREADS": str(args.server_threads)} if args.server_threads else {}
    servers = [("batched (default)", threads)]
    if not args.no_baseline:
        servers.append(("API_MAX_BATCH_SIZE=1", {"API_MAX_BATCH_SIZE": "1", **threads}))
    rows: list[dict] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="lmforge-api-bench-") as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny-llama", arch="llama")
        for label, env in servers:
            port = free_port()
            log_path = Path(tmp) / f"server-{port}.log"
            proc = start_server(model_dir, port, log_path, env)
            try:
                wait_ready(proc, port, log_path)
                # One untimed request so that the first measured one does not pay for warm-up.
                asyncio.run(run_phase(port, 1, 1, 8, stream=False))
                for stream in (False, True):
                    for clients in levels:
                        row = asyncio.run(run_phase(port, clients, args.requests_per_client, args.max_tokens, stream))
                        row["server"] = label
                        rows.append(row)
                        print(f"{label:>20} {row['mode']:>10} clients={clients:<3} "
                              f"{row['tokens_per_s']:8.0f} tok/s", file=sys.stderr, flush=True)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    table = markdown(rows)
    load_after = os.getloadavg()
    print(table)
    # Other processes on the machine change these numbers a lot (torch's threads then wait for each other).
    print(f"\nload average (1 min) before: {load_before[0]:.2f}, after: {load_after[0]:.2f}; "
          f"{os.cpu_count()} CPUs")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"date": time.strftime("%Y-%m-%d"), "platform": platform.platform(), "python": platform.python_version(),
                "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
                "max_tokens": args.max_tokens, "requests_per_client": args.requests_per_client,
                "server_threads": args.server_threads or "torch default",
                "model": "lmforge tiny llama (build_tiny_model), greedy"}
        args.out.write_text(json.dumps({"meta": meta, "rows": rows, "table": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
