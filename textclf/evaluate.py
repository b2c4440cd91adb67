"""The evaluate stage: a trained run -> probabilities keyed by row id, a manifest, metrics.

    python evaluate.py --config configs/sst2.yaml eval.run=checkpoints/sst2
    python evaluate.py --config configs/sst2.yaml eval.texts='["a fine film", "dull"]'
    python evaluate.py --config configs/sst2.yaml eval.input=new_rows.csv

Layout of model_predictions/<run>/ (a new version folder if it exists):
    manifest.json, config.yaml, explanations.html (eval.explain: the rows asked, words shaded by attribution)
    <split>/ids.npy, probs.npy (fold mean), fold<k>.npy, labels.npy + metrics.json,
            report.txt, confusion.txt, confusion.png (labelled splits), roc_pr.png (labelled binary)
            embeddings.npy (eval.embeddings: the first fold's pooled vectors, row order as ids.npy),
            hidden_states.npy + lengths.npy (eval.hidden_states)
    oof/ids.npy, probs.npy, labels.npy, folds.npy      out-of-fold probabilities of the train rows
Regression (manifest problem_type "regression", label_names the target names): probs.npy and
fold<k>.npy hold the predictions (rows, targets), report.txt the numeric report per target, and
there is no confusion matrix or ROC curve.
"""

import csv
import dataclasses
import datetime
import io
import shutil
import sys
from pathlib import Path

import numpy as np

from . import calibration, explain
from .calibration import check_abstain
from .checkpoint import load_run_json
from .config import file_reading_keys, resolve_path
from .console import close_processes, say, shown
from .compiling import compile_model, resolve as resolve_compile
from .datadir import check_data_keys, load_meta
from .errors import UserError
from .fileio import (atomic_dir, atomic_write_text, ids_sha256, load_json, next_version, number_text,
                     remove_dead_temporaries, sha256_file, versions, write_json, write_marker)
from .loader import SortedBatches, SplitArrays, Windows, make_loader
from .metrics import write_metrics
from .model import ModelSpec
from .precision import resolve_shared
from .premodels import load_tokenizer
from .predict import (Predictor, features_of, hidden_of, load_fold_models, predict_logits, predict_rows,
                      recover_best, run_folds)
from .rawdata import RawFile, RowReader, label_array, locate, scan_rows
from .text_rules import check_texts
from .tokenization import TextTokenizer, fold_texts, per_text


def find_run(config):
    """eval.run, or the newest version of checkpoints/<train.run or data.name> (refused, not
    skipped, when that one is not finished: see predict.run_folds)."""
    if config.eval.run:
        run = resolve_path(config.eval.run)
        if not run.is_dir():
            base = resolve_path(config.train.output_dir)
            inside = base / config.eval.run
            hint = (f"eval.run={inside}" if not Path(config.eval.run).is_absolute() and (inside / "run.json").is_file()
                    else f"eval.run={base}/<run>")
            raise UserError(f"eval.run={config.eval.run}: no such folder; pass the run's folder, e.g. {hint}")
        return run.resolve()  # its real name names the predictions (run/fold0/.. is run)
    base = resolve_path(config.train.output_dir)
    name = config.train.run or config.data.name
    runs = [p for _, p in versions(base, name) if (p / "run.json").is_file()]
    if not runs:
        raise UserError(f"no run '{name}' in {base}; train first or pass eval.run={base}/<run>")
    finished = [p for p in runs if any(p.glob("fold*/done.json"))]
    if runs[-1] not in finished and finished:  # never fall back silently to an older run
        raise UserError(f"the newest run {runs[-1]} has no finished fold; finish it with python train.py "
                        f"train.resume={runs[-1]}, or evaluate the older finished run with eval.run={finished[-1]}")
    return runs[-1]


