"""The Trainer without GPT (an MLP, map-style and iterable datasets), minGPT's API, and a minGPT script that runs
with only its imports changed. References: the noise floor of a known function, an uninterrupted run for resume,
the held-out sequences of the sorting task."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.data import Dataset, IterableDataset

from gptcore import GPT, GPTConfig, GPTCoreError, Trainer, TrainerConfig
from gptcore.train.loop import ResumableSampler

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "scripts"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def run_script(*args, timeout=600):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=timeout)


class Sine(Dataset):
    """y = sin(2x) + noise of standard deviation 0.1 for x in [-2, 2]: the best possible mean squared error is 0.01."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, generator=g) * 4 - 2
        self.y = torch.sin(2 * self.x) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 1))

    def forward(self, x, y=None):
        out = self.net(x)
        return out, None if y is None else F.mse_loss(out, y)


def mlp_config(**kw):
    c = Trainer.get_default_config()
    c.device, c.dtype, c.num_workers, c.weight_decay = "cpu", "float32", 0, 0.0
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_trains_a_two_layer_mlp_regressor_to_the_noise_floor():
    torch.manual_seed(0)
    model = MLP()
    trainer = Trainer(mlp_config(max_iters=800, batch_size=64, learning_rate=1e-2, min_lr=1e-3), model, Sine(2000, 0))
    losses = []
    trainer.add_callback("on_batch_end", lambda t: losses.append(t.loss.item()))
    trainer.run()
    assert len(losses) == trainer.iter_num == 800
    fresh = Sine(5000, 1)
    with torch.no_grad():
        _, mse = model(fresh.x, fresh.y)
    # noise variance 0.01 is the floor; an untrained model sits near var(sin 2x) ~ 0.5
    assert 0.008 < mse.item() < 0.0115, mse.item()


class Stream(IterableDataset):
    """An endless iterable of the Sine examples, keeping its position (state_dict) like gptcore's ShardLoader."""

    def __init__(self):
        self.data, self.position = Sine(500, 0), 0

    def __iter__(self):
        while True:
            example = self.data[self.position % len(self.data)]
            self.position += 1  # before the yield: the position counts what was handed out
            yield example

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def test_an_iterable_dataset_trains_and_keeps_its_position():
    torch.manual_seed(0)
    trainer = Trainer(mlp_config(max_iters=300, batch_size=32, learning_rate=1e-2), MLP(), Stream())
    trainer.run()
    assert trainer.loss.item() < 0.05
    assert trainer.state_dict()["data"] == {"position": 300 * 32}
    with pytest.raises(GPTCoreError, match="num_workers=0"):
        Trainer(mlp_config(num_workers=2), MLP(), Stream())


def test_map_style_resume_after_sigkill_is_bitwise_equal(tmp_path):
    """Two DataLoader workers prefetch past the consumed position; dropout draws from the RNG resume restores."""
    steps = 40
    ref = run_script(SCRIPTS / "resume_mlp.py", tmp_path / "ref", steps, 2, 0)
    assert ref.returncode == 0, ref.stderr

    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "resume_mlp.py"), str(tmp_path / "run"), str(steps), "2",
                             "0.05"], env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 17):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(log.read_text().splitlines())
    assert 17 <= done < steps, f"the run was to be killed mid-way, but it had logged {done} steps"

    resumed = run_script(SCRIPTS / "resume_mlp.py", tmp_path / "run", steps, 2, 0)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"resuming at step (15|20)\b", resumed.stdout), resumed.stdout
    want = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    for key in ("loss", "lr", "grad_norm"):
        assert [r[key] for r in got] == [r[key] for r in want], key


def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_the_sampler_shuffles_epochs_splits_ranks_and_resumes():
    one = ResumableSampler(10, batch_size=4, seed=3)
    stream = take(one, 24)  # 2.4 epochs: each a fresh permutation
    assert sorted(stream[:10]) == sorted(stream[10:20]) == list(range(10)) and stream[:10] != stream[10:20]
    ranks = [take(ResumableSampler(10, batch_size=2, seed=3, rank=r, world_size=2), 12) for r in range(2)]
    for b in range(6):  # two processes' micro-batches are the halves of one process's batch
        assert stream[4 * b: 4 * b + 4] == ranks[0][2 * b: 2 * b + 2] + ranks[1][2 * b: 2 * b + 2]
    one.advance()
    one.advance()
    assert one.state_dict() == {"seed": 3, "size": 10, "position": 8}
    assert take(one, 6) == stream[8:14]  # resumes mid-stream, into the next epoch
    with pytest.raises(GPTCoreError, match="same dataset and seed"):
        ResumableSampler(11, batch_size=4, seed=3).load_state_dict(one.state_dict())


# ---- minGPT's API ----

