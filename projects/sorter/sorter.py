"""A GPT learns to sort: minGPT's demo (GPT and Trainer on a toy task), as a script. demo.ipynb walks through it.

A problem is 6 symbols from {0, 1, 2}; the model reads them and writes them back sorted:
    input 0 0 2 1 0 1  ->  output 0 0 0 1 1 2
There are only 3**6 = 729 problems, so a quarter of them is held out of training entirely, and the score on
1,000 fresh random problems mixes problems seen in training with problems never seen.

    python projects/sorter/sorter.py --out-dir out/sorter
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # lets a fresh clone run this without installing gptcore
from gptcore import GPT, Trainer  # noqa: E402
from gptcore.fileio import write_json  # noqa: E402

LENGTH, NUM_SYMBOLS = 6, 3


def all_problems() -> torch.Tensor:
    """Every sequence of LENGTH symbols, (NUM_SYMBOLS**LENGTH, LENGTH) long."""
    return torch.cartesian_prod(*[torch.arange(NUM_SYMBOLS)] * LENGTH)


def split_problems(seed: int = 1337) -> dict[str, torch.Tensor]:
    """{'train': ..., 'test': ...}: a fixed random quarter of all problems is the test split."""
    problems = all_problems()
    perm = torch.randperm(len(problems), generator=torch.Generator().manual_seed(seed))
    num_test = len(problems) // 4
    return {"test": problems[perm[:num_test]], "train": problems[perm[num_test:]]}


class SortDataset(Dataset):
    """Problems of one split, drawn at random. Item -> (x, y), both (2 * LENGTH - 1,) long.

    x is the problem then its sorted answer, without the last symbol; y is x shifted by one, with -1 (no loss)
    where y is still part of the problem, which is random and cannot be predicted.
    """

    def __init__(self, problems: torch.Tensor, num_samples: int = 10_000):
        self.problems = problems
        self.num_samples = num_samples  # an epoch's length: the trainer samples with replacement anyway

    def __len__(self):
        return self.num_samples

    def __getitem__(self, i):
        problem = self.problems[torch.randint(len(self.problems), ())]
        seq = torch.cat([problem, problem.sort().values])
        x, y = seq[:-1], seq[1:].clone()
        y[:LENGTH - 1] = -1
        return x, y


@torch.no_grad()
def evaluate(model, problems: torch.Tensor, device) -> tuple[float, list]:
    """Greedy-decodes the answer to each (N, LENGTH) problem -> (accuracy, [(problem, claimed), ...] mistakes)."""
    model.eval()
    out = model.generate(problems.to(device), LENGTH, do_sample=False)[:, LENGTH:].cpu()
    model.train()
    ok = (out == problems.sort(dim=1).values).all(dim=1)
    mistakes = [(problems[i].tolist(), out[i].tolist()) for i in torch.nonzero(~ok).flatten().tolist()]
    return ok.float().mean().item(), mistakes


def train(max_iters: int, batch_size: int, learning_rate: float, seed: int = 3407):
    """Trains gpt-nano on the train split -> (model, trainer)."""
    torch.manual_seed(seed)
    splits = split_problems()
    model_config = GPT.get_default_config()
    model_config.model_type = "gpt-nano"
    model_config.vocab_size = NUM_SYMBOLS
    model_config.block_size = 2 * LENGTH - 1
    model = GPT(model_config)

    train_config = Trainer.get_default_config()
    train_config.batch_size = batch_size
    train_config.learning_rate = learning_rate
    train_config.max_iters = max_iters
    train_config.num_workers = 0
    train_config.dtype = "float32"  # bf16 autocast only pays off for wider matmuls than gpt-nano's 48
    trainer = Trainer(train_config, model, SortDataset(splits["train"]))
    bar = tqdm(total=max_iters, desc="sorter", unit="it")

    def on_batch_end(trainer):
        bar.update(1)
        if trainer.iter_num % 100 == 0:
            bar.set_postfix(loss=f"{trainer.loss.item():.4f}")

    trainer.add_callback("on_batch_end", on_batch_end)
    trainer.run()
    bar.close()
    return model, trainer


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-iters", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=256,
                        help="minGPT's demo uses 64 for 2,000 steps; on a CPU each step's fixed cost dominates, "
                             "so fewer, larger steps win")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=3407)
    parser.add_argument("--out-dir", default="out/sorter")
    args = parser.parse_args()
    start = time.time()
    model, trainer = train(args.max_iters, args.batch_size, args.learning_rate, args.seed)
    train_seconds = time.time() - start

    fresh = torch.randint(NUM_SYMBOLS, (1000, LENGTH), generator=torch.Generator().manual_seed(args.seed + 1))
    accuracy, mistakes = evaluate(model, fresh, trainer.device)
    held_out_accuracy, _ = evaluate(model, split_problems()["test"], trainer.device)
    for problem, claimed in mistakes:
        print(f"mistake: GPT sorts {problem} as {claimed}")
    summary = {"accuracy": accuracy, "fresh_problems": len(fresh), "held_out_accuracy": held_out_accuracy,
               "iters": trainer.iter_num, "train_seconds": round(train_seconds, 1),
               "wall_seconds": round(time.time() - start, 1),
               "cpu_seconds": round(time.process_time(), 1), "device": str(trainer.device)}
    write_json(str(Path(args.out_dir) / "summary.json"), summary, indent=2)
    print(f"sorter: accuracy {accuracy:.2%} on 1,000 fresh random problems, {held_out_accuracy:.2%} on the "
          f"{len(split_problems()['test'])} never trained on, after {trainer.iter_num} steps, "
          f"{summary['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
