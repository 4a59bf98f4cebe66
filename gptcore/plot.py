"""The loss curve: train and val loss against step, drawn from metrics.jsonl into a PNG; when the records carry
HellaSwag scores (the trainer's hellaswag_interval), a second panel shows hellaswag_acc_norm (and acc)."""

import json

from .fileio import atomic_path


def loss_figure(records: list[dict]):
    """The matplotlib figure for a list of metrics records: one panel, or two with HellaSwag."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    val = [r for r in records if "val_loss" in r]
    hella = [r for r in records if "hellaswag_acc_norm" in r]
    fig, axes = plt.subplots(1, 2 if hella else 1, figsize=(13 if hella else 8, 4.5), dpi=100, squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], lw=0.8, alpha=0.8, label="train")
    ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", ms=3, label="val")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="gptcore training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if hella:
        ax = axes[0][1]
        steps = [r["step"] for r in hella]
        ax.plot(steps, [r["hellaswag_acc_norm"] for r in hella], "o-", ms=3, label="acc_norm")
        ax.plot(steps, [r["hellaswag_acc"] for r in hella], "o--", ms=3, alpha=0.6, label="acc")
        ax.axhline(0.25, color="gray", lw=0.8, ls=":", label="chance")
        ax.set(xlabel="step", ylabel="accuracy", title="HellaSwag (completion style)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_losses(metrics_path: str, png_path: str):
    with open(metrics_path) as f:
        records = [json.loads(line) for line in f]
    fig = loss_figure(records)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    import matplotlib.pyplot as plt  # loss_figure chose the backend
    plt.close(fig)
