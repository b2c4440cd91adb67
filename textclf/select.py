"""What to label next: a prediction set's unlabelled rows ranked by how unsure the model is of
them, the top k written as a file ready for labelling.

    python -m textclf.select --predictions model_predictions/r8 --k 100 --out to_label.csv
    python -m textclf.select --predictions model_predictions/r8 --k 100 --strategy margin \\
        --diversity kmeans --pool 1000 --out to_label.csv
    python -m textclf.select --predictions model_predictions/r8-texts --k 50 --out to_label.csv   # an eval.input set
    python -m textclf.select ... --exclude sent_last_week.csv   # leave out rows already sent for labelling

The rows are the set's test split (--split picks another of its splits), or the rows of an
eval.input set. Scores, higher = more worth a label, from each row's probabilities p over C
classes as the set holds them (the fold mean, calibrated as evaluate.py wrote it):
    least_confidence   1 - max_c p_c
    margin             1 - (p_(1) - p_(2))           p_(1) >= p_(2) the two highest: a near tie scores high
    entropy            -sum_c p_c ln p_c             (0 ln 0 = 0)
    disagreement       1/F sum_f KL(p_f || pbar) = H(pbar) - 1/F sum_f H(p_f): the F fold models' mutual
                       information, p_f fold f's probabilities (<split>/fold<f>.npy), pbar their mean
Multi-label: each class is a yes/no question answered with q_c; least_confidence max_c min(q_c, 1 - q_c),
margin 1 - min_c |2 q_c - 1|, entropy the mean binary entropy of the classes, disagreement the
folds' mean binary KL from their mean, averaged over the classes. Regression is refused: numbers
carry no probability to be unsure with. Ties keep row order.

Diversity (over the pooled vectors the head takes: the set's own embeddings when it was evaluated
with eval.embeddings=true, else those of the set's first fold model, Predictor.embed on the rows'
texts, read from the raw file): the --pool most uncertain rows (default 10 k) are
    kmeans    clustered into k (scikit-learn KMeans on unit-length vectors, --seed), and the most
              uncertain row of each cluster taken (an empty cluster's place goes to the next most
              uncertain row);
    coreset   covered greedily (k-center): each pick is the pool row farthest from every labelled
              row of the set (train/valid embeddings, where the set holds them) and every row picked
              so far; the first pick, without labelled rows, is the most uncertain.
The chosen rows are ranked by their score in every case.

The file (--out, a .csv) holds each chosen row with its columns as read from the raw file the set
was predicted from (data folder meta.json: source_file, its sha256 checked; an eval.input set: the
file it names, its ids checked against the set's), the label column(s) blank for the labeller,
then select_rank (1 = label first), select_score and select_guess (the current answer; multi-label:
the classes at q >= 0.5 joined by data.label_delimiter or '|'). Without data.id_column a
select_row column keeps each row's number in the raw file (its id there). Comma-separated, UTF-8,
with a header: processed by data_process.py as a test file (a blank label column is unlabelled)
and, its labels filled in, as a train file. The file is written whole or not at all, and an
existing file is replaced only with --overwrite and only if this command wrote it (its header
holds the select_ columns). --exclude takes a file of rows already sent for labelling: a .csv/.tsv
with the id column (or select_row), e.g. an earlier --out, or ids one per line.

A set made by eval.input holds the fold mean only (evaluate.py writes no per-fold probabilities
for it): disagreement is refused there; predict the rows as a split (data_process.py
data.test_file=<file>, then evaluate.py) to keep each fold's.
"""

import argparse
import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import yaml

from .config import DataConfig, resolve_path
from .datadir import load_meta
from .errors import UserError, first_line, run_cli
from .fileio import atomic_write_text, ids_sha256, load_json, sha256_file
from .predsets import load_array
from .problem import problem_type
from .rawdata import RawFile, RowReader, as_text, locate
from .tables import is_hub_name

STRATEGIES = ("least_confidence", "margin", "entropy", "disagreement")
DIVERSITY = ("none", "kmeans", "coreset")
COLUMNS = ("select_rank", "select_score", "select_guess")
ROW_COLUMN = "select_row"  # the row's number in the raw file, where the data has no id column
EPS = 1e-12


