"""Training throughput: gptcore's default path against transformers and nanoGPT's model, one process, interleaved.

    python bench/bench_train.py --nanogpt ../nanoGPT           # 124M (B=1, T=1024) and a small config
    python bench/bench_train.py --configs 124M --profile --no-save

One step is forward, backward and AdamW, as in training. gptcore runs as train.py would by default on this device
(its --dtype choice and the loop's optimizer). transformers runs its defaults (fp32, eager, torch.optim.AdamW's
default implementation). nanoGPT's model.py is read at run time from a nanoGPT checkout, its model.py, or a bare git
repository of it (--nanogpt), never copied here; it runs with its own configure_optimizers, in fp32 and under bf16
autocast (train.py's dtype=bfloat16). Every side trains the same shape, so FLOPs per token are gptcore's count
(6 per weight + attention) for all; MFU is against the measured FLOP/s of a 2048^3 matmul in the dtype a side
computes in. --profile adds where gptcore's step spends its time (torch.profiler, by op).
"""

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import positive_int, report  # noqa: E402
from gptcore import GPT, GPTConfig  # noqa: E402
from gptcore.device import default_device, measure_matmul_peak, training_dtype  # noqa: E402
from gptcore.train.loop import configure_optimizer  # noqa: E402

CONFIGS = {  # name: (n_layer, n_head, n_embd, batch_size, block_size)
    "124M": (12, 12, 768, 1, 1024),
    "small": (6, 6, 384, 8, 256),
}


def gptcore_step(config, device, dtype, compile=False):
    model = GPT(config).to(device)
    optimizer = configure_optimizer(model, 0.1, 6e-4, device_type=torch.device(device).type)
    run = torch.compile(model) if compile else model

    def step(x, y):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            _, loss = run(x, y)
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


def load_nanogpt(path: str) -> types.ModuleType:
    """nanoGPT's model.py as a module, from a checkout, the file itself, or a bare git repository (its HEAD)."""
    if os.path.isfile(path):
        with open(path) as f:
            source = f.read()
    elif os.path.isfile(os.path.join(path, "model.py")):
        with open(os.path.join(path, "model.py")) as f:
            source = f.read()
    else:
        source = subprocess.run(["git", f"--git-dir={path}", "show", "HEAD:model.py"], capture_output=True, text=True,
                                check=True).stdout
    module = types.ModuleType("nanogpt_model")
    exec(compile(source, f"{path}:model.py", "exec"), module.__dict__)
    return module


