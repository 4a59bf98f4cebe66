"""Fine-tune a pretrained GPT on any text file (minGPT's todo): val loss and a sample, before and after.

--init is where the weights come from: a gptcore checkpoint (default: the committed checkpoint/quickstart.pt,
which works offline) or OpenAI's GPT-2 (gpt2, gpt2-medium, ...: downloaded once) or a Hugging Face folder.
The last 10% of the text is the validation text, scored in full: every token once.

    python projects/finetune/finetune.py --out-dir out/finetune           # quickstart.pt on tinyshakespeare
    python projects/finetune/finetune.py --init gpt2 --input my.txt --block-size 256 --out-dir out/ft-gpt2
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # lets a fresh clone run this without installing gptcore
from gptcore import GPT, GPTCoreError, Trainer, get_tokenizer  # noqa: E402
from gptcore.checkpoint import export_model, load_checkpoint, model_from_checkpoint  # noqa: E402
from gptcore.corpora import download_shakespeare, read_utf8  # noqa: E402
from gptcore.fileio import write_json  # noqa: E402
from projects.chargpt.chargpt import CharDataset, score  # noqa: E402  (any ids, not only characters)

LOCAL_SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def load_model(init: str):
    """(model, tokenizer) from a gptcore .pt checkpoint, or from a GPT-2 name / Hugging Face folder."""
    if init.endswith(".pt"):
        return model_from_checkpoint(load_checkpoint(init))
    return GPT.from_pretrained(init), get_tokenizer("gpt2")


def sample(model, tokenizer, prompt_ids: torch.Tensor, n: int, seed: int) -> str:
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    out = model.generate(prompt_ids[None].to(device), n, do_sample=True, top_k=40, generator=generator)
    return tokenizer.decode(out[0].tolist())


def fail(message: str):
    """Bad input: one line on stderr, exit status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--init", default=str(ROOT / "checkpoint" / "quickstart.pt"),
                        help="a gptcore .pt checkpoint, a GPT-2 name (gpt2, ...) or a Hugging Face folder")
    parser.add_argument("--input", default=None,
                        help="a UTF-8 text file (default: tinyshakespeare from ../shared/data, else downloaded)")
    parser.add_argument("--block-size", type=int, default=128, help="training window (at most the model's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-iters", type=int, default=40)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--sample-tokens", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--out-dir", default="out/finetune")
    args = parser.parse_args()
    start = time.time()
    torch.manual_seed(args.seed)
    try:
        model, tokenizer = load_model(args.init)
        if args.input:
            text = read_utf8(args.input)
        elif LOCAL_SHAKESPEARE.exists():
            text = read_utf8(str(LOCAL_SHAKESPEARE))
        else:
            text = download_shakespeare(str(ROOT / "data" / "tinyshakespeare" / "input.txt"), offline="--input FILE")
        ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    except (OSError, GPTCoreError) as e:
        fail(str(e))
    block_size = min(args.block_size, model.config.block_size)
    n_train = int(0.9 * len(ids))
    if n_train <= block_size or len(ids) - n_train < 2:
        fail(f"the text is only {len(ids)} tokens; give at least {10 * (block_size + 2)} so that both "
                 "the first 90% (training) and the last 10% (validation) hold a few windows")
    prompt = ids[n_train:n_train + 8]  # the validation text's first tokens

    val_before = score(model, ids, n_train, next(model.parameters()).device, batch_size=4)
    sample_before = sample(model, tokenizer, prompt, args.sample_tokens, args.seed)
    print(f"before: val {val_before:.4f} nats/token\n{sample_before}\n")

    train_config = Trainer.get_default_config()
    train_config.batch_size = args.batch_size
    train_config.learning_rate = args.learning_rate
    train_config.max_iters = args.max_iters
    train_config.num_workers = 0
    trainer = Trainer(train_config, model, CharDataset(ids[:n_train], block_size))
    bar = tqdm(total=args.max_iters, desc="finetune", unit="it")

    def on_batch_end(trainer):
        bar.update(1)
        bar.set_postfix(loss=f"{trainer.loss.item():.3f}")

    trainer.add_callback("on_batch_end", on_batch_end)
    trainer.run()
    bar.close()

    val_after = score(model, ids, n_train, next(model.parameters()).device, batch_size=4)
    sample_after = sample(model, tokenizer, prompt, args.sample_tokens, args.seed)
    print(f"after: val {val_after:.4f} nats/token\n{sample_after}\n")
    export_model(model, tokenizer, trainer.iter_num, str(Path(args.out_dir) / "finetuned.pt"))  # for sample.py
    summary = {"init": args.init, "val_loss_before": val_before, "val_loss_after": val_after,
               "val_tokens": len(ids) - n_train, "train_tokens": n_train, "iters": trainer.iter_num,
               "sample_before": sample_before, "sample_after": sample_after,
               "wall_seconds": round(time.time() - start, 1),
               "cpu_seconds": round(time.process_time(), 1), "device": str(trainer.device)}
    write_json(str(Path(args.out_dir) / "summary.json"), summary, indent=2)
    print(f"finetune: val {val_before:.3f} -> {val_after:.3f} nats/token over all {summary['val_tokens']:,} "
          f"validation tokens, {trainer.iter_num} steps, {summary['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
