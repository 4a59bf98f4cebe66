"""Load test of serve.py: 1, 4 and 16 concurrent streaming clients, on loopback, in interleaved rounds.

serve.py runs as its own process (the real server, its defaults unless flags say otherwise); this process runs the
clients, one thread each, reading the event stream with the standard library (the openai client's per-chunk
objects would take CPU from the server they share the cores with). Each client sends streaming completions one after the
other (max_tokens each, usage included) until its round's time is up, then finishes the one in flight. Every
concurrency gets --seconds in total, split into --rounds rounds run in turn (1, 4, 16, 1, 4, 16, ...), so a busy
machine slows them alike. Reported per concurrency: aggregate completion tok/s (all clients' tokens over the round's
wall time; the median round), p50/p99 time to the first streamed token, errors, and requests lost (sent but
neither answered nor failed: must be 0). The speed-up of 4 clients over 1 is the median of per-round ratios; the
goal is >= 2.5x with 0 errors. Bounded: at most --max-requests per client per round, and a 120 s client timeout.

The peer is the engine itself: after each round, while the server idles, this process drives Generator.batch (serve.py's
threads and dtype) with as many rows as the server decoded for each concurrency, on the same requests, with no HTTP.
Its ratio is what the server's would be if HTTP, JSON and the hand-over between threads cost nothing.

    python bench/bench_serve.py [--seconds 30] [--rounds 3] [--max-tokens 64] [--threads N] [--checkpoint PATH]
                                [--no-save]
"""

import argparse
import collections
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import report  # noqa: E402
from gptcore.checkpoint import load_model  # noqa: E402
from gptcore.infer import Generator, Request  # noqa: E402
from gptcore.serve.batcher import MAX_BATCH, default_threads  # noqa: E402

CONCURRENCY = (1, 4, 16)
PROMPT = "The history of the"
ENGINE_SECONDS = 3.0  # per concurrency and round, for the engine-alone reference


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30, help="load time per concurrency, all rounds together")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds the seconds are split into")
    parser.add_argument("--max-tokens", type=int, default=64, help="completion tokens per request")
    parser.add_argument("--max-requests", type=int, default=1000, help="cap on requests per client per round")
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH, help="serve.py --max-batch")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="serve.py --threads (default: serve.py's, all cores but one)")
    parser.add_argument("--checkpoint", help="serve.py --checkpoint (default: the committed checkpoint)")
    parser.add_argument("--dtype", default="auto", help="serve.py --dtype")
    parser.add_argument("--no-save", action="store_true", help="print the table without appending to RESULTS.md")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, os.path.join(ROOT, "serve.py"), "--port", str(port), "--dtype", args.dtype,
           "--max-batch", str(args.max_batch), "--threads", str(args.threads),
           "--max-queue", str(4 * max(CONCURRENCY))]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    # the server logs a line per request: into a file, since a pipe nobody drains fills up and blocks the server
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    proc.log = log  # read back when the server fails to start
    return proc


def last_line(proc) -> str:
    proc.log.seek(0)
    lines = proc.log.read().strip().splitlines()
    return lines[-1] if lines else f"status {proc.returncode}"


def wait_until_up(port: int, proc, seconds: float = 300) -> str:
    """Waits for serve.py to answer; returns the name of its model."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"error: serve.py exited: {last_line(proc)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=60) as response:
                return json.load(response)["model"]
        except OSError:  # not listening yet
            time.sleep(0.5)
    sys.exit(f"error: serve.py did not answer within {seconds:.0f} s")


def step_rows(port: int) -> collections.Counter:
    """The server's count of decode steps by the number of rows they decoded, from GET /health."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=60) as response:
        return collections.Counter({int(k): v for k, v in json.load(response)["step_rows"].items()})


def stream_completion(conn: http.client.HTTPConnection, body: bytes) -> tuple[float | None, int]:
    """One streamed completion on a kept-alive connection -> (seconds to the first chunk, completion tokens).
    A plain SSE reader, so that the clients take as little of the CPU they share with the server as they can."""
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
    first, tokens = None, 0
    while line := response.readline():
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise RuntimeError(chunk["error"]["message"])
        if chunk["choices"] and first is None:
            first = time.perf_counter() - start
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    return first, tokens


def one_round(port: int, model: str, clients: int, seconds: float, args) -> dict:
    """Runs `clients` threads for `seconds`; returns their requests' tokens, TTFTs, errors and the wall time."""
    lock = threading.Lock()
    stats = {"tokens": 0, "ttft": [], "errors": [], "sent": 0, "done": 0}
    end = time.monotonic() + seconds
    body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": args.max_tokens, "temperature": 1.0,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()

    def loop():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(args.max_requests):
            if time.monotonic() >= end:
                break
            with lock:
                stats["sent"] += 1
            try:
                first, tokens = stream_completion(conn, body)
                with lock:
                    stats["done"] += 1
                    stats["tokens"] += tokens
                    stats["ttft"].append(first)
            except Exception as e:  # counted, not raised: a load test reports its failures
                conn.close()
                with lock:
                    stats["errors"].append(f"{type(e).__name__}: {e}")
        conn.close()

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats["wall"] = time.perf_counter() - start
    return stats


