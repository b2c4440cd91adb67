"""Pseudo-labelling: confident predictions on unlabelled rows become training rows.

    python -m textclf.pseudo --config configs/x.yaml data.name=x pseudo.name=x-pseudo \\
        pseudo.predictions='[model_predictions/a, model_predictions/b]' pseudo.threshold=0.95
    python -m textclf.pseudo ... pseudo.predictions='[submissions/blend.json]' pseudo.top_k=500
    python -m textclf.pseudo ... pseudo.threshold=0.95 pseudo.per_fold=true    # K-fold without the leak

Reads the test split of models_input_files/<data.name> (the unlabelled rows, tokenized by
data_process.py), the prediction sets made on exactly those rows (blended by their mean, or as
an ensemble_and_submit.py summary blended them), keeps the confident rows and writes
models_input_files/<pseudo.name>/: the same folder with the kept rows appended to train.

Leak guards, so that scores stay honest:
  - pseudo rows get fold -1: they train every fold and are never a fold's validation rows, so
    out-of-fold scores (and the blend tuned on them) are computed on original rows only;
  - their ids are the test ids with pseudo.id_prefix, refused if one meets a train id;
  - the labels come only from the predictions; a labelled test split's labels are never read
    into training (they score the pseudo labels in pseudo.json, nothing else);
  - a source that is itself pseudo-labelled keeps only its original rows: a new round replaces
    the earlier round's rows instead of stacking them;
  - pseudo.per_fold=true closes the one leak left in K-fold: by default the pseudo labels are the
    blend of every fold's model, and the models of folds j != k trained on fold k's rows, so fold
    k's model learns from labels that its validation rows helped to make and its out-of-fold score
    leans optimistic. With per_fold, fold k's pseudo rows are chosen and labelled by the sets'
    fold-k models alone (which never saw fold k's rows) and train fold k only
    (train/only_fold.npy); the data each set's run trained on is checked: no fold-k model saw
    this data's fold-k rows, nor pseudo rows labelled by every fold's models together.
train/origin.npy (0 original, 1 pseudo) and train/source_row.npy (the row's number in the source
train split, or in its test split) say where every row came from (with per_fold, a test row can
be a pseudo row of several folds: one row each, id <prefix>fold<k>:<id>); pseudo.json (also under
"pseudo" in meta.json) records the prediction sets with their hashes, the blend, the rule and
what it kept. Runs on the new folder predict the same test rows as before, so their test scores
are transductive (the test texts were trained on, with predicted labels).
"""

import dataclasses
import datetime
import json
import shutil
from pathlib import Path

import numpy as np

from .config import parse_args, resolve_path
from .datadir import load_meta
from .errors import UserError, run_cli
from .fileio import (atomic_dir, atomic_write_text, ids_sha256, made_by_textclf, remove_dead_temporaries,
                     sha256_file, write_json, write_marker)
from .loader import Windows
from .calibration import apply as apply_temperature
from .predsets import blend, check_sets, load_array, normalise, read_blend
from .problem import problem_type

ARRAYS = ("input_ids", "attention_mask", "token_type_ids")


def select(probs, problem, threshold, top_k, thresholds=None):
    """(kept row numbers in row order, their labels, their confidence). Labels as the submission
    decides them (argmax; multi-label 0.5 per class; or the blend's tuned `thresholds`);
    confidence: the probability of the label chosen, for multi-label the least certain class's
    (p where the class is on, 1 - p where it is off)."""
    labels = problem.decide(probs, thresholds)  # a binary threshold or per-class ones tuned on the OOF rows
    if problem.multi_label:
        labels = labels.astype(np.uint8)
        confidence = np.where(labels == 1, probs, 1 - probs).min(axis=1)
    else:
        labels = labels.astype(np.int64)
        confidence = probs[np.arange(len(probs)), labels]
    keep = confidence >= threshold
    if top_k:
        limited = np.zeros_like(keep)
        for c in np.unique(labels[keep]):
            rows = np.flatnonzero(keep & (labels == c))
            order = rows[np.argsort(-confidence[rows], kind="stable")]  # most confident first, ties in row order
            limited[order[:top_k]] = True
        keep = limited
    rows = np.flatnonzero(keep)
    return rows, labels[rows], confidence[rows]


