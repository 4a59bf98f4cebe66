"""A new user's first hour (issue 18), each step as a subprocess from a folder other than the repository, on a tiny
corpus: paths resolve one way, and mistakes end with status 2 and one line saying what to do."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(300))


def script(name: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / name), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    """The error line of a run that must have failed cleanly: status 2, no traceback, `error: ...` last."""
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), r.stderr
    return last


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> Path:
    """A working folder outside the repository, with a tiny corpus prepared into ./data (relative paths)."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    (cwd / "corpus.txt").write_text(TEXT)
    r = script("data/prepare.py", "--dataset", "corpus.txt", "--tokenizer", "char", "--out-dir", "data", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return cwd


def test_prepare_paths_are_relative_to_the_working_folder(elsewhere):
    assert (elsewhere / "data" / "meta.json").is_file()
    assert not (ROOT / "data" / "corpus-char").exists()


def test_prepare_missing_path_says_it_does_not_exist(elsewhere):
    line = one_error_line(script("data/prepare.py", "--dataset", "/nonexistent.txt", cwd=elsewhere))
    assert line == "error: --dataset /nonexistent.txt: no such file or folder (a relative path is relative to the " \
                   f"working directory, {elsewhere})"


@pytest.mark.parametrize("args, expected", [
    (["-m", "0"], "error: -m/--max-tokens must be an integer >= 1, got 0"),
    (["--device", "cuda:99" if torch.cuda.is_available() else "cuda"], "error: device 'cuda"),
    (["--seed", str(2**64)], "error: seed must be an integer in [0, 2**63)"),
])
def test_sample_mistakes_are_one_line(elsewhere, args, expected):
    line = one_error_line(script("sample.py", *args, cwd=elsewhere))
    assert line.startswith(expected), line