# ---------------------------------------------------------------------------- scores


def _entropy(p, axis=-1):
    p = np.clip(p, 0.0, 1.0)
    return -(p * np.log(np.clip(p, EPS, 1.0))).sum(axis=axis)


def _binary(q):
    """Multi-label probabilities (..., classes) as yes/no pairs (..., classes, 2)."""
    q = np.clip(q, 0.0, 1.0)
    return np.stack([1.0 - q, q], axis=-1)


def scores(probs, strategy, multi_label=False, fold_probs=None):
    """Each row's uncertainty under `strategy` (higher: more worth a label); probs (rows, classes),
    fold_probs (folds, rows, classes) for disagreement. The formulas are in the module docstring."""
    probs = np.asarray(probs, dtype=np.float64)
    if strategy == "disagreement":
        folds = np.asarray(fold_probs, dtype=np.float64)
        mean = folds.mean(axis=0)
        if multi_label:
            folds, mean = _binary(folds), _binary(mean)
        kl = (folds * (np.log(np.clip(folds, EPS, 1.0)) - np.log(np.clip(mean, EPS, 1.0)))).sum(axis=-1)
        kl = kl.mean(axis=0)  # over the folds
        return np.maximum(kl.mean(axis=-1) if multi_label else kl, 0.0)
    if multi_label:
        if strategy == "least_confidence":
            return np.minimum(probs, 1.0 - probs).max(axis=1)
        if strategy == "margin":
            return 1.0 - np.abs(2.0 * probs - 1.0).min(axis=1)
        return _entropy(_binary(probs)).mean(axis=1)
    if strategy == "least_confidence":
        return 1.0 - probs.max(axis=1)
    if strategy == "margin":
        top = np.sort(probs, axis=1)[:, ::-1]
        return 1.0 - (top[:, 0] - (top[:, 1] if probs.shape[1] > 1 else 0.0))
    return _entropy(probs)


def by_score(score, rows=None):
    """Row numbers (of `rows`, default all) most uncertain first; ties in row order."""
    rows = np.arange(len(score)) if rows is None else np.asarray(rows)
    return rows[np.argsort(-score[rows], kind="stable")]


# ---------------------------------------------------------------------------- diversity


def _unit(vectors):
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), EPS)


def kmeans_pick(vectors, score, k, seed):
    """Positions in the pool (vectors and score in pool order) of the most uncertain row of each
    of k KMeans clusters; places left by empty clusters go to the next most uncertain rows."""
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # repeated vectors: fewer distinct clusters than k, said below by the refill
        warnings.simplefilter("ignore", ConvergenceWarning)
        clusters = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(_unit(vectors))
    order = by_score(score)
    picked, seen = [], set()
    for i in order:
        if clusters[i] not in seen:
            seen.add(clusters[i])
            picked.append(i)
    chosen = set(picked)
    picked += [i for i in order if i not in chosen][:k - len(picked)]
    return np.asarray(picked[:k])


def coreset_pick(vectors, score, k, labelled=None):
    """Positions in the pool of a greedy k-center cover: each pick the row farthest (euclidean, unit
    vectors) from the labelled rows and the picks so far; the first, with no labelled rows, the most
    uncertain. Ties go to the more uncertain row."""
    order = by_score(score)
    pool = _unit(vectors)[order]  # most uncertain first, so argmax breaks ties towards them
    nearest = np.full(len(pool), np.inf)  # all inf: argmax takes the first, the most uncertain
    if labelled is not None and len(labelled):
        labelled = _unit(labelled)
        for start in range(0, len(labelled), 1024):  # |a - b|^2 = 2 - 2 a.b for unit vectors; (pool, 1024) at a time
            block = labelled[start:start + 1024]
            nearest = np.minimum(nearest, np.sqrt(np.maximum(2.0 - 2.0 * pool @ block.T, 0.0)).min(axis=1))
    picked = []
    for _ in range(k):
        i = int(np.argmax(nearest))
        picked.append(i)
        nearest = np.minimum(nearest, np.sqrt(np.maximum(2.0 - 2.0 * pool @ pool[i], 0.0)))
        nearest[picked] = -1.0  # never again
    return order[np.asarray(picked)]