def engine_alone(engine: Generator, clients: int, seconds: float, args) -> float:
    """The engine by itself, in this process, on the clients' workload: min(clients, --max-batch) rows of the same
    request (prompt, max_tokens, temperature 1), each started again as it finishes, prefill included, as the server
    does for clients that send one request after the other -> completion tok/s. The server's ratio over 1 client
    can't beat this one's: what the server adds is HTTP, JSON and the hand-over between threads."""
    ids = engine.tokenizer.encode(PROMPT)
    new = lambda: Request(list(ids), args.max_tokens, temperature=1.0)  # noqa: E731
    tokens = 0
    with engine.batch(args.max_batch) as batch:
        for _ in range(min(clients, args.max_batch)):
            batch.add(new())
        start = time.perf_counter()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for event in batch.step():
                tokens += event.token is not None
                if event.finish_reason:
                    batch.add(new())
        return tokens / (time.perf_counter() - start)


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return ", ".join(f"{name}: {'yes' if name in flags else 'no'}" for name in ("amx_bf16", "avx512_bf16"))


def main():
    args = parse_args()
    if args.seconds <= 0 or args.rounds < 1 or args.max_tokens < 1 or args.max_requests < 1:
        sys.exit("error: --seconds, --rounds, --max-tokens and --max-requests must be positive")
    port = free_port()
    proc = start_server(args, port)
    try:
        model = wait_until_up(port, proc)
        # the engine-alone reference, as serve.py makes it: its threads, its dtype, the same checkpoint
        torch.set_num_threads(args.threads)
        net, tokenizer, _ = load_model(args.checkpoint, None, os.path.join(ROOT, "checkpoint"))
        engine = Generator(net.requires_grad_(False), tokenizer, dtype=None if args.dtype == "auto" else args.dtype,
                           rows=args.max_batch)
        engine_alone(engine, 4, 1.0, args)  # warm-up
        alone = {c: [] for c in CONCURRENCY}
        one_round(port, model, 2, 1.0, args)  # warm-up: the engine's first batches, the clients' connections
        load_before = os.getloadavg()[0]
        rounds = {c: [] for c in CONCURRENCY}
        for r in range(args.rounds):
            for c in CONCURRENCY:
                before = step_rows(port)
                result = one_round(port, model, c, args.seconds / args.rounds, args)
                result["steps"] = step_rows(port) - before
                rounds[c].append(result)
                print(f"round {r + 1}/{args.rounds}, {c} clients: {result['tokens'] / result['wall']:.1f} tok/s, "
                      f"{len(result['errors'])} errors", file=sys.stderr)
            for c in CONCURRENCY:  # the server idles meanwhile
                alone[c].append(engine_alone(engine, c, ENGINE_SECONDS, args))
        load_after = os.getloadavg()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    rows = []
    speedup = {c: statistics.median(rounds[c][i]["tokens"] / rounds[c][i]["wall"] /
                                    (rounds[1][i]["tokens"] / rounds[1][i]["wall"]) for i in range(args.rounds))
               for c in CONCURRENCY}
    alone_speedup = {c: statistics.median(alone[c][i] / alone[1][i] for i in range(args.rounds)) for c in CONCURRENCY}
    for c in CONCURRENCY:
        ttft = [t for result in rounds[c] for t in result["ttft"] if t is not None]
        errors = sum(len(result["errors"]) for result in rounds[c])
        lost = sum(result["sent"] - result["done"] - len(result["errors"]) for result in rounds[c])
        requests = sum(result["done"] for result in rounds[c])
        tok_s = statistics.median(result["tokens"] / result["wall"] for result in rounds[c])
        steps = sum((result["steps"] for result in rounds[c]), collections.Counter())
        rows_per_step = sum(k * v for k, v in steps.items()) / max(1, sum(steps.values()))
        rows.append(f"| {c} | {requests} | {tok_s:.1f} | {speedup[c]:.2f}x | {statistics.median(alone[c]):.1f} | "
                    f"{alone_speedup[c]:.2f}x | {percentile(ttft, 50) * 1e3:.0f} | {percentile(ttft, 99) * 1e3:.0f} | "
                    f"{rows_per_step:.1f} | {errors} | {lost} |")
    first_errors = [e for c in CONCURRENCY for result in rounds[c] for e in result["errors"]][:3]
    met = speedup[4] >= 2.5 and all(not result["errors"] for c in CONCURRENCY for result in rounds[c])
    details = [f"CPU flags: {cpu_flags()}",
               f"serve.py on the {'committed checkpoint' if not args.checkpoint else args.checkpoint} as '{model}', "
               f"--dtype {args.dtype}, --max-batch {args.max_batch}, --threads {args.threads}; clients: threads "
               f"reading the SSE stream, streaming, max_tokens {args.max_tokens}, temperature 1",
               f"{args.seconds:g} s per concurrency in {args.rounds} interleaved rounds; load average (1 min) "
               f"{load_before:.2f} before, {load_after:.2f} after (other processes share these cores)",
               f"engine alone: this process drives Generator.batch with min(clients, --max-batch) rows of the same "
               f"requests, each restarted as it finishes, for {ENGINE_SECONDS:g} s per concurrency and round while "
               "the server idles (no HTTP): the ceiling of the server's ratio",
               f"goal, 4 clients >= 2.5x one client's tok/s with 0 errors: {'met' if met else 'NOT met'}"]
    if first_errors:
        details.append("first errors: " + "; ".join(first_errors))
    table = "\n".join([
        "| clients | requests | aggregate tok/s (median round) | vs 1 client (median of per-round ratios) | "
        "engine alone, tok/s | engine alone, vs 1 row | TTFT p50, ms | TTFT p99, ms | rows per step (mean) | errors | "
        "lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *rows])
    report("bench_serve.py: serve.py under 1, 4 and 16 concurrent streaming clients", details, table,
           save=not args.no_save)


if __name__ == "__main__":
    main()
