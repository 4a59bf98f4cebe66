"""What every benchmark records beside its numbers: the machine, the commit, and where results go."""

import argparse
import datetime
import os
import subprocess

import torch

from gptcore.device import cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")


def positive_int(text: str) -> int:
    """argparse type for counts (rounds, steps): an integer >= 1, else argparse's one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; give an integer >= 1")
    return value


def git_commit() -> str:
    """The short commit hash, with '+ uncommitted' when tracked files differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" + uncommitted" if dirty.strip() else "")


def machine(device: str = "cpu") -> str:
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(torch.device(device))}, host {cpu_model()}"
    return f"{cpu_model()}, {os.cpu_count()} cores"


def report(title: str, details: list[str], table: str, save: bool = True, device: str = "cpu"):
    """Prints one dated section (title, machine and commit, the run's details, the table) and, if save, appends
    it to bench/RESULTS.md."""
    section = "\n".join([f"## {title} ({datetime.date.today()})", "",
                         f"- machine: {machine(device)}; torch {torch.__version__}; commit {git_commit()}",
                         *(f"- {d}" for d in details), "", table, ""])
    print(section)
    if save:
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write("\n" + section)