def test_gpt_default_config_and_model_types():
    c = GPT.get_default_config()
    assert (c.model_type, c.n_layer, c.n_head, c.n_embd, c.vocab_size, c.block_size) == (None,) * 6
    assert (c.embd_pdrop, c.resid_pdrop, c.attn_pdrop) == (0.1, 0.1, 0.1)
    c.model_type, c.vocab_size, c.block_size = "gopher-44m", 100, 16
    model = GPT(c)
    assert (model.config.n_layer, model.config.n_head, model.config.n_embd) == (8, 16, 512)
    sizes = {"openai-gpt": (12, 12, 768), "gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024),
             "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600), "gpt-mini": (6, 6, 192),
             "gpt-micro": (4, 4, 128), "gpt-nano": (3, 3, 48)}
    for name, want in sizes.items():
        r = GPTConfig(model_type=name).resolved()
        assert (r.n_layer, r.n_head, r.n_embd) == want, name
    assert (GPTConfig().resolved().n_layer, GPTConfig().resolved().n_embd) == (12, 768)  # gptcore's default: GPT-2


def test_gpt_config_errors():
    c = GPT.get_default_config()
    c.model_type, c.n_layer, c.vocab_size, c.block_size = "gpt-nano", 4, 10, 8
    with pytest.raises(GPTCoreError, match="model_type='gpt-nano' sets n_layer, n_head and n_embd, but n_layer=4"):
        GPT(c)
    with pytest.raises(GPTCoreError, match="unknown model_type 'gpt5'"):
        GPTConfig(model_type="gpt5")
    c = GPT.get_default_config()
    c.model_type = "gpt-nano"
    with pytest.raises(GPTCoreError, match="config.vocab_size is not set"):
        GPT(c)


def test_dropout_sites_follow_the_pdrops():
    c = GPTConfig(model_type="gpt-nano", vocab_size=10, block_size=8, dropout=0.3, attn_pdrop=0.0)
    m = GPT(c)
    assert m.transformer.drop.p == 0.3 and m.transformer.h[0].mlp.dropout.p == 0.3
    assert m.transformer.h[0].attn.dropout == 0.0


def test_trainer_default_config_and_callbacks():
    c = Trainer.get_default_config()
    assert isinstance(c, TrainerConfig)
    assert (c.device, c.num_workers, c.max_iters, c.batch_size, c.learning_rate, c.betas, c.weight_decay,
            c.grad_norm_clip) == ("auto", 4, None, 64, 3e-4, (0.9, 0.95), 0.1, 1.0)
    trainer = Trainer(mlp_config(max_iters=3, batch_size=8), MLP(), Sine(50, 0))
    assert trainer.device == "cpu"
    seen = []
    trainer.add_callback("on_batch_end", lambda t: seen.append("first"))
    trainer.set_callback("on_batch_end", lambda t: seen.append((t.iter_num, t.iter_dt > 0, t.loss.dim())))
    trainer.run()
    assert seen == [(1, True, 0), (2, True, 0), (3, True, 0)]
    with pytest.raises(GPTCoreError, match="unknown callback event 'on_batch_ends'"):
        trainer.add_callback("on_batch_ends", print)


def test_mingpt_sorting_demo_runs_with_only_imports_changed():
    """minGPT's demo.ipynb, with fewer iterations; greedy answers on 25% of all sequences never trained on."""
    r = run_script(SCRIPTS / "mingpt_sort.py", 600)
    assert r.returncode == 0, r.stderr
    assert "iter 600: train loss" in r.stdout
    score = re.search(r"test final score: (\d+)/(\d+)", r.stdout)
    assert score and int(score[2]) == 5000 and int(score[1]) >= 0.99 * 5000, r.stdout


def test_sigterm_ends_the_run_after_the_step_with_a_checkpoint(tmp_path):
    from gptcore.checkpoint import list_checkpoints
    from gptcore.train.callbacks import Checkpoints
    torch.manual_seed(0)
    trainer = Trainer(mlp_config(max_iters=50, batch_size=8), MLP(), Sine(100, 0))
    trainer.add_callbacks(Checkpoints(str(tmp_path), interval=100, keep=1, extra=lambda t: {}))
    trainer.add_callback("on_batch_end", lambda t: t.iter_num == 3 and os.kill(os.getpid(), signal.SIGTERM))
    previous = signal.getsignal(signal.SIGTERM)
    trainer.run()
    assert trainer.iter_num == 4  # the signal lands during step 3's callbacks; step 4 is the last
    assert [Path(p).name for p in list_checkpoints(str(tmp_path))] == ["ckpt_0000004.pt"]
    assert torch.load(list_checkpoints(str(tmp_path))[0], weights_only=True)["iter_num"] == 4
    assert signal.getsignal(signal.SIGTERM) is previous  # the run's handler is gone again
