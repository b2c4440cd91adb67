"""Proof that a change to the code changes nothing a run produces: the same MiniLM run from this
checkout (A) and from another checkout of textclf (B, e.g. the commit before a reshaping), on an
SST-2 subsample, in fp32, interleaved A B A B ...

    git worktree add ../textclf-before <commit>        # the other checkout, any folder
    python bench/same_run.py --other ../textclf-before [--rows 2000 --epochs 2 --repeats 3]

Run it the other way round too (copy this script into the other checkout and point --other back
here), and once with two checkouts of the same commit: on these machines the checkout that runs
the script came out a few percent slower even with identical code, so a ratio is read against
both directions and that control.

Both checkouts run with this interpreter, each its own scripts and package. Compared, file by
file: the data arrays and meta.json (less its timestamp), every record of metrics.jsonl (less the
wall-clock fields "time" and "samples_per_s"), the out-of-fold probabilities and the best weights
(sha256). Wall times: the median of each side and the median of the per-pair ratios B/A. Writes
bench/results/same_run.json. Needs ../shared/data/sst2 (or --sst2 DIR) and the packaged MiniLM.
"""

import argparse
import csv
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import record, save

HERE = Path(__file__).resolve().parent.parent
WALL_CLOCK = ("time", "samples_per_s")


def write_subsample(sst2, rows, folder, seed=0):
    """`rows` shuffled SST-2 train rows and the whole dev split, as TSV files in `folder`."""
    with open(sst2 / "train.tsv", encoding="utf-8") as fh:
        train = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = train[0], train[1:]
    random.Random(seed).shuffle(body)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.tsv", "w", encoding="utf-8") as fh:
        fh.write("\n".join("\t".join(r) for r in [header] + body[:rows]) + "\n")
    (folder / "dev.tsv").write_bytes((sst2 / "dev.tsv").read_bytes())


def stage(checkout, script, args, log):
    """Run one stage script of `checkout`; returns its wall time in seconds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(checkout)}
    started = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        proc = subprocess.run([sys.executable, str(checkout / script), *args], cwd=checkout, env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout / script} failed; see {log}")
    return time.perf_counter() - started


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint(data_dir, run_dir):
    """What must not change: hashes of the arrays, the data's meta.json (less its time), every
    metrics.jsonl record (less wall-clock fields), the out-of-fold probabilities, the best weights."""
    out = {f"data/{p.relative_to(data_dir)}": sha256(p) for p in sorted(data_dir.rglob("*.npy"))}
    meta = json.loads((data_dir / "meta.json").read_text())
    meta.pop("created")
    for entry in meta["splits"].values():
        entry.pop("source_file")
    meta["config"]["data"] = {k: v for k, v in meta["config"]["data"].items() if not k.endswith(("_file", "_dir"))}
    meta["tokenizer"].pop("dir")
    out["data/meta.json (less times and paths)"] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    records = [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out["metrics.jsonl (less wall-clock fields)"] = hashlib.sha256(json.dumps(records).encode()).hexdigest()
    out["oof/probs.npy"] = sha256(run_dir / "oof" / "probs.npy")
    for best in sorted(run_dir.glob("fold*/best/model.safetensors")):
        out[str(best.relative_to(run_dir))] = sha256(best)
    out["records"] = len(records)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", required=True, help="the other checkout (B)")
    parser.add_argument("--sst2", default=str(HERE.parent / "shared" / "data" / "sst2"))
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", default="2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=str(HERE / "bench" / "work" / "same_run"))
    parser.add_argument("--suffix", default="", help="results file: bench/results/same_run<suffix>.json")
    args = parser.parse_args()
    sides = {"A": HERE, "B": Path(args.other).resolve()}
    work = Path(args.work)
    sst2 = Path(args.sst2)
    if not (sst2 / "train.tsv").is_file():
        raise SystemExit(f"no SST-2 at {sst2}; pass --sst2 DIR")
    subprocess.run([sys.executable, "-m", "textclf.premodels", "minilm", "--dest", str(work / "premodels")], cwd=HERE,
                   check=True, capture_output=True)
    write_subsample(sst2, args.rows, work / "raw")
    common = ["--config", str(HERE / "configs" / "sst2.yaml"), f"model.premodels_dir={work / 'premodels'}",
              f"data.train_file={work / 'raw' / 'train.tsv'}", "data.valid_file=null",
              f"data.test_file={work / 'raw' / 'dev.tsv'}", "data.max_len=64", "data.valid_size=0.1"]
    train_args = ["train.precision=no", f"train.epochs={args.epochs}", "train.eval_every_steps=0",
                  "train.report_to=none", "eval.texts=null"]
    results = {side: {"seconds": [], "fingerprints": []} for side in sides}
    for side, checkout in sides.items():  # the data once per side (its own data_process.py)
        stage(checkout, "data_process.py", common + [f"data.output_dir={work / side / 'data'}", "data.name=sst2",
                                                     "data.overwrite=true"], work / f"{side}.log")
    for repeat in range(args.repeats):
        order = list(sides) if repeat % 2 == 0 else list(sides)[::-1]
        for side in order:
            run_dir = work / side / "runs" / f"r{repeat}"
            seconds = stage(sides[side], "train.py", common + train_args + [
                f"data.output_dir={work / side / 'data'}", "data.name=sst2", f"train.output_dir={run_dir.parent}",
                f"train.run={run_dir.name}", "train.overwrite=true"], work / f"{side}.log")
            results[side]["seconds"].append(round(seconds, 2))
            results[side]["fingerprints"].append(fingerprint(work / side / "data" / "sst2", run_dir))
            print(f"repeat {repeat} {side}: {seconds:.1f} s", flush=True)
    reference = results["A"]["fingerprints"][0]
    identical = {key: all(f[key] == reference[key] for side in sides for f in results[side]["fingerprints"])
                 for key in reference}
    ratios = [b / a for a, b in zip(results["A"]["seconds"], results["B"]["seconds"])]
    out = record("same_run", "no", rows=args.rows, epochs=args.epochs, repeats=args.repeats,
                 checkouts={side: str(path) for side, path in sides.items()},
                 commits={side: subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                                               capture_output=True, text=True).stdout.strip()
                          for side, path in sides.items()},
                 identical=identical, all_identical=all(identical.values()),
                 seconds={side: results[side]["seconds"] for side in sides},
                 median_seconds={side: statistics.median(results[side]["seconds"]) for side in sides},
                 ratio_b_over_a={"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
                                 "max": round(max(ratios), 3)},
                 fingerprint=reference)
    save(out, args.suffix)
    print(json.dumps({k: out[k] for k in ("all_identical", "median_seconds", "ratio_b_over_a")}, indent=1))
    if not out["all_identical"]:
        print("differs: " + ", ".join(k for k, same in identical.items() if not same))


if __name__ == "__main__":
    main()
