"""A GPT learns n-digit addition, as in minGPT's projects/adder (the GPT-3 paper's arithmetic task, section 3.9.1).

Each problem a + b is one sequence: the digits of a and of b, zero-padded to ndigit, then the ndigit + 1 digits of
the sum reversed. 85 + 50 = 135 with ndigit=2 reads "85" "50" "531". The model only learns (and is only scored on)
the sum's digits; reversed, each one depends on digits already written, the way we add by hand with carries.

    python projects/adder/adder.py --ndigit 2 --out-dir out/adder
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # lets a fresh clone run this without installing gptcore
from gptcore import GPT, Trainer  # noqa: E402
from gptcore.fileio import write_json  # noqa: E402

MAX_TEST = 500  # as minGPT: a fifth of all problems, at most 500
TRAIN_SCORED = 10_000  # train accuracy is over this many training problems: all of them up to 2 digits


class AdditionDataset(Dataset):
    """All (10**ndigit)**2 problems, split at random (a fixed seed) into test and train.

    Item i -> (x, y), both (3 * ndigit,) long: x the sequence without its last digit, y the sequence shifted by one
    with -1 (ignored by the loss) wherever y is still a digit of a or b.
    """

    def __init__(self, ndigit: int, split: str, seed: int = 1337):
        self.ndigit = ndigit
        num = (10 ** ndigit) ** 2
        perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
        num_test = min(num // 5, MAX_TEST)
        problems = perm[:num_test] if split == "test" else perm[num_test:]
        a, b = problems // 10 ** ndigit, problems % 10 ** ndigit
        self.seqs = torch.cat([digits(a, ndigit), digits(b, ndigit), digits(a + b, ndigit + 1).flip(1)], dim=1)

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        seq = self.seqs[i]
        x, y = seq[:-1], seq[1:].clone()
        y[:2 * self.ndigit - 1] = -1  # no loss on predicting the operands: they are random
        return x, y


def digits(n, width: int):
    """(N,) integers -> (N, width) their decimal digits, most significant first."""
    powers = 10 ** torch.arange(width - 1, -1, -1)
    return n[:, None] // powers % 10


def number(d):
    """(N, width) digits, most significant first -> (N,) integers."""
    return (d * 10 ** torch.arange(d.size(1) - 1, -1, -1, device=d.device)).sum(1)


@torch.no_grad()
def evaluate(model, dataset: AdditionDataset, device, limit: int | None = None):
    """Greedy-decodes the sum of every problem (or the first `limit`, in 1,000s) -> (accuracy, [(a, b, claimed)])."""
    nd = dataset.ndigit
    model.eval()
    correct, total, mistakes = 0, 0, []
    for x, _ in DataLoader(dataset, batch_size=1000):
        if limit is not None and total >= limit:
            break
        x = x.to(device)
        out = model.generate(x[:, :2 * nd], nd + 1, do_sample=False)  # greedy: the model's single best answer
        a, b, claimed = number(x[:, :nd]), number(x[:, nd:2 * nd]), number(out[:, 2 * nd:].flip(1))
        ok = claimed == a + b
        correct += int(ok.sum())
        total += len(ok)
        mistakes += [(int(a[i]), int(b[i]), int(claimed[i])) for i in torch.nonzero(~ok).flatten().tolist()]
    model.train()
    return correct / total, mistakes


def fail(message: str):
    """Bad input: one line on stderr, exit status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ndigit", type=int, default=2, help="digits per operand, 1 to 3")
    parser.add_argument("--max-iters", type=int, default=None,
                        help="training steps at most (default: 20,000 per digit)")
    parser.add_argument("--eval-interval", type=int, default=250,
                        help="every this many steps, score 10,000 training problems (all, up to 2 digits); "
                             "stop once all are right")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="minGPT uses 64; on a CPU each step's fixed cost dominates, so fewer, larger steps win")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=3407)
    parser.add_argument("--out-dir", default="out/adder")
    args = parser.parse_args()
    if not 1 <= args.ndigit <= 3:
        fail(f"--ndigit must be 1, 2 or 3, got {args.ndigit} (4 digits would be 10**8 problems in memory)")
    torch.manual_seed(args.seed)
    start = time.time()

    train_set, test_set = AdditionDataset(args.ndigit, "train"), AdditionDataset(args.ndigit, "test")
    model_config = GPT.get_default_config()
    model_config.model_type = "gpt-nano"
    model_config.vocab_size = 10  # the digits
    model_config.block_size = 3 * args.ndigit
    model = GPT(model_config)

    train_config = Trainer.get_default_config()
    train_config.batch_size = args.batch_size
    train_config.learning_rate = args.learning_rate
    train_config.max_iters = args.max_iters or 20_000 * args.ndigit
    train_config.num_workers = 0  # the dataset is one tensor in memory: worker processes would only add start-up time
    train_config.dtype = "float32"  # bf16 autocast only pays off for wider matmuls than gpt-nano's 48
    trainer = Trainer(train_config, model, train_set)

    bar = tqdm(total=train_config.max_iters, desc=f"adder {args.ndigit}-digit", unit="it")

    def on_batch_end(trainer):
        bar.update(1)
        if trainer.iter_num % 50 == 0:
            bar.set_postfix(loss=f"{trainer.loss.item():.4f}")
        if trainer.iter_num % args.eval_interval == 0:
            train_acc, _ = evaluate(model, train_set, trainer.device, limit=TRAIN_SCORED)
            bar.write(f"iter {trainer.iter_num}: loss {trainer.loss.item():.4f}, train accuracy {train_acc:.2%}")
            if train_acc == 1.0:
                trainer.stop_requested = True  # the trainer stops after this step

    trainer.add_callback("on_batch_end", on_batch_end)
    trainer.run()
    bar.close()
    train_seconds = time.time() - start

    accuracy, mistakes = evaluate(model, test_set, trainer.device)
    train_accuracy, _ = evaluate(model, train_set, trainer.device, limit=TRAIN_SCORED)
    for a, b, claimed in mistakes:
        print(f"mistake: GPT claims {a} + {b} = {claimed}, but it is {a + b}")
    summary = {"ndigit": args.ndigit, "test_accuracy": accuracy, "test_problems": len(test_set),
               "test_mistakes": [f"{a}+{b}={c}" for a, b, c in mistakes], "train_accuracy": train_accuracy,
               "train_problems": len(train_set),
               "iters": trainer.iter_num, "train_seconds": round(train_seconds, 1),
               "wall_seconds": round(time.time() - start, 1),
               "cpu_seconds": round(time.process_time(), 1), "device": str(trainer.device)}
    write_json(str(Path(args.out_dir) / "summary.json"), summary, indent=2)
    right = len(test_set) - len(mistakes)
    print(f"{args.ndigit}-digit addition: test accuracy {accuracy:.2%} ({right}/{len(test_set)}) "
          f"after {trainer.iter_num} steps, {summary['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