def check_inputs(cfg, meta, source_dir, sets):
    """The prediction sets must label exactly this folder's test rows, with its labels."""
    manifest = sets[0][1]
    problem = manifest["problem_type"]
    if problem_type(problem).regression or problem_type(meta["problem_type"]).regression:
        which = (f"{sets[0][0]} holds regression predictions" if problem_type(problem).regression else
                 f"data.name={meta['name']} is regression data")
        raise UserError(f"pseudo-labelling keeps confident class predictions, and {which}: numbers have no "
                        f"confidence to threshold; pseudo-label class data with its own predictions")
    if "test" not in meta["splits"]:
        raise UserError(f"{source_dir} has no test split: run data_process.py with data.test_file=<the unlabelled "
                        f"rows> (and another data.name), predict it with evaluate.py, then pseudo-label")
    if manifest["label_names"] != meta["label_names"]:
        raise UserError(f"{sets[0][0]} predicts labels {manifest['label_names']}, {source_dir} has "
                        f"{meta['label_names']}; pseudo-label with predictions of this data's labels")
    if problem_type(problem).multi_label != problem_type(meta["problem_type"]).multi_label:
        raise UserError(f"{sets[0][0]} is {problem}, {source_dir} is {meta['problem_type']}; pseudo-label with "
                        f"predictions of the same problem")
    ids = np.load(source_dir / "test" / "ids.npy")
    want = ids_sha256(ids)
    for folder, m in sets:
        entry = m["splits"].get("test")
        if entry is None:
            raise UserError(f"{folder} has no test predictions; predict "
                            f"data.name={meta['name']}'s test split with evaluate.py eval.run=<run> "
                            f"eval.data={meta['name']} eval.splits=[test], and pseudo-label with that set")
        if entry["ids_sha256"] != want or entry.get("source_sha256") != meta["splits"]["test"]["source_sha256"]:
            raise UserError(f"{folder} predicted other test rows than {source_dir}'s (ids, order or file differ); "
                            f"pseudo-label with predictions of data.name={meta['name']}'s test split")
    if cfg.threshold <= 0 and cfg.top_k <= 0:
        raise UserError("pseudo.threshold and pseudo.top_k are both unset, which would keep every test row; set "
                        "pseudo.threshold (e.g. 0.95) or pseudo.top_k (rows per class)")
    if cfg.top_k and problem_type(problem).multi_label:
        raise UserError("pseudo.top_k picks rows per predicted class; a multi-label row has several: use "
                        "pseudo.threshold for multi-label data")
    return ids


@dataclasses.dataclass
class PseudoRows:
    """The rows a round adds to train: test rows in groups (one that trains every fold, or with
    pseudo.per_fold one per fold, labelled by the sets' models of that fold only)."""

    groups: list  # [(fold or -1, blended probs, kept test rows, their labels, their confidence)]
    ids: np.ndarray  # the prefixed ids, group after group

    def rows(self):
        return np.concatenate([g[2] for g in self.groups])

    def labels(self):
        return np.concatenate([g[3] for g in self.groups])

    def only_fold(self, per_fold):
        """The fold each row trains (train/only_fold.npy), or None when they train every fold."""
        return np.concatenate([np.full(len(g[2]), g[0], np.int16) for g in self.groups]) if per_fold else None