def check_arrays_fit(meta, spec, data_dir, run_dir):
    """The arrays in data_dir must be tokenized and labelled as the run's models were trained: the
    vocabulary, the labels, max_len and truncation, sliding windows, the template, text pairs."""
    tokenization = spec.tokenization
    remake = (f"process the file as the test split of the run's own data: python data_process.py --config "
              f"{run_dir / 'config.yaml'} data.name=<new name> data.test_file=<file>, then evaluate.py "
              f"eval.run={run_dir} eval.data=<new name> eval.splits=[test]; or score a raw file with eval.input=<file>")
    if meta["tokenizer"]["vocab_sha256"] != tokenization.vocab_sha256:
        raise UserError(f"{data_dir} was tokenized with another vocabulary than the model in {run_dir}; {remake}")
    if meta["label_names"] != spec.labels.names:
        raise UserError(f"{data_dir} has labels {meta['label_names']} but {run_dir} was trained on "
                        f"{spec.labels.names}; {remake}")
    windows = meta.get("windows") or {}
    made = {"max_len": meta["max_len"], "truncation": meta["truncation"],
            "head_tokens": meta.get("head_tokens"), "window_stride": windows.get("stride", 0),
            "max_windows": windows.get("max_windows", 0), "template": meta.get("template"),
            "text pairs": bool(meta.get("text_pair_column"))}
    trained = {"max_len": tokenization.max_len, "truncation": tokenization.truncation,
               "head_tokens": tokenization.head_tokens if tokenization.truncation == "head_tail" else None,
               "window_stride": tokenization.window_stride, "max_windows": tokenization.max_windows,
               "template": tokenization.template, "text pairs": bool(tokenization.text_pair_column)}
    differ = [f"{k} {made[k]!r} (the run: {trained[k]!r})" for k in trained if made[k] != trained[k]]
    if differ:
        raise UserError(f"{data_dir} was tokenized otherwise than the data {run_dir} trained on: "
                        f"{'; '.join(differ[:3])}; {remake}")


def text_owner(data_dir, split, aggregate="mean"):
    """The split's loader.Windows, each token row's text, and the number of texts."""
    windows = Windows(data_dir / split, aggregate)
    n_texts = int(np.load(data_dir / split / "ids.npy", mmap_mode="r").shape[0])
    return windows, windows.owner(n_texts), n_texts


def predict_split(accelerator, fold_models, data_dir, split, batch_size, problem, aggregate="mean", buckets=False):
    """Fold probabilities for a whole split: (folds, rows, classes), one row per text in row
    order (sliding windows aggregated by `aggregate`; widths bucketed for compiled models)."""
    dataset = SplitArrays(data_dir / split, with_labels=False, buckets=buckets)
    windows, owner, n_texts = text_owner(data_dir, split, aggregate)
    loader = make_loader(dataset, SortedBatches(dataset.lengths(), batch_size))
    loader = accelerator.prepare(loader)
    fold_probs = [problem.probabilities(predict_logits(model, loader, len(dataset), accelerator)).numpy()
                  for model in fold_models]
    return fold_texts(fold_probs, owner, n_texts, windows.aggregate, problem)


def embed_split(accelerator, model, data_dir, split, batch_size, hidden_states=False):
    """{"embeddings": (rows, dim)} for a whole split, in row order, and with hidden_states the last
    hidden layer (rows, max_len, hidden; zero at padding) with "lengths"."""
    dataset = SplitArrays(data_dir / split, with_labels=False)
    loader = accelerator.prepare(make_loader(dataset, SortedBatches(dataset.lengths(), batch_size)))
    vectors = predict_rows(model, loader, len(dataset), accelerator, compute=features_of).numpy()
    windows, owner, n_texts = text_owner(data_dir, split)
    out = {"embeddings": per_text(vectors, owner, n_texts, windows.aggregate)}  # windows: their mean vector
    if hidden_states:
        width = int(np.load(data_dir / split / "input_ids.npy", mmap_mode="r").shape[1])
        out["hidden_states"] = predict_rows(model, loader, len(dataset), accelerator, compute=hidden_of,
                                            width=width).numpy()
        out["lengths"] = np.asarray(dataset.lengths())
    return out


