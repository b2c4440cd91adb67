"""The ensemble stage: several prediction sets -> one blended, checked submission.

    python ensemble_and_submit.py --config configs/demo.yaml \\
        ensemble.predictions='[model_predictions/a, model_predictions/b]' \\
        ensemble.sample_submission=data/sample_submission.csv ensemble.name=final

Blends: mean, weighted (weights searched on the out-of-fold probabilities for the
configured metric, never worse there than the plain mean), geometric mean, rank average.
What the submission holds (labels, the positive class's probability, one probability column per
class) follows the sample and the metric (submission.py). Where labels are written for a label
metric, binary problems get a tuned decision threshold and multi-label problems one threshold
per class, both learned on the out-of-fold rows and applied to test.

Regression predictions blend with mean or weighted (weights searched for ensemble.metric, rmse
by default, on the out-of-fold rows); geometric and rank blends and thresholds do not apply.
The submission writes each target's value (7 significant digits, no exponent).
"""

import csv
import io
from pathlib import Path

import numpy as np

from . import calibration, submission
from .config import resolve_path
from .errors import UserError
from .fileio import atomic_write_text, next_version, write_json
from .metrics import compute
from .predsets import blend, check_sets, load_array, load_set, normalise
from .problem import BLEND_METRICS, HIGHER_IS_BETTER, PROBLEMS, REGRESSION, problem_type


def check_method(method, metric, problem, n_labels):
    """ensemble.method and ensemble.metric (auto resolved) against the sets' problem type."""
    if not problem.regression and not problem.multi_label and metric == "roc_auc" and n_labels > 2:
        raise UserError(f"ensemble.metric=roc_auc scores two classes (or multi-label), and these sets have {n_labels} "
                        f"classes, one per row; choose from accuracy, f1_macro, f1_micro, log_loss"
                        + (", with ensemble.method=weighted or mean (rank suits roc_auc only)" if method == "rank"
                           else ""))
    if problem.regression:
        if method not in ("mean", "weighted"):
            raise UserError(f"ensemble.method={method} blends probabilities; regression predictions blend with "
                            f"ensemble.method=weighted (or mean)")
        if metric not in REGRESSION:
            raise UserError(f"ensemble.metric={metric} does not score regression predictions; choose from "
                            f"{', '.join(REGRESSION)} (or auto: rmse)")
    elif metric in REGRESSION:
        classification = [m for m in BLEND_METRICS if m not in REGRESSION]
        raise UserError(f"ensemble.metric={metric} scores regression predictions, and these sets are {problem.name}; "
                        f"choose from {', '.join(classification)} (or auto: accuracy)")


def score(probs, labels, problem, metric):
    """The blend's score in `metric`: anything metrics.compute reports, or the log loss."""
    if metric == "log_loss":
        from sklearn.metrics import log_loss

        if problem.multi_label:
            p = np.clip(probs, 1e-7, 1 - 1e-7)
            return float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())
        return float(log_loss(labels, np.clip(probs, 1e-7, 1), labels=list(range(probs.shape[1]))))
    results = compute(probs, labels, problem)
    if metric not in results:
        raise UserError(f"ensemble.metric={metric} is not available here; choose one of "
                        f"{', '.join(sorted({*results, 'log_loss'} - {'loss'}))}")
    return results[metric]


def search_weights(members, labels, problem, metric, method, seed=0, trials=300):
    """Weights on the simplex that score best on the OOF rows; the equal weights are tried
    first, so the result is never worse there than the plain mean."""
    n = len(members)
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    equal = np.full(n, 1.0 / n)

    def value(w):
        return sign * score(normalise(blend(members, w, method), problem), labels, problem, metric)

    best_w, best = equal, value(equal)
    if n == 1:
        return best_w, sign * best
    rng = np.random.default_rng(seed)
    candidates = list(np.eye(n)) + list(rng.dirichlet(np.ones(n), size=trials))
    for w in candidates:
        v = value(w)
        if v > best + 1e-12:
            best_w, best = w, v
    # refine around the best point with shrinking steps
    step = 0.1
    while step > 1e-3:
        improved = False
        for i in range(n):
            for delta in (step, -step):
                w = best_w.copy()
                w[i] = max(0.0, w[i] + delta)
                if w.sum() <= 0:
                    continue
                w = w / w.sum()
                v = value(w)
                if v > best + 1e-12:
                    best_w, best, improved = w, v, True
        if not improved:
            step /= 2
    return best_w, sign * best


