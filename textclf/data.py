"""The data_process stage: raw files -> padded token arrays + meta.json.

Two passes over each file. The first validates every row (columns, empty texts, labels,
duplicate ids) and counts, so that nothing is written for bad input and the arrays can be
allocated at their final row count. The second tokenizes in large batches with the fast
tokenizer and writes into `numpy.lib.format.open_memmap` arrays, so memory stays flat
however large the file. Everything is built in a temporary folder renamed into place.

Layout of models_input_files/<name>/:
    meta.json, config.yaml
    <split>/input_ids.npy        int32  (rows, width)  width = longest row of the split
    <split>/attention_mask.npy   uint8  (rows, width)
    <split>/token_type_ids.npy   uint8  (rows, width)
    <split>/lengths.npy          int32  (rows,)        tokens including special tokens
    <split>/ids.npy              str    (rows,)
    <split>/labels.npy           int64 (rows,) single-label | uint8 (rows, classes) multi-label
                                 | float32 (rows, targets) regression (data.task=regression)
    train/folds.npy              int16  (rows,)  fold k holds out rows == k; -1 = never held out
    train/only_fold.npy          int16  (rows,)  pseudo.per_fold: k = the row trains fold k only; -1 = every fold
With sliding windows (data.window_stride > 0) input_ids, attention_mask, token_type_ids and
lengths hold one row per window, and <split>/window_doc.npy int32 (windows,) names each window's
text (row of ids, labels and folds, which stay one per text; non-decreasing).
"""

import datetime
import json
import os
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .config import Config, parse_args, resolve_path, with_overrides
from .datadir import FORMAT_VERSION
from .errors import UserError
from .fileio import (atomic_dir, atomic_write_text, made_by_textclf, remove_dead_temporaries, write_json,
                     write_marker)
from .premodels import load_tokenizer, resolve_model_dir, vocab_hash
from .rawdata import RawFile, RowReader, label_array, locate, same_number_labels, scan_rows
from .tables import is_table
from . import prompts
from .tokenization import TextTokenizer


def model_max_positions(model_dir):
    """The longest input the model takes, from its config (RoBERTa reserves padding_idx + 1)."""
    with open(Path(model_dir) / "config.json", encoding="utf-8") as fh:
        cfg = json.load(fh)
    limit = cfg.get("max_position_embeddings") or cfg.get("n_positions")
    if limit and cfg.get("model_type") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        limit -= (cfg.get("pad_token_id") or 1) + 1
    return limit


class NpyWriter:
    """Appends row blocks to a .npy file with plain writes. Unlike a writable memmap, the
    written pages never count toward this process's memory, so RSS stays flat."""

    def __init__(self, path, dtype, shape):
        from numpy.lib import format as npy_format

        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), tuple(shape)
        self.fh = open(self.path, "wb")
        npy_format.write_array_header_1_0(self.fh, {"descr": npy_format.dtype_to_descr(self.dtype),
                                                    "fortran_order": False, "shape": self.shape})
        self.rows = 0

    def write(self, block):
        block = np.ascontiguousarray(block, dtype=self.dtype)
        self.fh.write(block.tobytes())
        self.rows += len(block)

    def close(self):
        self.fh.close()
        if self.rows != self.shape[0]:
            raise RuntimeError(f"{self.path}: wrote {self.rows} rows, expected {self.shape[0]}")


def _int_sorted(names):
    """Sort label names numerically when they are all integers, else as text."""
    try:
        return sorted(names, key=lambda s: (int(s), s))
    except ValueError:
        return sorted(names)


# ---------------------------------------------------------------------------- pass 2: write