@dataclasses.dataclass
class Sources:
    """What evaluate.py predicts with and on: a run's finished folds and the data it trained on."""

    run_dir: Path
    data_dir: Path
    meta: dict
    spec: ModelSpec
    checkpoints: list  # [{fold, path, sha256}] of the folds predicting
    remade: bool  # the data folder was made again after the run trained
    temperature: float = 1.0  # the calibration the models apply (eval.calibrated)


def run(config):
    run_dir = find_run(config)
    if config.eval.texts is not None or config.eval.input:
        return predict_raw(config, run_dir)
    from accelerate import Accelerator

    choice = resolve_shared(config.eval.precision, key="eval.precision")
    accelerator = Accelerator(mixed_precision=choice.precision)  # prepared models predict under its autocast
    main = accelerator.is_main_process
    compiled = resolve_compile(config.eval.compile, accelerator.device.type, "eval.compile")  # compiling.py
    say(accelerator, f"evaluate: {accelerator.device}, precision {choice.describe()}"
        + (f", compiled {compiled.describe()}" if compiled.on else ""))
    if main:
        recover_best(run_dir)
    accelerator.wait_for_everyone()
    sources, models = open_run(config, run_dir, main)
    fold_models = [accelerator.prepare(compile_model(model) if compiled.on else model) for model in models]
    meta, spec = sources.meta, sources.spec
    splits = [s for s in config.eval.splits if s in meta["splits"]]
    missing = [s for s in config.eval.splits if s not in meta["splits"]]
    if missing and not splits and "eval.splits" in config.explicit:  # nothing asked for is there: say so, write nothing
        first = next(iter(meta["splits"]))
        raise UserError(f"{sources.data_dir.name} has no {', '.join(missing)} split (its splits: "
                        f"{', '.join(meta['splits'])}); predict one of those (eval.splits=[{first}]), or a file "
                        f"with eval.input=<file>")
    if missing:
        say(accelerator, f"evaluate: {sources.data_dir.name} has no {', '.join(missing)} split; skipped")
    if config.eval.hidden_states and meta.get("windows"):
        raise UserError("eval.hidden_states writes one row of token states per text, and this data reads texts as "
                        "sliding windows; drop eval.hidden_states (eval.embeddings gives each text's mean window vector)")
    # eval.explain_ids checked before any row is predicted
    chosen = explain.split_rows(config.eval, sources.data_dir, splits) if config.eval.explain else None
    results = {s: predict_split(accelerator, fold_models, sources.data_dir, s, config.eval.batch_size,
                                spec.labels.problem, spec.tokenization.window_aggregate, compiled.on) for s in splits}
    vectors = {}
    if config.eval.embeddings:  # from the first fold's model: each fold's vectors live in a space of their own
        say(accelerator, f"evaluate: embeddings from fold {sources.checkpoints[0]['fold']}")
        vectors = {s: embed_split(accelerator, accelerator.unwrap_model(fold_models[0]), sources.data_dir, s,
                                  config.eval.batch_size, config.eval.hidden_states) for s in splits}
    page = explain_page(config, accelerator, fold_models, sources, chosen)
    out = None
    if main:
        out = write_predictions(config, sources, results, vectors, choice, page)
        print(f"evaluate: wrote {out}", flush=True)
    accelerator.wait_for_everyone()
    fold_models.clear()  # the DDP wrappers go before the process group (console.close_processes)
    close_processes(accelerator)
    return out


def explain_page(config, accelerator, fold_models, sources, chosen):
    """explanations.html (eval.explain) for the rows `chosen` of the splits predicted, made on the main
    process. None without eval.explain."""
    if chosen is None:
        return None
    if not accelerator.is_main_process:
        return None
    say(accelerator, f"evaluate: explaining {sum(map(len, chosen.values()))} rows ({config.eval.explain_steps} steps)")
    tokenizer = TextTokenizer.for_spec(load_tokenizer(sources.checkpoints[0]["path"], config.model.trust_remote_code),
                                       sources.spec.tokenization)
    # without the autocast wrapper prepare() put on them: attributions are computed in fp32
    models = [accelerator.unwrap_model(model, keep_fp32_wrapper=False).eval() for model in fold_models]
    return explain.split_page(config.eval, models, sources.spec, tokenizer, sources.data_dir, chosen,
                              f"Explanations: {sources.run_dir.name} ({sources.data_dir.name})")


