"""Sample text: `python sample.py [-p PROMPT] [-m MAX_TOKENS] [options]`.

By default the model is the committed checkpoint in checkpoint/*.pt (next to this script); if there is none, an
untrained GPT-2 124M, which says so on stderr. Either way stderr names it, then lists the user's own training runs
(under ./out and the repository's out/) with the command that samples the newest, or says how to make one.
--checkpoint takes one of our .pt files or a training out dir (its newest checkpoint); --pretrained takes OpenAI's
GPT-2 in the Hugging Face format (a folder, or a name online).
The prompt is encoded with the model's own tokenizer; without one, sampling starts from <|endoftext|>.
Generation stops at <|endoftext|> unless --no-stop is given. --num-samples are drawn together, in one batch (sample i
with seed --seed + i); the first streams, and each next one prints as soon as the one before it has ended.
"""

import argparse
import os
import sys

import torch

from gptcore import checkpoint
from gptcore.device import check_device, default_device
from gptcore.errors import GPTCoreError
from gptcore.infer import Generator, Request
from gptcore.infer.engine import EOT, QUANTIZE
from gptcore.infer.sampling import check_sampling
from gptcore.train.config import DEFAULT_PRESET, TRAIN_PRESETS

ROOT = os.path.dirname(os.path.abspath(__file__))
COMMITTED_DIR = os.path.join(ROOT, "checkpoint")
# where a user's runs are: a relative --out-dir lands under the working directory, a preset's in the repository's
RUN_FOLDERS = ("out", os.path.join(ROOT, "out"))
SEPARATOR = "-" * 15
MAX_SAMPLES = 1024  # every sample is decoded in one batch, with a KV cache each


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-p", "--prompt", default="", help="text to continue (default: start from <|endoftext|>)")
    parser.add_argument("-m", "--max-tokens", type=int, default=200, help="new tokens per sample (default: 200)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="0 is greedy; higher is more random (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens (default: 200)")
    parser.add_argument("--top-p", type=float, default=None,
                        help="sample within the nucleus of this probability, in (0, 1] (default: off)")
    parser.add_argument("--num-samples", type=int, default=1, help="samples to draw, in one batch (default: 1)")
    parser.add_argument("--seed", type=int, default=None, help="makes sampling (and an untrained model) reproducible")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="auto: the fastest of float32 and bfloat16 here, measured once (bfloat16 on GPUs)")
    parser.add_argument("--quantize", choices=QUANTIZE, default=None,
                        help="int8: weight-only int8 (per-channel scales), about half the bytes of bfloat16 to read "
                             "per token; slightly lossy (default: off)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="PATH",
                        help="a gptcore .pt file, or an out dir (its newest checkpoint)")
    source.add_argument("--pretrained", metavar="NAME_OR_DIR", help="OpenAI GPT-2 in the Hugging Face format")
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                        help="print tokens as they come (default: on when stdout is a terminal)")
    parser.add_argument("--no-stop", action="store_true", help="don't stop at <|endoftext|>; always generate -m tokens")
    args = parser.parse_args(argv)
    try:
        check_sampling(args.temperature, args.top_k, args.top_p, args.max_tokens, args.seed)
    except GPTCoreError as e:
        raise GPTCoreError(str(e).replace("max_new_tokens", "-m/--max-tokens")) from None
    if not 1 <= args.num_samples <= MAX_SAMPLES:
        raise GPTCoreError(f"--num-samples must be in [1, {MAX_SAMPLES}] (they decode as one batch), "
                           f"got {args.num_samples}")
    if args.device is not None:
        check_device(args.device)
    return args


def load_model(args):
    """(model, tokenizer) from --checkpoint, --pretrained, checkpoint/*.pt, or else an untrained GPT-2 124M."""
    model, tokenizer, source = checkpoint.load_model(args.checkpoint, args.pretrained, COMMITTED_DIR)
    if source is not None:
        print(f"sampling from {source}", file=sys.stderr)
    if args.checkpoint is None and args.pretrained is None:
        print(own_runs_hint(), file=sys.stderr)
    return model, tokenizer


def own_runs_hint(shown: int = 3) -> str:
    """A line for someone sampling the default model: their own training runs and how to sample one, or, with no
    run yet, how to make one."""
    runs = [os.path.relpath(run) for run in checkpoint.runs_in(*RUN_FOLDERS)]  # relative, like train.py's paths
    if runs:
        more = f" and {len(runs) - shown} more" if len(runs) > shown else ""
        return f"your runs: {', '.join(runs[:shown])}{more}; sample one with: python sample.py --checkpoint {runs[0]}"
    default_run = os.path.relpath(os.path.join(ROOT, TRAIN_PRESETS[DEFAULT_PRESET]["out_dir"]))
    return f"to sample a model of your own: python train.py, then python sample.py --checkpoint {default_run}"


def main(argv=None):
    args = parse_args(argv)
    if args.seed is not None:
        torch.manual_seed(args.seed)  # an untrained model's weights
    device = args.device or default_device()
    model, tokenizer = load_model(args)
    model = model.to(device).requires_grad_(False)  # for inference only: the engine needn't watch for training
    dtype = None if args.dtype == "auto" else args.dtype
    engine = Generator(model, tokenizer, dtype=dtype, quantize=args.quantize)
    prompt = tokenizer.encode(args.prompt, allow_special=True) if args.prompt else [tokenizer.eot_token]
    block_size = model.config.block_size
    if len(prompt) > block_size:
        print(f"warning: the prompt has {len(prompt)} tokens, more than the model's context of {block_size}; "
              f"only its last {block_size} are seen", file=sys.stderr)
    stream = sys.stdout.isatty() if args.stream is None else args.stream
    requests = [Request(prompt, args.max_tokens, args.temperature, args.top_k, args.top_p,
                        do_sample=args.temperature > 0, seed=None if args.seed is None else args.seed + n,
                        stop_token=None if args.no_stop else EOT) for n in range(args.num_samples)]

    # every sample is decoded in the same batch; sample n prints once samples 0..n-1 have, the current one as it comes
    pieces = [[] for _ in requests]
    done = [False] * len(requests)
    shown = 0
    sys.stdout.write(args.prompt)
    for events in engine.run(requests):
        for e in events:
            pieces[e.index].append(e.text)
            done[e.index] = e.finish_reason is not None
        while shown < len(requests):
            sys.stdout.write("".join(pieces[shown]))
            pieces[shown] = []
            if not done[shown]:
                break
            sys.stdout.write("\n")
            shown += 1
            if shown < len(requests):
                sys.stdout.write(SEPARATOR + "\n" + args.prompt)
        if stream:
            sys.stdout.flush()
    sys.stdout.flush()


if __name__ == "__main__":
    try:
        main()
    except GPTCoreError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
