"""A character-level GPT on a text file, written the way minGPT's projects/chargpt/chargpt.py is.

A minGPT user's script with only the imports changed: mingpt.model and mingpt.trainer become gptcore,
mingpt.utils becomes gptcore.utils. tests/test_mingpt_script.py runs it on a slice of tinyshakespeare:

    python tests/scripts/mingpt_chargpt.py --trainer.max_iters=50 --model.model_type=gpt-nano \
        --data.input_file=../shared/data/tinyshakespeare.txt --system.work_dir=/tmp/chargpt

It prints a line every 10 iterations; at iterations 0 and 25 it samples from the model (greedy, then top-k) and
saves model.pt, and it writes the last samples to samples.json so the test can check them against model.pt.
"""

import json
import os
import sys

import torch
from torch.utils.data import Dataset

from gptcore import GPT, Trainer
from gptcore.utils import CfgNode as CN
from gptcore.utils import set_seed, setup_logging


def get_config():
    C = CN()

    C.system = CN()
    C.system.seed = 3407
    C.system.work_dir = "./out/chargpt"

    C.data = CharDataset.get_default_config()

    C.model = GPT.get_default_config()
    C.model.model_type = "gpt-mini"

    C.trainer = Trainer.get_default_config()
    C.trainer.learning_rate = 5e-3  # a tiny model on a tiny text learns fast
    C.trainer.batch_size = 16
    C.trainer.num_workers = 0  # the data is a string in memory: worker processes would cost more than they save
    return C


class CharDataset(Dataset):
    """Every window of block_size + 1 characters of the text: x is the first block_size, y the same shifted by one."""

    @staticmethod
    def get_default_config():
        C = CN()
        C.input_file = "input.txt"
        C.max_chars = 12000  # the first max_chars characters of the file (enough to hold every letter of the prompt)
        C.block_size = 32
        return C

    def __init__(self, config, data):
        self.config = config
        chars = sorted(set(data))
        print(f"data has {len(data)} characters, {len(chars)} unique.")
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.itos = {i: ch for i, ch in enumerate(chars)}
        self.vocab_size = len(chars)
        self.data = data

    def get_vocab_size(self):
        return self.vocab_size

    def get_block_size(self):
        return self.config.block_size

    def __len__(self):
        return len(self.data) - self.config.block_size

    def __getitem__(self, idx):
        chunk = self.data[idx:idx + self.config.block_size + 1]
        dix = [self.stoi[s] for s in chunk]
        return torch.tensor(dix[:-1], dtype=torch.long), torch.tensor(dix[1:], dtype=torch.long)


if __name__ == "__main__":
    config = get_config()
    config.merge_from_args(sys.argv[1:])
    print(config)
    setup_logging(config)
    set_seed(config.system.seed)

    with open(config.data.input_file, encoding="utf-8") as f:
        text = f.read()[:config.data.max_chars]
    train_dataset = CharDataset(config.data, text)

    config.model.vocab_size = train_dataset.get_vocab_size()
    config.model.block_size = train_dataset.get_block_size()
    model = GPT(config.model)

    trainer = Trainer(config.trainer, model, train_dataset)

    def batch_end_callback(trainer):
        if trainer.iter_num % 10 == 0:
            print(f"iter_dt {trainer.iter_dt * 1000:.2f}ms; iter {trainer.iter_num}: train loss {trainer.loss.item():.5f}")

        if trainer.iter_num % 25 == 0:
            model.eval()
            with torch.no_grad():
                context = "O God, O God!"
                x = torch.tensor([train_dataset.stoi[s] for s in context], dtype=torch.long)[None, ...].to(trainer.device)
                greedy = model.generate(x, 16, do_sample=False)[0]
                sampled = model.generate(x, 16, temperature=1.0, do_sample=True, top_k=10)[0]
                for y in (greedy, sampled):
                    print("".join(train_dataset.itos[int(i)] for i in y))
            print("saving model")
            torch.save(model.state_dict(), os.path.join(config.system.work_dir, "model.pt"))
            samples = {"iter_num": trainer.iter_num, "device": str(trainer.device), "prompt": x[0].tolist(),
                       "greedy": greedy.tolist(), "sampled": sampled.tolist()}
            with open(os.path.join(config.system.work_dir, "samples.json"), "w") as f:
                json.dump(samples, f)
            model.train()

    trainer.set_callback("on_batch_end", batch_end_callback)

    trainer.run()
