"""Evaluation speed on GPT-2 124M: gptcore's batched scoring next to a plain transformers loop, in one process.

The plain loop is what most people write: one example per forward pass, float32, log-softmax over every
position: HellaSwag as build-nanogpt does it (an item's 4 endings padded into one batch), LAMBADA one passage at a
time, WikiText-2 one sliding window at a time (the Hugging Face perplexity recipe, with gptcore's windows).
gptcore runs its scoring core (batches of --batch-size sequences, the head only at scored positions) in float32
and with bfloat16 autocast. Random weights (speed doesn't depend on their values), the same ones in both
libraries, through our save_pretrained export; the float32 scores are checked to agree before timing counts.
Each round runs every method once, in turn; the speed-up is the median of per-round ratios.
--lm-eval also times lm-evaluation-harness (pip install lm-eval) on the same model and local files, offline.

    python bench/bench_eval.py [--rounds 3] [--batch-size 16] [--lm-eval] [--no-save]
"""

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from bench.common import report  # noqa: E402
from gptcore.eval import hellaswag, lambada  # noqa: E402
from gptcore.eval.files import task_file  # noqa: E402
from gptcore.eval.perplexity import windows  # noqa: E402
from gptcore.eval.scoring import score_requests  # noqa: E402
from gptcore.model import GPT, GPTConfig  # noqa: E402
from gptcore.tokenizer import get_tokenizer  # noqa: E402

EXAMPLES = {"hellaswag": 8, "lambada": 16, "wikitext2": 4}  # items, passages, windows of 1024 tokens