def run(config):
    cfg = config.pseudo
    source_dir, out, meta = check_names(config)
    sets, weights, method, source = read_blend(cfg.predictions, "pseudo.predictions")
    check_sets(sets, "test")
    test_ids = check_inputs(cfg, meta, source_dir, sets)
    problem = problem_type(sets[0][1]["problem_type"])
    thresholds = source.get("thresholds")
    want = len(sets[0][1]["label_names"]) if problem.multi_label else 1
    if thresholds is not None and len(np.atleast_1d(thresholds)) != want:
        raise UserError(f"{source['summary']}: {len(np.atleast_1d(thresholds))} threshold(s) for a "
                        f"{problem.name} blend, which takes {want}; pass the .json that ensemble_and_submit.py wrote "
                        f"beside its submission")
    if thresholds is not None and not problem.multi_label:
        source["thresholds"] = float(np.atleast_1d(thresholds)[0])

    train = source_dir / "train"
    original = np.arange(meta["splits"]["train"]["rows"])
    previous = None
    if (train / "origin.npy").is_file():  # a pseudo-labelled source: a new round replaces its rows
        previous = meta.get("pseudo", {}).get("rows")
        original = np.flatnonzero(np.load(train / "origin.npy") == 0)
    train_ids = np.load(train / "ids.npy")[original]

    folds = check_fold_models(sets, meta, source_dir, train_ids, original) if cfg.per_fold else [-1]
    chosen = choose_rows(cfg, sets, (weights, method, source), problem, folds, test_ids)
    clash = np.intersect1d(train_ids.astype(str), chosen.ids)
    if len(clash):
        raise UserError(f"pseudo row id '{clash[0]}' is also a train id; choose another pseudo.id_prefix")

    rows, labels = chosen.rows(), chosen.labels()
    confidence = np.concatenate([g[4] for g in chosen.groups])
    manifest = dict(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        source_data=str(source_dir), source_meta_sha256=sha256_file(source_dir / "meta.json"),
        predictions=[dict(path=str(f), manifest_sha256=sha256_file(f / "manifest.json"),
                          run=m.get("run"), test_ids_sha256=m["splits"]["test"]["ids_sha256"]) for f, m in sets],
        blend=dict(method=method, weights=(weights / weights.sum()).tolist(), **source),
        rule=dict(threshold=cfg.threshold, top_k=cfg.top_k, per_fold=cfg.per_fold), id_prefix=cfg.id_prefix,
        rows=int(len(rows)), of_test_rows=int(len(test_ids)), original_rows=int(len(original)),
        replaced_previous_round=previous, **describe(rows, labels, confidence, meta, source_dir, problem),
    )
    if cfg.per_fold:
        manifest["folds"] = [dict(fold=int(fold), **describe(kept, y, c, meta, source_dir, problem))
                             for fold, _, kept, y, c in chosen.groups]
    write_folder(out, cfg, meta, source_dir, original, chosen, manifest)
    accuracy = manifest.get("label_accuracy_on_labelled_test")
    print(f"pseudo: kept {len(rows)} of {len(test_ids)} test rows" + (f" over {len(folds)} folds" if cfg.per_fold else "")
          + f" (confidence >= {confidence.min():.4f}; " + ", ".join(f"{k} {v}" for k, v in manifest["label_counts"].items())
          + ")" + (f"; their labels agree with the test labels on {accuracy:.4f}" if accuracy is not None else ""),
          flush=True)
    where = ("each trains only the fold whose models labelled it, and " if cfg.per_fold else "")
    print(f"pseudo: wrote {out} ({len(original)} original + {len(rows)} pseudo train rows; {where}pseudo rows are in "
          f"no fold's validation)", flush=True)
    return out


def check_names(config):
    """The source folder, the folder to write and the source's meta.json, checked: (source, out, meta)."""
    cfg = config.pseudo
    if not cfg.name:
        raise UserError("pseudo.name is not set; pass pseudo.name=<name> (the new folder beside data.name's)")
    if not config.data.name:
        raise UserError("data.name is not set; pass data.name=<the folder whose test rows were predicted>")
    if not cfg.predictions:
        raise UserError("pseudo.predictions is empty; pass model_predictions/<run> folders or one "
                        "submissions/<name>.json")
    root = resolve_path(config.data.output_dir)
    source_dir, out = root / config.data.name, root / cfg.name
    if out == source_dir:
        raise UserError(f"pseudo.name={cfg.name} is data.name; write the pseudo-labelled input under another name")
    meta = load_meta(source_dir)
    if out.exists() and not (cfg.overwrite and made_by_textclf(out, "data")):
        raise UserError(f"{out} already exists; choose another pseudo.name" + (
            " (it was not made by textclf, so pseudo.overwrite=true will not replace it)" if cfg.overwrite
            else " or set pseudo.overwrite=true to replace it"))
    return source_dir, out, meta


def choose_rows(cfg, sets, how, problem, folds, test_ids):
    """The confident test rows of each group (fold -1: every fold; else that fold's models only),
    blended as `how` (weights, method, source) says; refused when no row is kept."""
    weights, method, source = how
    groups = []
    for fold in folds:
        name = "probs.npy" if fold < 0 else f"fold{fold}.npy"
        members = [load_array(folder, m, "test", name) for folder, m in sets]
        probs = apply_temperature(normalise(blend(members, weights, method), problem), source.get("temperature", 1.0),
                                  problem)  # the blend's calibration, as its submission has it
        groups.append((fold, probs, *select(probs, problem, cfg.threshold, cfg.top_k, source.get("thresholds"))))
    if not sum(len(g[2]) for g in groups):
        best = max(float(select(g[1], problem, 0.0, 0, source.get("thresholds"))[2].max()) for g in groups)
        raise UserError(f"no test row reaches pseudo.threshold={cfg.threshold} (the most confident is {best:.4f}); "
                        f"lower the threshold or use pseudo.top_k")
    ids = np.array([cfg.id_prefix + ("" if fold < 0 else f"fold{fold}:") + str(i)
                    for fold, _, kept, _, _ in groups for i in test_ids[kept]])
    return PseudoRows(groups, ids)