def tune_thresholds(probs, labels, problem, metric):
    """Binary: the threshold on p(class 1) that maximises the metric; multi-label: per-class
    thresholds that maximise each class's F1. Learned on OOF rows."""
    from sklearn.metrics import f1_score

    grid = np.linspace(0.05, 0.95, 91)
    single_label = PROBLEMS["single_label"]
    if problem.multi_label:
        out = []
        for c in range(labels.shape[1]):
            scores = [f1_score(labels[:, c], probs[:, c] >= t, zero_division=0) for t in grid]
            out.append(float(grid[int(np.argmax(scores))]))
        return out
    if probs.shape[1] != 2:
        return None
    use = metric if metric in ("accuracy", "f1_macro", "f1_micro") else "f1_macro"
    scores = [compute(np.stack([1 - (probs[:, 1] >= t), probs[:, 1] >= t], 1).astype(float), labels,
                      single_label)[use] for t in grid]
    best = int(np.argmax(scores))
    # keep 0.5 unless tuning actually helps
    at_half = compute(probs, labels, single_label)[use]
    return float(grid[best]) if scores[best] > at_half + 1e-12 else 0.5


def submission_rows(header, body, ids, probs, predicted, label_names, problem, requested_format="auto"):
    """Rows in the sample's order and layout, as ensemble.output=auto decides it (submission.plan)."""
    sample = submission.Sample(Path("sample"), header, body)
    layout, _ = submission.plan(sample, label_names, problem, label_format=requested_format)
    return submission.rows(layout, sample, ids, submission.written_probs(layout, probs, problem), predicted,
                           label_names)


def run(config):
    ecfg = config.ensemble
    if not ecfg.predictions:
        raise UserError("ensemble.predictions is empty; list prediction sets, e.g. "
                        "ensemble.predictions='[model_predictions/a, model_predictions/b]'")
    sets = [load_set(p) for p in ecfg.predictions]
    split = "test"
    check_sets(sets, split)
    manifest = sets[0][1]
    problem, label_names = problem_type(manifest["problem_type"]), manifest["label_names"]
    sample = submission.read_sample(ecfg.sample_submission) if ecfg.sample_submission else None
    delimiter = (manifest.get("config") or {}).get("data", {}).get("label_delimiter")
    layout, metric = submission.plan(sample, label_names, problem, ecfg.metric, ecfg.output, ecfg.label_format,
                                     delimiter)
    check_method(ecfg.method, metric, problem, len(label_names))
    if not all(split in m["splits"] for _, m in sets):
        raise UserError(f"not every prediction set has a '{split}' split; run evaluate.py with eval.splits=[test]")
    check_abstention(ecfg, sample, layout, problem)
    summary, weights, thresholds = fit_blend(ecfg, sets, problem, metric, layout)

    test_members = [load_array(folder, m, split) for folder, m in sets]
    test_probs = normalise(blend(test_members, weights, ecfg.method), problem)
    if np.isnan(test_probs).any():
        raise UserError("the blended test probabilities contain NaN; a prediction set is corrupted, re-run evaluate.py")
    if "calibration" in summary:  # the temperature fitted on the blend's out-of-fold rows
        test_probs = calibration.apply(test_probs, summary["calibration"]["temperature"], problem)
    predicted = problem.decide(test_probs, thresholds)
    written = submission.written_probs(layout, test_probs, problem)
    abstained = None
    if ecfg.abstain_below:
        abstained = test_probs.max(axis=1) < ecfg.abstain_below
        summary["abstain"] = dict(below=ecfg.abstain_below, label=ecfg.abstain_label, rows=int(abstained.sum()))
        print(f"ensemble: {int(abstained.sum())} of {len(abstained)} test rows abstain (top probability below "
              f"{ecfg.abstain_below:g}): {ecfg.abstain_label!r}", flush=True)
    rows = submission.rows(layout, sample, load_array(*sets[0], split, "ids.npy"), written, predicted, label_names,
                           abstained, ecfg.abstain_label)
    test_score = None
    if "metrics" in manifest["splits"][split]:  # scored before anything is written, as written
        test_score = written_score(layout, written, predicted, load_array(*sets[0], split, "labels.npy"), problem,
                                   metric)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    target = next_version(resolve_path(ecfg.output_dir), ecfg.name, ".csv", also=(".json",))  # the summary beside it
    atomic_write_text(target, buf.getvalue())
    diagram = reliability_figure(summary.pop("_reliability", None), target)
    if diagram:
        summary["calibration"]["diagram"] = diagram.name
    summary.update(rows=len(rows) - 1, submission=str(target), predictions=[str(f) for f, _ in sets],
                   test_score=test_score)
    write_json(target.with_suffix(".json"), summary)
    if test_score is not None:
        print(f"submission on labelled test rows: {metric} {test_score:.4f}", flush=True)
    print(f"ensemble: wrote {target} ({len(rows) - 1} rows, {layout.kind}: {', '.join(layout.header[1:])})",
          flush=True)
    return target


def reliability_figure(tables, target):
    """<name>-reliability.png beside the submission: the blend's reliability before and after its
    calibration, on the out-of-fold rows (None without calibration or matplotlib)."""
    if tables is None:
        return None
    try:
        from .figures import reliability_diagram
    except ImportError:
        return None
    path = target.with_name(f"{target.stem}-reliability.png")
    return reliability_diagram(*tables, path, f"{target.stem}: the blend's out-of-fold rows")


