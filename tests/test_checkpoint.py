"""Checkpoint files that go wrong: a file that is not a checkpoint is called that (and never to be deleted), a damaged
one in a run's folder points at the run's previous checkpoint, and a write that fails midway (the disk full)
leaves the previous checkpoint intact and loadable."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gptcore.checkpoint import checkpoint_path, load_checkpoint, model_checkpoint, runs_in, save_checkpoint
from gptcore.errors import GPTCoreError
from gptcore.model import GPT, GPTConfig
from gptcore.tokenizer import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]


def tiny_checkpoint(step: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    tok = CharTokenizer.from_text("abcdef")
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=16, block_size=8, vocab_size=tok.n_vocab))
    return model_checkpoint(model, tok, step)


def assert_same(loaded: dict, saved: dict):
    assert loaded["step"] == saved["step"]
    assert loaded["model"].keys() == saved["model"].keys()
    for k, v in saved["model"].items():
        assert torch.equal(loaded["model"][k], v), k


def test_sample_from_metrics_jsonl_says_it_is_not_a_checkpoint(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 4.2}\n')
    r = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--checkpoint", str(metrics), "-m", "5"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {metrics} is not a checkpoint"), last
    assert "delete" not in r.stderr
    assert metrics.read_text() == '{"step": 1, "loss": 4.2}\n'


def test_damaged_checkpoint_in_a_run_points_at_the_previous_one(tmp_path):
    first, second = checkpoint_path(str(tmp_path), 10), checkpoint_path(str(tmp_path), 20)
    save_checkpoint(first, tiny_checkpoint(10))
    save_checkpoint(second, tiny_checkpoint(20))
    data = Path(second).read_bytes()
    Path(second).write_bytes(data[: len(data) // 2])
    with pytest.raises(GPTCoreError, match=rf"checkpoint {second} is corrupt or truncated .*fall back to "
                                           r"ckpt_0000010\.pt"):
        load_checkpoint(str(tmp_path))  # the run's folder: its newest checkpoint is the damaged one


def test_damaged_lone_file_is_not_to_be_deleted(tmp_path):
    path = tmp_path / "exported.pt"
    save_checkpoint(str(path), tiny_checkpoint(5))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GPTCoreError, match="corrupt or truncated") as info:
        load_checkpoint(str(path))
    assert "delete" not in str(info.value)


def test_torch_file_that_is_not_ours(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(GPTCoreError, match=r"is not a gptcore checkpoint \(it lacks model, model_config"):
        load_checkpoint(str(path))


SAVE_WITH_FILE_SIZE_LIMIT = textwrap.dedent("""
    import resource, signal, sys, torch
    from gptcore.checkpoint import save_checkpoint
    from gptcore.errors import GPTCoreError
    path, limit, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ckpt = torch.load(sys.argv[4], weights_only=True)
    ckpt["step"] = step
    # Writes past `limit` bytes now fail with EFBIG, as they would with ENOSPC on a full disk.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing the write
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        save_checkpoint(path, ckpt)
    except GPTCoreError as e:
        print(e)
        sys.exit(3)
""")


@pytest.mark.parametrize("target", ["the next step's file", "the same file"])
def test_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, target):
    previous = checkpoint_path(str(tmp_path), 10)
    saved = tiny_checkpoint(10)
    save_checkpoint(previous, saved)
    size = os.path.getsize(previous)
    bigger = tiny_checkpoint(20, seed=1)
    bigger["model"]["extra"] = torch.zeros(size)  # 4 * size bytes more: the write must pass the limit
    source = tmp_path / "source.pt.in"
    torch.save(bigger, source)
    new = checkpoint_path(str(tmp_path), 20) if target == "the next step's file" else previous
    r = subprocess.run([sys.executable, "-c", SAVE_WITH_FILE_SIZE_LIMIT, new, str(size + 1024), "20", str(source)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stdout.startswith(f"could not write checkpoint {new} ("), r.stdout
    assert "earlier checkpoints are intact" in r.stdout
    source.unlink()
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(previous)]  # no temp file, no partial new checkpoint
    assert_same(load_checkpoint(str(tmp_path)), saved)



def test_runs_in_finds_runs_newest_first_once_each(tmp_path, monkeypatch):
    out = tmp_path / "out"
    for name, mtime in [("old", 1_000), ("new", 3_000), ("middle", 2_000)]:
        (out / name).mkdir(parents=True)
        (out / name / "ckpt_0000001.pt").write_bytes(b"")  # runs_in reads names and times, not contents
        os.utime(out / name / "ckpt_0000001.pt", (mtime, mtime))
    (out / "notes").mkdir()  # no checkpoint: not a run
    (out / "notes" / "model.pt").write_bytes(b"")
    (out / "ckpt_0000002.pt").write_bytes(b"")  # a run written straight into out (--out-dir out)
    os.utime(out / "ckpt_0000002.pt", (500, 500))
    monkeypatch.chdir(tmp_path)
    want = [str(out / "new"), str(out / "middle"), str(out / "old"), str(out)]
    assert runs_in(str(out)) == want
    assert runs_in(str(out), "out", str(tmp_path / "missing")) == want  # the same folder twice: each run once
    assert runs_in(str(tmp_path / "missing")) == []
