"""Figures written into the run folder (matplotlib with the file-only Agg backend)."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from .fileio import write_bytes


def plot_codebook_usage(counts: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = counts.sort(descending=True).values.to(torch.float64)
    share = (ordered / ordered.sum().clamp(min=1)).numpy()
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    ax.bar(range(len(share)), share, width=1.0, color="#3b6ea8")
    ax.axhline(1.0 / len(share), color="#c0392b", lw=1, ls="--", label="uniform")
    ax.set_yscale("log")
    ax.set_xlabel("codeword rank (most used first)")
    ax.set_ylabel("share of frames")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def loss_curve_png(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=110)
    axes[0].plot(steps, [h["loss"] for h in history], lw=0.8, label="training loss")
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if val:
        axes[0].plot(*zip(*val), "o-", ms=3, label="validation loss")
    axes[0].set_xlabel("step")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    # The objective's own health: code perplexity (VQ-VAE) or masked-frame accuracy (masked prediction).
    stat = next((k for k in ("perplexity", "masked_accuracy") if history and k in history[0]), None)
    if stat:
        axes[1].plot(steps, [h[stat] for h in history], lw=0.8, color="#2a9d8f")
        axes[1].set_ylabel(stat.replace("_", " "))
    axes[1].set_xlabel("step")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def plot_phone_unit_heatmap(counts: torch.Tensor, phones: list[str], path: Path, title: str) -> None:
    """counts: (num_phones, codebook_size) co-occurring frames. Shows P(phone | unit) for the used units, phones
    by frequency (most frequent on top), units ordered by their dominant phone and then by its share, so a good
    codebook draws a staircase from the top left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = counts.to(torch.float64)
    phone_order = counts.sum(1).argsort(descending=True)
    counts = counts[phone_order]
    used = counts.sum(0) > 0
    given_unit = counts[:, used] / counts[:, used].sum(0, keepdim=True)
    dominant, share = given_unit.argmax(0), given_unit.max(0).values
    unit_order = sorted(range(given_unit.shape[1]), key=lambda u: (int(dominant[u]), -float(share[u])))
    matrix = given_unit[:, unit_order].numpy()
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.16 * len(phones) + 1.2)), dpi=110)
    image = ax.imshow(matrix, aspect="auto", cmap="magma_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(phones)), [phones[i] for i in phone_order.tolist()], fontsize=6)
    ax.set_xlabel(f"unit ({int(used.sum())} used), ordered by dominant phone")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="P(phone | unit)", fraction=0.03)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
