"""Experiment trackers, read back with the trackers' own readers (TensorBoard's EventAccumulator, W&B's record
protobufs) and checked against metrics.jsonl, the run's own log: same scalars at the same steps, a killed and resumed
run continuing the same log, only rank 0 logging under torchrun, and one clear line for bad --log-to values."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
        "--eval-steps", "2", "--sample-tokens", "8", "--warmup-steps", "2", "--dtype", "float32"]


def env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def run(cmd, **extra_env):
    return subprocess.run(cmd, capture_output=True, text=True, env=env(**extra_env), cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small char-level dataset, prepared by data/prepare.py from a slice of tinyshakespeare."""
    tmp = tmp_path_factory.mktemp("trackers-data")
    (tmp / "text.txt").write_text(SHAKESPEARE.read_text()[:40_000])
    out = tmp / "prepared"
    done = run([sys.executable, "data/prepare.py", "--dataset", str(tmp / "text.txt"), "--tokenizer", "char",
                "--out-dir", str(out), "--workers", "1"])
    assert done.returncode == 0, done.stderr
    return out


def train_cmd(data_dir, out_dir, *extra, launcher=(sys.executable,)):
    return [*launcher, str(ROOT / "train.py"), "--data", str(data_dir), "--out-dir", str(out_dir), *TINY, *extra]


