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


def load_meta(data_dir):
    """meta.json of a data_process output, checked to be one this version reads."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise UserError(f"{data_dir} has no meta.json; run data_process.py first (or check data.name)")
    fix = "run data_process.py again (data.overwrite=true replaces the folder)"
    meta = load_json(path, "a data_process meta.json", fix, {"format_version": int})
    if meta["format_version"] != FORMAT_VERSION:
        raise UserError(f"{path} was written by another version of textclf; {fix}")
    return load_json(path, "a data_process meta.json", fix, META_KEYS)


def check_data_keys(config, meta, data_dir, may_differ=()):
    """Refuse data.* keys given on this stage's command line that differ from the values the arrays
    in `data_dir` were made with; take every other data.* key (from the config file, which several
    stages share, or the defaults) from meta.json, so the config saved with a run says what its data
    really is. Only keys the schema marks fixed (config.key(..., fixed=True)) are compared."""
    made_with = meta.get("config", {}).get("data", {})
    for key in fixed_data_keys():
        if key in may_differ or key not in made_with:
            continue
        value, recorded = getattr(config.data, key), made_with[key]
        if f"data.{key}" not in config.explicit:
            setattr(config.data, key, recorded)
        elif not _same_value(key, value, recorded):
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