def describe(rows, labels, confidence, meta, source_dir, problem):
    """Counts, confidence and, where the test split is labelled, how right the pseudo labels are
    (the test labels are read for this only; never written into training)."""
    out = dict(confidence=dict(min=float(confidence.min()), mean=float(confidence.mean())) if len(rows) else None,
               label_counts=count_labels(labels, meta["label_names"], problem))
    if meta["splits"]["test"]["labelled"] and len(rows):
        truth = np.load(source_dir / "test" / "labels.npy")[rows]
        out["label_accuracy_on_labelled_test"] = float(
            (truth == labels).all(axis=1).mean() if problem.multi_label else (truth == labels).mean())
    return out


def check_fold_models(sets, meta, source_dir, train_ids, original):
    """pseudo.per_fold: every set must hold test predictions of one model per fold of this data,
    and its fold-k model must never have trained on this data's fold-k validation rows, nor on
    pseudo rows labelled by models that did (a run on a pseudo folder made without per_fold).
    Checked on the data folder each set's run trained on. Returns the folds."""
    n_folds = meta["folds"]["n_folds"]
    fix = ("pseudo.per_fold needs prediction sets of runs trained on every fold of this data (train.folds=all), or "
           "of a pseudo folder made from it with pseudo.per_fold, evaluated on its test split; or leave "
           "pseudo.per_fold off")
    valid_file = meta["folds"]["mode"] == "valid_file"
    if valid_file:  # one model, validated on the valid file
        held = [np.load(source_dir / "valid" / "ids.npy").astype(str)]
    else:
        folds = np.load(source_dir / "train" / "folds.npy")[original]
        held = [train_ids[folds == k].astype(str) for k in range(n_folds)]
    for folder, manifest in sets:
        have = manifest["splits"]["test"].get("folds")
        if sorted(have or []) != list(range(n_folds)) or not all(
                (folder / "test" / f"fold{k}.npy").is_file() for k in range(n_folds)):
            raise UserError(f"{folder} predicted the test rows with fold(s) {have}, {source_dir} has folds "
                            f"0..{n_folds - 1}; {fix}")
        run_data = Path(manifest.get("data_dir", ""))
        if not (run_data / "meta.json").is_file() or sha256_file(run_data / "meta.json") != manifest.get(
                "trained_on_meta_sha256"):
            raise UserError(f"the data folder {folder}'s run trained on ({run_data}) is gone or was made again, so "
                            f"what its fold models saw cannot be checked; {fix}")
        run_meta = load_meta(run_data)
        if run_meta.get("pseudo") and not run_meta["pseudo"].get("rule", {}).get("per_fold"):
            raise UserError(f"{folder}'s run trained on {run_data}, whose pseudo rows were labelled by every fold's "
                            f"models together, so its fold-k model learnt from labels made with fold k's rows; {fix}")
        ids = np.load(run_data / "train" / "ids.npy").astype(str)
        only = run_data / "train" / "only_fold.npy"
        only = np.load(only) if only.is_file() else np.full(len(ids), -1)
        run_folds = None if run_meta["folds"]["mode"] == "valid_file" else np.load(run_data / "train" / "folds.npy")
        for k in range(n_folds):
            trained = (only == -1) | (only == k)
            if run_folds is not None:
                trained &= run_folds != k
            seen = np.intersect1d(ids[trained], held[k])
            if len(seen):
                what = "validation rows" if valid_file else f"fold {k}'s rows"
                raise UserError(f"{folder}'s fold-{k} model trained on {len(seen)} of {source_dir}'s {what} "
                                f"(e.g. id '{seen[0]}'), so its labels are not independent of them; {fix}")
    return list(range(n_folds))


def count_labels(labels, names, problem):
    if problem.multi_label:
        return {name: int(labels[:, j].sum()) for j, name in enumerate(names)}
    return {name: int((labels == j).sum()) for j, name in enumerate(names)}


def _pad(block, width, value):
    if block.shape[1] >= width:
        return block
    return np.pad(block, ((0, 0), (0, width - block.shape[1])), constant_values=value)


