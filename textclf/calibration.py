"""Calibration: probabilities that mean what they say, and answers withheld where they do not.

    T = fit_temperature(probs, labels, problem)     one temperature, fitted on out-of-fold rows
    apply(probs, T, problem)                        the same probabilities with the logits divided by T
    expected_calibration_error(probs, labels, problem)
    abstain(answers, probs, below, label)           the answer, or `label` where the top probability < below

Temperature scaling (Guo et al. 2017): a trained model's logits z become z / T, with T > 0 chosen
to minimise the log loss on rows the model never trained on (a run's out-of-fold rows, a blend's
out-of-fold rows). T > 1 softens an over-confident model; the decision (argmax, or a sigmoid's
side of 0.5) never changes, so accuracy does not either. From probabilities alone the logits are
known up to a constant per row (softmax: log p) or exactly (sigmoid: log p - log(1 - p)), which is
all temperature scaling needs: softmax(log p / T) = softmax(z / T). A run stores T in each fold's
best/head.json, so the model itself divides its logits (training: T = 1), and evaluate.py, the
Predictor, the ONNX graph and the Hugging Face export all give the same calibrated numbers.
"""

import math

import numpy as np

from .errors import UserError

BINS = 15  # equal-width confidence bins of the expected calibration error and the reliability diagram
MIN_ROWS = 30  # fewer labelled out-of-fold rows than this fit a temperature to noise: none is fitted
LOW, HIGH = 0.05, 20.0  # the temperatures searched
_FLOOR = 1e-12


def _sigmoid_problem(problem):
    return problem.multi_label


def as_logits(probs, problem):
    """Logits whose softmax (sigmoid for multi-label) gives `probs`, in float64."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _FLOOR, 1.0)
    if _sigmoid_problem(problem):
        p = np.clip(p, _FLOOR, 1.0 - 1e-12)
        return np.log(p) - np.log1p(-p)
    return np.log(p)


def from_logits(logits, problem):
    if _sigmoid_problem(problem):
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def apply(probs, temperature, problem):
    """`probs` with their logits divided by `temperature` (float32, as predictions are kept)."""
    if problem.regression or temperature == 1.0:
        return np.asarray(probs, dtype=np.float32)
    return from_logits(as_logits(probs, problem) / temperature, problem).astype(np.float32)


def log_loss(probs, labels, problem):
    """Mean negative log-likelihood of the labels (multi-label: per class and row)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _FLOOR, 1.0 - 1e-12)
    labels = np.asarray(labels)
    if _sigmoid_problem(problem):
        y = labels.astype(np.float64)
        return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())
    return float(-np.log(p[np.arange(len(labels)), labels.astype(np.int64)]).mean())


def fit_temperature(probs, labels, problem):
    """The temperature in [0.05, 20] that minimises the log loss of `labels` under `probs` scaled by
    it (a bounded one-dimensional search over log T)."""
    from scipy.optimize import minimize_scalar

    logits = as_logits(probs, problem)
    labels = np.asarray(labels)

    def loss(log_t):
        return log_loss(from_logits(logits / math.exp(log_t), problem), labels, problem)

    found = minimize_scalar(loss, bounds=(math.log(LOW), math.log(HIGH)), method="bounded",
                            options={"xatol": 1e-5})
    best = float(math.exp(found.x))
    return best if loss(found.x) < loss(0.0) else 1.0  # never worse than no scaling


def confidences(probs, labels, problem):
    """(confidence, correct) per decision: the top probability and whether it was the label;
    multi-label: every class of every row, p or 1 - p of its decision."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if _sigmoid_problem(problem):
        decided = probs >= 0.5
        conf = np.where(decided, probs, 1 - probs)
        return conf.ravel(), (decided == labels.astype(bool)).ravel()
    return probs.max(axis=1), probs.argmax(axis=1) == labels.astype(np.int64)


def reliability(probs, labels, problem, bins=BINS):
    """Per equal-width confidence bin: (mean confidence, accuracy, rows); empty bins left out."""
    conf, correct = confidences(probs, labels, problem)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            out.append((float(conf[chosen].mean()), float(correct[chosen].mean()), int(chosen.sum())))
    return out


def expected_calibration_error(probs, labels, problem, bins=BINS):
    """The rows-weighted mean gap between confidence and accuracy over equal-width bins."""
    table = reliability(probs, labels, problem, bins)
    total = sum(n for _, _, n in table)
    return float(sum(n * abs(c - a) for c, a, n in table) / max(total, 1))


def summary(probs, labels, problem, temperature):
    """What calibration did on these rows: the temperature, ECE and log loss before and after,
    accuracy (unchanged by construction)."""
    after = apply(probs, temperature, problem)
    conf, correct = confidences(probs, labels, problem)
    return {"temperature": round(temperature, 6), "rows": int(len(labels)),
            "ece_before": round(expected_calibration_error(probs, labels, problem), 6),
            "ece_after": round(expected_calibration_error(after, labels, problem), 6),
            "log_loss_before": round(log_loss(probs, labels, problem), 6),
            "log_loss_after": round(log_loss(after, labels, problem), 6),
            "accuracy": round(float(correct.mean()), 6), "bins": BINS}


def calibrate(probs, labels, problem):
    """Fit a temperature on labelled out-of-fold rows: (temperature, summary, calibrated probs);
    None for regression, which has no probabilities. Below MIN_ROWS rows the temperature stays 1
    (the summary says why): one parameter still fits a handful of rows' noise."""
    if problem.regression or len(labels) == 0:
        return None
    if len(labels) < MIN_ROWS:
        record = {**summary(probs, labels, problem, 1.0), "not_fitted": f"{len(labels)} out-of-fold rows, fewer than "
                                                                          f"{MIN_ROWS}"}
        return 1.0, record, np.asarray(probs, dtype=np.float32)
    temperature = fit_temperature(probs, labels, problem)
    return temperature, summary(probs, labels, problem, temperature), apply(probs, temperature, problem)


def check_abstain(below, problem):
    """An abstention threshold: a probability, for answers that are one label per row."""
    if isinstance(below, bool) or not isinstance(below, (int, float)) or not 0 <= below <= 1:
        raise UserError(f"abstain_below={below!r}: pass a probability from 0 (never abstain) to 1")
    if below and (problem.regression or problem.multi_label):
        raise UserError(f"abstain_below: a {problem.name} model gives no single top probability to abstain on; "
                        f"leave it at 0")


def abstain(answers, probs, below, label):
    """`answers` with `label` where a row's top probability is below `below` (single-label and
    binary answers; 0 abstains nowhere). Returns (answers, abstained mask)."""
    probs = np.asarray(probs)
    unsure = probs.max(axis=1) < below if below > 0 else np.zeros(len(probs), dtype=bool)
    return [label if u else a for a, u in zip(answers, unsure)], unsure
