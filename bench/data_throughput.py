"""data_process.py throughput and memory.

    .venv/bin/python bench/data_throughput.py                 # 100k-row comparison + 10k/100k/1M scaling
    .venv/bin/python bench/data_throughput.py --sizes 10000,100000

1. data_process.py against the classic per-row loop (tokenize one text at a time,
   `pad_sequence`, `np.save`) on the same 100k rows of real text (SST-2 sentences, cycled),
   and the floor for any pipeline on this tokenizer: one batch call of the tokenizer on all
   the rows, nothing else.
2. data_process.py on 10k, 100k and 1M synthetic rows: time and peak RSS for each, every
   size in a fresh process, read as CSV and as Parquet (one row group of every row, pyarrow's
   default up to 1M rows: the case where a reader that loads a row group at once would grow).
   `--formats csv` for CSV only.
Writes bench/results/data_throughput.json. A benchmark, not a test.
"""

import argparse
import csv
import os
import random
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work" / "data_throughput"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _common  # noqa: E402
from textclf.premodels import install_minilm  # noqa: E402
SST2 = ROOT.parent / "shared" / "data" / "sst2" / "train.tsv"
MAX_LEN = 64


def write_rows(path, n, real):
    """n rows of `text,label`: SST-2 sentences cycled, or synthetic sentences of 5-30 words."""
    if real:
        with open(SST2, encoding="utf-8") as fh:
            source = [line.rstrip("\n").split("\t") for line in fh][1:]
    else:
        rng = random.Random(0)
        words = [f"{a}{b}" for a in ("bio", "neuro", "onco", "cardio", "gen", "im") for b in
                 ("logy", "cell", "tumor", "path", "ome", "sis", "tic", "ral")] + "the a of in and to with is".split()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(n):
            if real:
                text, label = source[i % len(source)]
            else:
                text, label = " ".join(rng.choice(words) for _ in range(rng.randint(5, 30))), str(i % 3)
            writer.writerow([text, label])
    return path


def to_parquet(csv_file):
    """The same rows as one Parquet file (written in this parent process; the child only reads it)."""
    import pyarrow.csv
    import pyarrow.parquet

    table = pyarrow.csv.read_csv(csv_file, convert_options=pyarrow.csv.ConvertOptions(
        column_types={"text": "string", "label": "string"}))
    path = csv_file.with_suffix(".parquet")
    pyarrow.parquet.write_table(table, path, row_group_size=max(len(table), 1))
    return path


def child_data_process(train_file, name):
    from textclf.config import parse_args
    from textclf.data import process

    config = parse_args([f"model.name={install_minilm()}", f"data.train_file={train_file}", f"data.name={name}",
                         f"data.output_dir={WORK / 'out'}", f"data.max_len={MAX_LEN}", "data.overwrite=true"])
    import transformers  # noqa: F401  (imported before the clock starts, as for the per-row loop)

    started = time.time()
    process(config)
    return time.time() - started


def child_classic(train_file):
    """The per-row loop many notebooks use."""
    import numpy as np
    import torch
    from torch.nn.utils.rnn import pad_sequence
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(install_minilm())
    started = time.time()
    with open(train_file, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids, masks, labels = [], [], []
    for row in rows:
        enc = tokenizer(row["text"], truncation=True, max_length=MAX_LEN)
        ids.append(torch.tensor(enc["input_ids"]))
        masks.append(torch.tensor(enc["attention_mask"]))
        labels.append(int(row["label"]))
    out = WORK / "classic"
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "input_ids.npy", pad_sequence(ids, batch_first=True).numpy())
    np.save(out / "attention_mask.npy", pad_sequence(masks, batch_first=True).numpy())
    np.save(out / "labels.npy", np.array(labels))
    return time.time() - started


def child_tokenizer_only(train_file):
    """The floor: the same rows through one batch call of the tokenizer, no arrays written."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(install_minilm())
    with open(train_file, encoding="utf-8", newline="") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    started = time.time()
    tokenizer(texts, truncation=True, max_length=MAX_LEN)
    return time.time() - started


def run_child(*args):
    result = _common.run_child(__file__, *args)
    if result is None:
        raise SystemExit(1)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare-rows", type=int, default=100_000)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--formats", default="csv,parquet", help="csv, parquet or both (comma-separated)")
    parser.add_argument("--skip-compare", action="store_true", help="only the scaling runs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, train_file = args.rest[0], Path(args.rest[1])
        children = {"classic": child_classic, "tokenizer_only": child_tokenizer_only}
        seconds = children[kind](train_file) if kind in children else child_data_process(train_file, kind)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        _common.report({"seconds": round(seconds, 2), "peak_rss_mb": round(rss, 1)})
        return

    results = _common.record("data_throughput", "none (tokenization only)", max_len=MAX_LEN)
    if SST2.is_file() and not args.skip_compare:
        n = args.compare_rows
        train_file = write_rows(WORK / f"real-{n}.csv", n, real=True)
        ours = run_child("compare", train_file)
        classic = run_child("classic", train_file)
        floor = run_child("tokenizer_only", train_file)
        results["compare"] = dict(rows=n, textclf=ours, classic=classic, tokenizer_only=floor,
                                  textclf_rows_per_s=round(n / ours["seconds"]), classic_rows_per_s=round(n / classic["seconds"]),
                                  speedup=round(classic["seconds"] / ours["seconds"], 1),
                                  speedup_ceiling=round(classic["seconds"] / floor["seconds"], 1))
        print(f"{n} SST-2 rows: data_process {ours['seconds']:.1f} s, per-row loop {classic['seconds']:.1f} s "
              f"-> {results['compare']['speedup']}x; the tokenizer's batch call alone takes {floor['seconds']:.1f} s "
              f"(a ceiling of {results['compare']['speedup_ceiling']}x)", flush=True)
    else:
        print("comparison skipped" + ("" if args.skip_compare else f" ({SST2} not found)"))
    formats = args.formats.split(",")
    scaling = {fmt: {} for fmt in formats}
    for size in map(int, args.sizes.split(",")):
        csv_file = write_rows(WORK / f"synthetic-{size}.csv", size, real=False)
        for fmt in formats:
            train_file = to_parquet(csv_file) if fmt == "parquet" else csv_file
            r = run_child(f"synthetic{size}-{fmt}", train_file)
            r["rows_per_s"] = round(size / r["seconds"])
            scaling[fmt][str(size)] = r
            print(f"{size:>9} synthetic rows, {fmt:>7}: {r['seconds']:7.1f} s  {r['rows_per_s']:>8} rows/s  "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
            if train_file != csv_file:
                train_file.unlink()
        csv_file.unlink()
    for fmt in formats:
        sizes = sorted(scaling[fmt], key=int)
        if len(sizes) >= 2:
            ratio = round(scaling[fmt][sizes[-1]]["peak_rss_mb"] / scaling[fmt][sizes[0]]["peak_rss_mb"], 2)
            results["rss_ratio_largest_to_smallest" + ("" if fmt == "csv" else f"_{fmt}")] = ratio
    results["scaling"] = scaling.get("csv", {})
    if "parquet" in scaling:
        results["scaling_parquet"] = scaling["parquet"]
    _common.save(results)


if __name__ == "__main__":
    main()
