"""The loss curve: train and val loss against step, drawn from metrics.jsonl into a PNG."""

import json

from .fileio import atomic_path


def plot_losses(metrics_path: str, png_path: str):
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    with open(metrics_path) as f:
        records = [json.loads(line) for line in f]
    val = [r for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], lw=0.8, alpha=0.8, label="train")
    ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", ms=3, label="val")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="gptcore training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
