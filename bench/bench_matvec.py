"""Why decoding runs at the speed it does: one decode step's matrix-vector products, kernel by kernel.

At batch 1 a decode step multiplies one vector by every weight matrix of GPT-2 124M once (4 per block, then the
output head), so its speed is how fast a kernel streams ~124M weights from memory. This times those 49 products, in
model order, with each CPU kernel PyTorch offers, and reports the bandwidth each reaches. A plain sum over as many
bytes as the bf16 weights is the machine's streaming ceiling. Random weights; rounds interleave the kernels and the
table gives medians. Prints the table and appends it to bench/RESULTS.md.

    python bench/bench_matvec.py [--rounds 7] [--no-save]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import positive_int, report  # noqa: E402
from gptcore.infer.cpu_kernels import PackedLinear  # noqa: E402
from gptcore.model import GPTConfig  # noqa: E402


def decode_shapes(config: GPTConfig) -> list[tuple[int, int]]:
    """(out_features, in_features) of every product in one decode step, in the order the model runs them."""
    C = config.n_embd
    return [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)] * config.n_layer + [(config.padded_vocab_size, C)]


def kernels(shapes):
    """name -> (bytes of weights streamed per step, a setup function that returns the step's products as a function).

    Set-up is deferred so that a kernel this CPU or torch build lacks (oneDNN's fp16 needs AVX512-FP16 or
    AVX-NE-CONVERT; FBGEMM needs AVX2) fails alone, in runnable(), instead of taking the whole table down.
    """
    gen = torch.Generator().manual_seed(0)
    fp32 = [torch.randn(o, i, generator=gen) * 0.02 for o, i in shapes]
    x32 = {i: torch.randn(1, i, generator=gen) for _, i in shapes}
    nbytes = sum(w.numel() for w in fp32)  # one byte per weight; scaled by the element size below

    def inputs(dtype):
        return {i: x.to(dtype) for i, x in x32.items()}

    def packed(dtype):
        xs, mods = inputs(dtype), []
        for w in fp32:
            linear = nn.Linear(w.size(1), w.size(0), bias=False, dtype=dtype)
            linear.weight.data.copy_(w)
            mods.append(PackedLinear(linear))
        return lambda: [m(xs[m.in_features]) for m in mods]

    def transformers_layout():
        by_in_out = [w.t().contiguous() for w in fp32]  # transformers' Conv1D keeps weights as (in, out)
        return lambda: [x32[w.size(0)] @ w for w in by_in_out]

    def bf16_linear():
        xs, bf16 = inputs(torch.bfloat16), [w.bfloat16() for w in fp32]
        return lambda: [F.linear(xs[w.size(1)], w) for w in bf16]

    def fbgemm_fp16():
        prepacked = [torch.ops.quantized.linear_prepack_fp16(w, None) for w in fp32]
        return lambda: [torch.ops.quantized.linear_dynamic_fp16(x32[w.size(1)], p) for w, p in zip(fp32, prepacked)]

    def int8_weights():
        xs = inputs(torch.bfloat16)
        int8 = [torch.randint(-127, 128, w.shape, dtype=torch.int8, generator=gen) for w in fp32]
        scales = [torch.rand(w.size(0), generator=gen).bfloat16() for w in fp32]
        return lambda: [torch._weight_int8pack_mm(xs[w.size(1)], w, s) for w, s in zip(int8, scales)]

    def streaming_ceiling():
        ceiling = torch.ones(nbytes // 2)  # float32: 4 bytes each, as many bytes as the bf16 weights
        return lambda: ceiling.sum()

    return {
        "float32, x @ W with W (in, out): transformers' layout (MKL)": (4 * nbytes, transformers_layout),
        "float32, F.linear (MKL)": (4 * nbytes, lambda: lambda: [F.linear(x32[w.size(1)], w) for w in fp32]),
        "bfloat16, F.linear (oneDNN, repacks the weight every call)": (2 * nbytes, bf16_linear),
        "bfloat16, packed once (oneDNN): gptcore's PackedLinear": (2 * nbytes, lambda: packed(torch.bfloat16)),
        "float16, packed once (oneDNN)": (2 * nbytes, lambda: packed(torch.float16)),
        "float16 weights, float32 activations (FBGEMM)": (2 * nbytes, fbgemm_fp16),
        "int8 weights, bfloat16 activations (_weight_int8pack_mm; lossy)": (nbytes, int8_weights),
        "ceiling: sum over as many bytes as the bf16 weights": (2 * nbytes, streaming_ceiling),
    }


def runnable(kernels: dict) -> dict:
    """name -> (bytes, run) for the kernels that set up and run once here (the warm-up: thread pools, oneDNN
    primitives). One that raises is left out with one line saying why: a dtype this CPU can't compute in is
    a fact about the machine, not a failed benchmark."""
    runs = {}
    for name, (nbytes, setup) in kernels.items():
        try:
            run = setup()
            run()
        except (RuntimeError, NotImplementedError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            print(f"skipped {name}: not supported on this CPU or torch build ({reason})", flush=True)
            continue
        runs[name] = (nbytes, run)
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=positive_int, default=7, help="timed runs of each kernel, interleaved")
    parser.add_argument("--no-save", action="store_true", help="print the table without appending to RESULTS.md")
    args = parser.parse_args()
    config = GPTConfig()
    with torch.no_grad():
        candidates = kernels(decode_shapes(config))
        runs = runnable(candidates)
        times = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, (_, run) in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)

    rows = []
    for name, (nbytes, _) in runs.items():
        t = statistics.median(times[name])
        rows.append(f"| {name} | {nbytes / 1e6:.0f} | {t * 1e3:.2f} | {nbytes / t / 1e9:.1f} | {1 / t:.0f} |")
    table = "\n".join(["| kernel | MB per step | ms per step (median) | GB/s | steps/s, products alone |",
                       "|---|---|---|---|---|", *rows])
    title = "bench_matvec.py: the matrix-vector products of one GPT-2 124M decode step, by kernel"
    details = [f"torch threads: {torch.get_num_threads()}; {args.rounds} interleaved rounds; "
               f"{len(decode_shapes(config))} products per step, {config.n_layer} blocks + the output head"]
    skipped = [name for name in candidates if name not in runs]
    if skipped:
        details.append(f"not supported here, skipped: {'; '.join(skipped)}")
    report(title, details, table, save=not args.no_save)


if __name__ == "__main__":
    main()
