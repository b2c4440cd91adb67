"""Training throughput: textclf against HF Trainer and the classic competition loop.

    .venv/bin/python bench/train_throughput.py                       # SST-2 and IMDB, precision auto
    .venv/bin/python bench/train_throughput.py --precision no        # every contender in fp32
    .venv/bin/python bench/train_throughput.py --datasets sst2 --n 2048 --precision bf16

In one run, on the same model (packaged MiniLM-L6), rows, batch size, precision and number
of samples, each contender trains one epoch in its own process (so its peak RSS is its own):
    (a) textclf's train.py as configured by default (length-grouped batches cut to their
        longest row, fused AdamW);
    (b) HF Trainer with its defaults (random sampler, DataCollatorWithPadding);
    (c) HF Trainer with train_sampling_strategy="group_by_length";
    (d) the classic competition loop: every row padded to max_len, plain AdamW, loss.item()
        every step;
    (e) (a) with train.compile=true (torch.compile, bucketed widths; its compiling is in the time);
    (f) (c) with torch_compile=True (inductor; compiling in the time).
Compiled contenders start with an empty inductor cache (a first run's compiling, as a user's
first run meets it); `--contenders a,c,e,f` picks the contenders.
Reports samples/s, real (unpadded) tokens/s, the ratio of (a) to each peer, peak RSS, and
useful FLOP/s (6 x non-embedding parameters x real tokens + the attention term) as a share of
a matmul peak measured in the same run at the same dtype. `--precision auto` resolves once, as
train.precision=auto would on this machine, and every contender runs in that precision (HF
Trainer with bf16=True, the classic loop under the same autocast). Writes
bench/results/train_throughput-<fp32|bf16>.json with the CPU model, its capability and flags.
A benchmark, not a test: it never fails CI.
"""

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work" / "train_throughput"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import _common  # noqa: E402
from textclf.premodels import install_minilm  # noqa: E402

DATASETS = {
    # name: (source file, text column, label column, delimiter, max_len, batch size)
    "sst2": (ROOT.parent / "shared/data/sst2/train.tsv", "sentence", "label", "\t", 64, 32),
    "imdb": (ROOT.parent / "shared/data/imdb/train.csv", "text", "label", ",", 512, 16),
}
LR = 1e-4


def source_rows(name, n, seed=0):
    """The first n (text, label) rows of a dataset's source file after a seeded shuffle
    (IMDB is sorted by label): the rows every benchmark of `name` trains on."""
    source, text_col, label_col, delimiter, _, _ = DATASETS[name]
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(source, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=delimiter, quoting=quoting))
    random.Random(seed).shuffle(rows)
    return [(r[text_col], r[label_col]) for r in rows[:n]]


def write_subset(name, n):
    folder = WORK / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(source_rows(name, n))
    return folder / "train.csv"


def load_rows(path):
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [int(r["label"]) for r in rows]


def real_lengths(tokenizer, texts, max_len):
    return [min(len(ids), max_len) for ids in tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]]


# ---------------------------------------------------------------------------- contenders (child side)