# ---------------------------------------------------------------------------- the prediction set


@dataclasses.dataclass
class Rows:
    """The rows to rank, and where they came from."""

    folder: Path  # the prediction set
    manifest: dict
    what: str  # "test split", "input rows", ... for messages
    ids: np.ndarray  # (rows,) str
    probs: np.ndarray  # (rows, classes)
    raw_path: Path  # the raw file the rows were read from
    raw_role: str  # train | valid | test | input (how rawdata names it)
    data_cfg: DataConfig  # how that file is read
    split: str | None  # None for an eval.input set
    labelled: bool
    source_sha256: str | None  # the raw file's as data_process.py read it; None (eval.input): its ids are checked


def data_config(values):
    """A DataConfig from a recorded config's data section (keys this version does not know are left out)."""
    names = {f.name for f in dataclasses.fields(DataConfig)}
    return DataConfig(**{k: v for k, v in (values or {}).items() if k in names})


def open_rows(path, split):
    """The rows of a prediction set (a run's split, or an eval.input set) with their probabilities."""
    folder = resolve_path(path)
    if not folder.is_dir():
        raise UserError(f"--predictions {path}: no such folder; pass a model_predictions/<run> folder written by "
                        f"evaluate.py")
    fix = "run evaluate.py again for this run"
    manifest = load_json(folder / "manifest.json", "a prediction-set manifest", fix,
                         {"label_names": list, "problem_type": str})
    if "splits" not in manifest:
        return open_input_rows(folder, manifest, split)
    manifest = load_json(folder / "manifest.json", "a prediction-set manifest", fix,
                         {"label_names": list, "problem_type": str, "splits": dict, "data_dir": str})
    split = split or "test"
    have = [s for s in manifest["splits"] if s != "oof"]
    if split not in have:
        raise UserError(f"--split {split}: {folder} has no '{split}' split (its splits: {', '.join(have) or 'none'}); "
                        f"pass one of those, or evaluate that split (eval.splits=[{split}])")
    entry = manifest["splits"][split]
    data_dir = Path(manifest["data_dir"])
    if not (data_dir / "meta.json").is_file():
        raise UserError(f"the data folder {data_dir} that {folder} was predicted from is gone; the rows' raw file is "
                        f"found through its meta.json: make it again with data_process.py, or evaluate again")
    meta = load_meta(data_dir, arrays=False)
    source = meta["splits"].get(split, {})
    if source.get("source_sha256") != entry.get("source_sha256") or "source_file" not in source:
        raise UserError(f"{data_dir} was made again from another {split} file after {folder} was predicted; evaluate "
                        f"the run again on it, then select")
    ids = load_array(folder, manifest, split, "ids.npy").astype(str)
    probs = load_array(folder, manifest, split)
    return Rows(folder, manifest, f"{split} split", ids, probs, Path(source["source_file"]), split,
                data_config(meta.get("config", {}).get("data")), split, bool(source.get("labelled")),
                source["source_sha256"])


def open_input_rows(folder, manifest, split):
    """An eval.input set: predictions.csv / probs.npy of the rows of one raw file, read as the run's
    data was (its config.yaml), the ids checked against the set's."""
    if split:
        raise UserError(f"--split {split}: {folder} predicted the rows of one file (eval.input), it has no splits; "
                        f"leave --split out")
    if not manifest.get("input"):
        raise UserError(f"{folder} predicted texts given on the command line (eval.texts), not rows of a file; "
                        f"select from a set made with eval.input=<file> or from a run's split")
    fix = "run evaluate.py again with eval.input"
    try:
        probs = np.load(folder / "probs.npy", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"{folder / 'probs.npy'} cannot be read ({first_line(err)}); {fix}") from None
    ids = read_ids(folder)
    width = len(manifest["label_names"])
    if probs.ndim != 2 or probs.shape != (len(ids), width) or not np.isfinite(probs).all():
        raise UserError(f"{folder / 'probs.npy'} has shape {probs.shape} (or values that are not finite) for "
                        f"{len(ids)} rows and {width} labels; {fix}")
    run_config = Path(manifest.get("run", "")) / "config.yaml"
    if not run_config.is_file():
        raise UserError(f"the run {manifest.get('run')} that made {folder} is gone (no config.yaml): how its input "
                        f"file is read cannot be known; predict again with a run that is there")
    with open(run_config, encoding="utf-8") as fh:
        recorded = yaml.safe_load(fh) or {}
    return Rows(folder, manifest, "input rows", ids, probs, Path(str(locate(manifest["input"]))), "input",
                data_config(recorded.get("data")), None, bool(manifest.get("labelled")), None)


