"""Prediction sets (model_predictions/<run>/, written by evaluate.py): read, checked against their
manifests and each other, and blended. The ensemble stage blends them into a submission, the
pseudo-labelling stage into pseudo labels."""

import math
from pathlib import Path

import numpy as np

from .config import BLEND_METHODS, resolve_path
from .errors import UserError
from .fileio import load_json, sha256_file
from .problem import NAMES as PROBLEM_NAMES


def load_set(path):
    """(folder, manifest) of a prediction set written by evaluate.py, its manifest checked."""
    folder = resolve_path(path)
    if not (folder / "manifest.json").is_file():
        raise UserError(f"{path} is not a prediction set (no manifest.json); pass model_predictions/<run> folders "
                        f"written by evaluate.py")
    fix = "run evaluate.py again for this run, or leave the set out of ensemble.predictions"
    manifest = load_json(folder / "manifest.json", "a prediction-set manifest", fix)
    if "splits" not in manifest:
        raise UserError(f"{path} holds raw-text predictions, not a prediction set of a run; run evaluate.py with eval.run")
    manifest = load_json(folder / "manifest.json", "a prediction-set manifest", fix,
                         {"label_names": list, "problem_type": str, "splits": dict})
    if manifest["problem_type"] not in PROBLEM_NAMES:
        raise UserError(f"{folder / 'manifest.json'} is not a prediction-set manifest (problem_type "
                        f"{manifest['problem_type']!r}); {fix}")
    for name, split in manifest["splits"].items():
        if not isinstance(split, dict) or not isinstance(split.get("ids_sha256"), str):
            raise UserError(f"{folder / 'manifest.json'} is not a prediction-set manifest (split '{name}' has no "
                            f"ids_sha256); {fix}")
    return folder, manifest


def load_array(folder, manifest, split, name="probs.npy"):
    """One array of a prediction set, checked against its manifest: probabilities (and each
    fold's) (rows, labels) and finite, ids and labels one per row. A file edited or torn after
    evaluate.py wrote it is one line, before anything is written."""
    path = Path(folder) / split / name
    fix = "run evaluate.py again for this run, or leave the set out"
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"{path} cannot be read ({str(err).splitlines()[0]}); {fix}") from None
    entry = manifest["splits"].get(split, {})
    rows = entry.get("rows")
    if rows is None and split == "oof":
        rows = len(np.load(Path(folder) / split / "ids.npy", allow_pickle=False))
    width = len(manifest["label_names"])
    if name in ("ids.npy", "labels.npy"):
        want, ok = f"{rows} rows", array.ndim >= 1 and len(array) == rows
    else:
        want = f"({rows}, {width})"
        ok = array.ndim == 2 and array.shape == (rows, width) and bool(np.isfinite(array).all())
    if not ok:
        raise UserError(f"{path} has shape {array.shape}" + ("" if array.ndim != 2 or array.shape != (rows, width)
                                                              else " with values that are not finite")
                        + f", while its manifest says {want}; it was changed after evaluate.py wrote it: {fix}")
    return array


