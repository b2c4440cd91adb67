"""A data_process output folder read back: its meta.json checked, the data.* keys it fixes, and
which rows each fold trains on and holds out. Every stage that reads the arrays (train, evaluate,
pseudo, export) reads them through here; data.py writes them (the layout is in its docstring)."""

from pathlib import Path

import numpy as np

from .config import fixed_data_keys, resolve_path
from .errors import UserError
from .fileio import load_json

FORMAT_VERSION = 1
META_KEYS = {"format_version": int, "name": str, "model_name": str, "tokenizer": dict, "max_len": int,
             "truncation": str, "text_columns": list, "problem_type": str, "label_names": list, "splits": dict,
             "folds": dict, "config": dict}


def load_meta(data_dir, arrays=True):
    """meta.json of a data_process output, checked to be one this version reads, and (arrays=True:
    a stage that reads them) every array it promises there and whole (check_arrays)."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise UserError(f"{data_dir} has no meta.json; run data_process.py first (or check data.name)")
    fix = "run data_process.py again (data.overwrite=true replaces the folder)"
    meta = load_json(path, "a data_process meta.json", fix, {"format_version": int})
    if meta["format_version"] != FORMAT_VERSION:
        raise UserError(f"{path} was written by another version of textclf; {fix}")
    meta = load_json(path, "a data_process meta.json", fix, META_KEYS)
    if arrays:
        check_arrays(Path(data_dir), meta)
    return meta


def check_arrays(data_dir, meta):
    """Every array meta.json promises is there, readable and of the rows and width it records
    (a folder copied in part, or a file cut short, is refused here, not as a crash mid-run)."""
    fix = (f"run data_process.py again (data.name={meta['name']} data.overwrite=true), or copy the whole "
           f"folder {data_dir}")
    n_classes = len(meta["label_names"])
    for split, entry in meta["splits"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("rows"), int):
            raise UserError(f"{data_dir / 'meta.json'} has no row count for split {split!r}; {fix}")
        texts, windows = entry["rows"], entry.get("windows", entry["rows"])
        width = entry.get("padded_width")
        expect = {name: (windows, width) for name in ("input_ids", "attention_mask", "token_type_ids")}
        expect.update(lengths=(windows,), ids=(texts,))
        if "windows" in entry:
            expect["window_doc"] = (windows,)
        if entry.get("labelled"):
            expect["labels"] = (texts,) if meta["problem_type"] == "single_label" else (texts, n_classes)
        if split == "train" and meta["folds"].get("mode") != "valid_file":
            expect["folds"] = (texts,)
        arrays = {name: _open_array(data_dir / split / f"{name}.npy", fix) for name in expect}
        for name, shape in expect.items():
            array = arrays[name]
            if len(array.shape) != len(shape) or any(s is not None and s != n for s, n in zip(shape, array.shape)):
                raise UserError(f"{data_dir / split / f'{name}.npy'} holds {array.shape} but meta.json records "
                                f"{shape} for the {split} split (a file replaced or cut short); {fix}")
        if "labels" in expect:
            check_labels(arrays["labels"], meta, data_dir / split / "labels.npy", fix)
        if "folds" in expect:
            folds, n_folds = arrays["folds"], meta["folds"].get("n_folds", 1)
            held = set(np.unique(folds).tolist()) - {-1}
            if folds.dtype.kind not in "iu" or held != set(range(n_folds)):
                raise UserError(f"{data_dir / 'train' / 'folds.npy'} holds folds {sorted(held)[:8]} but meta.json "
                                f"records {n_folds} fold(s), each holding rows out; {fix}")
    only = data_dir / "train" / "only_fold.npy"
    if only.exists() and _open_array(only, fix).shape != (meta["splits"]["train"]["rows"],):
        raise UserError(f"{only} does not hold one entry per train row; {fix}")


def check_labels(labels, meta, path, fix):
    """labels.npy as data_process writes it: class numbers of the labels meta.json names, 0/1 per
    class (multi-label), finite float32 targets (regression)."""
    problem, n = meta["problem_type"], len(meta["label_names"])
    if problem == "regression":
        ok = labels.dtype == np.float32 and bool(np.isfinite(labels).all())
    elif problem == "multi_label":
        ok = labels.dtype.kind in "iub" and bool(np.isin(labels, (0, 1)).all())
    else:
        ok = labels.dtype.kind in "iu" and (not len(labels) or (labels.min() >= 0 and labels.max() < n))
    if not ok:
        raise UserError(f"{path} is not what data_process writes for {problem} data with {n} label(s) "
                        f"({labels.dtype}, values {np.unique(labels)[:4].tolist()}); {fix}")


def _open_array(path, fix):
    if not path.is_file():
        raise UserError(f"{path} is missing; {fix}")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path} cannot be read ({exc}); {fix}") from None


def check_data_keys(config, meta, data_dir, may_differ=()):
    """Refuse data.* keys given on this stage's command line that differ from the values the arrays
    in `data_dir` were made with; take every other data.* key (from the config file, which several
    stages share, or the defaults) from meta.json, so the config saved with a run says what its data
    really is. Only keys the schema marks fixed (config.key(..., fixed=True)) are compared. Keys in
    `may_differ` (how evaluate reads a new file: its columns, delimiter, ...) may be given otherwise;
    not given, they too are the run's (the file paths aside), so a later file of the same layout is
    read as the run's files were."""
    made_with = meta.get("config", {}).get("data", {})
    for key in fixed_data_keys():
        if key not in made_with:
            continue
        value, recorded = getattr(config.data, key), made_with[key]
        if f"data.{key}" not in config.explicit:
            if not (key in may_differ and key.endswith("_file")):  # a new file is read as the run's were
                setattr(config.data, key, recorded)
        elif key not in may_differ and not _same_value(key, value, recorded):
            raise UserError(f"data.{key}={value!r} differs from {data_dir / 'meta.json'}, made with {recorded!r}: "
                            f"data.* keys are fixed when data_process.py writes the arrays; drop data.{key} here, "
                            f"or run data_process.py with it (and another data.name)")


def _same_value(key, value, recorded):
    if key.endswith("_file") and value and recorded:  # one file, however its path was written
        return resolve_path(value).resolve() == resolve_path(recorded).resolve()
    return value == recorded


def fold_rows(meta, data_dir, fold):
    """One fold's rows: (the train rows it trains on, the split its held-out rows are in, those
    rows). With a validation file there is one fold, held out on the whole valid split. Rows that
    train one fold only (train/only_fold.npy: per-fold pseudo rows, k; every other row -1) join
    that fold's train rows only."""
    data_dir = Path(data_dir)
    n_train = meta["splits"]["train"]["rows"]
    only = data_dir / "train" / "only_fold.npy"
    only = np.load(only) if only.is_file() else np.full(n_train, -1, dtype=np.int16)
    if meta["folds"]["mode"] == "valid_file":
        train_rows, split, held = np.arange(n_train), "valid", np.arange(meta["splits"]["valid"]["rows"])
    else:
        folds = np.load(data_dir / "train" / "folds.npy")
        train_rows, split, held = np.flatnonzero(folds != fold), "train", np.flatnonzero(folds == fold)
    return train_rows[(only[train_rows] == -1) | (only[train_rows] == fold)], split, held
