"""The problem types, each one small object that knows what its model's outputs mean:

    single_label   one class per row: a logit per class, softmax, argmax (cross-entropy)
    binary_bce     two classes from one logit: sigmoid, read as [1 - p, p] (binary cross-entropy)
    multi_label    any number of classes per row: a logit per class, sigmoid, p >= threshold
    regression     numeric targets: the outputs are the predictions (MSE or Huber on standardised targets)

    problem = problem_type("multi_label")
    problem.probabilities(logits)          # torch: (rows, classes) probabilities, regression: the values
    problem.decide(probs, threshold)       # numpy: class numbers, 0/1 rows or values
    problem.labels(probs, label_names)     # label names (lists for multi-label), or values
    problem.metrics(n_labels)              # the metric names metrics.compute reports for it
    problem.loss(...)                      # the training loss

Every rule that depends on the problem type lives here, so callers ask the object instead of
comparing its name. numpy only at import: the torch-free ONNX predictor uses decide, labels and
result; torch is imported by the methods that need it.
"""

import dataclasses

import numpy as np

from .errors import UserError

NAMES = ("single_label", "binary_bce", "multi_label", "regression")

# Every metric textclf computes (metrics.py), and whether higher is better. Training can also rank
# by its own loss on held-out rows; a blend can be scored by its log loss.
HIGHER_IS_BETTER = {"accuracy": True, "f1_macro": True, "f1_micro": True, "roc_auc": True, "log_loss": False,
                    "rmse": False, "mae": False, "pearson": True, "spearman": True, "loss": False}
