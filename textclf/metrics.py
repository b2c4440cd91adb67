"""Classification metrics from probabilities, and the per-class report."""

import numpy as np
from sklearn import metrics as skm

HIGHER_IS_BETTER = {"accuracy": True, "f1_macro": True, "f1_micro": True, "roc_auc": True, "loss": False}


def available(problem_type, n_labels):
    """The metric names `compute` (plus the loss) reports for a problem."""
    names = {"accuracy", "f1_macro", "f1_micro", "loss"}
    if problem_type != "single_label" or n_labels == 2:
        names.add("roc_auc")
    return names


def predictions(probs, problem_type, threshold=0.5):
    probs = np.asarray(probs)
    if problem_type == "multi_label":
        return (probs >= threshold).astype(np.int64)
    return probs.argmax(axis=1)


def compute(probs, labels, problem_type):
    """accuracy, macro/micro F1, and ROC AUC for two classes (multi-label: subset accuracy)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    pred = predictions(probs, problem_type)
    out = {
        "accuracy": float(skm.accuracy_score(labels, pred)),
        "f1_macro": float(skm.f1_score(labels, pred, average="macro", zero_division=0)),
        "f1_micro": float(skm.f1_score(labels, pred, average="micro", zero_division=0)),
    }
    if problem_type != "multi_label" and probs.shape[1] == 2 and len(np.unique(labels)) == 2:
        out["roc_auc"] = float(skm.roc_auc_score(labels, probs[:, 1]))
    elif problem_type == "multi_label":
        present = [c for c in range(labels.shape[1]) if 0 < labels[:, c].sum() < len(labels)]
        if present:
            out["roc_auc"] = float(skm.roc_auc_score(labels[:, present], probs[:, present], average="macro"))
    return out


def report(probs, labels, problem_type, label_names):
    """Per-class precision / recall / F1 / support as text (like NeMo's classification report)."""
    pred = predictions(probs, problem_type)
    labels = np.asarray(labels)
    kwargs = dict(target_names=[str(n) for n in label_names], digits=4, zero_division=0)
    if problem_type != "multi_label":
        kwargs["labels"] = list(range(len(label_names)))
    return skm.classification_report(labels, pred, **kwargs)


def confusion(probs, labels, label_names):
    """The confusion matrix as text: rows are true labels, columns predictions."""
    pred = predictions(probs, "single_label")
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
    return "max" if HIGHER_IS_BETTER.get(metric, True) else "min"
