"""A character-level GPT on any text file, as minGPT's projects/chargpt. The default is tinyshakespeare.

The last 10% of the file is the validation text, scored in full: every character once, each predicted from the
characters before it within a window of block_size. The result is in nats and in bits per character.

    python projects/chargpt/chargpt.py --out-dir out/chargpt                 # tinyshakespeare
    python projects/chargpt/chargpt.py --input my.txt --max-iters 5000 --out-dir out/mine
"""

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # lets a fresh clone run this without installing gptcore
from gptcore import CharTokenizer, GPT, GPTCoreError, Trainer  # noqa: E402
from gptcore.corpora import download_shakespeare, read_utf8  # noqa: E402
from gptcore.fileio import write_json  # noqa: E402

LOCAL_SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


class CharDataset(Dataset):
    """Every window of block_size + 1 characters of a (N,) id tensor. Item i -> (x, y): ids[i:i+T], ids[i+1:i+T+1]."""

    def __init__(self, ids: torch.Tensor, block_size: int):
        self.ids, self.block_size = ids, block_size

    def __len__(self):
        return len(self.ids) - self.block_size

    def __getitem__(self, i):
        chunk = self.ids[i:i + self.block_size + 1]
        return chunk[:-1], chunk[1:]


@torch.no_grad()
def score(model, ids: torch.Tensor, first: int, device, batch_size: int = 64) -> float:
    """Mean cross-entropy in nats of ids[first:], every position once, predicted from at most block_size ids before it.

    batch_size windows at a time: their logits, (batch_size, block_size, vocab_size) floats, must fit in memory.

    The windows tile ids[first - 1:] without overlap: window k's inputs start at first - 1 + k * T, so position
    first + j is scored exactly once, with (j mod T) + 1 ids of context, as random training windows see them.
    """
    T = model.config.block_size
    starts = list(range(first - 1, len(ids) - 1, T))
    total, count = 0.0, 0
    model.eval()
    for b in range(0, len(starts), batch_size):
        rows = [ids[s:s + T + 1] for s in starts[b:b + batch_size]]
        x = torch.stack([F.pad(r[:-1], (0, T + 1 - len(r))) for r in rows]).to(device)  # the last window is short:
        y = torch.stack([F.pad(r[1:], (0, T + 1 - len(r)), value=-1) for r in rows]).to(device)  # pad, don't score
        logits, _ = model(x)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum").item()
        count += int((y != -1).sum())
    model.train()
    assert count == len(ids) - first, "every validation character is scored exactly once"
    return total / count


def fail(message: str):
    """Bad input: one line on stderr, exit status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default=None,
                        help="a UTF-8 text file (default: tinyshakespeare from ../shared/data, else downloaded)")
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-iters", type=int, default=600)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="train for this many minutes of wall time instead: the step count is re-estimated from "
                             "the time per step so far, so the cosine decay ends on time (--max-iters caps it)")
    parser.add_argument("--warmup-iters", type=int, default=None, help="default: 5%% of --max-iters")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="off by default: short runs are far from overfitting, and dropout costs time per step")
    parser.add_argument("--learning-rate", type=float, default=6e-3,
                        help="peak, after 5%% of steps; cosine decay to a tenth of it")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bf16 autocast is slower than fp32 at 128 wide, even on AMX CPUs; it pays off wider")
    parser.add_argument("--sample-chars", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--out-dir", default="out/chargpt")
    args = parser.parse_args()
    start = time.time()
    torch.manual_seed(args.seed)
    if args.max_minutes is not None and args.max_minutes <= 0:
        fail(f"--max-minutes must be positive, got {args.max_minutes}")

    try:
        if args.input:
            text = read_utf8(args.input)
        elif LOCAL_SHAKESPEARE.exists():
            text = read_utf8(str(LOCAL_SHAKESPEARE))
        else:
            text = download_shakespeare(str(ROOT / "data" / "tinyshakespeare" / "input.txt"), offline="--input FILE")
    except (OSError, GPTCoreError) as e:
        fail(str(e))
    tokenizer = CharTokenizer(text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    n_train = int(0.9 * len(ids))
    if n_train <= args.block_size or len(ids) - n_train < 2:
        fail(f"{args.input or 'the text'} has {len(ids)} characters; give at least {10 * (args.block_size + 2)} so "
             "that both the first 90% (training) and the last 10% (validation) hold a few windows")

    model_config = GPT.get_default_config()
    model_config.n_layer, model_config.n_head, model_config.n_embd = args.n_layer, args.n_head, args.n_embd
    model_config.vocab_size = tokenizer.n_vocab
    model_config.block_size = args.block_size
    model_config.embd_pdrop = model_config.resid_pdrop = model_config.attn_pdrop = args.dropout
    model = GPT(model_config)

    train_config = Trainer.get_default_config()
    train_config.batch_size = args.batch_size
    train_config.learning_rate = args.learning_rate
    train_config.warmup_iters = args.warmup_iters if args.warmup_iters is not None else max(1, args.max_iters // 20)
    train_config.min_lr = args.learning_rate / 10  # cosine decay to it at max_iters
    train_config.max_iters = args.max_iters
    train_config.betas = (0.9, 0.99)  # nanoGPT's choice for small batches
    train_config.num_workers = 0  # the text is one tensor in memory
    train_config.dtype = args.dtype
    trainer = Trainer(train_config, model, CharDataset(ids[:n_train], args.block_size))

    bar = tqdm(total=args.max_iters, desc="chargpt", unit="it")
    train_start = time.time()

    def on_batch_end(trainer):
        bar.update(1)
        if args.max_minutes is not None:  # stretch or shrink the schedule to end at the deadline
            elapsed = time.time() - train_start
            left = int((60 * args.max_minutes - elapsed) / (elapsed / trainer.iter_num))
            steps = max(trainer.iter_num + 1, min(args.max_iters, trainer.iter_num + left))
            trainer.config.max_iters = bar.total = steps
            trainer.stop_requested |= elapsed >= 60 * args.max_minutes
        if trainer.iter_num % 10 == 0:
            bar.set_postfix(loss=f"{trainer.loss.item():.3f}")

    trainer.add_callback("on_batch_end", on_batch_end)
    trainer.run()
    bar.close()
    train_seconds = time.time() - start

    val_loss = score(model, ids, n_train, trainer.device)
    wall_seconds = time.time() - start
    prompt = torch.tensor([ids[n_train:n_train + 16].tolist()], device=trainer.device)  # the validation text's start
    generator = torch.Generator(trainer.device).manual_seed(args.seed)
    sample = tokenizer.decode(model.generate(prompt, args.sample_chars, do_sample=True, top_k=None,
                                             generator=generator)[0].tolist())
    print(sample)
    summary = {"val_loss": val_loss, "val_bpc": val_loss / math.log(2), "val_chars": len(ids) - n_train,
               "train_chars": n_train, "iters": trainer.iter_num, "train_seconds": round(train_seconds, 1),
               "wall_seconds": round(wall_seconds, 1), "cpu_seconds": round(time.process_time(), 1),
               "device": str(trainer.device), "sample": sample,
               "config": vars(args)}
    write_json(str(Path(args.out_dir) / "summary.json"), summary, indent=2)
    print(f"chargpt: val {val_loss:.4f} nats/char = {summary['val_bpc']:.3f} bits/char over all "
          f"{summary['val_chars']:,} validation characters, after {trainer.iter_num} steps, {wall_seconds:.0f} s")


if __name__ == "__main__":
    main()