def open_run(config, run_dir, main):
    """The run's fold models (on the CPU) and what they are checked against: (Sources, models). The
    data is the run's own, or another processed data set (eval.data) tokenized as the run's was."""
    trained_on = Path(load_run_json(run_dir)["data_dir"])
    data_dir = other_data(config, trained_on) or trained_on
    meta = load_meta(data_dir)
    check_data_keys(config, meta, data_dir)
    models, spec, checkpoints = load_fold_models(run_dir, config.eval.folds, config.model.trust_remote_code,
                                                 config.eval.calibrated)
    check_abstain(config.eval.abstain_below, spec.labels.problem)
    check_arrays_fit(meta, spec, data_dir, run_dir)
    if data_dir != trained_on and main:
        print(f"evaluate: predicting {data_dir} with {run_dir} (trained on {trained_on.name})", flush=True)
    remade = data_dir == trained_on and sha256_file(data_dir / "meta.json") != spec.provenance.data_meta_sha256
    if remade and main:  # same settings (checked above), other rows perhaps: say so, and record it
        print(f"evaluate: warning: {data_dir} was made again after this run trained (its meta.json differs); its "
              f"train/valid rows may not be the ones the run held out, so scores on them may be optimistic",
              file=sys.stderr, flush=True)
    temperature = float(models[0].temperature) if models else 1.0
    return Sources(run_dir, data_dir, meta, spec, checkpoints, remade, temperature), models


def other_data(config, trained_on):
    """The processed data set to predict instead of the run's own (eval.data, in data.output_dir),
    or None for the run's own. A data.name on the command line naming another set is said, not
    followed: shared command lines carry data.name."""
    if not config.eval.data:
        if "data.name" in config.explicit and config.data.name != trained_on.name:
            print(f"evaluate: note: the run trained on {trained_on.name}, and that is what is predicted; to predict "
                  f"and score {config.data.name}, pass eval.data={config.data.name}", flush=True)
        return None
    folder = resolve_path(config.data.output_dir) / config.eval.data
    if folder.resolve() == trained_on.resolve():
        return None
    if not (folder / "meta.json").is_file():
        raise UserError(f"eval.data={config.eval.data}: no processed data set at {folder}; make it with "
                        f"data_process.py (data.name={config.eval.data}), or set data.output_dir to where it is")
    return folder


def write_predictions(config, sources, results, vectors, choice, page=None):
    """model_predictions/<run>/ (a new version folder; <run>-<data> for another data set): each
    split's fold and mean probabilities keyed by id, metrics where labelled, embeddings, the run's
    out-of-fold rows, the manifest."""
    run_dir, data_dir, spec = sources.run_dir, sources.data_dir, sources.spec
    own = Path(load_run_json(run_dir)["data_dir"]).resolve() == data_dir.resolve()
    out = next_version(resolve_path(config.eval.output_dir), run_dir.name if own else f"{run_dir.name}-{data_dir.name}")
    manifest = dict(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        run=str(run_dir), label_names=spec.labels.names, problem_type=spec.labels.problem_type,
        checkpoints=sources.checkpoints, data_dir=str(data_dir), data_meta_sha256=sha256_file(data_dir / "meta.json"),
        trained_on_meta_sha256=spec.provenance.data_meta_sha256, data_changed_since_training=sources.remade,
        splits={}, config=config.to_dict(), precision=choice.record(), temperature=sources.temperature,
    )
    remove_dead_temporaries(out.parent)  # what a killed evaluate.py left
    with atomic_dir(out) as tmp:
        write_marker(tmp, "predictions")
        if page is not None:
            atomic_write_text(tmp / "explanations.html", page)
        for split, fold_probs in results.items():
            manifest["splits"][split] = write_split(tmp / split, sources, split, fold_probs, vectors.get(split),
                                                    config.eval)
            if split in vectors:
                manifest["splits"][split]["embeddings"]["hidden_states"] = config.eval.hidden_states
        if (run_dir / "oof" / "probs.npy").is_file():
            manifest["splits"]["oof"] = write_oof(tmp / "oof", run_dir / "oof", sources, config.eval)
        write_json(tmp / "manifest.json", manifest)
        atomic_write_text(tmp / "config.yaml", config.to_yaml())
    return out


