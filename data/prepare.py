"""Prepares a corpus as token shards for training: `python data/prepare.py` (the Python standard library, offline).

    python data/prepare.py                                    # pystdlib -> data/pystdlib/
    python data/prepare.py --dataset shakespeare --from ../shared/data/tinyshakespeare.txt --tokenizer char
    python data/prepare.py --dataset my_texts/                # a folder of .txt/.jsonl files -> data/my_texts/
    python data/prepare.py --dataset fineweb-edu              # streamed from Hugging Face; rerun to resume

Paths: a path given in a flag is relative to the working directory, as in any command; the default output
folder, data/<name>/, is anchored to the repository (beside this script) wherever it is run from, and is where
train.py's default --data looks.
Sources, the val split and the shard format: gptcore/corpora.py and gptcore/data.py.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gptcore import corpora  # noqa: E402
from gptcore.errors import GPTCoreError  # noqa: E402

DATA_ROOT = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=corpora.DEFAULT_DATASET,
                   help=f"{', '.join(corpora.KNOWN_DATASETS)}, or the path of a text file, or a folder or glob of "
                        f".txt/.jsonl files (default {corpora.DEFAULT_DATASET})")
    p.add_argument("--from", dest="source_file", metavar="FILE",
                   help="a local copy: tinyshakespeare's text for shakespeare; .jsonl/.parquet files (file, folder "
                        "or glob) with a field 'text' for fineweb-edu and openwebtext")
    p.add_argument("--tokenizer", default=corpora.DEFAULT_TOKENIZER, choices=corpora.TOKENIZERS,
                   help="gpt2 (tiktoken) or char (the corpus's characters; local corpora only)")
    p.add_argument("--out-dir", help="where the shards go (default data/<name>/ in the repository, data/<name>-char/ for --tokenizer char)")
    p.add_argument("--val-fraction", type=float, default=corpora.DEFAULT_VAL_FRACTION,
                   help="share of tokens that go to val, for local corpora (streamed ones use their first shard)")
    p.add_argument("--shard-tokens", type=int, default=corpora.DEFAULT_SHARD_TOKENS, help="tokens per shard")
    p.add_argument("--workers", type=int,
                   help=f"tokenizer processes (default: one per CPU, {corpora.default_workers()} here; "
                        "1: tokenize in this process)")
    args = p.parse_args(argv)
    # char-level data gets its own folder (as nanoGPT's shakespeare_char), so both tokenizations can coexist
    name = corpora.dataset_name(args.dataset) + ("-char" if args.tokenizer == "char" else "")
    out_dir = os.path.join(DATA_ROOT, name) if args.out_dir is None else args.out_dir
    start = time.perf_counter()
    try:
        meta, worked = corpora.prepare(args.dataset, out_dir=out_dir, source_file=args.source_file,
                                       tokenizer=args.tokenizer, val_fraction=args.val_fraction,
                                       shard_tokens=args.shard_tokens, workers=args.workers)
    except GPTCoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that is a folder where a file should be, unreadable, or a full disk
        print(f"error: {e.filename or 'a file'}: {e.strerror or e}; check the paths given to --dataset, "
              "--from and --out-dir", file=sys.stderr)
        return 2
    summary = (f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens "
               f"({meta['tokenizer']['type']}, vocab {meta['vocab_size']:,}, {meta['documents']:,} documents) "
               f"from {meta['source']}")
    if worked:
        print(f"prepared {out_dir} in {time.perf_counter() - start:.1f} s: {summary}")
    else:
        print(f"already prepared, nothing to do: {out_dir} holds {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
