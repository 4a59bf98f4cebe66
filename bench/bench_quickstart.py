"""The quickstart, timed: `python train.py --preset quickstart` from scratch, against the unigram baseline.

    python data/prepare.py && python bench/bench_quickstart.py [--export checkpoint/quickstart.pt]

The unigram baseline is the val loss of the best model that ignores context: the train split's token
frequencies (add-one smoothed), scored on the val split. A model that learned anything is far below it.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, report  # noqa: E402
from gptcore.data import read_meta, read_tokens  # noqa: E402
from gptcore.train import TRAIN_PRESETS  # noqa: E402


def unigram_val_loss(data_dir: str) -> float:
    """Cross-entropy (nats/token) of the val tokens under the train split's add-one-smoothed unigram distribution."""
    meta = read_meta(data_dir)
    counts = np.ones(meta["vocab_size"])
    for name in meta["train_shards"]:
        counts += np.bincount(read_tokens(os.path.join(data_dir, name)), minlength=meta["vocab_size"])
    logp = np.log(counts / counts.sum())
    val = np.concatenate([read_tokens(os.path.join(data_dir, name)) for name in meta["val_shards"]])
    return float(-logp[val].mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-save", action="store_true", help="print only; don't append to bench/RESULTS.md")
    parser.add_argument("--export", metavar="PATH", help="passed on to train.py: keep the trained model there")
    args = parser.parse_args()
    data_dir = os.path.join(ROOT, TRAIN_PRESETS["quickstart"]["data"])
    baseline = unigram_val_loss(data_dir)
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        export = ["--export", os.path.abspath(args.export)] if args.export else []
        subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--preset", "quickstart", "--out-dir", out_dir,
                        *export], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
    evals = [r for r in records if "val_loss" in r]
    table = "\n".join([
        "| what | value |", "|---|---|",
        f"| wall time, start to exit | {wall / 60:.1f} min |",
        f"| steps, tokens | {records[-1]['step']}, {records[-1]['tokens']:,} |",
        f"| median train tok/s | {np.median([r['tok_per_s'] for r in records]):,.0f} |",
        f"| unigram baseline, val | {baseline:.3f} nats/token |",
        *(f"| val loss at step {r['step']} | {r['val_loss']:.3f} |" for r in evals),
    ])
    report("quickstart: python train.py --preset quickstart",
           [f"data {TRAIN_PRESETS['quickstart']['data']}; CPU, default settings"], table, save=not args.no_save)


if __name__ == "__main__":
    main()
