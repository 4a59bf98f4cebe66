"""The bench scripts' command lines: --help runs nothing, every script can print without saving, bad counts
get argparse's one-line error, and a kernel the CPU lacks is skipped with one line instead of a crash."""

import glob
import hashlib
import json
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


# Runs each (script, *args) as `python script args` would, one after the other in one process (one torch import
# for all), and prints [exit status, stdout, stderr] for each as JSON.
RUNNER = """
import contextlib, io, json, runpy, sys
results = []
for script, *args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [script, *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
            status = 0
        except SystemExit as e:
            status = e.code
    results.append([status, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""

BAD_COUNTS = [("bench_matvec.py", "--rounds", "0"), ("bench_prepare.py", "--rounds", "-2"),
              ("bench_train.py", "--steps", "x")]


@pytest.fixture(scope="module")
def runs():
    """{(script name, *args): (status, stdout, stderr)} for every script's --help and the bad counts, and whether
    RESULTS.md was left as it was."""
    cases = [(script, "--help") for script in SCRIPTS]
    cases += [(os.path.join(ROOT, "bench", name), flag, value) for name, flag, value in BAD_COUNTS]
    before = digest(RESULTS)
    r = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(cases)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout.strip().splitlines()[-1])
    return {(os.path.basename(case[0]), *case[1:]): tuple(result) for case, result in zip(cases, results)}, \
        digest(RESULTS) == before


def test_no_script_writes_results_when_asked_for_help_or_given_bad_flags(runs):
    assert runs[1], "a bench script wrote to bench/RESULTS.md on --help or bad flags"


@pytest.mark.parametrize("script", [os.path.basename(s) for s in SCRIPTS])
def test_help_runs_nothing_and_offers_no_save(script, runs):
    status, out, err = runs[0][(script, "--help")]
    assert status == 0, err
    assert out.startswith("usage:")
    assert "--no-save" in out


@pytest.mark.parametrize("script, flag, value", BAD_COUNTS)
def test_bad_counts_are_one_usage_error(script, flag, value, runs):
    status, _, err = runs[0][(script, flag, value)]
    assert status == 2
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"{script}: error: argument {flag}")


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