def run_textclf(args, train_file, extra=()):
    """(a): the real data_process.py + train.py, timed from the log's start record to the last step
    ((e): with train.compile=true, its compiling inside the timed span)."""
    name = f"{args.dataset}-bench"
    common = [f"model.name={install_minilm()}", f"data.output_dir={WORK / 'data'}", f"data.name={name}",
              f"train.output_dir={WORK / 'ck'}", "train.overwrite=true"]
    max_len, batch = DATASETS[args.dataset][4], DATASETS[args.dataset][5]
    subprocess.run([sys.executable, str(ROOT / "data_process.py"), *common, f"data.train_file={train_file}",
                    f"data.max_len={max_len}", "data.valid_size=0.02", "data.overwrite=true"],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, str(ROOT / "train.py"), *common, "train.epochs=1", f"train.batch_size={batch}",
                    f"train.lr={LR}", f"train.precision={args.precision}", "train.log_every_steps=1000000",
                    "eval.precision=no", *extra],
                   check=True, capture_output=True)
    log = [json.loads(line) for line in (WORK / "ck" / name / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in log if r["type"] == "start")
    last = [r for r in log if r["type"] == "train"][-1]
    ids = __import__("numpy").load(WORK / "data" / name / "train" / "folds.npy")
    n_train = int((ids != 0).sum())
    return dict(seconds=last["time"] - start["time"], samples=n_train, train_rows_mask="folds != 0",
                dev_rows=int((ids == 0).sum()))


def run_trainer(args, texts, labels, grouped, compiled=False):
    """(b) / (c): HF Trainer, defaults or group_by_length; (f): (c) with torch_compile=True."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)
    from transformers.utils import logging

    logging.set_verbosity_error()
    max_len, batch = DATASETS[args.dataset][4], DATASETS[args.dataset][5]
    tokenizer = AutoTokenizer.from_pretrained(install_minilm())
    enc = tokenizer(texts, truncation=True, max_length=max_len)
    data = [{"input_ids": i, "attention_mask": m, "token_type_ids": t, "labels": y}
            for i, m, t, y in zip(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], labels)]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(install_minilm(), num_labels=2, dtype=torch.float32)
    targs = TrainingArguments(output_dir=str(WORK / "trainer"), per_device_train_batch_size=batch, num_train_epochs=1,
                              learning_rate=LR, bf16=args.precision == "bf16", use_cpu=True, report_to=[],
                              save_strategy="no", eval_strategy="no", logging_steps=1000000, seed=0,
                              disable_tqdm=True, train_sampling_strategy="group_by_length" if grouped else "random",
                              torch_compile=compiled)
    trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer))
    started = time.time()
    trainer.train()
    return dict(seconds=time.time() - started, samples=len(data))


def run_classic(args, texts, labels):
    """(d): every row padded to max_len, RandomSampler, plain AdamW, loss.item() every step."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    max_len, batch = DATASETS[args.dataset][4], DATASETS[args.dataset][5]
    tokenizer = AutoTokenizer.from_pretrained(install_minilm())
    enc = tokenizer(texts, truncation=True, max_length=max_len, padding="max_length", return_tensors="pt")
    dataset = TensorDataset(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], torch.tensor(labels))
    loader = DataLoader(dataset, sampler=RandomSampler(dataset), batch_size=batch)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(install_minilm(), num_labels=2, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, len(loader))
    model.train()
    started = time.time()
    for ids, mask, types, y in loader:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):  # as Accelerate does
            out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=y)
        out.loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        out.loss.item()
    return dict(seconds=time.time() - started, samples=len(dataset))