def _chunks(reader, cfg, size):
    """Yield lists of (id, text, pair, labels) of at most `size` rows, empty texts dropped. With a
    template (and no sliding windows) the text is its fields, which a too-long row is cut inside."""
    batch = []
    by_fields = reader.template_fields is not None and not cfg.window_stride and reader.pair_idx is None
    for row_number, (line, values) in enumerate(reader.raw.rows()):
        text = reader.text(values, line)
        if not text:
            continue  # only reachable with drop_empty (pass 1 refused them otherwise)
        batch.append((
            reader.row_id(values, row_number),
            reader.fields(values, line) if by_fields else text,
            reader.pair(values, line) if reader.pair_idx is not None else None,
            (reader.targets(values, line) if cfg.task == "regression" else reader.labels(values, line))
            if reader.labelled else None,
        ))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_split(folder, reader, cfg, scan, encoder, label_index, multi_label, progress):
    """Tokenize one split into .npy files in `folder`; return its meta entry.

    Rows are first written at max_len width to scratch files; once the longest row is known
    they are copied, chunk by chunk, to arrays padded only to that width."""
    folder.mkdir()
    lengths, cut = _write_wide(folder, reader, cfg, scan, encoder, (label_index, multi_label), progress)
    n_texts, n = scan["rows"], len(lengths)  # token rows: windows when windowed
    width = _narrow(folder, lengths, encoder.max_len, cfg.chunk_rows)
    cut_rows = cut[cut > 0]
    entry = dict(
        source_file=str(reader.raw.path),
        source_sha256=reader.raw.sha256(),
        rows=n_texts,
        dropped_empty=scan["dropped"],
        **({"texts_in_train": scan["texts_in_train"]} if "texts_in_train" in scan else {}),
        labelled=reader.labelled,
        padded_width=width,
        length_stats=dict(min=int(lengths.min()), mean=round(float(lengths.mean()), 2), median=float(np.median(lengths)),
                          p95=float(np.percentile(lengths, 95)), max=int(lengths.max()),
                          truncated_rows=int(len(cut_rows)),
                          cut_tokens=dict(mean=round(float(cut_rows.mean()), 1), max=int(cut_rows.max()))
                          if len(cut_rows) else None,
                          cut_inside_template_fields=bool(cfg.template) and not cfg.text_pair_column),
    )
    if cfg.window_stride:  # long texts are read as several windows; only max_windows leaves tokens out
        per_text = np.bincount(np.load(folder / "window_doc.npy"))
        entry["length_stats"]["texts_in_several_windows"] = int(np.count_nonzero(per_text > 1))
        entry["windows"] = int(n)
        entry["windows_per_text"] = dict(mean=round(n / n_texts, 3), max=int(per_text.max()))
    if reader.labelled and cfg.task == "regression":
        entry["target_stats"] = target_stats(np.load(folder / "labels.npy"), list(label_index))
    elif reader.labelled:
        entry["label_counts"] = {name: scan["counts"].get(name, 0) for name in label_index}
    return entry


def _write_wide(folder, reader, cfg, scan, encoder, labels_as, progress):
    """Pass 2, the first copy: every row's token ids and types at max_len width into scratch files,
    and ids, labels (and with sliding windows window_doc.npy) into their final arrays. Returns
    (each token row's length, the tokens each text lost to max_len)."""
    label_index, multi_label = labels_as
    n = scan["rows"]
    windowed = cfg.window_stride > 0  # then the token arrays hold windows, ids and labels texts
    lengths = np.zeros(n, dtype=np.int32) if not windowed else []  # 4 bytes a row, kept for the final copy
    window_doc = []
    ids = NpyWriter(folder / "ids.npy", f"<U{scan['id_len']}", (n,))
    labels = None
    if reader.labelled:
        regression = cfg.task == "regression"
        shape = (n, len(label_index)) if multi_label or regression else (n,)
        labels = NpyWriter(folder / "labels.npy", np.float32 if regression else np.uint8 if multi_label else np.int64,
                           shape)
    start, cut = 0, np.zeros(n, dtype=np.int64)
    with open(folder / "wide_input_ids.bin", "wb") as wide_ids, open(folder / "wide_token_type_ids.bin", "wb") as \
            wide_types:
        for batch in _chunks(reader, cfg, cfg.chunk_rows):
            stop = start + len(batch)
            texts = [row[1] for row in batch]
            pairs = [row[2] for row in batch] if reader.pair_idx is not None else None
            if windowed:
                block_ids, block_types, block_lengths, block_doc, cut[start:stop] = encoder.sliding_windows(
                    texts, cfg.window_stride, cfg.max_windows)
                lengths.append(block_lengths)
                window_doc.append(block_doc + start)
            else:
                block_ids, block_types, block_lengths, cut[start:stop] = encoder.encode(texts, pairs)
                lengths[start:stop] = block_lengths
            wide_ids.write(block_ids.tobytes())
            wide_types.write(block_types.tobytes())
            ids.write(np.array([row[0] for row in batch], dtype=f"<U{scan['id_len']}"))
            if labels is not None:
                labels.write(label_array([row[3] for row in batch], cfg.task, label_index, multi_label))
            start = stop
            progress.update(len(batch))
    assert start == n, f"row count changed between passes in {reader.raw.path}"
    ids.close()
    if labels is not None:
        labels.close()
    if windowed:
        lengths = np.concatenate(lengths)
        np.save(folder / "window_doc.npy", np.concatenate(window_doc).astype(np.int32))
    return lengths, cut