def nanogpt_steps(nanogpt, config, device):
    """One nanoGPT model and optimizer, with a step in fp32 and one under bf16 autocast (timing only: they share
    the weights)."""
    conf = nanogpt.GPTConfig(block_size=config.block_size, vocab_size=50304, n_layer=config.n_layer,
                             n_head=config.n_head, n_embd=config.n_embd, dropout=0.0, bias=True)
    model = nanogpt.GPT(conf).to(device)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), torch.device(device).type)

    def make(bf16):
        def step(x, y):
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                _, loss = model(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step
    return model, make(False), make(True)


def timed(step, x, y, device) -> float:
    start = time.perf_counter()
    step(x, y)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def profile_table(step, x, y, steps: int, top: int) -> tuple[list[str], str]:
    """Where a step's time goes: torch.profiler over `steps` steps, ops grouped by name, ranked by self time (time in
    the op itself, not in the ops it calls), each as a share of the step; then matmul kernels against the rest."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step(x, y)
        wall = (time.perf_counter() - start) / steps
    ops = sorted((e for e in prof.key_averages() if e.self_cpu_time_total > 0), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops) / steps / 1e6  # seconds of op time per step
    matmul = sum(e.self_cpu_time_total for e in ops if e.key in MATMUL_OPS) / steps / 1e6
    lines = ["| op | ms per step | share of op time | calls per step |", "|---|---|---|---|"]
    for e in ops[:top]:
        ms = e.self_cpu_time_total / steps / 1e3
        lines.append(f"| {e.key} | {ms:,.1f} | {100 * ms / 1e3 / total:.1f}% | {e.count / steps:g} |")
    lines.append(f"| (all other ops) | {1e3 * total - sum(e.self_cpu_time_total for e in ops[:top]) / steps / 1e3:,.1f}"
                 f" | {100 * (1 - sum(e.self_cpu_time_total for e in ops[:top]) / steps / 1e6 / total):.1f}% | |")
    notes = [f"profile: {steps} steps, {wall:.2f} s per step under the profiler, {total:.2f} s of op self-time per step; "
             f"matmul kernels (mm, addmm, bmm, the attention kernels) {100 * matmul / total:.0f}% of it, everything "
             f"else {100 * (1 - matmul / total):.0f}%"]
    return notes, "\n".join(lines)


# the ops whose time is matrix multiplication (attention's kernels count: they are matmuls with a softmax inside)
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward"}


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "CPU flags: unknown"
    return "CPU flags: " + ", ".join(f"{flag}: {'yes' if flag in flags else 'no'}" for flag in ("amx_bf16", "avx512_bf16"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=5, help="timed steps per side and config (after 1 warm-up)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of: {', '.join(CONFIGS)}")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--nanogpt", metavar="PATH", help="nanoGPT: a checkout, its model.py, or a bare git repository; "
                                                           "without it nanoGPT's rows are left out")
    parser.add_argument("--no-hf", action="store_true", help="leave out transformers (the slowest side)")
    parser.add_argument("--compile", action="store_true",
                        help="also gptcore with torch.compile (as the gpt2-* presets train), its compile time and "
                             "after how many steps it pays back")
    parser.add_argument("--profile", action="store_true", help="also profile gptcore's step on the first config")
    parser.add_argument("--profile-steps", type=positive_int, default=2)
    parser.add_argument("--top", type=positive_int, default=15, help="ops shown in the profile")
    parser.add_argument("--no-save", action="store_true", help="print only; don't append to bench/RESULTS.md")
    args = parser.parse_args()
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"argument --configs: unknown {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    device = args.device
    nanogpt = load_nanogpt(args.nanogpt) if args.nanogpt else None
    dtype, why = training_dtype(device)
    load_before = os.getloadavg()[0]
    peaks = {name: measure_matmul_peak(device, getattr(torch, name), seconds=1.0) for name in ("float32", "bfloat16")}

    rows, notes, profile, flops = [], [], None, {}
    for name in configs:
        n_layer, n_head, n_embd, B, T = CONFIGS[name]
        label = f"{name} ({n_layer}x{n_embd}) B={B} T={T}"
        config = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=T)
        torch.manual_seed(0)
        ours, our_step = gptcore_step(config, device, dtype)
        sides = {f"gptcore, train.py default ({dtype})": (our_step, dtype)}
        if args.compile:
            sides[f"gptcore, --compile ({dtype})"] = (gptcore_step(config, device, dtype, compile=True)[1], dtype)
        if not args.no_hf:
            sides["transformers (float32)"] = (hf_step(config, device)[1], "float32")
        if nanogpt:
            _, nano32, nano16 = nanogpt_steps(nanogpt, config, device)
            sides["nanoGPT's model (float32)"] = (nano32, "float32")
            sides["nanoGPT's model (bf16 autocast)"] = (nano16, "bfloat16")
        x = torch.randint(0, config.vocab_size, (B, T), device=device)
        y = torch.roll(x, -1, dims=1)
        flops_per_token = ours.flops_per_token(T)
        flops[name] = flops_per_token
        times, first = {side: [] for side in sides}, {}
        for i in range(args.steps + 1):  # interleaved, so drifts in machine load hit every side alike
            for side, (step, _) in sides.items():
                t = timed(step, x, y, device)
                if i:
                    times[side].append(t)
                else:  # the first step of each is warm-up (and compilation)
                    first[side] = t
        if args.compile:
            eager, compiled = list(sides)[:2]
            saved = statistics.median(times[eager]) - statistics.median(times[compiled])
            speedup = statistics.median(a / b for a, b in zip(times[eager], times[compiled]))
            notes.append(f"{label}: compiled steps {speedup:.2f}x eager ones; compiling took "
                         f"{first[compiled] - statistics.median(times[compiled]):.0f} s (its first step over a later "
                         "one; Inductor's on-disk cache shortens later runs' compiles); " + (
                             f"it pays back after {(first[compiled] - statistics.median(times[compiled])) / saved:,.0f} "
                             "steps" if saved > 0 else "it never pays back: compiled steps are no faster"))
        # ratios per round, then their median: a busy moment slows one round of every side, not one side
        peers = [s for s in sides if not s.startswith("gptcore")]
        for side, (_, side_dtype) in sides.items():
            tok_s = B * T / statistics.median(times[side])
            vs = {p: statistics.median(a / b for a, b in zip(times[p], times[side])) for p in peers} \
                if side.startswith("gptcore") else {}
            rows.append((label, side, tok_s, flops_per_token * tok_s / peaks[side_dtype], vs))
        print(f"{label}: " + ", ".join(f"{r[1]} {r[2]:,.0f} tok/s" for r in rows[-len(sides):]), flush=True)
        if args.profile and profile is None:
            profile_notes, profile = profile_table(our_step, x, y, args.profile_steps, args.top)
            notes += profile_notes
        del ours, our_step, sides, x, y  # the closures hold models and optimizers: free them all
        gc.collect()

    peer_names = next((list(r[4]) for r in rows if r[4]), [])
    lines = ["| config | implementation | tok/s (median) | % of its dtype's matmul ceiling |"
             + "".join(f" gptcore vs {p} |" for p in peer_names),
             "|---|---|---|---|" + "---|" * len(peer_names)]
    for label, side, tok_s, mfu, vs in rows:
        cells = "".join(f" {vs[p]:.2f}x |" if p in vs else " |" for p in peer_names)
        lines.append(f"| {label} | {side} | {tok_s:,.1f} | {100 * mfu:.1f}% |" + cells)
    table = "\n".join(lines)
    if profile:
        table += "\n\nwhere gptcore's step goes (" + configs[0] + "):\n\n" + profile
    peak_text = ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in peaks.items())
    report("bench_train.py: training throughput, gptcore vs transformers and nanoGPT's model",
           [cpu_flags(), f"device {device}, torch threads {torch.get_num_threads()}; gptcore's dtype {dtype} ({why})",
            f"one step = forward + backward + AdamW; {args.steps} timed steps per side in interleaved rounds; "
            f"'gptcore vs X' is the median over rounds of X's step time over gptcore's (a gptcore row's speedup over X)",
            f"matmul ceiling (2048^3) measured here: {peak_text}; training FLOPs per token: "
            + ", ".join(f"{name} {f / 1e6:,.0f}M" for name, f in flops.items()),
            f"load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after (other processes share "
            "these cores)", *notes], table, save=not args.no_save, device=device)


if __name__ == "__main__":
    main()