def child(args):
    train_file = WORK / args.dataset / "train.csv"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(WORK / "inductor" / f"{os.getpid()}")  # empty: a first run's compiling
    if args.contender in ("a", "e"):
        result = run_textclf(args, train_file, ["train.compile=true"] if args.contender == "e" else [])
        texts, labels = load_rows(train_file)
        folds = __import__("numpy").load(WORK / "data" / f"{args.dataset}-bench" / "train" / "folds.npy")
        texts = [t for t, f in zip(texts, folds) if f != 0]
    else:
        texts, labels = load_rows(train_file)
        if args.contender == "b":
            result = run_trainer(args, texts, labels, grouped=False)
        elif args.contender in ("c", "f"):
            result = run_trainer(args, texts, labels, grouped=True, compiled=args.contender == "f")
        else:
            result = run_classic(args, texts, labels)
    from transformers import AutoTokenizer

    lengths = real_lengths(AutoTokenizer.from_pretrained(install_minilm()), texts, DATASETS[args.dataset][4])
    result.update(real_tokens=sum(lengths), attention_units=sum(l * l for l in lengths),
                  peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    if args.contender in ("a", "e"):  # the children (data_process, train) did the work
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    _common.report(result)


# ---------------------------------------------------------------------------- parent side


def matmul_peak(precision, size=2048, reps=10, tries=5):
    """The best of several timed square matmuls at the benchmark's dtype (a noisy machine
    only ever makes a measurement slower)."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(tries):
        started = time.time()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * size ** 3 * reps / (time.time() - started))
    return best


def model_shape():
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(install_minilm())
    model = AutoModel.from_pretrained(install_minilm())
    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    total = sum(p.numel() for p in model.parameters())
    return total - embedding, config.num_hidden_layers, config.hidden_size


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="sst2,imdb")
    parser.add_argument("--n", type=int, default=0, help="rows per dataset (default: 2048 SST-2, 128 IMDB)")
    parser.add_argument("--precision", default="auto", choices=["auto", "no", "bf16"],
                        help="auto: what train.precision=auto picks on this machine (default)")
    parser.add_argument("--contenders", default="a,b,c,d")
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender; the median is reported")
    parser.add_argument("--tag", type=_common.tag, help="results: train_throughput-<precision>-<tag>.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from textclf.errors import UserError
    from textclf.precision import NAMES, resolve

    try:
        choice = resolve(args.precision, "cpu", key="--precision")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None  # refuses a precision that would be slow here, with the measured reason
    args.precision = choice.precision
    print(f"precision {choice.describe()}", flush=True)
    non_embedding, layers, hidden = model_shape()
    peaks = [matmul_peak(args.precision)]  # measured again before every round: the machine's speed drifts
    names = {"a": "textclf (default)", "b": "HF Trainer defaults", "c": "HF Trainer group_by_length",
             "d": "classic loop (pad to max_len)", "e": "textclf train.compile=true",
             "f": "HF Trainer group_by_length, torch_compile"}
    results = _common.record("train_throughput", choice, datasets={})
    for name in args.datasets.split(","):
        source = DATASETS[name][0]
        if not source.is_file():
            print(f"{name}: skipped ({source} not found)")
            continue
        n = args.n or (2048 if name == "sst2" else 128)
        write_subset(name, n)
        runs = {c: [] for c in args.contenders.split(",")}
        for rep in range(args.repeats):  # interleaved, so drift in machine load hits every contender
            peaks.append(matmul_peak(args.precision))
            for contender in runs:
                result = _common.run_child(__file__, "--contender", contender, "--dataset", name,
                                           "--precision", args.precision, label=f"{name} ({contender})")
                if result is None:
                    continue
                runs[contender].append(result)
                print(f"  {name} {contender} run {rep + 1}: {runs[contender][-1]['samples'] / runs[contender][-1]['seconds']:.1f} samples/s",
                      flush=True)
        rows = {}
        peak = max(peaks)  # the best the matmul reached in this run (a busy machine only slows it)
        for contender, measured in runs.items():
            if not measured:
                continue
            measured.sort(key=lambda r: r["seconds"])
            r = dict(measured[len(measured) // 2])  # the median run
            r["samples_per_s_all_runs"] = [round(m["samples"] / m["seconds"], 1) for m in measured]
            r["peak_rss_mb"] = max(m["peak_rss_mb"] for m in measured)
            flops = 6 * non_embedding * r["real_tokens"] + 12 * layers * hidden * r["attention_units"]
            r.update(contender=names[contender], samples_per_s=round(r["samples"] / r["seconds"], 2),
                     real_tokens_per_s=round(r["real_tokens"] / r["seconds"], 1),
                     useful_gflops=round(flops / r["seconds"] / 1e9, 2),
                     share_of_matmul_peak=round(flops / r["seconds"] / peak, 3))
            rows[contender] = r
            print(f"{name:5} {names[contender]:32} {r['samples_per_s']:8.1f} samples/s {r['real_tokens_per_s']:9.0f} "
                  f"tokens/s  {r['peak_rss_mb']:7.0f} MB  {100 * r['share_of_matmul_peak']:5.1f}% of peak", flush=True)
        for own in ("a", "e"):
            for peer in ("b", "c", "d", "f"):
                if own in rows and peer in rows:
                    rows[own][f"speedup_vs_{peer}"] = round(rows[own]["samples_per_s"] / rows[peer]["samples_per_s"], 2)
        results["datasets"][name] = dict(rows=n, max_len=DATASETS[name][4], batch_size=DATASETS[name][5],
                                         contenders=rows)
    results["matmul_peak_gflops"] = round(max(peaks) / 1e9, 1)
    results["matmul_peak_gflops_all_measurements"] = [round(p / 1e9, 1) for p in peaks]
    _common.save(results, suffix=f"-{NAMES[choice.precision]}", tag=args.tag)


if __name__ == "__main__":
    main()