def read_ids(folder):
    """An eval.input set's row ids: ids.npy where written, else predictions.csv's id column."""
    if (folder / "ids.npy").is_file():
        return np.load(folder / "ids.npy", allow_pickle=False).astype(str)
    try:
        with open(folder / "predictions.csv", encoding="utf-8", newline="") as fh:
            return np.asarray([row["id"] for row in csv.DictReader(fh)], dtype=str)
    except (OSError, KeyError, csv.Error):
        raise UserError(f"{folder / 'predictions.csv'} cannot be read for its id column; run evaluate.py again with "
                        f"eval.input") from None


def fold_probabilities(rows):
    """(folds, rows, classes): each fold model's probabilities of the rows, as the set holds them."""
    if rows.split is None:
        raise UserError(f"{rows.folder} was made with eval.input and holds only the fold mean, no fold's own "
                        f"probabilities; use another --strategy, or predict the rows as a split (data_process.py "
                        f"data.test_file=<file>, evaluate.py) to keep each fold's")
    folds = rows.manifest["splits"][rows.split].get("folds") or []
    if len(folds) < 2:
        raise UserError(f"--strategy disagreement needs the probabilities of 2 or more fold models and {rows.folder} "
                        f"predicted with fold(s) {folds}; train with data.n_folds=5 (or evaluate every fold: "
                        f"eval.folds=all), or use --strategy entropy")
    return np.stack([load_array(rows.folder, rows.manifest, rows.split, f"fold{k}.npy") for k in folds])


# ---------------------------------------------------------------------------- the raw rows


def read_raw(rows, wanted):
    """{id: (values, text, pair)} of the `wanted` ids from the raw file (its columns as read), and the
    file's columns; the file is checked to be the one the set was predicted from."""
    path, cfg = rows.raw_path, rows.data_cfg
    if str(path).startswith("<"):  # a DataFrame handed to textclf.process: nothing on disk to read back
        raise UserError(f"{rows.folder}'s {rows.what} were read from a table in Python ({path}); save it as a file "
                        f"(df.to_parquet), process and evaluate that, then select")
    if not is_hub_name(str(path)) and not path.exists():
        raise UserError(f"the raw file {path} that {rows.folder}'s {rows.what} were read from is gone; put it back "
                        f"(the file is what the labelling file is made from)")
    raw = RawFile(locate(str(path)), cfg, rows.raw_role)
    if rows.source_sha256 and raw.sha256() != rows.source_sha256:
        raise UserError(f"the raw file {path} changed after data_process.py read it (its sha256 differs from the one "
                        f"in {Path(rows.manifest['data_dir']) / 'meta.json'}); restore it, or process and evaluate it "
                        f"again")
    reader = RowReader(raw, cfg, need_labels=False, read_labels=False)
    found, seen = {}, []
    for row_number, (line, values) in enumerate(raw.rows()):
        text = reader.text(values, line)
        if not text:  # dropped by data.drop_empty, as data_process.py and evaluate.py drop it
            continue
        row_id = reader.row_id(values, row_number)
        if rows.source_sha256 is None:
            seen.append(row_id)
        if row_id in wanted:
            pair = reader.pair(values, line) if reader.pair_idx is not None else None
            found[row_id] = (values, reader.fields(values, line) if cfg.template else text, pair)
    if rows.source_sha256 is None and ids_sha256(seen) != ids_sha256(rows.ids):
        raise UserError(f"the rows of {path} (read as the run's data was) are not the rows {rows.folder} predicted "
                        f"(ids, order or count differ): the file changed, or eval.input read it with other data.* "
                        f"keys; predict it again with evaluate.py eval.input={path}")
    missing = [i for i in wanted if i not in found]
    if missing:
        raise UserError(f"id '{missing[0]}' of {rows.folder}'s {rows.what} is not a row of {path}; the file changed "
                        f"after it was predicted: process and evaluate it again")
    return found, raw.columns


