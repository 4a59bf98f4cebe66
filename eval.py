"""Zero-shot evaluation: `python eval.py [--tasks hellaswag,lambada,wikitext2] [options]`.

By default the model is the committed checkpoint in checkpoint/*.pt; --checkpoint takes one of our .pt files or a
training out dir (its newest checkpoint); --pretrained takes OpenAI's GPT-2 in the Hugging Face format (a folder,
or a name online). It names what it scores on stderr (model, device, dtype, tasks, examples), then prints a
table (task, metric, value, stderr, examples, seconds); --out writes the same as JSON in lm-evaluation-harness's
shape. The protocols are in gptcore/eval/{hellaswag,lambada,perplexity}.py.
Under `torchrun --nproc_per_node=N eval.py ...` each process scores 1/N of every task; rank 0 reports.
Data files: --data-dir, else ../shared/data beside the repository, else downloaded once into ~/.cache/gptcore.
"""

import argparse
import os
import sys

import torch

from gptcore.checkpoint import committed_checkpoint, load_model
from gptcore.device import bf16_helps, default_device
from gptcore.errors import GPTCoreError
from gptcore.eval.tasks import TASKS, format_table, parse_tasks, results_json, run_task
from gptcore.fileio import write_json
from gptcore.train.distributed import destroy_distributed, init_distributed

COMMITTED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoint")
DEFAULT_LIMIT = 500  # examples per task; the full sets ('all') take many times longer on a CPU


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="PATH",
                        help="a gptcore .pt file, or an out dir (its newest checkpoint) (default: checkpoint/*.pt)")
    source.add_argument("--pretrained", metavar="NAME_OR_DIR", help="OpenAI GPT-2 in the Hugging Face format")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)} "
                        "(default: all)")
    parser.add_argument("--limit", default=str(DEFAULT_LIMIT),
                        help="score the first N examples of each task, in file order (for wikitext2: the first N "
                             f"windows), or 'all' (default: {DEFAULT_LIMIT}, so that the default run takes minutes "
                             "on a 2-core CPU)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default: 16)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "auto"], default="float32",
                        help="float32 (default) scores as exactly as transformers; bfloat16 autocast is faster on "
                             "GPUs and AMX CPUs, within ~1e-2 per log-likelihood; auto: bfloat16 where it is faster")
    parser.add_argument("--data-dir", default=None, help="folder with the task files (default: ../shared/data if "
                        "present, else download into ~/.cache/gptcore/eval)")
    parser.add_argument("--skip-checksum", action="store_true",
                        help="score task files whose sha256 is not the pinned one (your own copies)")
    parser.add_argument("--out", metavar="FILE.json", default=None, help="also write the results as JSON")
    parser.add_argument("--log-samples", action="store_true", help="put every example's scores in the JSON too")
    args = parser.parse_args(argv)
    args.tasks = parse_tasks(args.tasks)
    if args.limit == "all":
        args.limit = None
    elif not args.limit.isdigit() or int(args.limit) < 1:
        raise GPTCoreError(f"--limit takes a number >= 1 or 'all', got '{args.limit}'")
    else:
        args.limit = int(args.limit)
    if args.batch_size < 1:
        raise GPTCoreError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.log_samples and not args.out:
        raise GPTCoreError("--log-samples goes into the JSON file: pass --out FILE.json too")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = args.device or default_device()
    checkpoint = args.checkpoint or (None if args.pretrained else committed_checkpoint(COMMITTED_DIR))
    if checkpoint is None and not args.pretrained:
        raise GPTCoreError(f"no checkpoint in {COMMITTED_DIR}; pass --checkpoint PATH or --pretrained NAME_OR_DIR")
    model, tokenizer, _ = load_model(checkpoint, args.pretrained)
    d = init_distributed(device)
    try:
        if torch.device(device).type == "cuda" and d.enabled:
            device = f"cuda:{d.local_rank}"  # one GPU per process
        model.to(device)
        dtype = torch.bfloat16 if args.dtype == "bfloat16" or (args.dtype == "auto" and bf16_helps(device)) \
            else torch.float32
        dtype_name = str(dtype).removeprefix("torch.")
        if d.is_main:
            examples = "every example" if args.limit is None else \
                f"the first {args.limit} examples (--limit all: every one)"
            print(f"evaluating {args.pretrained or checkpoint} on {device}, {dtype_name}"
                  f"{f', {d.world_size} processes' if d.enabled else ''}: {', '.join(args.tasks)}, {examples}",
                  file=sys.stderr)
        results = [run_task(name, model, tokenizer, args.data_dir, args.limit, args.batch_size, dtype,
                            progress=sys.stderr.isatty() and d.is_main, verify=not args.skip_checksum, dist=d)
                   for name in args.tasks]
    finally:
        destroy_distributed()
    if not d.is_main:
        return
    print(format_table(results))
    if args.out:
        config = {"model": args.pretrained or checkpoint, "tasks": args.tasks, "limit": args.limit,
                  "batch_size": args.batch_size, "device": device, "dtype": dtype_name,
                  "processes": d.world_size}
        write_json(args.out, results_json(results, config, args.log_samples), indent=1)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except GPTCoreError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
