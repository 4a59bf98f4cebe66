"""Sample text: `python sample.py [-p PROMPT] [-m MAX_TOKENS] [options]`.

By default the model is the committed checkpoint in checkpoint/*.pt (next to this script); if there is none, an
untrained GPT-2 124M, which says so on stderr. --checkpoint takes one of our .pt files or a training out dir
(its newest checkpoint); --pretrained takes OpenAI's GPT-2 in the Hugging Face format (a folder, or a name online).
The prompt is encoded with the model's own tokenizer; without one, sampling starts from <|endoftext|>.
Generation stops at <|endoftext|> unless --no-stop is given.
"""

import argparse
import os
import sys

import torch

from gptcore.checkpoint import CKPT_PATTERN, latest_checkpoint, load_checkpoint, model_from_checkpoint
from gptcore.device import default_device
from gptcore.errors import GPTCoreError
from gptcore.generate import check_sampling, decode_stream, generate_tokens, prepare_for_generation
from gptcore.model import GPT, GPTConfig
from gptcore.tokenizer import get_tokenizer

COMMITTED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoint")
SEPARATOR = "-" * 15


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-p", "--prompt", default="", help="text to continue (default: start from <|endoftext|>)")
    parser.add_argument("-m", "--max-tokens", type=int, default=200, help="new tokens per sample (default: 200)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="0 is greedy; higher is more random (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens (default: 200)")
    parser.add_argument("--top-p", type=float, default=None,
                        help="sample within the nucleus of this probability, in (0, 1] (default: off)")
    parser.add_argument("--num-samples", type=int, default=1, help="samples to draw, one after the other (default: 1)")
    parser.add_argument("--seed", type=int, default=None, help="makes sampling (and an untrained model) reproducible")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="auto: bfloat16 on GPUs and CPUs with native bf16 (faster), else float32")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="PATH",
                        help="a gptcore .pt file, or an out dir (its newest checkpoint)")
    source.add_argument("--pretrained", metavar="NAME_OR_DIR", help="OpenAI GPT-2 in the Hugging Face format")
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                        help="print tokens as they come (default: on when stdout is a terminal)")
    parser.add_argument("--no-stop", action="store_true", help="don't stop at <|endoftext|>; always generate -m tokens")
    args = parser.parse_args(argv)
    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.max_tokens < 0:
        raise GPTCoreError(f"-m/--max-tokens must be >= 0, got {args.max_tokens}")
    if args.num_samples < 1:
        raise GPTCoreError(f"--num-samples must be >= 1, got {args.num_samples}")
    return args


def committed_checkpoint() -> str | None:
    """The newest training checkpoint in checkpoint/, else its last .pt file by name, else None."""
    if not os.path.isdir(COMMITTED_DIR):
        return None
    files = sorted(f for f in os.listdir(COMMITTED_DIR) if f.endswith(".pt"))
    return latest_checkpoint(COMMITTED_DIR) or (os.path.join(COMMITTED_DIR, files[-1]) if files else None)


def load_model(args):
    """(model, tokenizer) from --checkpoint, --pretrained, checkpoint/*.pt, or else an untrained GPT-2 124M."""
    if args.pretrained:
        return GPT.from_pretrained(args.pretrained), get_tokenizer("gpt2")
    path = args.checkpoint or committed_checkpoint()
    if path is None:
        print(f"note: no checkpoint in {COMMITTED_DIR} ({CKPT_PATTERN} or any .pt); sampling from an untrained "
              "GPT-2 124M, so expect gibberish (use --checkpoint or --pretrained)", file=sys.stderr)
        return GPT(GPTConfig()), get_tokenizer("gpt2")
    return model_from_checkpoint(load_checkpoint(path))


def main(argv=None):
    args = parse_args(argv)
    if args.seed is not None:
        torch.manual_seed(args.seed)  # an untrained model's weights
    device = args.device or default_device()
    model, tokenizer = load_model(args)
    model = prepare_for_generation(model, device, None if args.dtype == "auto" else getattr(torch, args.dtype))
    prompt = tokenizer.encode(args.prompt, allow_special=True) if args.prompt else [tokenizer.eot_token]
    block_size = model.config.block_size
    if len(prompt) > block_size:
        print(f"warning: the prompt has {len(prompt)} tokens, more than the model's context of {block_size}; "
              f"only its last {block_size} are seen", file=sys.stderr)
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    stop = None if args.no_stop else tokenizer.eot_token
    stream = sys.stdout.isatty() if args.stream is None else args.stream
    if args.seed is not None:
        torch.manual_seed(args.seed)  # again: the samples don't depend on how the model was loaded

    for n in range(args.num_samples):
        if n:
            print(SEPARATOR)
        tokens = generate_tokens(model, idx, args.max_tokens, args.temperature, args.top_k, args.top_p,
                                 stop_token=stop)
        ids = (i for i in map(int, tokens) if i != stop)  # the stop token itself is not printed
        sys.stdout.write(args.prompt)
        for piece in decode_stream(tokenizer, ids):
            sys.stdout.write(piece)
            if stream:
                sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()


if __name__ == "__main__":
    try:
        main()
    except GPTCoreError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
