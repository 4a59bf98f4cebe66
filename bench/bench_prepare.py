"""Tokenization throughput of `python data/prepare.py` on its default corpus (the Python standard library).

Compares, over the same documents:
    loop          a plain single-process tiktoken encode_ordinary loop (the baseline the issue names)
    threads       tiktoken's encode_ordinary_batch on os.cpu_count() threads
    prepare w=N   gptcore.corpora.tokenize_documents with N worker processes, pool start-up included,
                  giving the uint16 arrays (end-of-text appended) that prepare writes
    prepare e2e   the whole of corpora.prepare into a temp folder: reading, hashing, tokenizing, writing
Methods run interleaved for --rounds rounds, so a busy machine slows them alike; the table gives medians and bests
of wall time, and the CPU seconds each spent (a pool spends more in all, but spreads it over cores).
Prints the table and appends it to bench/RESULTS.md.

    python bench/bench_prepare.py [--rounds 5] [--no-save]
"""

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import positive_int, report  # noqa: E402
from gptcore import corpora  # noqa: E402
from gptcore.tokenizer import get_tokenizer  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers once the pool is closed)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds of every method")
    p.add_argument("--no-save", action="store_true", help="print only; don't append to bench/RESULTS.md")
    args = p.parse_args()

    root, files = corpora.stdlib_files()
    docs = corpora.read_local_documents(files)
    tok = get_tokenizer("gpt2")
    cores = os.cpu_count() or 1
    worker_counts = sorted({1, 2, cores})
    scratch = tempfile.TemporaryDirectory()

    def prepare_e2e():
        out = os.path.join(scratch.name, f"run{time.perf_counter_ns()}")
        meta, _ = corpora.prepare(out_dir=out, workers=cores)
        return meta["train_tokens"] + meta["val_tokens"] - meta["documents"]

    methods = {
        "loop (baseline)": lambda: sum(len(tok.enc.encode_ordinary(d)) for d in docs),
        f"threads ({cores})": lambda: sum(len(ids) for ids in tok.enc.encode_ordinary_batch(docs, num_threads=cores)),
        **{f"prepare w={w}": (lambda w=w: sum(len(a) - 1 for a in corpora.tokenize_documents(docs, tok, w)))
           for w in worker_counts},
        f"prepare e2e w={cores}": prepare_e2e,
    }
    load_before = os.getloadavg()
    times = {name: [] for name in methods}
    cpu = {name: [] for name in methods}
    tokens = None
    for _ in range(args.rounds):
        for name, fn in methods.items():
            cpu_start, start = cpu_seconds(), time.perf_counter()
            n = fn()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(cpu_seconds() - cpu_start)
            assert tokens in (None, n), f"{name} gave {n} tokens, not {tokens}"
            tokens = n
    load_after = os.getloadavg()
    scratch.cleanup()

    base = statistics.median(times["loop (baseline)"])
    rows = ["| method | median s | best s | median Mtok/s | speed vs loop (median) | CPU s (median) |",
            "|---|---|---|---|---|---|"]
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(f"| {name} | {med:.3f} | {min(ts):.3f} | {tokens / med / 1e6:.2f} | {base / med:.2f}x "
                    f"| {statistics.median(cpu[name]):.2f} |")
    mb = sum(len(d.encode()) for d in docs) / 1e6
    table = "\n".join(rows)
    report("prepare: tokenization throughput on pystdlib", [
        f"Python {platform.python_version()}",
        f"corpus: {len(docs)} documents, {mb:.1f} MB, {tokens:,} GPT-2 tokens (end-of-text not counted)",
        f"{args.rounds} interleaved rounds; load average (1 min) {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (other processes share these cores)"], table, save=not args.no_save)


if __name__ == "__main__":
    main()
