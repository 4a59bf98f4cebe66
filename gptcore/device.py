"""Which device to run on, which precision helps there, and that device's peak FLOP/s for MFU."""

import datetime
import functools
import json
import os
import platform
import statistics
import time

import torch
from torch.nn import functional as F

from .errors import GPTCoreError
from .fileio import write_json

# bf16 dense peak FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name()
GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12, "4090": 165e12, "3090": 71e12}


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@functools.cache
def cpu_bf16_is_faster() -> bool:
    """Whether bf16 matmuls clearly beat fp32 on this CPU, measured once (about 0.4 s).

    Flags don't tell: with AMX, bf16 runs ~2.6x faster than fp32; with AVX512-BF16 alone it can run slower, and
    without oneDNN it is emulated. The two are timed in alternation and compared by fastest().
    """
    if not torch.backends.mkldnn.is_available():
        return False
    gen = torch.Generator().manual_seed(0)  # a private one: measuring must not move the caller's random stream
    x, w = torch.randn(512, 768, generator=gen), torch.randn(3072, 768, generator=gen)
    xb, wb = x.bfloat16(), w.bfloat16()
    return fastest({"fp32": (F.linear, x, w), "bf16": (F.linear, xb, wb)}, margin=0.8) == "bf16"


def fastest(candidates: dict, margin: float = 1.0, rounds: int = 5):
    """The name of the fastest of candidates {name: (fn, *args)}, timed in alternation.

    The first candidate is the baseline. Each round times every candidate once, seconds apart, so they share the
    machine's state; a candidate's speed is the median over rounds of its time over the baseline's in that round,
    which a busy moment barely moves. Another candidate wins only if that ratio is below margin.
    """
    for fn, *args in candidates.values():
        fn(*args)  # warm-up: kernel selection, thread pool
    ratios = {name: [] for name in candidates}
    for _ in range(rounds):
        times = {name: _seconds(fn, *args) for name, (fn, *args) in candidates.items()}
        baseline = next(iter(times.values()))
        for name, t in times.items():
            ratios[name].append(t / baseline)
    medians = {name: statistics.median(r) for name, r in ratios.items()}
    best = min(medians, key=medians.get)
    return best if medians[best] < margin else next(iter(candidates))


def _seconds(fn, *args, calls: int = 4) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    return time.perf_counter() - start


def bf16_helps(device: str) -> bool:
    """bf16 autocast is the default where it speeds things up: CUDA with bf16 support, and CPUs where it is faster."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    return kind == "cpu" and cpu_bf16_is_faster()


def generation_dtype(device, bf16_kernel: bool = True) -> torch.dtype:
    """The weight dtype generation defaults to on device, without quantizing: bf16 where bf16 matmuls are measured
    faster than fp32 (bf16_helps: GPUs with bf16, CPUs with AMX) and the caller has a bf16 kernel that streams
    weights faster than its fp32 path (bf16_kernel; on CPUs, measured on a decode step's products by the caller,
    gptcore/infer/cpu_kernels.py); else fp32.

    Decoding is memory-bound: every weight is read once per token, so half the bytes is up to twice the speed, but
    only with a kernel that streams them well: on a 2-core Xeon with AMX, oneDNN's bf16 matrix-vector product was
    no faster than MKL's fp32 one, so generation there defaults to fp32, which is also exact.
    """
    return torch.bfloat16 if bf16_kernel and bf16_helps(device) else torch.float32


def training_dtype(device: str, asked: str | None = None) -> tuple[str, str]:
    """(dtype training computes in, why): what was asked for, else bfloat16 autocast where it is faster."""
    if asked:
        return asked, "as asked (--dtype)"
    kind = torch.device(device).type
    if kind == "cuda":
        return (("bfloat16", "this GPU supports bf16") if bf16_helps(device)
                else ("float32", "this GPU lacks bf16"))
    if kind == "cpu":
        return (("bfloat16", "bf16 matmuls measured faster than fp32 on this CPU") if bf16_helps(device)
                else ("float32", "bf16 matmuls measured no faster than fp32 on this CPU"))
    return "float32", f"bf16 autocast is not used on {kind}"


def peak_flops(device: str) -> float | None:
    """The device's bf16 peak in FLOP/s when known, for MFU; None for CPUs and unknown GPUs."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((flops for key, flops in GPU_PEAK_BF16.items() if key in name), None)


