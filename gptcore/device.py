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


def mkldnn_bf16() -> bool:
    """Whether torch can run bf16 matmuls through oneDNN on this CPU (AVX512 or newer; not necessarily native bf16)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@functools.cache
def cpu_bf16_is_faster() -> bool:
    """Whether bf16 matmuls clearly beat fp32 on this CPU, measured once (about 0.4 s).

    Flags don't tell: with AMX, bf16 runs ~2.6x faster than fp32; with AVX512-BF16 alone it can run slower.
    The two are timed in alternation, five times each, and compared by median, so a busy moment can't flip it.
    """
    if not mkldnn_bf16():
        return False
    x, w = torch.randn(512, 768), torch.randn(3072, 768)
    xb, wb = x.bfloat16(), w.bfloat16()
    F.linear(x, w), F.linear(xb, wb)  # warm-up: kernel selection, thread pool
    fp32, bf16 = [], []
    for _ in range(5):
        fp32.append(_seconds(F.linear, x, w))
        bf16.append(_seconds(F.linear, xb, wb))
    return statistics.median(bf16) < 0.8 * statistics.median(fp32)


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


def generation_dtype(device) -> torch.dtype:
    """bf16 on GPUs that support it and on CPUs with native bf16 dot products (AVX512-BF16 or AMX); else fp32.

    Unlike training (bf16_helps), decoding is memory-bound, not compute-bound: every weight is read once per token,
    so half the bytes is up to twice the speed even where bf16 matmuls compute no faster than fp32.
    """
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if bf16_helps(device) else torch.float32
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if kind == "cpu" and mkldnn_bf16() and native_bf16:
        return torch.bfloat16
    return torch.float32


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
