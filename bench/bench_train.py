"""Training throughput: gptcore's default path against transformers.GPT2LMHeadModel, same process, interleaved.

    python bench/bench_train.py                 # 124M (B=1, T=1024) and a small config; appends to bench/RESULTS.md
    python bench/bench_train.py --steps 3 --no-save

One step is forward, backward and AdamW, as in training. gptcore runs as train.py would by default on this device
(its --dtype choice, fused AdamW); Hugging Face runs its defaults (fp32, eager, torch.optim.AdamW's default
implementation). MFU is against a matmul ceiling measured in the same run: the FLOP/s of a large square matmul
in the dtype each side computes in.
"""

import argparse
import gc
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import positive_int, report  # noqa: E402
from gptcore import GPT, GPTConfig  # noqa: E402
from gptcore.device import bf16_helps, default_device, measure_matmul_peak  # noqa: E402
from gptcore.train.loop import configure_optimizer  # noqa: E402

CONFIGS = {  # name: (n_layer, n_head, n_embd, batch_size, block_size)
    "124M B=1 T=1024": (12, 12, 768, 1, 1024),
    "small (6x384) B=8 T=256": (6, 6, 384, 8, 256),
}


def gptcore_step(config, device, dtype):
    model = GPT(config).to(device)
    optimizer = configure_optimizer(model, 0.1, 6e-4, device_type=torch.device(device).type)

    def step(x, y):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, step


def hf_step(config, device):
    from transformers import GPT2Config, GPT2LMHeadModel
    hf = GPT2Config(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd, n_positions=config.block_size,
                    vocab_size=config.vocab_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(hf).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1)

    def step(x, y):
        loss = model(x, labels=x).loss  # HF shifts the labels itself
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, step


def timed(step, x, y, device) -> float:
    start = time.perf_counter()
    step(x, y)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=5, help="timed steps per side and config (after 1 warm-up)")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--no-save", action="store_true", help="print only; don't append to bench/RESULTS.md")
    args = parser.parse_args()
    device = args.device
    dtype = "bfloat16" if bf16_helps(device) else "float32"
    peaks = {"float32": measure_matmul_peak(device, torch.float32, seconds=1.0)}
    if dtype == "bfloat16":
        peaks["bfloat16"] = measure_matmul_peak(device, torch.bfloat16, seconds=1.0)

    rows = []
    for name, (n_layer, n_head, n_embd, B, T) in CONFIGS.items():
        config = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=T)
        torch.manual_seed(0)
        ours, our_step = gptcore_step(config, device, dtype)
        theirs, their_step = hf_step(config, device)
        x = torch.randint(0, config.vocab_size, (B, T), device=device)
        y = torch.roll(x, -1, dims=1)
        flops_per_token = ours.flops_per_token(T)
        times = {"gptcore": [], "hf": []}
        for i in range(args.steps + 1):  # interleaved, so drifts in machine load hit both sides alike
            t_ours, t_hf = timed(our_step, x, y, device), timed(their_step, x, y, device)
            if i:  # the first step of each is warm-up
                times["gptcore"].append(t_ours)
                times["hf"].append(t_hf)
        for side, side_dtype in (("gptcore", dtype), ("hf", "float32")):
            tok_s = B * T / statistics.median(times[side])
            rows.append((name, f"{side} ({side_dtype})", tok_s, flops_per_token * tok_s / peaks[side_dtype]))
        del ours, theirs, our_step, their_step, x, y  # the closures hold models and optimizers: free them all
        gc.collect()
        print(f"{name}: gptcore {rows[-2][2]:,.0f} tok/s, HF {rows[-1][2]:,.0f} tok/s, "
              f"speedup {rows[-2][2] / rows[-1][2]:.2f}x", flush=True)

    lines = ["| config | implementation | tok/s (median) | MFU vs measured matmul peak | speedup vs HF |",
             "|---|---|---|---|---|"]
    for i, (name, side, tok_s, mfu) in enumerate(rows):
        speedup = tok_s / rows[i + 1][2] if i % 2 == 0 else 1.0
        lines.append(f"| {name} | {side} | {tok_s:,.1f} | {100 * mfu:.1f}% | {speedup:.2f}x |")
    table = "\n".join(lines)
    peak_text = ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in peaks.items())
    report("train: throughput, gptcore vs transformers",
           [f"device {device}; one step = forward + backward + AdamW; {args.steps} timed steps each, "
            f"interleaved; matmul peak measured here: {peak_text}"], table, save=not args.no_save, device=device)


if __name__ == "__main__":
    main()
