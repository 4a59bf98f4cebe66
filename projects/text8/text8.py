"""The text8 benchmark: a character-level GPT on 100M characters of Wikipedia, scored in bits per character.

text8 (Mahoney, http://mattmahoney.net/dc/textdata.html) is lower-case a-z and space only. The standard split is
the first 90M characters for training, the next 5M for validation and the last 5M for test; the test score is
the mean over every one of the test characters. This is chargpt (projects/chargpt) on a benchmark: the same
dataset of windows and full-text scoring.

    python projects/text8/text8.py --out-dir out/text8                  # downloads text8.zip (31 MB) once
    python projects/text8/text8.py --input my_text8_like.txt --out-dir out/t   # any file in text8's alphabet
"""

import argparse
import hashlib
import math
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # lets a fresh clone run this without installing gptcore
from gptcore import CharTokenizer, GPT, GPTCoreError, Trainer  # noqa: E402
from gptcore.fileio import atomic_path, download, sha256_file, write_json  # noqa: E402
from projects.chargpt.chargpt import CharDataset, score  # noqa: E402

ALPHABET = " abcdefghijklmnopqrstuvwxyz"
URL = "http://mattmahoney.net/dc/text8.zip"
# text8.zip (31,344,016 bytes) and the 100,000,000-byte text8 inside it; both digests agree across
# independent projects that pin them (e.g. torchtext-based word2vec loaders and research code)
ZIP_SHA256 = "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232"
TEXT8_SHA256 = "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"


def text8_bytes(data_dir: Path) -> bytes:
    """The 100M bytes of text8, from data_dir/text8 if it is there and intact, else from text8.zip, downloaded once
    into data_dir (both sha256-checked)."""
    path = data_dir / "text8"
    if path.exists() and sha256_file(str(path)) == TEXT8_SHA256:
        return path.read_bytes()
    archive = download(URL, str(data_dir / "text8.zip"), ZIP_SHA256,
                       hint=f"; offline, put text8 in {data_dir} or pass --input FILE")
    data = zipfile.ZipFile(archive).read("text8")
    if hashlib.sha256(data).hexdigest() != TEXT8_SHA256:
        raise GPTCoreError(f"text8 inside {archive} does not have the sha256 {TEXT8_SHA256}")
    with atomic_path(str(path)) as tmp:
        Path(tmp).write_bytes(data)
    return data


def encode(data: bytes, tokenizer: CharTokenizer) -> torch.Tensor:
    """Bytes in text8's alphabet -> (N,) ids, through a lookup table (a Python loop over 100M characters is slow)."""
    table = np.full(256, -1, dtype=np.int64)
    for ch in ALPHABET:
        table[ord(ch)] = tokenizer.stoi[ch]
    ids = table[np.frombuffer(data, dtype=np.uint8)]
    if (ids < 0).any():
        bad = data[int(np.argmax(ids < 0))]
        raise GPTCoreError(f"byte {bad!r} at position {int(np.argmax(ids < 0))} is not in text8's alphabet "
                           "(a-z and space); clean the file first, e.g. with Mahoney's wikifil.pl")
    return torch.from_numpy(ids)


def fail(message: str):
    """Bad input: one line on stderr, exit status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default=None, help="a file in text8's alphabet instead of text8 itself")
    parser.add_argument("--data-dir", default="data/text8", help="where text8 is downloaded to, once")
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-head", type=int, default=8)
    parser.add_argument("--n-embd", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-iters", type=int, default=50_000)
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="peak, after 5%% of steps; cosine decay to a tenth of it")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--out-dir", default="out/text8")
    args = parser.parse_args()
    start = time.time()
    torch.manual_seed(args.seed)

    tokenizer = CharTokenizer(ALPHABET)
    try:
        data = Path(args.input).read_bytes() if args.input else text8_bytes(Path(args.data_dir))
        ids = encode(data, tokenizer)
    except (OSError, GPTCoreError) as e:
        fail(str(e))
    # text8's standard split: 90M / 5M / 5M characters; other files in the same proportions
    n_train, n_val = len(ids) * 90 // 100, len(ids) * 5 // 100
    if n_val < 2 or n_train <= args.block_size:
        fail(f"{args.input} has {len(ids)} characters; give at least {20 * (args.block_size + 1)}")

    model_config = GPT.get_default_config()
    model_config.n_layer, model_config.n_head, model_config.n_embd = args.n_layer, args.n_head, args.n_embd
    model_config.vocab_size = tokenizer.n_vocab
    model_config.block_size = args.block_size
    model_config.embd_pdrop = model_config.resid_pdrop = model_config.attn_pdrop = args.dropout
    model = GPT(model_config)

    train_config = Trainer.get_default_config()
    train_config.batch_size = args.batch_size
    train_config.learning_rate = args.learning_rate
    train_config.warmup_iters = max(1, args.max_iters // 20)
    train_config.min_lr = args.learning_rate / 10  # cosine decay to it at max_iters
    train_config.max_iters = args.max_iters
    train_config.num_workers = 0  # the text is one tensor in memory
    trainer = Trainer(train_config, model, CharDataset(ids[:n_train], args.block_size))
    bar = tqdm(total=args.max_iters, desc="text8", unit="it")

    def on_batch_end(trainer):
        bar.update(1)
        if trainer.iter_num % 10 == 0:
            bar.set_postfix(loss=f"{trainer.loss.item():.3f}")

    trainer.add_callback("on_batch_end", on_batch_end)
    trainer.run()
    bar.close()
    train_seconds = time.time() - start

    # score() reads ids[first:] to the end, so the validation text is scored as its own array
    val_bpc = score(model, ids[:n_train + n_val], n_train, trainer.device) / math.log(2)
    test_bpc = score(model, ids, n_train + n_val, trainer.device) / math.log(2)
    summary = {"test_bpc": test_bpc, "val_bpc": val_bpc, "test_chars": len(ids) - n_train - n_val,
               "val_chars": n_val, "train_chars": n_train, "iters": trainer.iter_num,
               "train_seconds": round(train_seconds, 1), "wall_seconds": round(time.time() - start, 1),
               "cpu_seconds": round(time.process_time(), 1), "device": str(trainer.device),
               "input": args.input or "text8", "config": vars(args)}
    write_json(str(Path(args.out_dir) / "summary.json"), summary, indent=2)
    print(f"text8: test {test_bpc:.4f} bits/char over all {summary['test_chars']:,} test characters "
          f"(val {val_bpc:.4f}), after {trainer.iter_num} steps, {summary['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
