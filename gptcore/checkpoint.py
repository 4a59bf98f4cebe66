"""Checkpoints: one .pt file per save, written atomically, read with weights_only=True (no pickle code runs).

A checkpoint is a dict:
    model         state dict of gptcore.GPT (never with torch.compile's '_orig_mod.' prefix)
    model_config  GPTConfig fields
    tokenizer     the tokenizer's describe() dict
    step          optimizer steps done
and, in training checkpoints, optimizer, loader (the data loader's state), rng (torch, cuda, numpy, python)
and train_config. Sampling needs only the first four; the committed checkpoint/ file has only those.
"""

import glob
import os
import re
import shutil
import sys
from dataclasses import asdict

import torch

from .errors import GPTCoreError
from .fileio import atomic_path
from .model import GPT, GPTConfig
from .tokenizer import get_tokenizer, tokenizer_from_description

CKPT_PATTERN = "ckpt_*.pt"


def checkpoint_path(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, f"ckpt_{step:07d}.pt")


def clean_state_dict(state: dict) -> dict:
    """A model's state dict without the '_orig_mod.' prefix torch.compile adds."""
    return {k.replace("_orig_mod.", ""): v for k, v in state.items()}


def save_checkpoint(path: str, ckpt: dict):
    """Writes ckpt to path atomically: a write that fails (the disk full) leaves whatever path held before."""
    try:
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as a RuntimeError
        folder = os.path.dirname(os.path.abspath(path))
        free = shutil.disk_usage(folder).free if os.path.isdir(folder) else 0
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "the write failed"  # torch's text is noise
        raise GPTCoreError(f"could not write checkpoint {path} ({reason}; {free / 1e6:,.0f} MB free in {folder}): "
                           "free some space or pick another --out-dir; earlier checkpoints are intact") from None


def list_checkpoints(out_dir: str) -> list[str]:
    """The checkpoints in out_dir, oldest first (by step, from the file name)."""
    paths = glob.glob(os.path.join(out_dir, CKPT_PATTERN))
    return sorted(p for p in paths if re.fullmatch(r"ckpt_\d+\.pt", os.path.basename(p)))


def latest_checkpoint(path: str) -> str | None:
    """A .pt file as it is; for a folder, its newest checkpoint, or None if it has none."""
    if os.path.isfile(path):
        return path
    found = list_checkpoints(path) if os.path.isdir(path) else []
    return found[-1] if found else None


def runs_in(*folders: str) -> list[str]:
    """Training runs in folders (each folder itself, and each folder directly in it, that holds a checkpoint; a
    run reached twice counts once), the one with the most recently written checkpoint first."""
    newest = {}  # real path -> (the run as reached, its newest checkpoint)
    for folder in folders:
        if os.path.isdir(folder):
            for d in [folder] + [os.path.join(folder, name) for name in sorted(os.listdir(folder))]:
                if os.path.isdir(d) and (found := list_checkpoints(d)):
                    newest.setdefault(os.path.realpath(d), (d, found[-1]))
    return [d for d, _ in sorted(newest.values(), key=lambda run: os.path.getmtime(run[1]), reverse=True)]