def cell(value):
    """A raw value as CSV text (JSON numbers and booleans as JSON writes them, arrays and objects as JSON)."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return as_text(value)


def label_columns(cfg):
    return list(cfg.label_columns) if cfg.label_columns else [cfg.label_column] if cfg.label_column else []


def to_csv(rows, chosen, score, guesses, found, columns):
    """The labelling file's text: original columns (label cells blank), then select_row where the
    data has no ids, then select_rank, select_score, select_guess."""
    cfg = rows.data_cfg
    keep = [c for c in columns if c not in COLUMNS and c != ROW_COLUMN]
    labels = label_columns(cfg)
    header = keep + [c for c in labels if c not in keep] + ([] if cfg.id_column else [ROW_COLUMN]) + list(COLUMNS)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    index = {c: i for i, c in enumerate(columns)}
    for rank, row in enumerate(chosen, 1):
        row_id = str(rows.ids[row])
        values = found[row_id][0]
        out = {c: "" if c in labels else cell(values[index[c]]) for c in keep}
        out.update({c: "" for c in labels}, select_rank=rank, select_score=f"{score[row]:.6f}",
                   select_guess=guesses[row])
        if not cfg.id_column:
            out[ROW_COLUMN] = row_id
        writer.writerow([out[c] for c in header])
    return buf.getvalue()


# ---------------------------------------------------------------------------- inputs


def read_exclude(path, id_column):
    """The ids of rows already sent for labelling: a .csv/.tsv with the id column (or select_row), or
    a text file of ids one per line."""
    file = resolve_path(path)
    if not file.is_file():
        raise UserError(f"--exclude {path}: no such file; pass a file of rows already sent for labelling (an earlier "
                        f"--out, or ids one per line)")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeError) as err:
        raise UserError(f"--exclude {path} cannot be read as UTF-8 text ({type(err).__name__}); save it as UTF-8"
                        ) from None
    if file.suffix.lower() not in (".csv", ".tsv"):
        return {line.strip() for line in text.splitlines() if line.strip()}
    reader = csv.reader(io.StringIO(text), delimiter="\t" if file.suffix.lower() == ".tsv" else ",")
    header = [h.strip() for h in next(reader, [])]
    column = id_column if id_column and id_column in header else ROW_COLUMN if ROW_COLUMN in header else None
    if column is None:
        raise UserError(f"--exclude {path} has no '{id_column or ROW_COLUMN}' column (columns: "
                        f"{', '.join(header)[:80]}); pass a file with the rows' ids, or ids one per line")
    i = header.index(column)
    return {row[i].strip() for row in reader if len(row) > i and row[i].strip()}


def check_out(path, overwrite, rows):
    """The file to write: a .csv in an existing folder, not the raw file nor inside a textclf
    output; an existing one only with --overwrite and only one this command wrote."""
    out = resolve_path(path)
    if out.suffix.lower() != ".csv":
        raise UserError(f"--out {path}: the labelling file is written as CSV; give it a .csv name")
    if out.is_dir():
        raise UserError(f"--out {path} is a folder; pass a file name, e.g. {Path(path) / 'to_label.csv'}")
    if not out.parent.is_dir():
        raise UserError(f"--out {path}: the folder {out.parent} does not exist; create it first or write elsewhere")
    if out.resolve() == rows.raw_path.resolve():
        raise UserError(f"--out {path} is the raw file the rows come from; write the labelling file elsewhere")
    owned = [rows.folder] + ([Path(rows.manifest["data_dir"])] if rows.split else [])
    owned += [Path(rows.manifest["run"])] if isinstance(rows.manifest.get("run"), str) else []  # the run's folder
    for folder in owned:
        if out.resolve().is_relative_to(folder.resolve()):
            raise UserError(f"--out {path} is inside {folder}, a textclf output; write the labelling file outside it")
    if out.exists():
        if not overwrite:
            raise UserError(f"--out {path} already exists; choose another name, or pass --overwrite to replace it")
        try:
            with open(out, encoding="utf-8", newline="") as fh:
                header = next(csv.reader(fh), [])
        except (OSError, UnicodeError, csv.Error):
            header = []
        if not set(COLUMNS) <= set(header):
            raise UserError(f"--out {path} exists and was not written by textclf.select (no select_ columns), so "
                            f"--overwrite will not replace it; choose another name, or move it away yourself")
    return out


def guesses_of(probs, names, problem, cfg):
    """Each row's current answer as text."""
    if problem.multi_label:
        join = cfg.label_delimiter or "|"
        return [join.join(n for n, on in zip(names, row) if on) for row in probs >= 0.5]
    return [names[i] for i in probs.argmax(axis=1)]


