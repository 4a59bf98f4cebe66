"""Speed of the pure-Python BPE (gptcore/bpe.py) next to tiktoken, and of BPE training.

Prints a table and appends it to bench/RESULTS.md (--no-save: print only).

    python bench/bench_bpe.py [--no-save] [--wikitext FILE] [--shakespeare FILE]
"""

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, report  # noqa: E402
from gptcore.bpe import BPETokenizer  # noqa: E402
from gptcore.tokenizer import GPT2Tokenizer  # noqa: E402

DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise SystemExit(f"error: cannot read {path} ({e.strerror}); give the file's path with the flag named in --help")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wikitext", default=os.path.join(DATA, "wikitext2_test.txt"),
                        help="text to encode and decode (default: wikitext2_test.txt in ../shared/data)")
    parser.add_argument("--shakespeare", default=os.path.join(DATA, "tinyshakespeare.txt"),
                        help="text to train BPE merges on (default: tinyshakespeare.txt in ../shared/data)")
    parser.add_argument("--no-save", action="store_true", help="print only; don't append to bench/RESULTS.md")
    args = parser.parse_args()
    wiki, shakespeare = read_text(args.wikitext), read_text(args.shakespeare)
    mb = len(wiki.encode("utf-8")) / 1e6

    rows = []
    ours, seconds = timed(BPETokenizer.from_gpt2_files)
    rows.append(("load GPT-2 from encoder.json + vocab.bpe (ours)", f"{seconds:.2f} s"))
    tik = GPT2Tokenizer()
    ids, seconds = timed(lambda: ours.encode(wiki))
    rows.append((f"encode wikitext2_test, {mb:.2f} MB, empty cache (ours)", f"{mb / seconds:.2f} MB/s"))
    _, seconds = timed(lambda: ours.encode(wiki))
    rows.append(("same text again, warm chunk cache (ours)", f"{mb / seconds:.2f} MB/s"))
    reference, seconds = timed(lambda: tik.encode(wiki))
    rows.append(("same text, tiktoken (one thread)", f"{mb / seconds:.2f} MB/s"))
    if ids != reference:
        raise SystemExit(f"error: our ids differ from tiktoken's on {args.wikitext}; the benchmark is meaningless")
    _, seconds = timed(lambda: ours.decode(ids))
    rows.append((f"decode those {len(ids):,} ids (ours)", f"{mb / seconds:.2f} MB/s"))
    for n_chars, num_merges in [(100_000, 500), (len(shakespeare), 2000)]:
        _, seconds = timed(lambda: BPETokenizer.train(shakespeare[:n_chars], num_merges, progress=False))
        rows.append((f"train {num_merges} merges on {n_chars / 1e3:,.0f} KB of tinyshakespeare", f"{seconds:.2f} s"))

    width = max(len(name) for name, _ in rows)
    value_width = max(len(value) for _, value in rows)
    table = [f"| {'what':<{width}} | {'result':>{value_width}} |", f"|{'-' * (width + 2)}|{'-' * (value_width + 1)}:|"]
    table += [f"| {name:<{width}} | {value:>{value_width}} |" for name, value in rows]
    report("bpe: pure-Python BPE vs tiktoken", [f"Python {platform.python_version()}"], "\n".join(table),
           save=not args.no_save)


if __name__ == "__main__":
    main()
