"""Faults during a run: data that changes under a running loader is named, not read as garbage."""

import os
from pathlib import Path

import numpy as np
import pytest

from gptcore import corpora
from gptcore.data import ShardLoader, read_meta, read_tokens, write_shard
from gptcore.errors import GPTCoreError

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(200))


@pytest.fixture
def prepared(tmp_path) -> Path:
    (tmp_path / "corpus.txt").write_text(TEXT)
    corpora.prepare(str(tmp_path / "corpus.txt"), out_dir=str(tmp_path / "data"), tokenizer="char",
                    shard_tokens=2000, workers=1)
    return tmp_path / "data"


def first_shard(data: Path) -> Path:
    return data / read_meta(str(data))["train_shards"][0]


@pytest.mark.parametrize("change", ["truncated", "rewritten, same size", "replaced, new tokens"])
def test_shard_changed_under_a_running_loader_is_named(prepared, change):
    loader = ShardLoader(str(prepared), batch_size=4, block_size=16, seed=0)
    loader.next_batch()  # reading works
    shard = first_shard(prepared)
    tokens = read_tokens(str(shard))
    if change == "truncated":
        os.truncate(shard, os.path.getsize(shard) // 2)
    elif change == "rewritten, same size":
        os.utime(shard, ns=(0, 0))  # a rewrite with the same bytes count: only the modification time tells
    else:
        write_shard(str(shard), tokens[: len(tokens) // 2])
    with pytest.raises(GPTCoreError, match=rf"shard {shard} changed while this run was reading it.*prepare\.py"):
        for _ in range(loader.chunks_per_epoch):  # enough batches to reach the changed shard
            loader.next_batch()


def test_token_outside_the_vocabulary_is_named(prepared):
    shard = first_shard(prepared)
    tokens = read_tokens(str(shard))
    vocab = read_meta(str(prepared))["vocab_size"]
    write_shard(str(shard), np.full_like(tokens, vocab + 5))  # a valid shard, but not of this dataset's tokenizer
    loader = ShardLoader(str(prepared), batch_size=2, block_size=16, seed=0)
    with pytest.raises(GPTCoreError, match=rf"shard {shard} is truncated or corrupt \(token id {vocab + 5} is "
                                           rf"outside the vocabulary of {vocab}\)"):
        for _ in range(loader.chunks_per_epoch):
            loader.next_batch()


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoints_before_it(prepared, tmp_path):
    """A learning rate of 1e30 blows the weights up in one step: the loss of step 2 is NaN."""
    import subprocess
    import sys

    from gptcore.checkpoint import list_checkpoints, load_checkpoint
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(root / "train.py"), "--data", str(prepared), "--out-dir", str(out),
                        "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
                        "--max-steps", "10", "--warmup-steps", "0", "--learning-rate", "1e30", "--save-interval", "1",
                        "--keep-checkpoints", "20", "--eval-interval", "100", "--dtype", "float32"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the loss became nan at step 2;"), last
    kept = list_checkpoints(str(out))
    assert [os.path.basename(p) for p in kept] == ["ckpt_0000001.pt"]  # none written at or after the NaN
    assert load_checkpoint(kept[0])["step"] == 1
    assert not list(out.glob("*.tmp"))