def embeddings_of(rows, pool, found):
    """Vectors of the pool rows (row numbers): the set's own embeddings, or the set's first fold
    model's on the rows' texts; and the labelled rows' vectors where the set holds them, or None."""
    where = rows.folder / (rows.split or "") / "embeddings.npy"
    if where.is_file():
        vectors = np.load(where, allow_pickle=False)
        if vectors.ndim != 2 or len(vectors) != len(rows.ids):
            raise UserError(f"{where} has shape {vectors.shape} for {len(rows.ids)} rows; evaluate again "
                            f"(eval.embeddings=true)")
        labelled = []
        for split in ("train", "valid"):
            other = rows.folder / split / "embeddings.npy"
            if rows.split and split != rows.split and other.is_file():
                labelled.append(np.load(other, allow_pickle=False))
        return vectors[pool], np.concatenate(labelled) if labelled else None
    from .predict import Predictor

    checkpoints = rows.manifest.get("checkpoints") or []
    if not checkpoints:
        raise UserError(f"{rows.folder} records no checkpoints to embed its rows with; evaluate again with "
                        f"eval.embeddings=true")
    first = checkpoints[0]
    best = Path(first["path"])
    if not (best / "model.safetensors").is_file() or sha256_file(best / "model.safetensors") != first["sha256"]:
        raise UserError(f"fold {first['fold']}'s checkpoint {best} is gone or was trained again after {rows.folder} "
                        f"was predicted; evaluate again with eval.embeddings=true")
    print(f"select: embedding {len(pool)} rows with fold {first['fold']} of {rows.manifest['run']} (the set has no "
          f"embeddings; eval.embeddings=true keeps them)", flush=True)
    predictor = Predictor.from_run(rows.manifest["run"], folds=[first["fold"]])
    texts = [found[str(rows.ids[i])][1] for i in pool]
    pairs = [found[str(rows.ids[i])][2] for i in pool] if rows.data_cfg.text_pair_column else None
    return predictor.embed(texts, pairs)["embeddings"], None


# ---------------------------------------------------------------------------- the command


@dataclasses.dataclass
class Options:
    """How select ranks and picks (the command line's flags)."""

    strategy: str = "entropy"
    diversity: str = "none"
    pool: int | None = None  # kmeans / coreset: the most uncertain rows they choose from (default 10 k)
    split: str | None = None  # the set's split to rank (default test)
    seed: int = 0
    exclude: str | None = None  # rows already sent for labelling
    overwrite: bool = False