CLASSIFICATION = ("accuracy", "f1_macro", "f1_micro", "roc_auc")
REGRESSION = ("rmse", "mae", "pearson", "spearman")
TRAIN_METRICS = CLASSIFICATION + REGRESSION + ("loss",)  # what train.metric may name
BLEND_METRICS = CLASSIFICATION + ("log_loss",) + REGRESSION  # what ensemble.metric may name


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str  # one of NAMES

    @property
    def regression(self):
        return self.name == "regression"

    @property
    def multi_label(self):
        return self.name == "multi_label"

    @property
    def one_class(self):
        """One class per row (single_label, binary_bce): a row's probabilities sum to 1."""
        return self.name in ("single_label", "binary_bce")

    @property
    def default_metric(self):
        """What train.metric=auto and ensemble.metric=auto mean: rmse for regression; micro-F1 for
        multi-label, whose exact-match accuracy sits at 0 until every label of a row is right;
        else accuracy."""
        return "rmse" if self.regression else "f1_micro" if self.multi_label else "accuracy"

    def outputs(self, n_labels):
        """Outputs of the final layer: one logit for binary_bce, else one per label (or target)."""
        return 1 if self.name == "binary_bce" else n_labels

    def metrics(self, n_labels):
        """The metric names metrics.compute (plus the loss) reports for this problem."""
        if self.regression:
            return {*REGRESSION, "loss"}
        names = {*CLASSIFICATION, "loss"} - {"roc_auc"}
        if self.name != "single_label" or n_labels == 2:
            names.add("roc_auc")
        return names

    # ------------------------------------------------------------------ outputs -> answers

    def probabilities(self, logits):
        """Class probabilities (rows, classes) from logits (torch); binary_bce expands its one logit
        to [1 - p, p]. For regression the model's outputs are the predictions (rows, targets)."""
        import torch

        logits = logits.float()
        if self.regression:
            return logits
        if self.name == "single_label":
            return logits.softmax(-1)
        if self.name == "binary_bce":
            p = logits.squeeze(-1).sigmoid()
            return torch.stack([1 - p, p], dim=-1)
        return logits.sigmoid()

    def decide(self, probs, threshold=None):
        """Decisions from probabilities (rows, classes): the argmax, or with a threshold on two
        classes p(class 1) >= threshold; multi-label 0/1 per class, p >= threshold (0.5, or one per
        class); regression the values themselves."""
        probs = np.asarray(probs)
        if self.regression:
            return probs
        if self.multi_label:
            cut = 0.5 if threshold is None else np.asarray(threshold)
            return (probs >= cut).astype(np.int64)
        if threshold is not None and probs.shape[1] == 2:
            return (probs[:, 1] >= threshold).astype(np.int64)
        return probs.argmax(axis=1)

    def labels(self, probs, label_names, threshold=0.5):
        """Each row's answer: a label name (multi-label: the list of classes at or above the
        threshold); for regression the value, a float, or a list of floats for several targets."""
        if self.regression:
            return [float(row[0]) if len(row) == 1 else [float(v) for v in row] for row in np.asarray(probs)]
        if self.multi_label:
            return [[label_names[j] for j in np.flatnonzero(row)] for row in self.decide(probs, threshold)]
        return [label_names[j] for j in self.decide(probs)]

    def result(self, probs, label_names):
        """What Predictor.predict and OnnxPredictor.predict return for probabilities (rows, classes):
        labels, probs and label_names; for regression also "predictions" (the same array)."""
        out = {"labels": self.labels(probs, label_names), "probs": probs, "label_names": list(label_names)}
        if self.regression:
            out["predictions"] = probs
        return out

    # ------------------------------------------------------------------ training

    def loss(self, class_weights=None, label_smoothing=0.0, target_std=None, kind="auto", huber_delta=1.0):
        """A function (logits, labels) -> mean loss. Regression: `kind` mse (auto) or huber, on
        residuals divided by each target's std, so the loss and huber_delta are in standard
        deviations whatever the targets' units."""
        import torch
        from torch import nn

        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if self.regression:
            scale = torch.as_tensor(target_std if target_std is not None else 1.0, dtype=torch.float32)

            def loss(preds, targets):
                residual = (preds.float() - targets.float()) / scale.to(preds.device)
                if kind == "huber":
                    return nn.functional.huber_loss(residual, torch.zeros_like(residual), delta=huber_delta)
                return residual.pow(2).mean()
            return loss
        if self.name == "single_label":
            def loss(logits, labels):
                w = None if weights is None else weights.to(logits.device)
                return nn.functional.cross_entropy(logits.float(), labels, weight=w, label_smoothing=label_smoothing)
        elif self.name == "binary_bce":
            def loss(logits, labels):
                target = labels.float()
                if label_smoothing:
                    target = target * (1 - label_smoothing) + 0.5 * label_smoothing
                per_row = nn.functional.binary_cross_entropy_with_logits(logits.float().squeeze(-1), target,
                                                                         reduction="none")
                if weights is None:
                    return per_row.mean()
                w = weights.to(logits.device)[labels]  # each row weighted by its class, normalised like CE
                return (per_row * w).sum() / w.sum()
        else:
            def loss(logits, labels):
                target = labels.float()
                if label_smoothing:
                    target = target * (1 - label_smoothing) + 0.5 * label_smoothing
                pos_weight = None if weights is None else weights.to(logits.device)
                return nn.functional.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pos_weight)
        return loss

    def auto_class_weights(self, labels, n_labels):
        """train.class_weights=auto: inverse-frequency weights (one class per row), or
        negatives/positives per class (multi-label)."""
        labels = np.asarray(labels)
        if self.multi_label:
            pos = labels.sum(axis=0).astype(np.float64)
            neg = len(labels) - pos
            return (neg / np.maximum(pos, 1)).tolist()
        counts = np.bincount(labels, minlength=n_labels).astype(np.float64)
        return (len(labels) / (n_labels * np.maximum(counts, 1))).tolist()


PROBLEMS = {name: Problem(name) for name in NAMES}


def problem_type(name):
    """The Problem of a name (as meta.json, head.json and manifests record it)."""
    try:
        return PROBLEMS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown problem type {name!r}; one of {', '.join(NAMES)}") from None


def resolve(requested, data_problem, n_labels):
    """model.problem_type (auto or a name) against the data's problem type: the Problem a run trains."""
    if data_problem == "regression":
        if requested not in ("auto", "regression"):
            raise UserError(f"model.problem_type={requested} does not fit numeric targets (data.task=regression); "
                            f"use auto or regression")
        return PROBLEMS["regression"]
    if requested == "regression":
        raise UserError("model.problem_type=regression needs numeric targets: run data_process.py with "
                        "data.task=regression (and another data.name)")
    if data_problem == "multi_label":
        if requested not in ("auto", "multi_label"):
            raise UserError(f"model.problem_type={requested} does not fit multi-label data; use auto or multi_label")
        return PROBLEMS["multi_label"]
    if requested == "multi_label":
        raise UserError("model.problem_type=multi_label needs multi-label data (data.label_columns or data.label_delimiter)")
    if requested == "binary_bce" and n_labels != 2:
        raise UserError(f"model.problem_type=binary_bce needs 2 labels, the data has {n_labels}; use single_label")
    return PROBLEMS["single_label" if requested == "auto" else requested]