def write_folder(out, cfg, meta, source_dir, original, chosen, manifest):
    """The source folder with the pseudo rows appended to train, written beside it atomically:
    `chosen` (PseudoRows) holds test row numbers group after group (with pseudo.per_fold one group
    per fold, a test row possibly in several), their ids and labels."""
    groups, pseudo_ids, labels = [g[2] for g in chosen.groups], chosen.ids, chosen.labels()
    only_fold = chosen.only_fold(cfg.per_fold)
    train, test = source_dir / "train", source_dir / "test"
    pad = {"input_ids": meta["tokenizer"]["pad_token_id"], "attention_mask": 0, "token_type_ids": 0}
    width = max(meta["splits"]["train"]["padded_width"], meta["splits"]["test"]["padded_width"])
    remove_dead_temporaries(out.parent)
    with atomic_dir(out, replace=out.exists()) as tmp:
        write_marker(tmp, "data")
        for split in meta["splits"]:
            if split != "train":
                shutil.copytree(source_dir / split, tmp / split)
        folder = tmp / "train"
        folder.mkdir()
        # token rows: the texts' own, or with sliding windows each text's windows
        train_windows, test_windows = Windows(train), Windows(test)
        train_rows, train_owner = train_windows.rows(original)
        parts, offset = [], 0
        for group in groups:
            part_rows, part_owner = test_windows.rows(group)
            parts.append((part_rows, part_owner + offset))
            offset += len(group)
        test_rows, test_owner = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
        rows = np.concatenate(groups)
        for name in ARRAYS:
            a = _pad(np.load(train / f"{name}.npy", mmap_mode="r")[train_rows], width, pad[name])
            b = _pad(np.load(test / f"{name}.npy", mmap_mode="r")[test_rows], width, pad[name])
            np.save(folder / f"{name}.npy", np.concatenate([a, b]))
        lengths = np.concatenate([np.load(train / "lengths.npy")[train_rows], np.load(test / "lengths.npy")[test_rows]])
        np.save(folder / "lengths.npy", lengths)
        if train_windows.windowed:
            np.save(folder / "window_doc.npy", np.concatenate([train_owner, test_owner + len(original)]).astype(np.int32))
        np.save(folder / "ids.npy", np.concatenate([np.load(train / "ids.npy")[original].astype(str), pseudo_ids]))
        old_labels = np.load(train / "labels.npy")[original]
        np.save(folder / "labels.npy", np.concatenate([old_labels, labels.astype(old_labels.dtype)]))
        np.save(folder / "origin.npy", np.concatenate([np.zeros(len(original), np.int8), np.ones(len(rows), np.int8)]))
        np.save(folder / "source_row.npy", np.concatenate([original, rows]).astype(np.int64))
        if only_fold is not None:
            np.save(folder / "only_fold.npy", np.concatenate([np.full(len(original), -1, np.int16), only_fold]))
        if (train / "folds.npy").is_file():
            np.save(folder / "folds.npy", np.concatenate([np.load(train / "folds.npy")[original],
                                                          np.full(len(rows), -1, np.int16)]))
        new = json.loads(json.dumps(meta))
        new.update(name=cfg.name, created=manifest["created"], pseudo=manifest)
        new["config"]["data"]["name"] = cfg.name
        entry = new["splits"]["train"]
        if "windows" in entry:
            entry["windows"] = int(len(lengths))
        entry.update(rows=int(len(original) + len(rows)), padded_width=int(width), pseudo_rows=int(len(rows)),
                     source_sha256=sha256_text(entry["source_sha256"] + json.dumps(manifest, sort_keys=True)),
                     length_stats=dict(entry["length_stats"], min=int(lengths.min()),
                                       mean=round(float(lengths.mean()), 2), median=float(np.median(lengths)),
                                       p95=float(np.percentile(lengths, 95)), max=int(lengths.max())))
        if "label_counts" in entry:
            merged = np.concatenate([old_labels, labels.astype(old_labels.dtype)])
            entry["label_counts"] = count_labels(merged, meta["label_names"], problem_type(meta["problem_type"]))
        write_json(tmp / "pseudo.json", manifest)
        write_json(tmp / "meta.json", new)
        if (source_dir / "config.yaml").is_file():
            atomic_write_text(tmp / "config.yaml", (source_dir / "config.yaml").read_text(encoding="utf-8"))


def sha256_text(text):
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def main(argv):
    run(parse_args(argv, prog="python -m textclf.pseudo"))


if __name__ == "__main__":
    run_cli(main)