def _narrow(folder, lengths, max_len, chunk_rows):
    """Pass 2, the second copy: the scratch rows into input_ids, attention_mask and token_type_ids
    padded only to the longest row of the split (its width, returned), and lengths.npy."""
    n, width = len(lengths), int(lengths.max())
    final_ids = NpyWriter(folder / "input_ids.npy", np.int32, (n, width))
    final_mask = NpyWriter(folder / "attention_mask.npy", np.uint8, (n, width))
    final_types = NpyWriter(folder / "token_type_ids.npy", np.uint8, (n, width))
    positions = np.arange(width, dtype=np.int32)
    with open(folder / "wide_input_ids.bin", "rb") as ids_in, open(folder / "wide_token_type_ids.bin", "rb") as types_in:
        for lo in range(0, n, chunk_rows):
            hi = min(n, lo + chunk_rows)
            block = np.frombuffer(ids_in.read((hi - lo) * max_len * 4), dtype=np.int32).reshape(hi - lo, max_len)
            final_ids.write(block[:, :width])
            block = np.frombuffer(types_in.read((hi - lo) * max_len), dtype=np.uint8).reshape(hi - lo, max_len)
            final_types.write(block[:, :width])
            final_mask.write(positions[None, :] < lengths[lo:hi, None])
    for writer in (final_ids, final_mask, final_types):
        writer.close()
    np.save(folder / "lengths.npy", lengths)
    os.remove(folder / "wide_input_ids.bin")
    os.remove(folder / "wide_token_type_ids.bin")
    return width


def target_stats(targets, names):
    """Each regression target's mean, standard deviation, lowest and highest value (float64 sums)."""
    targets = np.asarray(targets, dtype=np.float64)
    return {name: dict(mean=float(column.mean()), std=float(column.std()), min=float(column.min()),
                       max=float(column.max())) for name, column in zip(names, targets.T)}


# ---------------------------------------------------------------------------- folds


