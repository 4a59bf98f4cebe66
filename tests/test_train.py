"""Training against independent references: an uninterrupted run for resume, one process for DDP,
one big batch in float64 for gradient accumulation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from torch.utils.data import TensorDataset

from gptcore import GPT, GPTConfig, GPTCoreError
from gptcore.checkpoint import list_checkpoints
from gptcore.data import write_meta, write_shard
from gptcore.tokenizer import CharTokenizer
from gptcore.train import Trainer, TrainConfig, TrainerConfig
from gptcore.train.loop import learning_rate
from gptcore.train.recipe import build_trainer, grad_accum_steps

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
        "--eval-steps", "2", "--sample-tokens", "8", "--warmup-steps", "2", "--learning-rate", "3e-3", "--dtype", "float32"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small char-level dataset in gptcore's shard format, two train shards and one val shard."""
    path = tmp_path_factory.mktemp("data")
    text = SHAKESPEARE.read_text()[:120_000]
    tok = CharTokenizer.from_text(text)
    ids = np.array(tok.encode(text), dtype=np.uint16)
    n = len(ids) * 9 // 10
    write_shard(str(path / "train_000000.bin"), ids[: n // 2])
    write_shard(str(path / "train_000001.bin"), ids[n // 2: n])
    write_shard(str(path / "val_000000.bin"), ids[n:])
    write_meta(str(path), {"format_version": 1, "tokenizer": tok.describe(), "vocab_size": tok.n_vocab,
                           "train_shards": ["train_000000.bin", "train_000001.bin"], "val_shards": ["val_000000.bin"],
                           "input_hash": "tiny-shakespeare-slice"})
    return path


def train_cmd(data_dir, out_dir, *extra, launcher=(sys.executable,)):
    return [*launcher, str(ROOT / "train.py"), "--data", str(data_dir), "--out-dir", str(out_dir), *TINY, *extra]


def run(cmd, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, **kw)


def metrics(out_dir) -> list[dict]:
    with open(Path(out_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_sigkill_and_resume_matches_uninterrupted_run_bitwise(data_dir, tmp_path):
    args = ["--max-steps", "40", "--save-interval", "5", "--eval-interval", "10", "--dropout", "0.1"]
    ref = run(train_cmd(data_dir, tmp_path / "ref", *args))
    assert ref.returncode == 0, ref.stderr

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(train_cmd(data_dir, tmp_path / "run", *args), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 17):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(log.read_text().splitlines())
    assert 17 <= done < 40, f"the run was to be killed mid-way, but it had logged {done} steps"

    resumed = run(train_cmd(data_dir, tmp_path / "run", *args))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    want, got = metrics(tmp_path / "ref"), metrics(tmp_path / "run")
    assert [r["step"] for r in got] == list(range(1, 41))
    for key in ("loss", "lr", "grad_norm", "tokens", "val_loss"):
        assert [r.get(key) for r in got] == [r.get(key) for r in want], key
    assert len(list_checkpoints(str(tmp_path / "run"))) == 3  # keep_checkpoints
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_ddp_two_processes_match_one_process(data_dir, tmp_path):
    total = 4 * 4 * 32  # 4 micro-batches of 4 x 32 tokens: 4 on one process, 2 on each of two
    args = ["--max-steps", "12", "--total-batch-tokens", str(total), "--eval-interval", "6", "--save-interval", "100"]
    single = run(train_cmd(data_dir, tmp_path / "one", *args))
    assert single.returncode == 0, single.stderr
    ddp = run(train_cmd(data_dir, tmp_path / "two", *args,
                        launcher=(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")))
    assert ddp.returncode == 0, ddp.stderr
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(one) == len(two) == 12
    for a, b in zip(one, two):
        assert a["tokens"] == b["tokens"]
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"])
    assert abs(one[-1]["val_loss"] - two[-1]["val_loss"]) <= 1e-4 * one[-1]["val_loss"]


def test_gradient_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    k, b, T = 4, 3, 16
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=T, vocab_size=65)).double()
    reference = GPT(model.config).double()
    reference.load_state_dict(model.state_dict())
    x, y = torch.randint(0, 65, (k * b, T)), torch.randint(0, 65, (k * b, T))

    _, loss = reference(x, y)  # one batch of k*b
    loss.backward()
    # k micro-batches of b: the sampler's first epoch is a permutation of the k*b rows
    config = TrainerConfig(batch_size=b, grad_accum_steps=k, dtype="float32", device="cpu", num_workers=0)
    trainer = Trainer(config, model, TensorDataset(x, y))
    mean_loss = trainer.forward_backward()

    assert torch.allclose(mean_loss.double(), loss, rtol=1e-6)  # the logged loss is float32
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12), name


def test_learning_rate_schedule():
    c = TrainerConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110)
    assert learning_rate(0, c) == pytest.approx(0.1)
    assert learning_rate(9, c) == pytest.approx(1.0)
    assert learning_rate(60, c) == pytest.approx(0.55)  # half way through the cosine
    assert learning_rate(110, c) == pytest.approx(0.1)
    lrs = [learning_rate(s, c) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    constant = TrainerConfig(learning_rate=1.0, warmup_iters=0)  # minGPT's: no schedule
    assert {learning_rate(s, constant) for s in (0, 5, 10_000)} == {1.0}


def test_nan_loss_stops_the_run_naming_the_step(data_dir, tmp_path):
    config = TrainConfig.from_preset(None, data=str(data_dir), out_dir=str(tmp_path), n_layer=1, n_head=1, n_embd=16,
                                     block_size=16, batch_size=2, total_batch_tokens=None, max_iters=10, warmup_iters=2,
                                     eval_interval=100, sample_tokens=0, device="cpu", dtype="float32")
    trainer, _ = build_trainer(config)

    def poison(t):
        if t.iter_num == 3:
            with torch.no_grad():
                t.raw_model.transformer.ln_f.weight.fill_(float("nan"))
    trainer.add_callback("on_batch_end", poison)
    with pytest.raises(GPTCoreError, match="loss became nan at step 4"):
        trainer.run()


# ---- bad input: one clear error each ----

def test_missing_dataset_says_to_run_prepare(tmp_path):
    r = run([sys.executable, str(ROOT / "train.py"), "--data", str(tmp_path / "none"), "--out-dir", str(tmp_path / "o")])
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: no prepared dataset at") and "data/prepare.py" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_unknown_preset(tmp_path):
    r = run([sys.executable, str(ROOT / "train.py"), "--preset", "gpt5"])
    assert r.returncode == 2
    assert "unknown training preset 'gpt5'" in r.stderr and "quickstart" in r.stderr


def test_checkpoint_from_another_model_config(data_dir, tmp_path):
    first = run(train_cmd(data_dir, tmp_path, "--max-steps", "2", "--eval-interval", "100"))
    assert first.returncode == 0, first.stderr
    r = run(train_cmd(data_dir, tmp_path, "--max-steps", "4", "--n-embd", "64"))
    assert r.returncode == 2
    assert "holds a run of another model (n_embd=32 (this run: 64))" in r.stderr and "pick a new --out-dir" in r.stderr


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_or_truncated_checkpoint(data_dir, tmp_path, damage):
    first = run(train_cmd(data_dir, tmp_path, "--max-steps", "2", "--eval-interval", "100"))
    assert first.returncode == 0, first.stderr
    ckpt = Path(list_checkpoints(str(tmp_path))[-1])
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint" * 10)
    r = run(train_cmd(data_dir, tmp_path, "--max-steps", "4"))
    assert r.returncode == 2
    assert f"checkpoint {ckpt} is corrupt or truncated" in r.stderr


def test_batch_that_does_not_divide_across_ranks():
    config = TrainConfig.from_preset(None, block_size=16, batch_size=2, total_batch_tokens=96)
    assert grad_accum_steps(config, world_size=1) == 3
    with pytest.raises(GPTCoreError, match=r"total_batch_tokens=96 is not a multiple of .*2\*16\*2=64"):
        grad_accum_steps(config, world_size=2)


def test_export_writes_a_small_weights_only_checkpoint(data_dir, tmp_path):
    from gptcore.checkpoint import load_checkpoint, model_from_checkpoint
    r = run(train_cmd(data_dir, tmp_path / "out", "--max-steps", "3", "--eval-interval", "100",
                      "--export", str(tmp_path / "model.pt")))
    assert r.returncode == 0, r.stderr
    full = load_checkpoint(str(tmp_path / "out"))
    small = load_checkpoint(str(tmp_path / "model.pt"))
    assert "optimizer" not in small and small["step"] == full["step"] == 3
    assert small["model"]["transformer.wte.weight"].dtype == torch.bfloat16
    assert (tmp_path / "model.pt").stat().st_size < 0.3 * Path(list_checkpoints(str(tmp_path / "out"))[-1]).stat().st_size
    model, tok = model_from_checkpoint(small)
    reference, _ = model_from_checkpoint(full)
    assert model.lm_head.weight is model.transformer.wte.weight
    x = torch.tensor([tok.encode("ROMEO: ")])
    with torch.no_grad():
        assert (model(x)[0] - reference(x)[0]).abs().max() < 0.05  # bf16 weights


def test_compile_trains_like_eager_and_saves_plain_keys(data_dir, tmp_path):
    args = ["--max-steps", "3", "--eval-interval", "3"]
    eager = run(train_cmd(data_dir, tmp_path / "eager", *args))
    compiled = run(train_cmd(data_dir, tmp_path / "compiled", *args, "--compile"))
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr
    assert "sample: " in compiled.stdout + compiled.stderr  # sampling after eval works on the compiled run
    for a, b in zip(metrics(tmp_path / "eager"), metrics(tmp_path / "compiled")):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * a["loss"]
    assert abs(metrics(tmp_path / "eager")[-1]["val_loss"] - metrics(tmp_path / "compiled")[-1]["val_loss"]) < 1e-3
    ckpt = torch.load(list_checkpoints(str(tmp_path / "compiled"))[-1], weights_only=True)
    assert not [k for k in ckpt["model"] if "_orig_mod" in k]
