"""Metrics from probabilities, and the per-class report; regression metrics from predictions
(rows, targets), and a numeric report. The metric names, and whether higher is better, are
problem.py's (the config schema reads them from there without importing scikit-learn).

`compute`, `report` and `confusion` take the problem type as a problem.Problem, which decides
how probabilities become classes."""

import numpy as np
from sklearn import metrics as skm

from .problem import HIGHER_IS_BETTER, REGRESSION


def compute(probs, labels, problem):
    """accuracy, macro/micro F1, and ROC AUC for two classes (multi-label: subset accuracy);
    regression: rmse, mae, pearson, spearman (see regression_metrics)."""
    if problem.regression:
        return regression_metrics(probs, labels)
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    pred = problem.decide(probs)
    out = {
        "accuracy": float(skm.accuracy_score(labels, pred)),
        "f1_macro": float(skm.f1_score(labels, pred, average="macro", zero_division=0)),
        "f1_micro": float(skm.f1_score(labels, pred, average="micro", zero_division=0)),
    }
    if not problem.multi_label and probs.shape[1] == 2 and len(np.unique(labels)) == 2:
        out["roc_auc"] = float(skm.roc_auc_score(labels, probs[:, 1]))
    elif problem.multi_label:
        present = [c for c in range(labels.shape[1]) if 0 < labels[:, c].sum() < len(labels)]
        if present:
            out["roc_auc"] = float(skm.roc_auc_score(labels[:, present], probs[:, present], average="macro"))
    return out


def _as_columns(values):
    values = np.asarray(values, dtype=np.float64)
    return values[:, None] if values.ndim == 1 else values


def correlation(a, b):
    """Pearson's r of two vectors; 0 where either is constant (no linear relation can be read off,
    and a NaN would never compare as better or worse)."""
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def ranks(values):
    """Ranks 1..n, ties sharing their mean rank (as Spearman's rho needs)."""
    from scipy.stats import rankdata

    return rankdata(values, method="average")


def per_target(preds, targets):
    """[{rmse, mae, pearson, spearman}] for each target column."""
    preds, targets = _as_columns(preds), _as_columns(targets)
    out = []
    for p, y in zip(preds.T, targets.T):
        error = p - y
        out.append({"rmse": float(np.sqrt((error * error).mean())), "mae": float(np.abs(error).mean()),
                    "pearson": correlation(p, y), "spearman": correlation(ranks(p), ranks(y))})
    return out


def regression_metrics(preds, targets):
    """Each metric averaged over the target columns (for several targets rmse is the mean
    column-wise RMSE); one target: the plain values."""
    columns = per_target(preds, targets)
    return {name: float(np.mean([c[name] for c in columns])) for name in REGRESSION}


def regression_report(preds, targets, names):
    """Per target: rows, the targets' and the predictions' mean and std, and the metrics, as text."""
    preds, targets = _as_columns(preds), _as_columns(targets)
    header = ["target", "rows", "mean", "std", "pred_mean", "pred_std", *REGRESSION]
    lines = [header]
    for name, p, y, m in zip(names, preds.T, targets.T, per_target(preds, targets)):
        lines.append([str(name)[:20], str(len(y)), *(f"{v:.4f}" for v in (y.mean(), y.std(), p.mean(), p.std())),
                      *(f"{m[k]:.4f}" for k in REGRESSION)])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in lines)


def report(probs, labels, problem, label_names):
    """Per-class precision / recall / F1 / support as text (like NeMo's classification report);
    regression: the numeric report of regression_report."""
    if problem.regression:
        return regression_report(probs, labels, label_names)
    pred = problem.decide(probs)
    labels = np.asarray(labels)
    kwargs = dict(target_names=[str(n) for n in label_names], digits=4, zero_division=0)
    if not problem.multi_label:
        kwargs["labels"] = list(range(len(label_names)))
    return skm.classification_report(labels, pred, **kwargs)


def confusion(probs, labels, label_names):
    """The confusion matrix as text: rows are true labels, columns predictions (the argmax)."""
    pred = np.asarray(probs).argmax(axis=1)
    matrix = skm.confusion_matrix(labels, pred, labels=list(range(len(label_names))))
    names = [str(n)[:12] for n in label_names]
    width = max(8, max(len(n) for n in names) + 1, len(str(matrix.max())) + 1)
    lines = [" " * width + "".join(n.rjust(width) for n in names)]
    for name, row in zip(names, matrix):
        lines.append(name.rjust(width) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines), matrix


def is_better(value, best, mode, min_delta=0.0):
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def metric_mode(metric, mode):
    if mode != "auto":
        return mode
    return "max" if HIGHER_IS_BETTER[metric] else "min"


# ---------------------------------------------------------------------------- written reports


def write_metrics(folder, probs, labels, problem, label_names, split, quiet=False, extra=None):
    """metrics.json (with `extra` keys first), report.txt and (one class per row) the confusion
    matrix as text and figures of a split, into `folder`; printed unless quiet. Returns the metrics."""
    from .fileio import atomic_write_text, write_json

    results = compute(probs, labels, problem)
    text = report(probs, labels, problem, label_names)
    write_json(folder / "metrics.json", {**(extra or {}), **results})
    atomic_write_text(folder / "report.txt", text + "\n")
    say = (lambda message: None) if quiet else (lambda message: print(message, flush=True))
    say(f"{split}: " + " ".join(f"{k} {v:.4f}" for k, v in results.items()))
    say(text)
    if problem.one_class:
        matrix_text, _ = confusion(probs, labels, label_names)
        atomic_write_text(folder / "confusion.txt", matrix_text + "\n")
        say(matrix_text)
        draw(folder, probs, labels, label_names, split, say)
    return results


def draw(folder, probs, labels, label_names, split, say=print):
    """confusion.png, and roc_pr.png for a binary problem (where both classes occur)."""
    try:
        from .figures import confusion_matrix, roc_pr_curves

        confusion_matrix(labels, probs.argmax(axis=1), label_names, folder / "confusion.png", split)
        if len(label_names) == 2 and roc_pr_curves(labels, probs[:, 1], label_names[1], folder / "roc_pr.png",
                                                   split) is None:
            say(f"  (roc_pr.png skipped: the {split} labels hold one class only)")
    except ImportError:
        say("  (confusion.png skipped: install matplotlib to draw it)")
