"""Generation speed on GPT-2 124M: gptcore's KV-cache decoding next to transformers' generate(), in one process.

Prompt of 16 tokens, 128 new tokens, batch 1, greedy. Random weights (speed doesn't depend on their values),
the same ones in both libraries. Each round runs every method once, in turn, so a busy machine slows them alike.
The table gives the median and the best round: on a shared machine the best round is the code's speed, the
median that of the moment. The speed-up over transformers is taken round by round (each round's two runs are
seconds apart, so they share the machine's state) and the median of those ratios is reported; that is far
steadier than a ratio of medians. Runs whose rounds differ by more than 1.5x are flagged. Prints the table and appends
it to bench/RESULTS.md. On a machine other processes use, --threads 1 is far steadier: torch's threads wait
on each other whenever one of them loses its core.

    python bench/bench_generate.py [--rounds 5] [--threads N] [--no-save]
"""

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import report  # noqa: E402
from gptcore.device import generation_dtype  # noqa: E402
from gptcore.infer import Generator, Request  # noqa: E402
from gptcore.model import GPT, GPTConfig  # noqa: E402

PROMPT_TOKENS, NEW_TOKENS = 16, 128


def time_ours(engine, idx, use_cache):
    """(seconds to the first new token, seconds for all, the new ids)."""
    start = time.perf_counter()
    first, ids = None, []
    if not use_cache:  # the reference: the whole context recomputed at every step
        seq = idx
        with torch.no_grad():
            for _ in range(NEW_TOKENS):
                seq = torch.cat([seq, engine.model(seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
                ids.append(int(seq[0, -1]))
                first = first or time.perf_counter() - start
        return first, time.perf_counter() - start, ids
    for events in engine.run([Request(idx[0].tolist(), NEW_TOKENS, do_sample=False, stop_token=None)]):
        ids.append(events[0].token)
        first = first or time.perf_counter() - start
    return first, time.perf_counter() - start, ids


def time_hf(model, idx, use_cache):
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        """generate() calls put() with the prompt, then with each new token."""
        def __init__(self):
            self.calls, self.at = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2:
                self.at = time.perf_counter()

        def end(self):
            pass

    streamer = FirstToken()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=NEW_TOKENS, do_sample=False,
                             use_cache=use_cache, streamer=streamer)
    total = time.perf_counter() - start
    return streamer.at - start, total, out[0, idx.size(1):].tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="runs of each cached method; no-cache ones run once")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-save", action="store_true", help="print the table without appending to RESULTS.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging
    logging.set_verbosity_error()

    torch.manual_seed(0)
    ours = GPT(GPTConfig()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        hf = GPT2LMHeadModel.from_pretrained(tmp).eval()
    hf.generation_config.eos_token_id = None  # random weights may emit <|endoftext|>: always generate all 128
    hf.generation_config.pad_token_id = 0
    hf_bf16 = copy.deepcopy(hf).to(torch.bfloat16)
    default_dtype = generation_dtype("cpu")
    ours_default = Generator(ours, dtype=default_dtype)
    idx = torch.randint(0, 50257, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    dtype_name = str(default_dtype).removeprefix("torch.")

    methods = [  # (name, run, repeated every round)
        (f"gptcore, KV cache, {dtype_name} (sample.py's default here)", lambda: time_ours(ours_default, idx, True),
         True),
        ("gptcore, KV cache, float32", lambda: time_ours(Generator(ours, dtype="float32"), idx, True), True),
        ("transformers generate(use_cache=True), float32", lambda: time_hf(hf, idx, True), True),
        ("transformers generate(use_cache=True), bfloat16", lambda: time_hf(hf_bf16, idx, True), True),
        ("gptcore, no cache (full recompute), float32", lambda: time_ours(ours_default, idx, False), False),
        ("transformers generate(use_cache=False), float32", lambda: time_hf(hf, idx, False), False),
    ]
    load_before = os.getloadavg()[0]
    results = {name: [] for name, _, _ in methods}
    tokens = {}
    time_ours(ours_default, idx, True)  # warm-up: thread pools, oneDNN kernels
    time_hf(hf, idx, True)
    for r in range(args.rounds):
        for name, run, repeated in methods:
            if repeated or r == 0:
                first, total, ids = run()
                results[name].append((first, total))
                tokens[name] = ids
                print(f"round {r + 1}/{args.rounds}: {name}: {NEW_TOKENS / total:.1f} tok/s", file=sys.stderr)
    load_after = os.getloadavg()[0]

    hf_name = methods[2][0]
    hf_totals = [total for _, total in results[hf_name]]
    rows, unsteady = [], []
    for name, _, _ in methods:
        firsts = [first for first, _ in results[name]]
        totals = [total for _, total in results[name]]
        median, best = NEW_TOKENS / statistics.median(totals), NEW_TOKENS / min(totals)
        decode = (NEW_TOKENS - 1) / statistics.median(total - first for first, total in results[name])
        paired = statistics.median(hf / ours for hf, ours in zip(hf_totals, totals))  # methods run once: round 1
        if max(totals) > 1.5 * min(totals):
            unsteady.append(name)
        rows.append(f"| {name} | {len(totals)} | {statistics.median(firsts) * 1e3:.0f} | {median:.1f} | {best:.1f} | "
                    f"{decode:.1f} | {paired:.2f}x | {min(hf_totals) / min(totals):.2f}x |")
    same = lambda a, b: "yes" if tokens[a] == tokens[b] else "NO"  # noqa: E731
    checks = (f"greedy tokens, gptcore float32 with cache = transformers float32: {same(methods[1][0], hf_name)}; "
              f"= gptcore without cache: {same(methods[1][0], methods[4][0])}; "
              f"= gptcore {dtype_name} (sample.py's default): {same(methods[1][0], methods[0][0])}")
    details = [f"torch threads: {torch.get_num_threads()}; each round runs every method in turn",
               f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after "
               "(other processes share these cores)",
               checks]
    if unsteady:
        details.append(f"UNSTEADY: rounds differ by more than 1.5x for {len(unsteady)} of {len(methods)} methods "
                       "(the machine was busy); trust the best-round columns, or rerun with --threads 1")
    table = "\n".join([
        "| method | runs | time to first token, ms (median) | tok/s, median (128 new, incl. prefill) | tok/s, best "
        "| decode tok/s, median (after the first) | vs transformers with cache, median of per-round ratios "
        "| best vs best |",
        "|---|---|---|---|---|---|---|---|", *rows])
    title = (f"bench_generate.py: generation speed, GPT-2 124M, prompt {PROMPT_TOKENS} tokens, {NEW_TOKENS} new, "
             "batch 1, greedy")
    report(title, details, table, save=not args.no_save)


if __name__ == "__main__":
    main()