def workloads(tokenizer, block_size):
    """Per task: (gptcore requests, the plain loop's examples as lists of (ids, n scored at the end), examples)."""
    out = {}
    items = hellaswag.load(task_file("hellaswag"), EXAMPLES["hellaswag"])
    reqs = hellaswag.requests(items, tokenizer)
    out["hellaswag"] = (reqs, [[(c + e, len(e)) for c, e in reqs[4 * i:4 * i + 4]] for i in range(len(items))])
    reqs = lambada.requests(lambada.load(task_file("lambada"), EXAMPLES["lambada"]), tokenizer)
    out["lambada"] = (reqs, [[(c + e, len(e))] for c, e in reqs])
    with open(task_file("wikitext2"), encoding="utf-8") as f:
        tokens = tokenizer.encode(f.read()[:200_000])
    spans = windows(len(tokens), block_size, block_size // 2)[:EXAMPLES["wikitext2"]]
    reqs = [(tokens[b:s], tokens[s:e]) for b, s, e in spans]
    out["wikitext2"] = (reqs, [[(c + e, len(e))] for c, e in reqs])
    return out


@torch.no_grad()
def plain_loop(model, examples):
    """Per example: one forward of its rows (right-padded), full log-softmax, the scored tokens gathered."""
    results = []
    for rows in examples:
        T = max(len(ids) for ids, _ in rows) - 1
        idx = torch.zeros(len(rows), T, dtype=torch.long)
        for r, (ids, _) in enumerate(rows):
            idx[r, :len(ids) - 1] = torch.tensor(ids[:-1])
        logprobs = F.log_softmax(model(idx).logits.float(), dim=-1)
        for r, (ids, n) in enumerate(rows):
            L = len(ids) - 1
            target = torch.tensor(ids[-n:])
            results.append(logprobs[r, L - n:L].gather(1, target[:, None]).sum().item())
    return results


def lm_eval_runner(hf_model, hf_dir, batch_size):
    """A function running lm-evaluation-harness on the local files: tasks defined on local JSON, offline."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import GPT2TokenizerFast
    from gptcore.tokenizer import gpt2_bpe_files

    tokenizer = GPT2TokenizerFast(*gpt2_bpe_files())
    tmp = tempfile.mkdtemp()
    n = EXAMPLES
    specs = {
        "gptcore_lambada": ("lambada_openai.jsonl", "loglikelihood",
                            "doc_to_text: \"{{text.split(' ')[:-1]|join(' ')}}\"\n"
                            "doc_to_target: \"{{' '+text.split(' ')[-1]}}\"\n"
                            "metric_list:\n  - metric: acc\n  - metric: perplexity\n"),
        "gptcore_hellaswag": ("hellaswag_val.jsonl", "multiple_choice",
                              "doc_to_text: \"{{ctx}}\"\ndoc_to_target: \"{{label}}\"\ndoc_to_choice: \"{{endings}}\"\n"
                              "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"),
    }
    for name, (file, kind, body) in specs.items():
        with open(os.path.join(tmp, f"{name}.yaml"), "w") as f:
            f.write(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                    f"    test: {task_file(name.split('_')[1])}\ntest_split: test\noutput_type: {kind}\n{body}")
    manager = TaskManager(include_path=tmp)
    lm = HFLM(pretrained=hf_model, tokenizer=tokenizer, batch_size=batch_size, device="cpu")

    def run(task):
        name = f"gptcore_{task}"
        return simple_evaluate(model=lm, tasks=[name], task_manager=manager, limit=n[task],
                               bootstrap_iters=0, log_samples=False)["results"][name]
    return run


def compare(task, scores, theirs: dict) -> list[tuple]:
    """(task, metric, gptcore's value, lm-eval's) for the metrics both define the same way."""
    if task == "lambada":
        ours = {"acc": sum(s.greedy for s in scores) / len(scores),
                "perplexity": math.exp(-sum(s.logprob for s in scores) / len(scores))}
    else:  # hellaswag: acc is the same protocol; lm-eval's acc_norm divides by bytes, ours by tokens
        groups = [scores[i:i + 4] for i in range(0, len(scores), 4)]
        items = hellaswag.load(task_file("hellaswag"), len(groups))
        ours = {"acc": sum(max(range(4), key=lambda k: g[k].logprob) == it["label"]
                           for g, it in zip(groups, items)) / len(groups)}
    return [(task, m, v, theirs[f"{m},none"]) for m, v in ours.items()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every method once (default: 3)")
    parser.add_argument("--batch-size", type=int, default=16, help="gptcore's sequences per forward (default: 16)")
    parser.add_argument("--lm-eval", action="store_true", help="also time lm-evaluation-harness on lambada and "
                        "hellaswag (needs pip install lm-eval)")
    parser.add_argument("--no-save", action="store_true", help="print the table without appending to RESULTS.md")
    args = parser.parse_args()
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging
    logging.set_verbosity_error()

    torch.manual_seed(0)
    ours = GPT(GPTConfig()).eval()
    hf_dir = tempfile.mkdtemp()
    ours.save_pretrained(hf_dir)
    hf = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    tokenizer = get_tokenizer("gpt2")
    loads = workloads(tokenizer, ours.config.block_size)
    run_lm_eval = lm_eval_runner(hf, hf_dir, args.batch_size) if args.lm_eval else None

    methods = ["plain", "fp32", "bf16"] + (["lm-eval"] if run_lm_eval else [])
    seconds = {(t, m): [] for t in loads for m in methods}
    side_by_side = []  # (task, metric, gptcore, lm-eval) on the same examples
    for r in range(args.rounds):
        for task, (reqs, examples) in loads.items():
            start = time.perf_counter()
            want = plain_loop(hf, examples)
            seconds[task, "plain"].append(time.perf_counter() - start)
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                start = time.perf_counter()
                got = score_requests(ours, reqs, args.batch_size, dtype, progress=False)
                seconds[task, name].append(time.perf_counter() - start)
                if r == 0:
                    worst = max(abs(g.logprob - w) for g, w in zip(got, want))
                    print(f"{task} {name}: max |log-likelihood - transformers'| = {worst:.2e}")
                    assert name != "fp32" or worst < 1e-3, "fp32 scores differ from transformers'"
                    if name == "fp32":
                        fp32_scores = got
            if run_lm_eval and task != "wikitext2":
                start = time.perf_counter()
                theirs = run_lm_eval(task)
                seconds[task, "lm-eval"].append(time.perf_counter() - start)
                if r == 0:
                    side_by_side += compare(task, fp32_scores, theirs)

    rows = ["| task | examples | method | examples/s (median) | best round | speed-up vs plain loop (median of rounds) |",
            "|---|---|---|---|---|---|"]
    for task in loads:
        n = EXAMPLES[task]
        for m in methods:
            runs = seconds[task, m]
            if not runs:
                continue
            ratios = [p / s for p, s in zip(seconds[task, "plain"], runs)]
            rows.append(f"| {task} | {n} | {m} | {n / statistics.median(runs):.2f} | {n / min(runs):.2f} | "
                        f"{statistics.median(ratios):.2f}x |")
    if side_by_side:
        rows += ["", "Same examples, gptcore (float32) next to lm-evaluation-harness:", "",
                 "| task | metric | gptcore | lm-eval |", "|---|---|---|---|"]
        rows += [f"| {t} | {m} | {a:.6g} | {b:.6g} |" for t, m, a, b in side_by_side]
    flags = " ".join(f for f in ("amx_tile", "avx512_bf16") if f in open("/proc/cpuinfo").read()) or "none"
    report("bench_eval: examples/s, gptcore scoring vs a plain transformers loop, GPT-2 124M (random weights)",
           [f"{args.rounds} rounds, interleaved; gptcore batch {args.batch_size}; torch threads "
            f"{torch.get_num_threads()}; CPU flags: {flags}",
            "plain = transformers GPT2LMHeadModel, one example per forward, float32, full log-softmax; "
            "wikitext2 examples are 1024-token windows with stride 512"], "\n".join(rows), save=not args.no_save)


if __name__ == "__main__":
    main()
