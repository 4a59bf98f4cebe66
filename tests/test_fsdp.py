"""FSDP (train.py --fsdp, PyTorch's FSDP2) on CPU with gloo, against independent references: one process with the same
global batch, and an uninterrupted FSDP run for resume."""

import shutil
import sys

import pytest
import torch

from gptcore import GPTCoreError
from gptcore.checkpoint import list_checkpoints, load_checkpoint, model_from_checkpoint
from gptcore.train import TrainConfig
from gptcore.train.recipe import build_trainer
from test_train import data_dir, metrics, run, train_cmd  # noqa: F401 (data_dir is a fixture)

TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
# 4 micro-batches of 4 x 32 tokens per step: 4 on one process, 2 on each of two (so FSDP's no-sync micro-steps run);
# no evals but the last, checkpoints every 3 steps
ARGS = ["--total-batch-tokens", str(4 * 4 * 32), "--eval-interval", "100", "--save-interval", "3"]


def weights(out_dir) -> dict:
    return load_checkpoint(str(out_dir))["model"]


def test_fsdp_matches_one_process_and_resumes_exactly(data_dir, tmp_path):  # noqa: F811
    single = run(train_cmd(data_dir, tmp_path / "one", *ARGS, "--max-steps", "6"))
    assert single.returncode == 0, single.stderr
    fsdp = run(train_cmd(data_dir, tmp_path / "fsdp", *ARGS, "--max-steps", "6", "--fsdp", launcher=TORCHRUN))
    assert fsdp.returncode == 0, fsdp.stderr
    assert "FSDP over 2 processes" in fsdp.stdout

    # the same global batch in one process: the same losses, up to float32 summation order
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "fsdp")
    assert [r["step"] for r in two] == list(range(1, 7))
    for a, b in zip(one, two):
        assert a["tokens"] == b["tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert two[-1]["val_loss"] == pytest.approx(one[-1]["val_loss"], rel=1e-5)

    # the checkpoint is an ordinary one, whole: sample.py and eval.py load it as they load any other
    # (compared by outputs: AdamW turns the float noise in near-zero gradients, such as the key biases', into updates)
    model, _ = model_from_checkpoint(load_checkpoint(str(tmp_path / "fsdp")))
    reference, _ = model_from_checkpoint(load_checkpoint(str(tmp_path / "one")))
    x = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x)[0], reference(x)[0], rtol=0, atol=1e-4)

    # resumed under FSDP from the run's step-3 checkpoint, with activation checkpointing (which recomputes the same
    # values): exactly the uninterrupted run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(list_checkpoints(str(tmp_path / "fsdp"))[0], resumed)
    rest = run(train_cmd(data_dir, resumed, *ARGS, "--max-steps", "6", "--fsdp", "--activation-checkpointing",
                         launcher=TORCHRUN))
    assert rest.returncode == 0, rest.stderr
    assert "resuming from" in rest.stdout and "at step 3 of 6" in rest.stdout
    keys = ("step", "loss", "grad_norm", "lr", "tokens", "val_loss")
    assert [[r.get(k) for k in keys] for r in metrics(resumed)] == [[r.get(k) for k in keys] for r in two[3:]]
    got, want = weights(resumed), weights(tmp_path / "fsdp")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_fsdp_in_one_process_fails_in_one_line(data_dir, tmp_path):  # noqa: F811
    config = TrainConfig.from_preset(None, data=str(data_dir), out_dir=str(tmp_path), n_layer=1, n_head=1, n_embd=16,
                                     block_size=16, batch_size=2, total_batch_tokens=None, device="cpu", fsdp=True)
    with pytest.raises(GPTCoreError, match=r"^fsdp shards the model across processes, but this is one: start it under "
                                           r"torchrun --standalone --nproc_per_node=N with N >= 2, or drop --fsdp$"):
        build_trainer(config)