def write_oof(folder, run_oof, sources, eval_cfg):
    """The run's out-of-fold rows in the prediction set, with the run's calibration applied as the
    fold models apply it to every other split (and the metrics of those probabilities)."""
    shutil.copytree(run_oof, folder)
    ids, labels = np.load(folder / "ids.npy"), np.load(folder / "labels.npy")
    problem = sources.spec.labels.problem
    entry = dict(rows=len(ids), ids_sha256=ids_sha256(ids))
    entry["metrics"] = load_json(run_oof / "metrics.json", "out-of-fold metrics", "train the run again")
    probs = np.load(folder / "probs.npy")
    if sources.temperature != 1.0:
        probs = calibration.apply(probs, sources.temperature, problem)
        np.save(folder / "probs.npy", probs)
        extra = {k: entry["metrics"][k] for k in ("split", "folds") if k in entry["metrics"]}
        entry["metrics"] = write_metrics(folder, probs, labels, problem, sources.spec.labels.names, "out-of-fold",
                                         quiet=True, extra=extra)
    entry.update(abstention(probs, labels, problem, eval_cfg))
    return entry


def abstention(probs, labels, problem, eval_cfg):
    """eval.abstain_below on labelled rows: how many rows are answered, and how often rightly."""
    if not eval_cfg.abstain_below:
        return {}
    answered = probs.max(axis=1) >= eval_cfg.abstain_below
    right = probs.argmax(axis=1) == np.asarray(labels)
    return {"abstain": dict(below=eval_cfg.abstain_below, coverage=round(float(answered.mean()), 6),
                            accuracy_answered=round(float(right[answered].mean()), 6) if answered.any() else None,
                            accuracy_all=round(float(right.mean()), 6))}


def write_split(folder, sources, split, fold_probs, vectors=None, eval_cfg=None):
    """One split of a prediction set: ids, the fold mean and each fold's probabilities, labels and
    metrics where the split is labelled, embeddings; returns its manifest entry."""
    folds = [c["fold"] for c in sources.checkpoints]
    entry_meta = sources.meta["splits"][split]
    folder.mkdir()
    ids = np.asarray(np.load(sources.data_dir / split / "ids.npy"))
    np.save(folder / "ids.npy", ids)
    np.save(folder / "probs.npy", fold_probs.mean(axis=0))
    for fold, probs in zip(folds, fold_probs):
        np.save(folder / f"fold{fold}.npy", probs)
    entry = dict(rows=len(ids), source_sha256=entry_meta["source_sha256"], ids_sha256=ids_sha256(ids), folds=folds)
    if entry_meta["labelled"]:
        labels = np.load(sources.data_dir / split / "labels.npy")
        np.save(folder / "labels.npy", labels)
        entry["metrics"] = write_metrics(folder, fold_probs.mean(axis=0), labels, sources.spec.labels.problem,
                                         sources.spec.labels.names, split)
        if eval_cfg is not None:
            entry.update(abstention(fold_probs.mean(axis=0), labels, sources.spec.labels.problem, eval_cfg))
    for name, array in (vectors or {}).items():
        np.save(folder / f"{name}.npy", array)
    if vectors:
        entry["embeddings"] = dict(fold=folds[0], dim=int(vectors["embeddings"].shape[1]))
    return entry


