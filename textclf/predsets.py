"""Prediction sets (model_predictions/<run>/, written by evaluate.py): read, checked against their
manifests and each other, and blended. The ensemble stage blends them into a submission, the
pseudo-labelling stage into pseudo labels."""

from pathlib import Path

import numpy as np

from .config import resolve_path
from .errors import UserError
from .fileio import load_json
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
