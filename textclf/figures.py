"""Pictures of a run: training curves (train.py), confusion matrices and ROC / precision-recall
curves (evaluate.py). matplotlib draws off-screen (Agg); each PNG is written to a temporary
name and renamed into place."""

import math
import os
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, plt):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def series(records, kind, key):
    """{fold: (steps, values)} of `key` in the records of one kind; where a resumed run logged a
    step again, its last value counts; missing and non-finite values are left out."""
    by_fold = {}
    for record in records:
        value = record.get(key)
        if record.get("type") != kind or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        by_fold.setdefault(record.get("fold", 0), {})[record.get("step", 0)] = value
    return {fold: (sorted(points), [points[s] for s in sorted(points)]) for fold, points in sorted(by_fold.items())}


def training_curves(records, path, metric):
    """curves.png: training loss, learning rate and the evaluation metric against the optimizer
    step, one line per fold."""
    plt = _pyplot()
    panels = [("train", "loss", "training loss"), ("train", "lr", "learning rate"),
              ("eval", metric, f"eval {metric}")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (kind, key, title) in zip(axes, panels):
        lines = series(records, kind, key)
        for fold, (steps, values) in lines.items():
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=f"fold {fold}")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.tight_layout()
    return _save(fig, path, plt)


def confusion_matrix(labels, predictions, label_names, path, title=""):
    """confusion.png: counts and the matrix normalised by true class (each row sums to 1), drawn by
    scikit-learn's ConfusionMatrixDisplay; the cell text is left out above 30 classes."""
    from sklearn.metrics import ConfusionMatrixDisplay
    from sklearn.metrics import confusion_matrix as matrix_of

    plt = _pyplot()
    n = len(label_names)
    counts = matrix_of(labels, predictions, labels=list(range(n)))
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
    side = min(4 + 0.45 * n, 24)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    show_names = label_names if n <= 60 else [str(i) for i in range(n)]
    long_names = max(len(str(name)) for name in show_names) > 6 or n > 10
    for ax, values, fmt, name in ((axes[0], counts, "d", "counts"), (axes[1], normalised, ".2f", "share of true class")):
        display = ConfusionMatrixDisplay(values, display_labels=show_names)
        display.plot(ax=ax, cmap="Blues", values_format=fmt, include_values=n <= 30, colorbar=True,
                     xticks_rotation="vertical" if long_names else "horizontal")
        ax.set_title(f"{title} {name}".strip())
    fig.tight_layout()
    _save(fig, path, plt)
    return counts


def roc_pr_curves(labels, scores, positive_name, path, title=""):
    """roc_pr.png for a binary problem: the ROC curve with its AUC and the precision-recall curve
    with its average precision. None (nothing written) when the labels hold one class only."""
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    RocCurveDisplay.from_predictions(labels, scores, pos_label=1, name=str(positive_name), ax=axes[0])
    axes[0].plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
    axes[0].set_title(f"{title} ROC".strip())
    PrecisionRecallDisplay.from_predictions(labels, scores, pos_label=1, name=str(positive_name), ax=axes[1])
    axes[1].set_title(f"{title} precision-recall".strip())
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, plt)


def reliability_diagram(before, after, path, title=""):
    """Accuracy against confidence per bin, before and after calibration (`before`, `after`: lists
    of (mean confidence, accuracy, rows) from calibration.reliability, with their ECE as a title
    pair), beside the diagonal a calibrated model follows."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, (name, (table, ece)) in zip(axes, (("before", before), ("after", after))):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
        if table:
            conf, acc, rows = (np.asarray(v) for v in zip(*table))
            ax.bar(conf, acc, width=1 / 15, alpha=0.35, color="tab:blue", edgecolor="tab:blue")
            ax.plot(conf, acc, marker="o", color="tab:blue", label="accuracy per bin")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top probability)")
        ax.set_title(f"{name}: ECE {ece:.4f}")
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, plt)
