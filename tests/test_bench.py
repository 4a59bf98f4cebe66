"""The bench scripts' command lines: --help runs nothing, every script can print without saving, bad counts
get argparse's one-line error, and a kernel the CPU lacks is skipped with one line instead of a crash."""

import glob
import hashlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "bench", "bench_*.py")))
RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_help_runs_nothing_and_offers_no_save(script):
    before = digest(RESULTS)
    result = run(script, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")
    assert "--no-save" in result.stdout
    assert digest(RESULTS) == before, f"{os.path.basename(script)} --help wrote to bench/RESULTS.md"


@pytest.mark.parametrize("script, flag, value", [("bench_matvec.py", "--rounds", "0"),
                                                 ("bench_prepare.py", "--rounds", "-2"),
                                                 ("bench_train.py", "--steps", "x")])
def test_bad_counts_are_one_usage_error(script, flag, value):
    before = digest(RESULTS)
    result = run(os.path.join("bench", script), flag, value)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"{script}: error: argument {flag}")
    assert digest(RESULTS) == before


def test_a_kernel_this_cpu_lacks_is_skipped_with_one_line(capsys):
    sys.path.insert(0, ROOT)
    try:
        from bench.bench_matvec import runnable
    finally:
        sys.path.remove(ROOT)

    def unsupported():
        # what oneDNN raises for fp16 on a CPU without AVX512-FP16 or AVX-NE-CONVERT
        raise RuntimeError("mkldnn_reorder_linear_weight: fp16 path needs the cpu support avx_ne_convert or "
                           "avx512_fp16\nException raised from ...")

    calls = []
    runs = runnable({"fp16 kernel": (2, unsupported), "fp32 kernel": (4, lambda: lambda: calls.append(1))})
    assert list(runs) == ["fp32 kernel"] and calls == [1]  # the supported one was set up and warmed up once
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["skipped fp16 kernel: not supported on this CPU or torch build (mkldnn_reorder_linear_weight: "
                   "fp16 path needs the cpu support avx_ne_convert or avx512_fp16)"]