def read_texts(config, spec):
    """(texts, ids, pairs, labels) from eval.texts (taken verbatim; no labels) or eval.input (checked
    row by row as data_process.py checks its files: columns, empty texts, duplicate ids, and where
    the file has the run's label column (eval.read_labels), every label one of the run's)."""
    tokenization, problem = spec.tokenization, spec.labels.problem
    if config.eval.texts is not None:
        texts = list(config.eval.texts)
        check_texts(texts, tokenization.text_pair_column, tokenization.template)
        return texts, [str(i) for i in range(len(texts))], None, None
    data_cfg = dataclasses.replace(config.data, text_columns=tokenization.text_columns, template=tokenization.template,
                                   text_pair_column=tokenization.text_pair_column)
    raw = RawFile(locate(config.eval.input, data_cfg.format), data_cfg, "input")
    reader, unscored = labelled_reader(raw, data_cfg, spec, config.eval.read_labels)
    if reader is None:  # read without labels: its rows checked here (a labelled reader's scan checked them)
        reader = RowReader(raw, data_cfg, need_labels=False, read_labels=False)
        scan_rows(reader, data_cfg, "input", None)  # refuses what data_process.py would refuse
        if unscored:
            print(f"evaluate: {raw.path.name} is predicted, not scored: {unscored} (eval.read_labels=always refuses "
                  f"such a file)", flush=True)
    texts, ids, labels, pairs = [], [], [], [] if reader.pair_idx is not None else None
    for row_number, (line, values) in enumerate(raw.rows()):
        text = reader.text(values, line)
        if not text:  # only with data.drop_empty=true
            continue
        texts.append(reader.fields(values, line) if tokenization.template else text)  # the Predictor fills the template
        ids.append(reader.row_id(values, row_number))
        if pairs is not None:
            pairs.append(reader.pair(values, line))
        if reader.labelled:
            labels.append(reader.targets(values, line) if problem.regression else reader.labels(values, line))
    if reader.labelled:
        labels = label_array(labels, "regression" if problem.regression else "classification",
                             {name: i for i, name in enumerate(spec.labels.names)}, problem.multi_label)
    return texts, ids, pairs, labels if reader.labelled else None


def labelled_reader(raw, data_cfg, spec, mode):
    """(a RowReader that reads eval.input's labels, its rows scanned, or None; why the file goes
    unscored, or None). Labels are read where eval.read_labels asks for them and every label is one
    of the run's (a blank column: unlabelled). auto goes on unscored where the labels cannot be
    read, and says why; always refuses."""
    if mode == "never":
        return None, None
    problem = spec.labels.problem
    try:
        reader = RowReader(raw, data_cfg, need_labels=mode == "always", read_labels=True)
        if reader.labelled:  # it has the label column(s): the whole file is read to check them
            known = None if problem.regression or data_cfg.label_columns else set(spec.labels.names)
            scan_rows(reader, data_cfg, "input", known)
    except UserError as err:
        if mode == "always":
            raise
        return None, str(err)
    if not reader.labelled:
        if mode == "always":
            raise UserError(f"eval.input {raw.path} has no labels in its label column, and eval.read_labels=always; "
                            f"fill them in, or use eval.read_labels=auto")
        return None, None
    return reader, None


