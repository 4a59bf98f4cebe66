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

from bench.common import report  # noqa: E402
from gptcore.infer.cpu_kernels import PackedLinear  # noqa: E402
from gptcore.model import GPTConfig  # noqa: E402


def decode_shapes(config: GPTConfig) -> list[tuple[int, int]]:
    """(out_features, in_features) of every product in one decode step, in the order the model runs them."""
    C = config.n_embd
    return [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)] * config.n_layer + [(config.padded_vocab_size, C)]


def kernels(shapes):
    """name -> (bytes of weights streamed per step, a function that runs the step's products once)."""
    gen = torch.Generator().manual_seed(0)
    fp32 = [torch.randn(o, i, generator=gen) * 0.02 for o, i in shapes]
    x32 = {i: torch.randn(1, i, generator=gen) for _, i in shapes}
    x16 = {i: x.bfloat16() for i, x in x32.items()}
    xh = {i: x.half() for i, x in x32.items()}
    nbytes = sum(w.numel() for w in fp32)  # one byte per weight; scaled by the element size below

    def packed(dtype):
        mods = []
        for w in fp32:
            linear = nn.Linear(w.size(1), w.size(0), bias=False, dtype=dtype)
            linear.weight.data.copy_(w)
            mods.append(PackedLinear(linear))
        return mods

    by_in_out = [w.t().contiguous() for w in fp32]  # transformers' Conv1D keeps weights as (in, out)
    bf16 = [w.bfloat16() for w in fp32]
    packed_bf16, packed_fp16 = packed(torch.bfloat16), packed(torch.float16)
    fbgemm_fp16 = [torch.ops.quantized.linear_prepack_fp16(w, None) for w in fp32]
    int8 = [torch.randint(-127, 128, w.shape, dtype=torch.int8, generator=gen) for w in fp32]
    scales = [torch.rand(w.size(0), generator=gen).bfloat16() for w in fp32]
    ceiling = torch.ones(nbytes // 2)  # float32: 4 bytes each, as many bytes as the bf16 weights

    return {
        "float32, x @ W with W (in, out): transformers' layout (MKL)":
            (4 * nbytes, lambda: [x32[w.size(0)] @ w for w in by_in_out]),
        "float32, F.linear (MKL)": (4 * nbytes, lambda: [F.linear(x32[w.size(1)], w) for w in fp32]),
        "bfloat16, F.linear (oneDNN, repacks the weight every call)":
            (2 * nbytes, lambda: [F.linear(x16[w.size(1)], w) for w in bf16]),
        "bfloat16, packed once (oneDNN): gptcore's PackedLinear":
            (2 * nbytes, lambda: [m(x16[m.in_features]) for m in packed_bf16]),
        "float16, packed once (oneDNN)": (2 * nbytes, lambda: [m(xh[m.in_features]) for m in packed_fp16]),
        "float16 weights, float32 activations (FBGEMM)":
            (2 * nbytes, lambda: [torch.ops.quantized.linear_dynamic_fp16(x32[w.size(1)], p)
                                  for w, p in zip(fp32, fbgemm_fp16)]),
        "int8 weights, bfloat16 activations (_weight_int8pack_mm; lossy)":
            (nbytes, lambda: [torch._weight_int8pack_mm(x16[w.size(1)], w, s) for w, s in zip(int8, scales)]),
        "ceiling: sum over as many bytes as the bf16 weights": (2 * nbytes, lambda: ceiling.sum()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="timed runs of each kernel, interleaved")
    parser.add_argument("--no-save", action="store_true", help="print the table without appending to RESULTS.md")
    args = parser.parse_args()
    config = GPTConfig()
    runs = kernels(decode_shapes(config))
    times = {name: [] for name in runs}
    with torch.no_grad():
        for _, run in runs.values():
            run()  # warm-up: thread pools, oneDNN primitives
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
    report(title, details, table, save=not args.no_save)


if __name__ == "__main__":
    main()