def measure_matmul_peak(device: str, dtype=torch.float32, n: int = 2048, seconds: float = 0.5,
                        repeats: int = 7) -> float:
    """FLOP/s of a large square matmul here and now: the practical ceiling MFU is measured against on CPUs.

    After a warm-up, `repeats` timings of about seconds/repeats each; the median, so one busy moment (another
    process, a frequency change) moves the result little.
    """
    gen = torch.Generator(device=device).manual_seed(0)  # the global RNG, which a run's determinism rests on, is untouched
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(2):
        a @ b  # warm-up: thread pools, kernel selection, caches
    rates = []
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while count == 0 or time.perf_counter() - start < seconds / repeats:
            a @ b
            count += 1
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
        rates.append(2 * n**3 * count / (time.perf_counter() - start))
    return statistics.median(rates)


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (else platform's answer)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_root() -> str:
    """Where gptcore keeps what it measured or built for this machine: $GPTCORE_CACHE, else
    $XDG_CACHE_HOME/gptcore, else ~/.cache/gptcore."""
    return os.environ.get("GPTCORE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "gptcore")


def matmul_peak_cache_path() -> str:
    """Where CPU matmul ceilings are kept, in cache_root()."""
    return os.path.join(cache_root(), "matmul_peak.json")


def cpu_matmul_peak(dtype=torch.float32) -> tuple[float, str]:
    """(FLOP/s, where it came from) of the CPU matmul ceiling for dtype, measured once per CPU model, dtype, thread
    count and torch version, then read from matmul_peak_cache_path().

    A ceiling timed afresh at every start-up moves with whatever else the machine is doing, and MFU with it (two
    runs at the same speed logged 90% and 33%). Kept, it is the same number for every run on this machine, so MFU
    compares runs; delete the file to measure again.
    """
    key = f"{cpu_model()} | {str(dtype).removeprefix('torch.')} | {torch.get_num_threads()} threads | " \
          f"torch {torch.__version__}"
    path = matmul_peak_cache_path()
    try:
        with open(path) as f:
            cache = json.load(f)
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("flops"), (int, float)) and entry["flops"] > 0:
        return float(entry["flops"]), f"measured {entry.get('date', 'earlier')}, kept in {path}"
    flops = measure_matmul_peak("cpu", dtype, n=1024, seconds=1.5)  # 1024: a CPU's ceiling, at 1/8 of 2048's time
    cache[key] = {"flops": flops, "date": datetime.date.today().isoformat()}
    try:
        write_json(path, cache, indent=1)
    except OSError:  # a read-only home: the number is still right for this run
        return flops, "measured now (not kept: cannot write " + path + ")"
    return flops, f"measured now, kept in {path}"


def check_device(device: str) -> str:
    """The device name as given, if torch knows it and this machine has it; else a GPTCoreError saying what to use."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise GPTCoreError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps "
                           f"(or leave it out for the best available, here {default_device()})") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise GPTCoreError(f"device {device!r}, but this machine has no CUDA GPU that torch {torch.__version__} "
                               "can use: use --device cpu, or leave --device out for the best available")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise GPTCoreError(f"device {device!r}, but this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                               f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise GPTCoreError(f"device {device!r}, but MPS (Apple GPUs) is not available here: use --device cpu")
    elif d.type != "cpu":
        raise GPTCoreError(f"device {device!r} is not supported: use cpu, cuda, cuda:N or mps")
    return device
