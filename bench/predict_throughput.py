"""Prediction throughput: textclf's Predictor against transformers' pipeline and Trainer.predict.

    .venv/bin/python bench/predict_throughput.py [--n 2000 --batch-size 64]

Same texts (SST-2 dev + test sentences, cycled to n), same batch size, the same MiniLM-L6
backbone with a 2-class head, the same precision (`--precision auto`, the default, resolves as
eval.precision=auto would on this machine), every contender in its own process, three
interleaved runs each (median reported):
    (a) textclf Predictor.from_run(...).predict(texts)   (tokenize + length-sorted batches)
    (b) transformers.pipeline("text-classification", batch_size=...)
    (c) Trainer.predict with its default (sequential) sampler and DataCollatorWithPadding
Writes bench/results/predict_throughput.json. A benchmark, not a test.
"""

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work" / "predict_throughput"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import _common  # noqa: E402
SST2 = ROOT.parent / "shared" / "data" / "sst2"


def texts(n):
    rows = []
    for name in ("dev.tsv", "test.tsv"):
        with open(SST2 / name, encoding="utf-8") as fh:
            rows += [line.rstrip("\n").split("\t")[0] for line in fh][1:]
    return [rows[i % len(rows)] for i in range(n)]


def prepare():
    """A textclf run and an equivalent HF sequence-classification folder (same backbone weights)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from textclf.premodels import install_minilm

    model_dir = install_minilm()
    run = WORK / "ck" / "bench"
    if not (run / "fold0" / "best" / "head.json").is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        train = WORK / "train.csv"
        with open(train, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows((t, i % 2) for i, t in enumerate(texts(200)))
        common = [f"model.name={model_dir}", f"data.output_dir={WORK / 'data'}", "data.name=bench",
                  f"train.output_dir={WORK / 'ck'}", "train.run=bench"]
        subprocess.run([sys.executable, str(ROOT / "data_process.py"), *common, f"data.train_file={train}",
                        "data.overwrite=true", "data.max_len=128"], check=True, capture_output=True)
        subprocess.run([sys.executable, str(ROOT / "train.py"), *common, "train.epochs=0.2", "train.overwrite=true",
                        "model.head=cls"], check=True, capture_output=True)
    hf_dir = WORK / "hf"
    if not (hf_dir / "config.json").is_file():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
        model.save_pretrained(hf_dir)
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(hf_dir)
    return run, hf_dir


def child(contender, n, batch_size, precision):
    import torch

    torch.set_grad_enabled(False)
    data = texts(n)
    run, hf_dir = WORK / "ck" / "bench", WORK / "hf"
    if contender == "a":
        from textclf import Predictor

        predictor = Predictor.from_run(run, batch_size=batch_size, device="cpu", precision=precision)
        started = time.time()
        out = predictor.predict(data)
        assert len(out["labels"]) == n
    elif contender == "b":
        from transformers import pipeline

        pipe = pipeline("text-classification", model=str(hf_dir), tokenizer=str(hf_dir), device="cpu",
                        truncation=True, max_length=128,
                        dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
        started = time.time()
        out = pipe(data, batch_size=batch_size)
        assert len(out) == n
    else:
        from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                                  Trainer, TrainingArguments)

        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        model = AutoModelForSequenceClassification.from_pretrained(hf_dir)
        bf16 = precision == "bf16"
        trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(WORK / "trainer"), use_cpu=True,
                                                              per_device_eval_batch_size=batch_size, report_to=[],
                                                              disable_tqdm=True, bf16=bf16, bf16_full_eval=bf16),
                          data_collator=DataCollatorWithPadding(tokenizer))
        started = time.time()
        enc = tokenizer(data, truncation=True, max_length=128)  # tokenizing is part of the job for every contender
        dataset = [{"input_ids": i, "attention_mask": m, "token_type_ids": t}
                   for i, m, t in zip(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])]
        out = trainer.predict(dataset)
        assert out.predictions.shape[0] == n
    return time.time() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=["auto", "no", "bf16"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _common.report({"seconds": child(args.child, args.n, args.batch_size, args.precision)})
        return
    if not (SST2 / "dev.tsv").is_file():
        print(f"skipped: {SST2} not found")
        return
    from textclf.errors import UserError
    from textclf.precision import resolve

    try:
        choice = resolve(args.precision, "cpu", key="--precision", via_accelerate=False)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"precision {choice.describe()}", flush=True)
    prepare()
    names = {"a": "textclf Predictor", "b": "transformers pipeline", "c": "Trainer.predict"}
    runs = {c: [] for c in names}
    for _ in range(args.repeats):
        for contender in names:
            # the child protocol passes `--child <contender>`: the contender is the flag's value
            result = _common.run_child(__file__, contender, "--n", args.n, "--batch-size", args.batch_size,
                                       "--precision", choice.precision, label=contender)
            if result is not None:
                runs[contender].append(result["seconds"])
    results = _common.record("predict_throughput", choice, rows=args.n, batch_size=args.batch_size, contenders={})
    for contender, seconds in runs.items():
        if not seconds:
            continue
        median = sorted(seconds)[len(seconds) // 2]
        results["contenders"][contender] = dict(name=names[contender], seconds=round(median, 2),
                                                samples_per_s=round(args.n / median, 1),
                                                all_runs_samples_per_s=[round(args.n / s, 1) for s in seconds])
        print(f"{names[contender]:24} {args.n / median:8.1f} samples/s", flush=True)
    c = results["contenders"]
    if "a" in c:
        for peer in ("b", "c"):
            if peer in c:
                c["a"][f"speedup_vs_{peer}"] = round(c["a"]["samples_per_s"] / c[peer]["samples_per_s"], 2)
    _common.save(results)


if __name__ == "__main__":
    main()
