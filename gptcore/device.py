"""Which device to run on, which precision helps there, and that device's peak FLOP/s for MFU."""

import functools
import statistics
import time

import torch
from torch.nn import functional as F

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
    weights well (bf16_kernel; on CPUs, weights packed once for oneDNN); else fp32.

    Decoding is memory-bound: every weight is read once per token, so half the bytes is up to twice the speed. The
    choice rests on the compute-bound measurement because its effect is large (~2.6x with AMX) where a decode-step
    measurement's (~1.4x) drowns in the noise of a shared machine and flips from one process to the next.
    """
    return torch.bfloat16 if bf16_kernel and bf16_helps(device) else torch.float32


def peak_flops(device: str) -> float | None:
    """The device's bf16 peak in FLOP/s when known, for MFU; None for CPUs and unknown GPUs."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((flops for key, flops in GPU_PEAK_BF16.items() if key in name), None)


def measure_matmul_peak(device: str, dtype=torch.float32, n: int = 2048, seconds: float = 0.5) -> float:
    """FLOP/s of a large square matmul here and now: the practical ceiling MFU is measured against on CPUs."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: thread pools, kernels selection
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * count / (time.perf_counter() - start)