def select(predictions, out, k, options=None):
    """Rank, pick and write; returns {"out", "ids", "scores"} of the rows written, best first."""
    strategy, diversity, pool, split, seed, exclude, overwrite = dataclasses.astuple(options or Options())
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy {strategy}: use one of {', '.join(STRATEGIES)}")
    if diversity not in DIVERSITY:
        raise UserError(f"--diversity {diversity}: use one of {', '.join(DIVERSITY)}")
    if k < 1:
        raise UserError(f"--k {k}: pass how many rows to select, 1 or more")
    if pool is not None and (pool < k or diversity == "none"):
        raise UserError(f"--pool {pool}: " + ("the pool is what --diversity chooses from; leave --pool out, or "
                                              "pass --diversity kmeans or coreset" if diversity == "none" else
                                              f"the pool must hold at least --k={k} rows"))
    rows = open_rows(predictions, split)
    problem = problem_type(rows.manifest["problem_type"])
    if problem.regression:
        raise UserError(f"{rows.folder} holds regression predictions: numbers carry no probability to be unsure with; "
                        f"select from a classification run's predictions")
    fold_probs = fold_probabilities(rows) if strategy == "disagreement" else None
    target = check_out(out, overwrite, rows)
    candidates = np.arange(len(rows.ids))
    excluded = 0
    if exclude:
        gone = read_exclude(exclude, rows.data_cfg.id_column)
        keep = ~np.isin(rows.ids, list(gone))
        excluded = int((~keep).sum())
        candidates = candidates[keep]
    if k > len(candidates):
        left = f" ({excluded} excluded)" if excluded else ""
        raise UserError(f"--k {k} is more than the {len(candidates)} rows of {rows.folder}'s {rows.what} left to "
                        f"select{left}; pass --k {len(candidates)} or less")
    score = scores(rows.probs, strategy, problem.multi_label, fold_probs)
    order = by_score(score, candidates)
    size = min(len(order), pool or 10 * k) if diversity != "none" else k
    pooled = order[:size]
    found, columns = read_raw(rows, {str(rows.ids[i]) for i in pooled})
    if diversity == "none" or size == k:
        chosen = pooled
    else:
        vectors, labelled = embeddings_of(rows, pooled, found)
        if diversity == "kmeans":
            chosen = pooled[kmeans_pick(vectors, score[pooled], k, seed)]
        else:
            if labelled is None:
                print("select: coreset starts from the most uncertain row (the set holds no embeddings of labelled "
                      "rows; evaluate eval.splits=[train,test] eval.embeddings=true to start from them)", flush=True)
            chosen = pooled[coreset_pick(vectors, score[pooled], k, labelled)]
        chosen = by_score(score, chosen)
    guesses = guesses_of(rows.probs, rows.manifest["label_names"], problem, rows.data_cfg)
    atomic_write_text(target, to_csv(rows, chosen, score, guesses, found, columns))
    note = f" ({excluded} excluded)" if excluded else ""
    how = strategy + (f", {diversity} over the {size} most uncertain" if diversity != "none" else "")
    print(f"select: ranked {len(candidates)} of {len(rows.ids)} {rows.what} of {rows.folder}{note} by {how}; wrote "
          f"{target}: {k} rows, scores {score[chosen].min():.4f} to {score[chosen].max():.4f}", flush=True)
    if rows.labelled:
        print(f"select: note: the {rows.what} are labelled; their labels are left out of {target.name}", flush=True)
    return {"out": target, "ids": [str(rows.ids[i]) for i in chosen], "scores": score[chosen]}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (run_cli), like every other refusal
        raise UserError(f"{message}; see python -m textclf.select --help")


def main(argv):
    parser = Parser(prog="python -m textclf.select", description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", required=True, help="a prediction set: model_predictions/<run>")
    parser.add_argument("--out", required=True, help="the labelling file to write (.csv)")
    parser.add_argument("--k", type=int, required=True, help="how many rows to select")
    parser.add_argument("--strategy", default="entropy", choices=STRATEGIES)
    parser.add_argument("--diversity", default="none", choices=DIVERSITY)
    parser.add_argument("--pool", type=int, help="kmeans / coreset: the most uncertain rows they choose from "
                        "(default 10 k)")
    parser.add_argument("--split", help="the set's split to rank (default test; not for an eval.input set)")
    parser.add_argument("--seed", type=int, default=0, help="kmeans: its seed")
    parser.add_argument("--exclude", help="rows already sent for labelling: a .csv with their ids, or ids one per line")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier file this command wrote")
    args = parser.parse_args(argv)
    select(args.predictions, args.out, args.k, Options(args.strategy, args.diversity, args.pool, args.split, args.seed,
                                                       args.exclude, args.overwrite))


if __name__ == "__main__":
    run_cli(main)