def target_bins(targets, most=10, rows_per_bin=10):
    """Regression rows to stratify on: the quantile bin of the (first) target, at most `most` bins
    of at least `rows_per_bin` rows, so that every fold gets a similar spread of targets."""
    first = np.asarray(targets, dtype=np.float64)
    first = first[:, 0] if first.ndim == 2 else first
    bins = max(1, min(most, len(first) // rows_per_bin))
    edges = np.quantile(first, np.arange(1, bins) / bins)
    return np.searchsorted(edges, first, side="right")


def stratify_keys(labels):
    """One class per row to stratify on: the label, for multi-label the rarest positive label, for
    regression the target's quantile bin."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        return target_bins(labels)
    if labels.ndim == 1:
        return labels
    freq = labels.sum(axis=0)
    rarity = np.where(labels > 0, freq[None, :], np.iinfo(np.int64).max)
    keys = rarity.argmin(axis=1)
    keys[labels.sum(axis=1) == 0] = labels.shape[1]  # rows with no label form their own group
    return keys


def assign_folds(labels, n_folds, valid_size, seed):
    """Stratified, seeded fold numbers. n_folds >= 2: K folds; else fold 0 is a held-out split
    of about `valid_size` of every class and the other rows are -1 (never held out)."""
    keys = stratify_keys(labels)
    rng = np.random.default_rng(seed)
    folds = np.full(len(keys), -1, dtype=np.int16)
    offset = 0
    for cls in np.unique(keys):
        rows = np.flatnonzero(keys == cls)
        rows = rows[rng.permutation(len(rows))]
        if n_folds >= 2:
            # round-robin from a running offset keeps fold sizes within one row of each other
            folds[rows] = (np.arange(len(rows)) + offset) % n_folds
            offset = (offset + len(rows)) % n_folds
        else:
            take = int(round(len(rows) * valid_size))
            if len(rows) >= 2:
                take = min(max(take, 1), len(rows) - 1)
            folds[rows[:take]] = 0
    return folds


# ---------------------------------------------------------------------------- the stage


def group_folds(labels, groups, n_folds, valid_size, seed):
    """Fold numbers that never split a group: StratifiedGroupKFold (shuffled, seeded) over the
    groups, stratified like assign_folds. n_folds >= 2: K folds; else fold 0 is the first of
    round(1 / valid_size) group folds (about valid_size of the rows) and the rest are -1."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    keys = stratify_keys(labels)
    _, group_index = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(group_index.max()) + 1
    splits = group_splits(n_groups, n_folds, valid_size)
    folds = np.full(len(keys), -1, dtype=np.int16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the least populated class has only n members": stratified as well as it can
        try:
            parts = list(StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
                         .split(np.zeros(len(keys)), keys, group_index))
        except ValueError:  # every class smaller than the number of folds: groups kept whole, not stratified
            from sklearn.model_selection import GroupKFold

            parts = list(GroupKFold(n_splits=splits, shuffle=True, random_state=seed)
                         .split(np.zeros(len(keys)), keys, group_index))
    if n_folds >= 2:
        for k, (_, held) in enumerate(parts):
            folds[held] = k
    else:  # the group fold whose size is nearest valid_size (groups are whole, so sizes vary)
        held = min((held for _, held in parts if len(held)), key=lambda h: abs(len(h) - valid_size * len(keys)))
        folds[held] = 0
    return folds, n_groups


def group_splits(n_groups, n_folds, valid_size):
    """How many group folds to draw: K, or for a holdout about 1 / valid_size (as many as there are
    groups when fewer; the held-out fold is then larger than asked, and data_process says so)."""
    if n_groups < 2:
        raise UserError(f"data.group_column: the train file has {n_groups} group, and groups are never split, so no "
                        f"rows can be held out; use a column with several groups, or drop data.group_column")
    if n_folds >= 2 and n_groups < n_folds:
        raise UserError(f"data.group_column: the train file has {n_groups} group(s), fewer than data.n_folds="
                        f"{n_folds}; groups are never split, so use data.n_folds={n_groups} or fewer")
    return n_folds if n_folds >= 2 else min(n_groups, max(2, int(round(1 / valid_size))))


def check_group_count(groups, cfg):
    group_splits(len(np.unique(groups)), cfg.n_folds, cfg.valid_size)


def given_folds(folds, cfg, path):
    """data.fold_column's numbers, checked: 0..K-1 with every fold present, -1 = never held out."""
    found = sorted(set(folds.tolist()) - {-1})
    if not found:
        raise UserError(f"train file {path}: data.fold_column '{cfg.fold_column}' is -1 on every row, so no row is "
                        f"ever held out; number the folds 0, 1, ...")
    k = found[-1] + 1
    if found != list(range(k)):
        missing = sorted(set(range(k)) - set(found))
        raise UserError(f"train file {path}: data.fold_column '{cfg.fold_column}' has folds up to {k - 1} but none "
                        f"numbered {', '.join(map(str, missing[:5]))}; number the folds 0..{k - 1} without gaps")
    if k == 1 and not (folds == -1).any():
        raise UserError(f"train file {path}: data.fold_column '{cfg.fold_column}' puts every row in fold 0, leaving "
                        f"none to train on; mark training rows -1, or number several folds")
    if cfg.n_folds and cfg.n_folds != k:
        raise UserError(f"data.n_folds={cfg.n_folds} but data.fold_column '{cfg.fold_column}' in {path} numbers {k} "
                        f"fold(s); drop data.n_folds (the column decides) or fix the column")
    return k


def _decide_labels(cfg, train_counts, multi_label):
    if cfg.task == "regression":  # the target columns' names
        return list(cfg.label_columns or [cfg.label_column])
    if cfg.label_columns:
        return list(cfg.label_columns)
    if cfg.labels:
        return list(cfg.labels)
    return _int_sorted(train_counts)


def process(config, tables=None):
    """Run data_process for a resolved Config; return the output folder. `tables`: {split: a pandas
    DataFrame or pyarrow Table} read instead of that split's file (textclf.process)."""
    cfg = config.data
    out = output_folder(cfg)
    model_dir, tokenizer, encoder = open_tokenizer(config)
    # Open every file and check its columns before reading any rows.
    readers = {}
    tables = tables or {}
    for split, path in (("train", cfg.train_file), ("valid", cfg.valid_file), ("test", cfg.test_file)):
        if split in tables or path:
            raw = RawFile(tables[split] if split in tables else locate(path, cfg.format), cfg, split)
            readers[split] = RowReader(raw, cfg, need_labels=split != "test")
    regression = cfg.task == "regression"
    multi_label = not regression and bool(cfg.label_columns or cfg.label_delimiter)
    started = time.time()
    print(f"data_process: scanning {', '.join(f'{s}={r.raw.path.name}' for s, r in readers.items())}", flush=True)
    scans, label_names = scan_files(cfg, readers, multi_label)
    label_index = {name: i for i, name in enumerate(label_names)}

    total = sum(s["rows"] for s in scans.values())
    meta = dict(
        format_version=FORMAT_VERSION,
        name=cfg.name,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        model_name=config.model.name,
        tokenizer=dict(dir=str(model_dir), class_name=type(tokenizer).__name__, vocab_sha256=vocab_hash(tokenizer),
                       vocab_size=len(tokenizer), pad_token_id=encoder.pad_id),
        max_len=cfg.max_len,
        truncation=cfg.truncation,
        head_tokens=encoder.head_tokens if cfg.truncation == "head_tail" else None,
        windows=dict(stride=cfg.window_stride, max_windows=cfg.max_windows, aggregate=cfg.window_aggregate)
        if cfg.window_stride else None,
        text_columns=list(reader_columns(readers["train"], cfg)),
        template=cfg.template,
        template_truncate=cfg.template_truncate,
        text_pair_column=cfg.text_pair_column,
        problem_type="regression" if regression else "multi_label" if multi_label else "single_label",
        label_names=label_names,
        splits={},
    )
    remove_dead_temporaries(out.parent)  # what a killed data_process.py left
    with atomic_dir(out, replace=cfg.overwrite) as tmp:
        write_marker(tmp, "data")
        with tqdm(total=total, desc="tokenize", unit="rows", mininterval=1.0) as progress:
            for split, reader in readers.items():
                meta["splits"][split] = _write_split(tmp / split, reader, cfg, scans[split], encoder, label_index,
                                                     multi_label, progress)
        if regression:  # what training standardises the targets with: the train split's mean and std
            meta["target_stats"] = {name: dict(mean=s["mean"], std=s["std"])
                                    for name, s in meta["splits"]["train"]["target_stats"].items()}
        if "valid" in readers:
            meta["folds"] = dict(mode="valid_file", n_folds=1, seed=cfg.seed)
        else:
            meta["folds"] = write_folds(tmp, cfg, scans["train"])
        meta["config"] = config.to_dict()
        write_json(tmp / "meta.json", meta)
        atomic_write_text(tmp / "config.yaml", config.to_yaml())
    elapsed = time.time() - started
    for split, entry in meta["splits"].items():
        dropped = f", dropped {entry['dropped_empty']} empty" if entry["dropped_empty"] else ""
        print(f"  {split}: {entry['rows']} rows{dropped}, width {entry['padded_width']}, "
              f"mean length {entry['length_stats']['mean']}, {cut_text(entry['length_stats'])}", flush=True)
    what = f"{len(label_names)} numeric target(s)" if regression else f"{len(label_names)} labels"
    print(f"data_process: wrote {out} ({what}, {total} rows, {elapsed:.1f}s)", flush=True)
    return out


def process_tables(train, config=None, valid=None, test=None, overrides=()):
    """data_process from Python: `train`, `valid`, `test` each a pandas DataFrame, a pyarrow Table or a
    file path; `config` a YAML path, a Config, or None (the defaults); `overrides` "key=value" strings
    or a {key: value} dict, as on the command line (data.name is needed without a config file).
    The tables go through the same checks as a file. Returns the output folder."""
    if isinstance(overrides, dict):
        overrides = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()]
    given = {"train": train, "valid": valid, "test": test}
    for split, value in given.items():
        if not (value is None or is_table(value) or isinstance(value, (str, os.PathLike))):
            raise UserError(f"textclf.process: {split} is a {type(value).__name__}; pass a pandas DataFrame, a pyarrow "
                            f"Table or a file path (a Series: series.to_frame('text'))")
    tables = {split: v for split, v in given.items() if is_table(v)}
    files = [f"data.{split}_file={v}" for split, v in given.items() if v is not None and split not in tables]
    # a table's split is named in the config (its file setting), so the config's own checks see it
    placeholders = [f"data.{split}_file=<{split} table>" for split in tables]
    if isinstance(config, Config):
        config = with_overrides(config, [*files, *placeholders, *overrides])
    else:
        argv = ["--config", str(config)] if config is not None else []
        config = parse_args([*argv, *files, *placeholders, *list(overrides)], prog="textclf.process")
    return process(config, tables)


def output_folder(cfg):
    """models_input_files/<data.name>: a new folder, or one data_process.py made (data.overwrite)."""
    if not cfg.name:
        raise UserError("data.name is not set; pass data.name=<name> (outputs go to models_input_files/<name>)")
    if not cfg.train_file:
        raise UserError("data.train_file is not set; pass data.train_file=path/to/train.csv")
    out = resolve_path(cfg.output_dir) / cfg.name
    if out.is_symlink() and not out.exists():
        raise UserError(f"{out} is a symbolic link to a missing folder; remove the link, or choose another data.name")
    if out.exists() and not cfg.overwrite:
        raise UserError(f"{out} already exists; choose another data.name or set data.overwrite=true to replace it")
    if out.exists() and not made_by_textclf(out, "data"):
        raise UserError(f"{out} exists and was not made by data_process.py, so data.overwrite=true will not replace "
                        f"it; choose another data.name, or move it away yourself")
    return out


def open_tokenizer(config):
    """(model folder, its tokenizer, the TextTokenizer that cuts rows as data.* says), checked
    against the model's longest input."""
    cfg = config.data
    # The tokenizer's own threads do most of the work here (tests and forked workers turn them off).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    model_dir = resolve_model_dir(config.model.name, config.model.premodels_dir, config.model.trust_remote_code)
    limit = model_max_positions(model_dir)
    if limit and cfg.max_len > limit:
        raise UserError(f"data.max_len={cfg.max_len} is above the limit of model '{config.model.name}' ({limit}); "
                        f"set data.max_len={limit} or less")
    tokenizer = load_tokenizer(model_dir, config.model.trust_remote_code)
    encoder = TextTokenizer.from_hf(tokenizer, cfg.max_len, cfg.truncation, cfg.head_tokens, template=cfg.template,
                                    template_cut=cfg.template_truncate)
    if cfg.template and prompts.fixed_tokens(encoder.backend, cfg.template) >= encoder.text_budget:
        raise UserError(f"data.template's own text takes {prompts.fixed_tokens(encoder.backend, cfg.template)} tokens "
                        f"and data.max_len={cfg.max_len} leaves {encoder.text_budget} for a row, no room for its "
                        f"fields; raise data.max_len or shorten the template")
    if cfg.window_stride > encoder.text_budget:
        raise UserError(f"data.window_stride={cfg.window_stride} is more than a window's {encoder.text_budget} text "
                        f"tokens (data.max_len={cfg.max_len} less special tokens), so tokens between windows would be "
                        f"skipped; use a stride of at most {encoder.text_budget}")
    return model_dir, tokenizer, encoder


def scan_files(cfg, readers, multi_label):
    """Pass 1 over every file (rawdata.scan_rows), then what the train file decides: the labels and
    the folds it gives. Returns ({split: scan}, label names)."""
    scans = {}
    known = set(cfg.labels) if cfg.labels and not cfg.label_columns else None
    scans["train"] = scan_rows(readers["train"], cfg, "train", known)
    label_names = _decide_labels(cfg, scans["train"]["counts"], multi_label)
    if cfg.task == "regression":
        check_targets_vary(readers["train"], label_names, scans["train"]["targets"])
    elif len(label_names) < 2:
        how = (f" (data.label_delimiter={cfg.label_delimiter!r} splits none of its label cells: is that the "
               f"delimiter they use?)" if cfg.label_delimiter else "")
        raise UserError(f"train file {readers['train'].raw.path} has only one label ({', '.join(label_names)}){how}; "
                        f"a classifier needs at least two")
    elif not multi_label:
        warn_label_lists(label_names, readers["train"].raw.path)
    clashes = [] if cfg.task == "regression" else same_number_labels(label_names)
    if clashes:
        a, b = clashes[0]
        raise UserError(f"labels '{a}' and '{b}' in {readers['train'].raw.path} are the same number written two ways; "
                        f"write each label one way (textclf keeps label names as written)")
    if scans["train"]["groups"] is not None:  # first: the group count bounds the folds more tightly than the rows
        check_group_count(scans["train"]["groups"], cfg)
    train_rows = scans["train"]["rows"]
    if cfg.n_folds > train_rows:
        raise UserError(f"data.n_folds={cfg.n_folds} but the train file has {train_rows} rows; every fold needs rows: "
                        f"use at most {train_rows} folds")
    if scans["train"]["given_folds"] is not None:  # checked now, before anything is written
        given_folds(scans["train"]["given_folds"], cfg, readers["train"].raw.path)
    for split in ("valid", "test"):
        if split in readers:
            scans[split] = scan_rows(readers[split], cfg, split, set(label_names))
            check_not_train_rows(scans, split, readers)
    return scans, label_names


def warn_label_lists(label_names, path):
    """Single-label names that read as lists of other labels ('a;b' beside 'a' and 'b') are likely
    multi-label data read without data.label_delimiter: each list would be a class of its own."""
    for delimiter in (";", "|", ",", "/"):
        parts = {name: [p.strip() for p in name.split(delimiter)] for name in label_names if delimiter in name}
        # a part is a label when it is one, or when several lists hold it
        singles = set(label_names) | {p for ps in parts.values() for p in ps
                                      if sum(p in qs for qs in parts.values()) > 1}
        lists = [name for name, ps in parts.items() if all(p in singles for p in ps)]
        if lists:
            print(f"data_process: warning: {len(lists)} label(s) of {path.name} read as lists of other labels (e.g. "
                  f"{lists[0]!r}), each now a class of its own; for multi-label data set "
                  f"data.label_delimiter={delimiter!r}", flush=True)
            return


def check_not_train_rows(scans, split, readers):
    """A valid or test file that is the train file (or a copy) would score memorised rows: refused.
    Some repeated texts are counted, warned about and kept in meta.json (texts_in_train)."""
    scan = scans[split]
    repeated = int(np.isin(scan["texts"], scans["train"]["texts"]).sum())
    scan["texts_in_train"] = repeated
    path = readers[split].raw.path
    # a valid file of training rows scores memorised rows; a test file is refused only when it is the train
    # file (or most of it): a few training texts predicted on purpose are a warning. Texts are compared
    # with spacing and case aside (rawdata.scan_rows).
    copy = split == "valid" or float(np.isin(scans["train"]["texts"], scan["texts"]).mean()) >= 0.5
    if repeated == scan["rows"] and copy:
        use = ("drop data.valid_file to hold out part of train" if split == "valid" else
               "predict the training rows with evaluate.py eval.splits=[train] instead")
        raise UserError(f"every row of the {split} file {path} is also a row of the train file (the same text, "
                        f"spacing and case aside), so its scores would be those of rows the model trained on; give a "
                        f"{split} file of other rows, or {use}")
    if repeated:
        print(f"data_process: warning: {repeated} of {scan['rows']} rows of the {split} file {path.name} repeat a text "
              f"of the train file; their scores flatter the model (meta.json splits.{split}.texts_in_train)",
              flush=True)


def cut_text(stats):
    """What max_len did to a split's texts, as data_process prints it."""
    if "texts_in_several_windows" in stats:
        read = f"{stats['texts_in_several_windows']} text(s) read as several windows"
        if not stats["truncated_rows"]:
            return read + " (none truncated)"
        return (read + f"; {stats['truncated_rows']} lost tokens between the windows data.max_windows keeps (by "
                f"{stats['cut_tokens']['mean']:g} on average, {stats['cut_tokens']['max']} at most)")
    if not stats["truncated_rows"]:
        return "none truncated"
    where = " inside the template's fields" if stats.get("cut_inside_template_fields") else ""
    return (f"truncated {stats['truncated_rows']}{where} (by {stats['cut_tokens']['mean']:g} tokens on average, "
            f"{stats['cut_tokens']['max']} at most)")


def write_folds(tmp, cfg, scan):
    """train/folds.npy: the given folds (data.fold_column), group folds (data.group_column) or
    stratified folds drawn with data.seed; returns meta.json's "folds" entry."""
    labels = np.load(tmp / "train" / "labels.npy", mmap_mode="r")
    extra = {}
    if scan["given_folds"] is not None:
        folds = scan["given_folds"]
        n_folds = given_folds(folds, cfg, cfg.train_file)
        extra = dict(source="fold_column", fold_column=cfg.fold_column)
    elif scan["groups"] is not None:
        folds, n_groups = group_folds(labels, scan["groups"], cfg.n_folds, cfg.valid_size, cfg.seed)
        n_folds = max(cfg.n_folds, 1)
        extra = dict(source="group_column", group_column=cfg.group_column, groups=n_groups)
    else:
        folds = assign_folds(labels, cfg.n_folds, cfg.valid_size, cfg.seed)
        n_folds = max(cfg.n_folds, 1)
        extra = dict(source="drawn")
    check_folds_not_label(folds, labels, cfg, n_folds, extra["source"])
    held_out = int((folds == 0).sum())
    if extra["source"] == "group_column" and n_folds == 1 and abs(held_out / len(folds) - cfg.valid_size) > \
            cfg.valid_size / 2:
        print(f"data_process: warning: data.valid_size={cfg.valid_size:g} asks for {cfg.valid_size:.0%} of the rows; "
              f"whole groups of '{cfg.group_column}' hold out {held_out} of {len(folds)} "
              f"({held_out / len(folds):.0%}): "
              f"the groups are few or uneven (use data.n_folds for K group folds)", flush=True)
    if held_out == 0 or (n_folds == 1 and held_out == len(folds)):
        raise UserError(f"data.valid_size={cfg.valid_size} holds out {held_out} of {len(folds)} train rows; a "
                        f"validation split needs rows on both sides: add rows, change data.valid_size, or "
                        f"give data.valid_file")
    np.save(tmp / "train" / "folds.npy", folds)
    mode = "kfold" if n_folds >= 2 else "holdout"
    return dict(mode=mode, n_folds=n_folds, seed=cfg.seed,
                valid_size=cfg.valid_size if mode == "holdout" and extra["source"] != "fold_column" else None,
                sizes=[int((folds == k).sum()) for k in range(n_folds)], **extra)


def check_folds_not_label(folds, labels, cfg, n_folds, source):
    """Folds that follow the label (a fold or group column that is the label by another name) hold
    out whole classes: a validation fold scores classes its training rows never show. Refused when
    every fold scores only such classes; a warning when some fold holds a class out whole."""
    if source == "drawn" or cfg.task == "regression" or labels.ndim != 1:
        return
    unseen = []  # per fold: (held-out classes, those its training rows lack)
    for k in range(n_folds):
        held = set(np.unique(labels[folds == k]).tolist())
        unseen.append((held, held - set(np.unique(labels[folds != k]).tolist())))
    column = cfg.fold_column or cfg.group_column
    key_name = "data.fold_column" if cfg.fold_column else "data.group_column"
    if all(held and held == lacks for held, lacks in unseen):
        what = "every fold holds out" if n_folds >= 2 else "the held-out rows hold"
        raise UserError(f"{key_name} '{column}' follows the label: {what} only classes its training rows never "
                        f"show, so validation scores classes training never sees; name another column, or drop "
                        f"{key_name} for folds stratified by label")
    whole = [(k, sorted(lacks)) for k, (held, lacks) in enumerate(unseen)
             if any(np.count_nonzero((folds == k) & (labels == c)) > 1 for c in lacks)]
    if whole:
        print(f"data_process: warning: {key_name} '{column}' holds {len(whole)} fold(s) whose training rows lack a "
              f"class they score (fold {whole[0][0]}: class number(s) {whole[0][1][:5]}); those classes are scored "
              f"but never learnt there", flush=True)


def reader_columns(reader, cfg):
    """The columns the text comes from: data.template's fields, or data.text_columns."""
    return reader.template_fields if reader.template_fields is not None else cfg.text_columns


def check_targets_vary(reader, names, targets):
    """A regression target with one value on every train row cannot be learned (nor standardised);
    labels.npy holds float32, so values that differ only below float32's precision are one value
    there (all of them: refused; some: a warning)."""
    for name, column in zip(names, targets.T):
        exact, stored = np.unique(column), np.unique(column.astype(np.float32))
        low, high = column.min(), column.max()
        shift = f"subtract an offset (e.g. {low:.10g}) or rescale the column, and predict that"
        if len(stored) == 1:
            if len(exact) == 1:
                raise UserError(f"train file {reader.raw.path}: target '{name}' is {low:g} on every row; a regression "
                                f"target must vary: check data.label_column / data.label_columns")
            raise UserError(f"train file {reader.raw.path}: target '{name}' varies only from {low:.10g} to "
                            f"{high:.10g}, which float32 (labels.npy) holds as one value; {shift}")
        if len(stored) < len(exact):
            print(f"data_process: warning: target '{name}' has {len(exact)} distinct values but float32 (labels.npy) "
                  f"holds {len(stored)}: differences below float32's precision are lost; {shift}", flush=True)
