"""Fuzzing the scripts' command lines: whatever the flags, a script either runs, or exits with status 2 and one
clear line on stderr (`error: ...`, or argparse's usage plus `prog: error: ...`), with no traceback and nothing
written to its output folder.

Each example runs the real entry point in this process (its main(argv)), so an uncaught exception fails the test
with the flags that caused it. Examples are derandomized, so CI and every rerun try the same cases; the values mix
valid settings with wrong types, negatives, zeros, huge numbers, NaN/inf, empty strings, unknown names and paths
that don't exist or are folders where a file belongs.
"""

import io
import runpy
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def fuzz(max_examples: int) -> settings:
    """Reproducible (derandomized, no example database) and bounded, so the suite stays inside its budget."""
    return settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def run_entry(script: str, argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python SCRIPT ARGV`, run in this process: the script's own __main__ block,
    its error handling included. An exception that escapes it is a traceback: it propagates and fails the test."""
    out, err = io.StringIO(), io.StringIO()
    path = str(ROOT / script)
    with redirect_stdout(out), redirect_stderr(err), patch.object(sys, "argv", [path, *argv]), \
            patch.object(sys, "path", list(sys.path)):  # prepare.py puts the repository on sys.path
        try:
            runpy.run_path(path, run_name="__main__")
            status = 0
        except SystemExit as e:
            status = e.code
    if status is None:
        status = 0
    if isinstance(status, str):  # `raise SystemExit("message")` prints it and exits 1: not the promised status 2
        err.write(status + "\n")
        status = 1
    return status, out.getvalue(), err.getvalue()


def assert_clear_failure(status: int, err: str, prog: str, argv):
    """Status 2 and, as stderr's last line, one error line; argparse's usage lines may come before it."""
    assert status == 2, f"{argv} exited {status}, not 0 or 2; stderr:\n{err}"
    assert "Traceback" not in err, f"{argv} printed a traceback:\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, f"{argv} exited 2 with nothing on stderr"
    last = lines[-1]
    assert last.startswith("error: ") or last.startswith(f"{prog}: error: "), f"{argv}: unclear last line {last!r}"
    assert len(last) > len("error: ") + 10, f"{argv}: an error line that says nothing: {last!r}"


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.is_dir() else []


# Bad values any numeric flag may get, as argv strings.
BAD_NUMBERS = st.sampled_from(["0", "-1", "-3", "nan", "inf", "-inf", "1e400", "", "abc", "1.5.2", "0x10",
                               str(10**30), "--", " "]) | st.integers(-10**20, 0).map(str) | st.floats().map(str)
ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=8)
OMIT = None  # a valid "value": leave the flag out and take its default


def draw_argv(data, valid: dict, bad: dict) -> list[str]:
    """argv from a valid setting for every flag (or OMIT), then up to two flags, or an unknown flag, made bad.

    Mostly-valid command lines reach the checks that come late (after reading the data, say), and a third or so
    of the examples are wholly valid, so the fuzz also proves that good settings run.
    """
    chosen = {name: data.draw(strategy, label=name) for name, strategy in valid.items()}
    for name in data.draw(st.sets(st.sampled_from(sorted(bad)), max_size=2), label="made bad"):
        chosen[name] = data.draw(bad[name], label=f"bad {name}")
    argv = []
    for name, value in chosen.items():
        if value is not OMIT:
            argv += [name] if value is True else [name, value]
    return argv


def valid(*values):
    """A strategy for one of these values; OMIT among them leaves the flag out."""
    return st.sampled_from(values)


# ------------------------------------------------------------------------------------------------ data/prepare.py

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Small inputs for prepare.py: good files, and files and folders that are wrong in one way each."""
    base = tmp_path_factory.mktemp("corpus")
    text = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(120))
    (base / "code.txt").write_text(text)
    (base / "docs").mkdir()
    (base / "docs" / "a.jsonl").write_text('{"text": "hello there"}\n{"text": "general kenobi"}\n' * 40)
    (base / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    (base / "bad.jsonl").write_text('{"text": "fine"}\n{not json}\n')
    (base / "empty_dir").mkdir()
    (base / "other.csv").write_text("a,b\n1,2\n")
    (base / "a_file").write_text("not a folder")
    return base


def prepare_flags(corpus: Path, out: Path) -> tuple[dict, dict]:
    """(valid, bad) strategies per prepare.py flag; --out-dir's valid value is the fresh folder `out`."""
    c = str(corpus)
    good = {
        "--dataset": valid(f"{c}/code.txt", f"{c}/docs", f"{c}/docs/*.jsonl"),
        # mostly char: building GPT-2's BPE takes about a second per run, and the fuzz needs many short runs
        "--tokenizer": valid("char", "char", "char", "gpt2", OMIT),
        "--val-fraction": valid("0.1", "0.25", "0.5", OMIT),
        "--shard-tokens": valid("64", "1000", "100000", OMIT),
        "--workers": valid("1", "1", "1", "2"),
        "--out-dir": st.just(str(out)),
    }
    bad = {
        "--dataset": st.sampled_from([
            f"{c}/latin1.txt", f"{c}/bad.jsonl", f"{c}/empty_dir", f"{c}/other.csv",  # not usable as a corpus
            f"{c}/missing.txt", "/nonexistent.txt", f"{c}/nothing/*.txt", f"{c}/a_file/x.txt",  # no such path
            "", "not-a-dataset", "PYSTDLIB"]) | ANY_TEXT,
        "--from": st.sampled_from([str(SHARED / "tinyshakespeare.txt"), f"{c}/code.txt", f"{c}/missing.txt", c, ""]),
        "--tokenizer": st.sampled_from(["", "bpe", "char ", "GPT2"]) | ANY_TEXT,
        "--val-fraction": BAD_NUMBERS | st.sampled_from(["1", "1.0", "0.0", "1e-9", "0.9999999"]),
        "--shard-tokens": BAD_NUMBERS | st.sampled_from(["1", "1.5", str(10**19)]),
        "--workers": BAD_NUMBERS,
        "--out-dir": st.sampled_from(["", f"{c}/a_file", f"{c}/a_file/out"]),
        "--no-such-flag": ANY_TEXT | st.just(True),
    }
    return good, bad


@fuzz(max_examples=60)
@given(data=st.data())
def test_prepare_runs_or_says_what_is_wrong(data, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "out"
    argv = draw_argv(data, *prepare_flags(corpus, out))
    if "--from" in argv and "shakespeare" not in argv:
        argv += ["--dataset", "shakespeare"]  # --from belongs to shakespeare; never download: always --from here
    before = files_under(corpus)

    status, stdout, err = run_entry("data/prepare.py", argv)

    assert files_under(corpus) == before, f"{argv} changed the input folder"
    event(f"exit status {status}")  # --hypothesis-show-statistics: how many examples ran and how many were refused
    if status == 0:
        assert (out / "meta.json").is_file(), f"{argv} exited 0 without a dataset in {out}"
        assert stdout.startswith("prepared "), stdout
    else:
        assert_clear_failure(status, err, "prepare.py", argv)
        assert files_under(out) == [], f"{argv} failed but wrote {files_under(out)}"


@pytest.mark.parametrize("argv, expected", [
    (["--dataset", "/nonexistent.txt"], "error: --dataset /nonexistent.txt: no such file or folder"),
    (["--dataset", "no-such-name"], "error: unknown dataset 'no-such-name': known names are pystdlib"),
    (["--workers", "0"], "error: --workers must be at least 1"),
])
def test_prepare_names_the_problem(argv, expected, tmp_path):
    status, _, err = run_entry("data/prepare.py", [*argv, "--out-dir", str(tmp_path / "out")])
    assert status == 2 and err.strip().startswith(expected), err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------- sample.py

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny char-level checkpoint, a run folder of them, a random-weights Hugging Face folder, and wrong files."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptcore.checkpoint import checkpoint_path, model_checkpoint, save_checkpoint
    from gptcore.model import GPT, GPTConfig
    from gptcore.tokenizer import CharTokenizer

    base = tmp_path_factory.mktemp("models")
    tok = CharTokenizer.from_text("abcdefghij klmnop\n")
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=tok.n_vocab))
    save_checkpoint(str(base / "tiny.pt"), model_checkpoint(model, tok, 7))
    for step in (1, 2):
        save_checkpoint(checkpoint_path(str(base / "run"), step), model_checkpoint(model, tok, step))
    data = (base / "tiny.pt").read_bytes()
    (base / "truncated.pt").write_bytes(data[: len(data) // 2])
    (base / "metrics.jsonl").write_text('{"step": 1, "loss": 3.2}\n')
    (base / "no_checkpoints").mkdir()
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16)).save_pretrained(base / "hf")
    return base


def sample_flags(models: Path) -> tuple[dict, dict]:
    m = str(models)
    good = {
        "--checkpoint": valid(f"{m}/tiny.pt", f"{m}/tiny.pt", f"{m}/run"),
        "-p": valid(OMIT, "abc", "ab\ncd", "<|endoftext|>ab") | ANY_TEXT,
        "-m": valid("1", "5", "20", OMIT),
        "--temperature": valid("0", "0.8", "1.5", OMIT),
        "--top-k": valid("1", "3", "1000", OMIT),
        "--top-p": valid("0.5", "1", OMIT),
        "--num-samples": valid("1", "3", OMIT),
        "--seed": valid("0", "42", OMIT),
        "--device": valid("cpu", OMIT),
        "--dtype": valid("auto", "float32", "bfloat16", OMIT),
        "--quantize": valid("int8", OMIT, OMIT),
        "--stream": valid(True, OMIT),
        "--no-stop": valid(True, OMIT),
    }
    # -m has no huge bad value: a billion tokens is a valid, merely long, request
    small_bad = st.sampled_from(["0", "-1", "-3", "nan", "inf", "", "abc", "1.5", "0x10", "--", " "])
    bad = {
        "--checkpoint": st.sampled_from([f"{m}/truncated.pt", f"{m}/metrics.jsonl", f"{m}/no_checkpoints",
                                         f"{m}/missing.pt", f"{m}/hf", ""]),
        "--pretrained": st.sampled_from([f"{m}/hf", f"{m}/no_checkpoints", f"{m}/missing", f"{m}/tiny.pt", ""]),
        "-m": small_bad,
        "--temperature": BAD_NUMBERS,
        "--top-k": BAD_NUMBERS,
        "--top-p": BAD_NUMBERS | st.sampled_from(["1.5", "1.0000001"]),
        "--num-samples": BAD_NUMBERS,
        "--seed": BAD_NUMBERS | st.sampled_from([str(2**64), str(-2**63 - 1)]),
        "--device": st.sampled_from(["cuda", "cuda:1", "mps", "tpu", "", "cpu:x"]) | ANY_TEXT,
        "--dtype": st.sampled_from(["float64", "", "fp16", "half"]),
        "--quantize": st.sampled_from(["int4", "", "INT8"]),
        "--no-such-flag": ANY_TEXT | st.just(True),
    }
    return good, bad


@fuzz(max_examples=60)
@given(data=st.data())
def test_sample_runs_or_says_what_is_wrong(data, models, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a name that is no folder must not reach for the network
    argv = draw_argv(data, *sample_flags(models))
    if "--pretrained" in argv:  # --checkpoint and --pretrained exclude each other: keep the pair only sometimes
        i = argv.index("--checkpoint")
        if data.draw(st.booleans(), label="drop --checkpoint"):
            del argv[i:i + 2]
    before = files_under(models)

    status, stdout, err = run_entry("sample.py", argv)

    assert files_under(models) == before, f"{argv} wrote beside the models"
    event(f"exit status {status}")
    if status != 0:
        assert_clear_failure(status, err, "sample.py", argv)


# -------------------------------------------------------------------------------------------------------- train.py

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from gptcore import corpora
    base = tmp_path_factory.mktemp("train_data")
    (base / "corpus.txt").write_text("".join(f"line {i}: the quick brown fox\n" for i in range(300)))
    corpora.prepare(str(base / "corpus.txt"), out_dir=str(base / "data"), tokenizer="char", workers=1)
    return base / "data"


TINY_TRAIN = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
              "--max-steps", "2", "--warmup-steps", "1", "--eval-interval", "2", "--eval-steps", "1",
              "--sample-tokens", "0", "--dtype", "float32", "--save-interval", "2"]


@pytest.mark.parametrize("argv, expected", [  # issue 16's list: each of these ended in a traceback or ran silently
    (["--learning-rate", "-1"], "error: learning_rate=-1.0 is out of range: it must be >= 0"),
    (["--n-layer", "0"], "error: n_layer=0 is out of range: it must be >= 1"),
    (["--dropout", "1.5"], "error: dropout=1.5 is out of range: it must be in [0, 1)"),
    (["--eval-interval", "0"], "error: eval_interval=0 is out of range: it must be >= 1"),
    (["--betas", "0.9", "1.5"], "error: betas[1]=1.5 is out of range: it must be in [0, 1)"),
    (["--device", "cuda:99"], "error: device 'cuda:99', but this machine has"),
    (["--weight-decay", "-0.1"], "error: weight_decay=-0.1 is out of range: it must be >= 0"),
    (["--warmup-steps", "-5"], "error: warmup_iters=-5 is out of range: it must be in [0, 2]"),
    (["--min-lr", "1.0"], "error: min_lr=1.0 is out of range: it must be in [0, "),
    (["--keep-checkpoints", "0"], "error: keep_checkpoints=0 is out of range: it must be >= 1"),
])
def test_train_names_each_bad_setting(argv, expected, tiny_data, tmp_path):
    status, _, err = run_entry("train.py", ["--data", str(tiny_data), "--out-dir", str(tmp_path / "out"),
                                            *TINY_TRAIN, *argv])
    assert_clear_failure(status, err, "train.py", argv)
    assert err.strip().splitlines()[-1].startswith(expected), err
    assert not (tmp_path / "out").exists()


def train_flags(data: Path, out: Path) -> tuple[dict, dict]:
    good = {
        "--data": st.just(str(data)), "--out-dir": st.just(str(out)),
        "--n-layer": valid("1", "2"), "--n-head": valid("1", "2"), "--n-embd": valid("8", "16"),
        "--block-size": valid("8", "16"), "--batch-size": valid("1", "2"), "--max-steps": valid("2", "3"),
        "--warmup-steps": valid("0", "1"), "--eval-interval": valid("2", "5"), "--eval-steps": valid("1"),
        "--sample-tokens": valid("0", "0", "3"), "--dtype": valid("float32", "bfloat16", OMIT),
        "--learning-rate": valid("1e-3", OMIT), "--dropout": valid("0", "0.1", OMIT), "--device": valid("cpu", OMIT),
    }
    bad = {name: BAD_NUMBERS for name in ("--n-layer", "--n-head", "--n-embd", "--block-size", "--batch-size",
                                          "--max-steps", "--warmup-steps", "--eval-interval", "--eval-steps",
                                          "--learning-rate", "--dropout", "--weight-decay", "--min-lr",
                                          "--grad-clip", "--save-interval", "--keep-checkpoints", "--seed",
                                          "--total-batch-tokens", "--grad-accum-steps", "--sample-tokens")}
    bad.update({
        "--data": st.sampled_from(["", str(data.parent / "missing"), str(data / "meta.json")]),
        "--dtype": st.sampled_from(["float16", "", "fp32"]),
        "--device": st.sampled_from(["cuda", "tpu", "", "cuda:7"]),
        "--preset": st.sampled_from(["gpt5", "", "QUICKSTART"]),
        "--init-from": st.sampled_from(["", str(data.parent / "missing_hf")]),
        "--betas": st.tuples(BAD_NUMBERS, BAD_NUMBERS).map(" ".join),
        "--no-such-flag": ANY_TEXT | st.just(True),
    })
    return good, bad


@fuzz(max_examples=15)
@given(data=st.data())
def test_train_runs_or_says_what_is_wrong(data, tiny_data, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path_factory.mktemp("runs") / "out"
    argv = draw_argv(data, *train_flags(tiny_data, out))
    argv = [piece for arg in argv for piece in (arg.split(" ") if arg.count(" ") == 1 and "." in arg else [arg])]

    status, stdout, err = run_entry("train.py", argv)

    event(f"exit status {status}")
    if status == 0:
        assert stdout.strip().splitlines()[-1].startswith("done: step "), stdout
    else:
        assert_clear_failure(status, err, "train.py", argv)
        if not err.strip().splitlines()[-1].startswith("error: the loss became"):  # a run that diverged, not a check
            assert files_under(out) == [], f"{argv} failed but wrote {files_under(out)}"