def check_abstention(ecfg, sample, layout, problem):
    """ensemble.abstain_below writes a label that is not a class: only into a label column of a
    single-label submission whose sample submission already holds that label somewhere (the
    competition's way of allowing an answer of "none of these")."""
    if not ecfg.abstain_below:
        return
    if problem.regression or problem.multi_label or layout.kind != "labels" or layout.columns:
        raise UserError(f"ensemble.abstain_below: a submission of {layout.kind} for a {problem.name} problem has no "
                        f"single label to replace by {ecfg.abstain_label!r}; leave ensemble.abstain_below at 0")
    if sample is None or ecfg.abstain_label not in sample.examples():
        where = "no sample submission was given" if sample is None else \
            f"the sample submission {ecfg.sample_submission} never holds {ecfg.abstain_label!r} in its label column"
        raise UserError(f"ensemble.abstain_below: {where}, so an abstaining row would be a label the competition does "
                        f"not know; leave ensemble.abstain_below at 0, or set ensemble.abstain_label to the label the "
                        f"sample uses for no answer")


def fit_blend(ecfg, sets, problem, metric, layout):
    """The blend's weights and decision thresholds, learned on the out-of-fold rows (else the
    validation rows) every set has: (summary, weights, thresholds). Without either, equal weights
    and no thresholds. A threshold is tuned only where labels are written for a label metric."""
    has_oof = all("oof" in m["splits"] for _, m in sets)
    tune_split = "oof" if has_oof else ("valid" if all("valid" in m["splits"] for _, m in sets) else None)
    summary = {"members": [], "method": ecfg.method, "metric": metric, "output": layout.kind,
               "columns": layout.header[1:], "tuned_on": tune_split}
    weights = np.full(len(sets), 1.0 / len(sets))
    if not tune_split:
        print("ensemble: no out-of-fold or validation probabilities in every set; equal weights, no thresholds",
              flush=True)
        return summary, weights, None
    thresholds = None
    labels = load_array(*sets[0], tune_split, "labels.npy")
    members = [load_array(folder, m, tune_split) for folder, m in sets]
    for (folder, _), probs in zip(sets, members):
        s = score(probs, labels, problem, metric)
        summary["members"].append({"path": str(folder), tune_split: s})
        print(f"member {folder.name}: {tune_split} {metric} {s:.4f}", flush=True)
    mean_score = score(normalise(blend(members, weights, "mean"), problem), labels, problem, metric)
    if ecfg.method == "weighted":
        weights, blend_score = search_weights(members, labels, problem, metric, "weighted")
    else:
        blend_score = score(normalise(blend(members, weights, ecfg.method), problem), labels, problem, metric)
    blended = normalise(blend(members, weights, ecfg.method), problem)
    if ecfg.calibrate and ecfg.method != "rank" and not problem.regression:
        before = blended
        temperature, summary["calibration"], blended = calibration.calibrate(blended, labels, problem)
        record = summary["calibration"]
        # drawn beside the submission once its name is known (run)
        summary["_reliability"] = ((calibration.reliability(before, labels, problem), record["ece_before"]),
                                   (calibration.reliability(blended, labels, problem), record["ece_after"]))
        print(f"blend calibrated on the {tune_split} rows: temperature {temperature:.3f}, expected calibration "
              f"error {record['ece_before']:.4f} -> {record['ece_after']:.4f}"
              + (f" (not fitted: {record['not_fitted']})" if "not_fitted" in record else ""), flush=True)
    if (ecfg.tune_thresholds and ecfg.method != "rank" and layout.kind == "labels" and not problem.regression
            and metric in submission.LABEL_METRICS):
        thresholds = tune_thresholds(blended, labels, problem, metric)
    written = submission.written_probs(layout, blended, problem)
    oof_score = written_score(layout, written, problem.decide(blended, thresholds), labels, problem, metric)
    summary.update(mean_score=mean_score, blend_score=blend_score, weights=weights.tolist(),
                   thresholds=None if thresholds is None else np.round(thresholds, 4).tolist(),
                   submission_score=oof_score)
    print(f"blend ({ecfg.method}): {tune_split} {metric} {blend_score:.4f} (plain mean {mean_score:.4f}); "
          f"weights {np.round(weights, 3).tolist()}"
          + (f"; thresholds {np.round(thresholds, 4).tolist()}" if thresholds is not None else "")
          + f"; as written ({layout.kind}) {metric} {oof_score:.4f}", flush=True)
    return summary, weights, thresholds


def written_score(layout, probs, predicted, labels, problem, metric):
    """The submission's score in `metric` as it is written: labels decided (thresholds applied)
    for a label output, the written probabilities (clipped for log_loss) otherwise."""
    if layout.kind == "labels" and not problem.regression and metric in submission.LABEL_METRICS:
        decided = np.asarray(predicted)
        if decided.ndim == 1:  # one class per row: its decision as a one-hot row
            decided = np.eye(probs.shape[1])[decided]
        return score(decided.astype(float), labels, problem, metric)
    return score(probs, labels, problem, metric)