def prune_checkpoints(out_dir: str, keep: int):
    """Deletes all but the newest `keep` checkpoints."""
    for path in list_checkpoints(out_dir)[:-keep]:
        os.remove(path)


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive; anything else is not a checkpoint


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Reads a checkpoint file, or the newest one in a folder. Errors are one line saying what to do.

    A file that is not a torch.save archive at all (a metrics.jsonl, say) is called that; only a damaged file in
    a run's folder, where an older checkpoint can take its place, comes with the advice to delete it.
    """
    file = latest_checkpoint(path)
    if file is None:
        raise GPTCoreError(f"no checkpoint at {path}: give a .pt file or a folder with {CKPT_PATTERN} files")
    try:
        with open(file, "rb") as f:
            magic = f.read(len(ZIP_MAGIC))
    except OSError as e:
        raise GPTCoreError(f"cannot read {file}: {e.strerror}") from None
    # a ckpt_*.pt that train.py named is a damaged checkpoint (below); another file is not a checkpoint at all
    if magic != ZIP_MAGIC and not re.fullmatch(r"ckpt_\d+\.pt", os.path.basename(file)):
        raise GPTCoreError(f"{file} is not a checkpoint (not a file torch.save wrote): give a .pt file that "
                           f"train.py wrote, or a run's out dir with {CKPT_PATTERN} files")
    try:
        ckpt = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:
        raise GPTCoreError(f"checkpoint {file} is corrupt or truncated ({type(e).__name__}); "
                           f"{_recovery_hint(file)}") from None
    missing = [k for k in ("model", "model_config", "tokenizer", "step") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise GPTCoreError(f"{file} is not a gptcore checkpoint (it lacks {', '.join(missing)}): give a .pt file "
                           "that train.py wrote, or load other weights with --pretrained / GPT.from_pretrained")
    return ckpt


def _recovery_hint(file: str) -> str:
    """What to do about a damaged checkpoint: fall back to an older one of the same run if there is one."""
    name = os.path.basename(file)
    older = [p for p in list_checkpoints(os.path.dirname(os.path.abspath(file))) if os.path.basename(p) < name]
    if re.fullmatch(r"ckpt_\d+\.pt", name) and older:
        return f"delete or move it away to fall back to {os.path.basename(older[-1])}, the run's previous checkpoint"
    return "it cannot be used: re-export it, or retrain"


def model_checkpoint(model: GPT, tokenizer, step: int, state: dict | None = None) -> dict:
    """The part of a checkpoint that sampling needs. state: the model's state dict when the caller has it already
    (gathered from FSDP's shards), else model.state_dict()."""
    raw = getattr(model, "_orig_mod", model)
    return {"model": clean_state_dict(raw.state_dict() if state is None else state), "model_config": asdict(raw.config),
            "tokenizer": tokenizer.describe(), "step": step}


def export_model(model: GPT, tokenizer, step: int, path: str, dtype=torch.bfloat16, state: dict | None = None):
    """Writes a weights-only checkpoint for sampling and sharing: no optimizer or data state, floats in `dtype`.
    state: as in model_checkpoint."""
    ckpt = model_checkpoint(model, tokenizer, step, state)
    cast = {}  # by storage, so the tied wte / lm_head weight stays one tensor in the file (and is cast once)
    for v in ckpt["model"].values():
        if v.data_ptr() not in cast:
            cast[v.data_ptr()] = v.to(dtype) if v.is_floating_point() else v
    ckpt["model"] = {k: cast[v.data_ptr()] for k, v in ckpt["model"].items()}
    save_checkpoint(path, ckpt)


def model_from_checkpoint(ckpt: dict) -> tuple[GPT, object]:
    """(model, tokenizer) rebuilt from a loaded checkpoint, in eval mode on the CPU."""
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, tokenizer_from_description(ckpt["tokenizer"])


def committed_checkpoint(folder: str) -> str | None:
    """The newest training checkpoint in folder, else its last .pt file by name, else None."""
    if not os.path.isdir(folder):
        return None
    files = sorted(f for f in os.listdir(folder) if f.endswith(".pt"))
    return latest_checkpoint(folder) or (os.path.join(folder, files[-1]) if files else None)


def load_model(checkpoint: str | None = None, pretrained: str | None = None, default_dir: str | None = None):
    """(model in eval mode, tokenizer, source) for sample.py, eval.py and serve.py, from the first given or found:
    pretrained (OpenAI's GPT-2 in the Hugging Face format: a folder or a name online), checkpoint (a .pt file or
    an out dir), the newest checkpoint in default_dir, or else an untrained GPT-2 124M, which says so on stderr.
    source is the pretrained name, the checkpoint path, or None for the untrained model."""
    if pretrained:
        return GPT.from_pretrained(pretrained).eval(), get_tokenizer("gpt2"), pretrained
    path = checkpoint or committed_checkpoint(default_dir or "")
    if path is None:
        print(f"note: no checkpoint in {default_dir} ({CKPT_PATTERN} or any .pt); using an untrained GPT-2 124M, "
              "so expect gibberish (use --checkpoint or --pretrained)", file=sys.stderr)
        return GPT(GPTConfig()).eval(), get_tokenizer("gpt2"), None
    model, tokenizer = model_from_checkpoint(load_checkpoint(path))
    return model.eval(), tokenizer, path
