"""Generate from pretrained GPT-2, with gptcore and with Hugging Face transformers: greedy, both write the same text.

As minGPT's generate.ipynb (this folder's generate.ipynb walks through it). --pretrained is a GPT-2 name
(gpt2, gpt2-medium, gpt2-large, gpt2-xl: downloaded once from the Hugging Face Hub, then cached) or a local folder
holding config.json and model.safetensors.

    python projects/generate/generate.py --pretrained gpt2 --prompt "Andrej Karpathy, the" --out-dir out/generate
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # lets a fresh clone run this without installing gptcore
from gptcore import GPT, GPTCoreError, get_tokenizer  # noqa: E402
from gptcore.fileio import write_json  # noqa: E402


def load_both(pretrained: str):
    """(gptcore GPT, transformers GPT2LMHeadModel), the same weights, both in eval mode on the CPU."""
    from transformers import GPT2LMHeadModel  # the reference implementation; not a dependency of gptcore itself
    ours = GPT.from_pretrained(pretrained).eval()
    folder = pretrained if Path(pretrained).is_dir() else f"openai-community/{pretrained}"
    theirs = GPT2LMHeadModel.from_pretrained(folder).eval()
    return ours, theirs


@torch.no_grad()
def greedy_both(ours, theirs, ids: torch.Tensor, max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, T) prompt ids -> the (1, T + max_new_tokens) greedy continuations of gptcore and of transformers."""
    # float32 on both sides: gptcore's default on a CPU with fast bf16 is bf16, whose greedy path may part from fp32's
    mine = ours.generate(ids, max_new_tokens, do_sample=False, dtype=torch.float32)
    reference = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                min_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=theirs.config.eos_token_id)
    return mine, reference


def fail(message: str):
    """Bad input: one line on stderr, exit status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrained", default="gpt2", help="gpt2, gpt2-medium, gpt2-large, gpt2-xl or a folder")
    parser.add_argument("--prompt", default="Andrej Karpathy, the")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--out-dir", default="out/generate")
    args = parser.parse_args()
    start = time.time()
    try:
        ours, theirs = load_both(args.pretrained)
    except (GPTCoreError, OSError) as e:
        fail(str(e))
    tokenizer = get_tokenizer("gpt2")
    ids = torch.tensor([tokenizer.encode(args.prompt)], dtype=torch.long)

    with tqdm(total=2, desc="generate", unit="model") as bar:
        mine, reference = greedy_both(ours, theirs, ids, args.max_new_tokens)
        bar.update(2)
    texts = {"gptcore": tokenizer.decode(mine[0].tolist()), "transformers": tokenizer.decode(reference[0].tolist())}
    for name, text in texts.items():
        print(f"--- {name}:\n{text}")
    same = torch.equal(mine, reference)
    summary = {"pretrained": args.pretrained, "prompt": args.prompt, "max_new_tokens": args.max_new_tokens,
               "same_tokens": same, "gptcore_text": texts["gptcore"], "transformers_text": texts["transformers"],
               "wall_seconds": round(time.time() - start, 1),
               "cpu_seconds": round(time.process_time(), 1)}
    write_json(str(Path(args.out_dir) / "summary.json"), summary, indent=2)
    print(f"generate: greedy gptcore and transformers {'agree on all' if same else 'DIFFER within the'} "
          f"{args.max_new_tokens} new tokens ({args.pretrained})")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