def metrics(out_dir) -> list[dict]:
    with open(Path(out_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def numeric_series(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as key -> [(step, value)], for every numeric key but step."""
    series = {}
    for r in records:
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                series.setdefault(k, []).append((r["step"], v))
    return series


def tensorboard_scalars(log_dir):
    """TensorBoard's own reading of log_dir -> ({tag: [(step, value)]}, the EventAccumulator)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}, acc


def assert_same_series(got: dict, want: dict):
    """TensorBoard keeps scalars as float32: equal to float32 precision, at exactly the same steps."""
    assert sorted(got) == sorted(want)
    for key in want:
        assert [s for s, _ in got[key]] == [s for s, _ in want[key]], key
        for (_, a), (_, b) in zip(got[key], want[key]):
            assert a == pytest.approx(b, rel=1e-6, abs=1e-30), key


def test_tensorboard_holds_what_metrics_jsonl_holds_and_only_rank_0_writes(data_dir, tmp_path):
    out = tmp_path / "run"
    done = run(train_cmd(data_dir, out, "--max-steps", "8", "--eval-interval", "4", "--save-interval", "100",
                         "--log-to", "tensorboard",
                         launcher=(sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   "--nproc_per_node=2")))
    assert done.returncode == 0, done.stderr
    records = metrics(out)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 1 wrote nothing
    got, acc = tensorboard_scalars(out / "tensorboard")
    want = numeric_series(records)
    assert {"loss", "lr", "grad_norm", "tok_per_s", "mfu", "val_loss"} <= set(want)
    assert_same_series(got, want)
    # the sample, as text at each eval, and the whole config as hyper-parameters
    from tensorboard.plugins.hparams import plugin_data_pb2
    assert [e.step for e in acc.Tensors("sample/text_summary")] == [4, 8]
    text = acc.Tensors("sample/text_summary")[0].tensor_proto.string_val[0].decode()
    assert len(text) > 0
    hparams = plugin_data_pb2.HParamsPluginData.FromString(acc.SummaryMetadata("_hparams_/session_start_info")
                                                           .plugin_data.content).session_start_info.hparams
    assert hparams["model.n_layer"].number_value == 1
    assert hparams["data"].string_value == str(data_dir)
    assert hparams["log_to"].string_value == "tensorboard"


def test_tensorboard_log_continues_after_sigkill_and_resume(data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["--max-steps", "24", "--eval-interval", "8", "--save-interval", "5", "--log-to", "tensorboard"]
    proc = subprocess.Popen(train_cmd(data_dir, out, *args), env=env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 12):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(log.read_text().splitlines())
    assert 12 <= killed_at < 24, f"the run was to be killed mid-way, but it had logged {killed_at} steps"

    resumed = run(train_cmd(data_dir, out, *args))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    records = metrics(out)
    assert [r["step"] for r in records] == list(range(1, 25))
    got, _ = tensorboard_scalars(out / "tensorboard")
    # every step once, with the values of the run that metrics.jsonl kept (tok/s differs between the two processes)
    assert_same_series(got, numeric_series(records))
    # and the resumed file itself says where it takes over: a purge at the step after the checkpoint
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    first, second = sorted((out / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    resume_step = int(resumed.stdout.split("resuming from")[1].split("at step")[1].split()[0])
    starts = [e.step for e in EventFileLoader(str(second)).Load() if e.HasField("session_log")]
    assert starts == [resume_step + 1]
    logged_first = {e.step for e in EventFileLoader(str(first)).Load() if e.summary.value}
    assert max(logged_first) >= resume_step  # on disk up to the checkpoint, though killed: nothing missing


# ---- W&B offline ----

def wandb_records(path: Path):
    """A .wandb file's records, decoded with W&B's own protobufs. The file is a LevelDB-format log (W&B's datastore):
    a 7-byte ':W&B' header, then 32 KiB blocks of chunks, each a 7-byte header (crc32c, length, type) and data."""
    from wandb.proto import wandb_internal_pb2
    data, block = path.read_bytes(), 32768
    if len(data) < 7:  # not written yet
        return
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero-filled: past the last record
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, or LAST of FIRST/MIDDLE/LAST
            yield wandb_internal_pb2.Record.FromString(pending)
            pending = b""


def wandb_run(run_dir: Path) -> tuple[str, dict, list[dict]]:
    """(run id, config, history rows) of one offline run directory. W&B's service process writes the file and may
    still be at it when run.finish() returns: wait for its exit record."""
    (path,) = run_dir.glob("run-*.wandb")
    deadline = time.time() + 60
    while "exit" not in {r.WhichOneof("record_type") for r in wandb_records(path)} and time.time() < deadline:
        time.sleep(0.2)
    run_id, config, history = None, {}, []
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run_id = r.run.run_id
            config = {u.key: json.loads(u.value_json) for u in r.run.config.update}
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in r.history.item})
    return run_id, config, history


def test_wandb_offline_run_holds_the_history_and_a_resume_reuses_its_id(data_dir, tmp_path):
    out = tmp_path / "run"
    offline = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    first = run(train_cmd(data_dir, out, "--max-steps", "6", "--eval-interval", "3", "--log-to", "wandb"), **offline)
    assert first.returncode == 0, first.stderr
    more = run(train_cmd(data_dir, out, "--max-steps", "9", "--eval-interval", "3", "--log-to", "wandb"), **offline)
    assert more.returncode == 0, more.stderr
    assert "resuming from" in more.stdout

    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    (id1, config, history1), (id2, _, history2) = wandb_run(runs[0]), wandb_run(runs[1])
    assert id1 == id2 == (out / "wandb-run-id").read_text().strip()
    assert config["model.n_layer"] == 1 and config["log_to"] == "wandb"
    history = history1 + history2
    assert [h["_step"] for h in history] == list(range(1, 10))  # continued, none twice
    records = metrics(out)
    for h, r in zip(history, records):
        for key, value in numeric_series([r]).items():
            assert h[key] == pytest.approx(value[0][1], rel=1e-12), (r["step"], key)
    assert [h["_step"] for h in history if "sample" in h] == [3, 6, 9]
    assert all(isinstance(h["sample"], str) and h["sample"] for h in history if "sample" in h)


# ---- bad input ----

def test_unknown_tracker_is_one_clear_line(data_dir, tmp_path):
    done = run(train_cmd(data_dir, tmp_path / "run", "--max-steps", "2", "--log-to", "tensorboard,mlflow"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: unknown tracker 'mlflow' in log_to; choose from tensorboard, wandb "
        "(comma-separated, e.g. --log-to tensorboard,wandb)"]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("package, hint", [("tensorboard", "pip install tensorboard"), ("wandb", "pip install wandb")])
def test_missing_tracker_package_is_one_line_naming_the_pip_command(data_dir, tmp_path, package, hint):
    hidden = tmp_path / "hide"  # a package of that name that fails to import, first on the path: as if not installed
    (hidden / package).mkdir(parents=True)
    (hidden / package / "__init__.py").write_text(f"raise ImportError('no {package} here')\n")
    done = run(train_cmd(data_dir, tmp_path / "run", "--max-steps", "2", "--log-to", package),
               PYTHONPATH=f"{hidden}{os.pathsep}{ROOT}")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and hint in lines[0] and "requirements-trackers.txt" in lines[0]


# ---- the library, as a minGPT user writes it ----

class Sorting(torch.utils.data.Dataset):
    """minGPT's demo task, tiny: 3 digits in, the same sorted out."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        digits = torch.randint(0, 3, (3,), generator=g)
        cat = torch.cat((digits, digits.sort().values))
        x, y = cat[:-1].clone(), cat[1:].clone()
        y[:2] = -1  # only the sorted half is predicted
        return x, y


def test_callbacks_from_the_library_in_a_mingpt_style_script(tmp_path, monkeypatch):
    from gptcore import GPT, Trainer
    from gptcore.train.trackers import TensorBoardCallback, WandbCallback
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")

    model_config = GPT.get_default_config()
    model_config.model_type = "gpt-nano"
    model_config.vocab_size, model_config.block_size = 3, 5
    model = GPT(model_config)
    train_config = Trainer.get_default_config()
    train_config.max_iters, train_config.batch_size, train_config.num_workers, train_config.device = 5, 8, 0, "cpu"
    trainer = Trainer(train_config, model, Sorting())
    losses = []
    trainer.set_callback("on_batch_end", lambda t: losses.append((t.iter_num, t.loss.item())))
    trainer.add_callbacks(TensorBoardCallback(str(tmp_path / "tb")))
    trainer.add_callbacks(WandbCallback(project="sorting", dir=str(tmp_path)))
    trainer.run()

    got, acc = tensorboard_scalars(tmp_path / "tb")
    assert [s for s, _ in got["loss"]] == [s for s, _ in losses] == [1, 2, 3, 4, 5]
    assert [v for _, v in got["loss"]] == pytest.approx([v for _, v in losses], rel=1e-6)
    assert [s for s, _ in got["lr"]] == [1, 2, 3, 4, 5]
    hparams = acc.SummaryMetadata("_hparams_/session_start_info")  # trainer.config, by default
    assert b"max_iters" in hparams.plugin_data.content

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run_id, config, history = wandb_run(run_dir)
    assert run_id == (tmp_path / "wandb-run-id").read_text().strip()
    assert [h["_step"] for h in history] == [1, 2, 3, 4, 5]
    assert [h["loss"] for h in history] == pytest.approx([v for _, v in losses], rel=1e-12)
    assert config["max_iters"] == 5
