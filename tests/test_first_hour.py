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


# ---------------------------------------------------------------------------------------------------------- train.py

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-steps", "2", "--sample-tokens", "4", "--warmup-steps", "1", "--dtype", "float32", "--eval-interval", "3"]


@pytest.fixture(scope="module")
def first_run(elsewhere):
    """The main job, tiny: train 3 steps from the working folder into ./out (relative paths)."""
    r = script("train.py", "--data", "data", "--out-dir", "out", *TINY, "--max-steps", "3", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    return r


def test_training_says_what_it_does_and_where_outputs_went(elsewhere, first_run):
    lines = first_run.stdout.splitlines()
    assert lines[0].startswith("device cpu, float32 (as asked (--dtype))"), lines[0]
    assert lines[1].startswith("model ") and " parameters: 1 layers, 2 heads, 16 wide, context 16" in lines[1]
    assert lines[2].startswith("data data: ") and " train and " in lines[2] and "(char tokenizer" in lines[2]
    assert lines[3] == "out dir out: a new run (no checkpoint there yet)"
    assert any(line.startswith("MFU is against this CPU's float32 matmul ceiling") for line in lines)
    assert lines[-1].startswith("done: step 3 of 3 in ") and \
        lines[-1].endswith("in out: the newest ckpt_*.pt, metrics.jsonl, loss.png; "
                           "sample it: python sample.py --checkpoint out")
    for name in ("ckpt_0000003.pt", "metrics.jsonl", "loss.png"):
        assert (elsewhere / "out" / name).is_file(), name


def test_the_closing_sample_command_works_and_names_its_checkpoint(elsewhere, first_run):
    r = script("sample.py", "--checkpoint", "out", "-m", "3", "--seed", "0", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert f"sampling from out" in r.stderr


def test_sampling_the_committed_model_points_to_the_users_run(elsewhere, first_run):
    r = script("sample.py", "-m", "3", "--seed", "0", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == f"sampling from {ROOT / 'checkpoint' / 'quickstart.pt'}"
    # the run just trained is the newest anywhere, so it comes first, and the command given for it works (above)
    assert lines[1].startswith("your runs: out") and lines[1].endswith("sample one with: python sample.py "
                                                                      "--checkpoint out"), lines[1]


def test_a_run_at_max_steps_says_so(elsewhere, first_run):
    r = script("train.py", "--data", "data", "--out-dir", "out", *TINY, "--max-steps", "3", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert "out dir out: resuming from out/ckpt_0000003.pt at step 3 of 3" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == ("nothing to do: the run in out is already at step 3, and --max-iters "
                                                 "is 3; raise --max-iters to train it further, or pick a new --out-dir")


@pytest.mark.parametrize("args, expected", [
    (["--init-from", "scratch"], "error: --init-from scratch, but --out-dir out already holds a run"),
    (["--n-embd", "32"], "error: --out-dir out holds a run of another model (n_embd=16 (this run: 32))"),
])
def test_flags_that_clash_with_the_run_name_out_dir(elsewhere, first_run, args, expected):
    line = one_error_line(script("train.py", "--data", "data", "--out-dir", "out", *TINY, "--max-steps", "6",
                                 *args, cwd=elsewhere))
    assert line.startswith(expected) and "pick a new --out-dir" in line, line


def test_other_data_beside_a_run_names_out_dir(elsewhere, first_run):
    (elsewhere / "other.txt").write_text(TEXT[::-1])
    r = script("data/prepare.py", "--dataset", "other.txt", "--tokenizer", "char", "--out-dir", "other", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    line = one_error_line(script("train.py", "--data", "other", "--out-dir", "out", *TINY, "--max-steps", "6",
                                 cwd=elsewhere))
    assert line.startswith("error: --out-dir out holds a run trained on data, not on --data other"), line
    assert "pick a new --out-dir" in line


@pytest.mark.parametrize("args, expected", [
    (["--max-steps", "-3"], "error: max_iters=-3 is out of range: it must be >= 1"),
    (["--block-size", "0"], "error: block_size=0 is out of range: it must be >= 1"),
])
def test_invalid_values_beside_a_run_are_named_before_any_comparison(elsewhere, first_run, args, expected):
    before = sorted(p.name for p in (elsewhere / "out").iterdir())
    line = one_error_line(script("train.py", "--data", "data", "--out-dir", "out", *TINY, *args, cwd=elsewhere))
    assert line.startswith(expected), line
    assert sorted(p.name for p in (elsewhere / "out").iterdir()) == before


def test_default_paths_are_the_repositorys(elsewhere):
    """From another folder, the presets' --data and --out-dir are the repository's data/<name> and out/<preset>
    (where prepare.py writes); a path given as a flag stays the working folder's."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from train import parse_args; "
            "c, _ = parse_args(sys.argv[1:]); print(c.data); print(c.out_dir)")
    r = subprocess.run([sys.executable, "-c", code, "--preset", "shakespeare-char"], cwd=elsewhere,
                       capture_output=True, text=True, timeout=300)
    data, out = r.stdout.split()
    assert (elsewhere / data).resolve() == ROOT / "data" / "shakespeare-char"
    assert (elsewhere / out).resolve() == ROOT / "out" / "shakespeare-char"
    r = subprocess.run([sys.executable, "-c", code, "--data", "data", "--out-dir", "out"], cwd=elsewhere,
                       capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ["data", "out"]
