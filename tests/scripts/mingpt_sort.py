"""minGPT's demo.ipynb (a GPT learns to sort), written against minGPT's API: only the imports name gptcore.

Run by tests/test_trainer_generic.py; on its own: `python tests/scripts/mingpt_sort.py [max_iters]`.
"""

import pickle
import sys

import torch
from torch.utils.data import Dataset
from torch.utils.data.dataloader import DataLoader

from gptcore import GPT, Trainer  # minGPT: from mingpt.model import GPT; from mingpt.trainer import Trainer
from gptcore.utils import set_seed  # minGPT: from mingpt.utils import set_seed

set_seed(3407)


class SortDataset(Dataset):
    """Sorting length-6 sequences of 0, 1, 2. Input 0 0 2 1 0 1 -> output 0 0 0 1 1 2, fed in as
    x: 0 0 2 1 0 1 0 0 0 1 1
    y: I I I I I 0 0 0 1 1 2    (I: ignored by the loss, -1: the model is still reading the input)
    """

    def __init__(self, split, length=6, num_digits=3):
        assert split in {"train", "test"}
        self.split, self.length, self.num_digits = split, length, num_digits

    def __len__(self):
        return 10000

    def get_vocab_size(self):
        return self.num_digits

    def get_block_size(self):
        return self.length * 2 - 1

    def __getitem__(self, idx):
        while True:  # rejection sampling: an input of this split
            inp = torch.randint(self.num_digits, size=(self.length,), dtype=torch.long)
            # half the time, insist on many repeats: the hard cases
            if torch.rand(1).item() < 0.5 and inp.unique().nelement() > self.length // 2:
                continue
            h = hash(pickle.dumps(inp.tolist()))
            if ("test" if h % 4 == 0 else "train") == self.split:  # 25% of all sequences are held out
                break
        cat = torch.cat((inp, torch.sort(inp)[0]), dim=0)
        x, y = cat[:-1].clone(), cat[1:].clone()
        y[:self.length - 1] = -1
        return x, y


train_dataset = SortDataset("train")
test_dataset = SortDataset("test")

model_config = GPT.get_default_config()
model_config.model_type = "gpt-nano"
model_config.vocab_size = train_dataset.get_vocab_size()
model_config.block_size = train_dataset.get_block_size()
model = GPT(model_config)

train_config = Trainer.get_default_config()
train_config.learning_rate = 5e-4  # the model we're using is so small that we can go a bit faster
train_config.max_iters = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
train_config.num_workers = 0
trainer = Trainer(train_config, model, train_dataset)


def batch_end_callback(trainer):
    if trainer.iter_num % 100 == 0:
        print(f"iter_dt {trainer.iter_dt * 1000:.2f}ms; iter {trainer.iter_num}: train loss {trainer.loss.item():.5f}")


trainer.set_callback("on_batch_end", batch_end_callback)
trainer.run()
model.eval()


def eval_split(trainer, split, max_batches):
    dataset = {"train": train_dataset, "test": test_dataset}[split]
    n = train_dataset.length
    results = []
    mistakes_printed_already = 0
    loader = DataLoader(dataset, batch_size=100, num_workers=0, drop_last=False)
    for b, (x, y) in enumerate(loader):
        x, y = x.to(trainer.device), y.to(trainer.device)
        inp, sol = x[:, :n], y[:, -n:]
        cat = model.generate(inp, n, do_sample=False)  # greedy argmax, not sampling
        sol_candidate = cat[:, n:]
        correct = (sol == sol_candidate).all(1).cpu()
        for i in range(x.size(0)):
            results.append(int(correct[i]))
            if not correct[i] and mistakes_printed_already < 3:
                mistakes_printed_already += 1
                print(f"GPT claims that {inp[i].tolist()} sorted is {sol_candidate[i].tolist()} but gt is {sol[i].tolist()}")
        if max_batches is not None and b + 1 >= max_batches:
            break
    rt = torch.tensor(results, dtype=torch.float)
    print("%s final score: %d/%d = %.2f%% correct" % (split, rt.sum(), len(results), 100 * rt.mean()))
    return rt.sum()


with torch.no_grad():
    train_score = eval_split(trainer, "train", max_batches=50)
    test_score = eval_split(trainer, "test", max_batches=50)