def _weight(value):
    """A blend weight as a summary may hold one: a finite number of 0 or more (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value)) and value >= 0
    except OverflowError:  # an integer of hundreds of digits
        return False


def read_blend(paths, key_name):
    """[(folder, manifest)], weights and blend method: prediction-set folders blended by their mean,
    or one ensemble summary (submissions/<name>.json) with its members, weights and method."""
    if len(paths) == 1 and str(paths[0]).endswith(".json"):
        path = resolve_path(paths[0])
        if not path.is_file():
            raise UserError(f"{key_name}: {paths[0]} does not exist; pass an ensemble_and_submit.py summary "
                            f"(submissions/<name>.json) or model_predictions/<run> folders")
        fix = "pass the .json that ensemble_and_submit.py wrote beside its submission"
        summary = load_json(path, "an ensemble summary", fix, {"predictions": list, "method": str})
        if not summary["predictions"] or not all(isinstance(p, str) and p for p in summary["predictions"]):
            raise UserError(f"{path}: predictions {str(summary['predictions'])[:60]} must list prediction-set "
                            f"folders; {fix}")
        sets = [load_set(p) for p in summary["predictions"]]
        weights = summary["weights"] if "weights" in summary else [1.0] * len(sets)
        if not isinstance(weights, list) or len(weights) != len(sets):
            raise UserError(f"{path} has weights {str(weights)[:60]} for {len(sets)} prediction sets; {fix}")
        if not all(_weight(w) for w in weights) or not 0 < sum(float(w) for w in weights) < math.inf:
            raise UserError(f"{path}: the blend weights {str(weights)[:60]} must be numbers of 0 or more, not all 0; "
                            f"{fix}")
        if summary["method"] not in BLEND_METHODS:
            raise UserError(f"{path}: blend method {summary['method']!r} is not one of {', '.join(BLEND_METHODS)}; "
                            f"{fix}")
        method, source = summary["method"], dict(summary=str(path), summary_sha256=sha256_file(path))
        thresholds = summary.get("thresholds")
        if thresholds is not None:  # the submission's tuned decision thresholds decide the labels too
            flat = thresholds if isinstance(thresholds, list) else [thresholds]
            if not flat or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1
                                   for t in flat):
                raise UserError(f"{path}: thresholds {str(thresholds)[:60]} must be numbers from 0 to 1; {fix}")
            source["thresholds"] = thresholds
        temperature = (summary.get("calibration") or {}).get("temperature", 1.0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
            raise UserError(f"{path}: calibration temperature {str(temperature)[:30]} must be a positive number; {fix}")
        source["temperature"] = float(temperature)  # the blend's calibration, applied to what it blends
    else:
        for p in paths:
            if str(p).endswith(".json"):
                raise UserError(f"{key_name}: {p} is an ensemble summary; pass it alone (its members are "
                                f"blended as it says), or pass prediction-set folders")
        sets = [load_set(p) for p in paths]
        weights, method, source = [1.0] * len(sets), "mean", {}
    if method == "rank":
        raise UserError(f"{key_name}: a rank blend gives ranks, not probabilities; blend with mean or weighted for it")
    return sets, np.asarray(weights, dtype=np.float64), method, source


def check_sets(sets, split):
    """All sets must describe the same rows (ids and order), labels and inputs."""
    first_path, first = sets[0]
    for path, manifest in sets[1:]:
        if manifest["label_names"] != first["label_names"]:
            raise UserError(f"{path} has labels {manifest['label_names']}, {first_path} has {first['label_names']}; "
                            f"blend only predictions of the same labels")
        if manifest["problem_type"] != first["problem_type"]:
            raise UserError(f"{path} is {manifest['problem_type']}, {first_path} is {first['problem_type']}; "
                            f"blend only predictions of one problem type")
        for name in ("oof", split):
            a, b = first["splits"].get(name), manifest["splits"].get(name)
            if (a is None) != (b is None):
                raise UserError(f"{path} and {first_path} do not both have a '{name}' split; evaluate both the same way")
            if a is None:
                continue
            if a["ids_sha256"] != b["ids_sha256"]:
                raise UserError(f"{path} and {first_path} have different '{name}' rows (ids or their order); "
                                f"blend only predictions made from the same data_process output")
            if name != "oof" and a.get("source_sha256") != b.get("source_sha256"):
                raise UserError(f"{path} and {first_path} were predicted from different {name} files "
                                f"(sha256 differs); evaluate both on the same input")


def blend(members, weights, method):
    """Blend member probabilities (members, rows, classes)."""
    members = np.asarray(members, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    if method in ("mean", "weighted"):
        return np.tensordot(w, members, axes=1)
    if method == "geometric":
        out = np.exp(np.tensordot(w, np.log(np.clip(members, 1e-12, 1.0)), axes=1))
        return out
    if method == "rank":
        ranks = members.argsort(axis=1).argsort(axis=1) / max(members.shape[1] - 1, 1)
        return np.tensordot(w, ranks, axes=1)
    raise UserError(f"unknown blend method {method}")


def normalise(probs, problem):
    """A blend back to probabilities: rows that sum to 1 (one class per row), each in [0, 1]
    (multi-label); regression predictions as they are."""
    if problem.regression:
        return probs
    if problem.multi_label:
        return np.clip(probs, 0.0, 1.0)
    return probs / probs.sum(axis=1, keepdims=True)