def predict_raw(config, run_dir):
    """eval.texts or eval.input: classify raw texts, print them, and write a CSV of probabilities."""
    data_dir = Path(load_run_json(run_dir)["data_dir"])
    if (data_dir / "meta.json").is_file():  # the keys that describe the new input file may differ
        check_data_keys(config, load_meta(data_dir, arrays=False), data_dir, may_differ=file_reading_keys())
    recover_best(run_dir)
    folds = run_folds(run_dir, config.eval.folds)
    spec = ModelSpec.from_json(load_json(folds[0][1] / "head.json", "a textclf head.json", "retrain this fold"),
                               folds[0][1] / "head.json")
    texts, ids, pairs, labels = read_texts(config, spec)
    if config.eval.explain:  # eval.explain_ids checked before any row is predicted
        explain.chosen_rows(config.eval, {"input": ids})
    predictor = Predictor.from_run(run_dir, config.eval.folds, batch_size=config.eval.batch_size,
                                   precision=config.eval.precision, trust_remote_code=config.model.trust_remote_code,
                                   calibrated=config.eval.calibrated, compile=config.eval.compile)
    check_abstain(config.eval.abstain_below, predictor.problem)
    print(f"evaluate: {predictor.device}, precision {predictor.precision.describe()}"
          + (f", compiled {predictor.compiled.describe()}" if predictor.compiled.on else ""), flush=True)
    out = predictor.predict(texts, pairs, config.eval.abstain_below, config.eval.abstain_label)
    if config.eval.abstain_below:
        print(f"evaluate: {int(out['abstained'].sum())} of {len(texts)} rows abstain (top probability below "
              f"{config.eval.abstain_below:g}): answered {config.eval.abstain_label!r}", flush=True)
    cut = out["cut_tokens"]
    if (cut > 0).any():
        where = "inside their template fields" if spec.tokenization.template and pairs is None else "to fit"
        print(f"evaluate: {int((cut > 0).sum())} of {len(texts)} rows are longer than max_len="
              f"{spec.tokenization.max_len}: cut {where}, by {int(cut.max())} tokens at most", flush=True)
    names = predictor.label_names
    regression = predictor.problem.regression
    buf = io.StringIO()
    writer = csv.writer(buf)
    if regression:  # one column per target, named like the target column
        writer.writerow(["id", *names])
        for row_id, values in zip(ids, out["predictions"]):
            writer.writerow([row_id, *[number_text(v) for v in values]])
    else:
        writer.writerow(["id", "label", *[f"prob_{n}" for n in names]])
        for row_id, label, probs in zip(ids, out["labels"], out["probs"]):
            label = "|".join(label) if isinstance(label, list) else label
            writer.writerow([row_id, label, *[f"{p:.6f}" for p in probs]])
    for text, label, probs in zip(predictor.tokenizer.texts(texts[:50]), out["labels"], out["probs"]):
        if regression:
            print(f"{' '.join(number_text(v) for v in probs):>12}  {shown(text)}", flush=True)
        else:
            print(f"{label!s:>12}  p={probs.max():.3f}  {shown(text)}", flush=True)
    if len(texts) > 50:
        print(f"... {len(texts) - 50} more rows", flush=True)
    page = explain.texts_page(config.eval, predictor, texts, ids, pairs, labels) if config.eval.explain else None
    target = next_version(resolve_path(config.eval.output_dir), f"{run_dir.name}-texts")
    remove_dead_temporaries(target.parent)
    with atomic_dir(target) as tmp:
        write_marker(tmp, "predictions")
        atomic_write_text(tmp / "predictions.csv", buf.getvalue())
        if page is not None:
            atomic_write_text(tmp / "explanations.html", page)
        np.save(tmp / "probs.npy", out["probs"])
        metrics = None
        if labels is not None:  # a labelled eval.input: scored as a split is
            np.save(tmp / "labels.npy", labels)
            np.save(tmp / "ids.npy", np.asarray(ids))
            metrics = write_metrics(tmp, out["probs"], labels, predictor.problem, names, "input")
            metrics.update(abstention(out["probs"], labels, predictor.problem, config.eval))
        if config.eval.embeddings:
            vectors = predictor.embed(texts, pairs, hidden_states=config.eval.hidden_states)
            np.save(tmp / "ids.npy", np.asarray(ids))
            for name in ("embeddings", "hidden_states", "lengths"):
                if name in vectors:
                    np.save(tmp / f"{name}.npy", vectors[name])
        write_json(tmp / "manifest.json", dict(run=str(run_dir), label_names=names, rows=len(texts),
                                               checkpoints=predictor.checkpoints, problem_type=predictor.problem_type,
                                               precision=predictor.precision.record(), labelled=labels is not None,
                                               metrics=metrics, input=config.eval.input,
                                               temperature=predictor.temperature))
    print(f"evaluate: wrote {target / 'predictions.csv'}", flush=True)
    return target
