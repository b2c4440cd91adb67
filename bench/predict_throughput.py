"""Prediction throughput: textclf's Predictor and its ONNX Runtime predictor against
transformers' pipeline and Trainer.predict.

    .venv/bin/python bench/predict_throughput.py [--n 2000 --batch-size 64]

One model for everyone: MiniLM-L6 with the pooler head, trained by textclf on 4,000 SST-2
training sentences (one epoch, max_len 128), then exported with `python -m textclf.export`
as a native BertForSequenceClassification folder (for b and c) and as ONNX with int8 (d, e).
Same texts (SST-2 dev + test sentences, cycled to n), same batch size, the same precision for
the torch contenders (`--precision auto`, the default, resolves as eval.precision=auto would on
this machine; ONNX runs fp32 and int8), every contender in its own process, three interleaved
runs each (median reported):
    (a) textclf Predictor.from_run(...).predict(texts)   (tokenize + length-sorted batches)
    (b) transformers.pipeline("text-classification", batch_size=...)
    (c) Trainer.predict with its default (sequential) sampler and DataCollatorWithPadding
    (d) textclf.onnx_predict.OnnxPredictor, fp32 graph
    (e) the same with the int8 (dynamically quantised) graph
    (f) textclf Predictor.from_run(..., precision="int8"): torch's dynamic int8 on the CPU (quantize.py)
Accuracy of every contender on SST-2 dev (872 sentences) is measured in the same children.
Writes bench/results/predict_throughput.json (predict_throughput-bs<B>.json for another batch
size). A benchmark, not a test.
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


def sst2(name):
    with open(SST2 / name, encoding="utf-8") as fh:
        rows = [line.rstrip("\n").split("\t") for line in fh][1:]
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def prepare():
    """The trained run, its HF export and its ONNX export (fp32 + int8), made once."""
    from textclf.export import export
    from textclf.premodels import install_minilm

    model_dir = install_minilm()
    run = WORK / "ck" / "bench-sst2"
    if not (run / "fold0" / "done.json").is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        texts_, labels = sst2("train.tsv")
        train = WORK / "train.csv"
        with open(train, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(zip(texts_[:4000], labels[:4000]))
        common = [f"model.name={model_dir}", f"data.output_dir={WORK / 'data'}", "data.name=bench-sst2",
                  f"train.output_dir={WORK / 'ck'}", "train.run=bench-sst2"]
        subprocess.run([sys.executable, str(ROOT / "data_process.py"), *common, f"data.train_file={train}",
                        "data.overwrite=true", "data.max_len=128", "data.valid_size=0.05"], check=True,
                       capture_output=True)
        subprocess.run([sys.executable, str(ROOT / "train.py"), *common, "train.epochs=1", "train.overwrite=true",
                        "model.head=pooler", "train.lr=5e-5", "train.batch_size=32", "train.report_to=none"],
                       check=True, capture_output=True)
    for fmt in ("hf", "onnx"):
        if not (WORK / f"export-{fmt}" / "export.json").is_file():
            export(run, fmt, WORK / f"export-{fmt}", int8=fmt == "onnx", overwrite=True)
    return run


def child(contender, n, batch_size, precision):
    import numpy as np
    import torch

    torch.set_grad_enabled(False)
    data = texts(n)
    dev, dev_labels = sst2("dev.tsv")
    run, hf_dir = WORK / "ck" / "bench-sst2", WORK / "export-hf"
    if contender in ("a", "f"):
        from textclf import Predictor

        predictor = Predictor.from_run(run, batch_size=batch_size, device="cpu",
                                       precision="int8" if contender == "f" else precision)
        started = time.time()
        out = predictor.predict(data)
        seconds = time.time() - started
        assert len(out["labels"]) == n
        dev_probs = predictor.predict(dev)["probs"]
    elif contender in ("d", "e"):
        from textclf.onnx_predict import OnnxPredictor

        predictor = OnnxPredictor.from_export(WORK / "export-onnx", int8=contender == "e", batch_size=batch_size)
        started = time.time()
        out = predictor.predict(data)
        seconds = time.time() - started
        assert len(out["labels"]) == n
        dev_probs = predictor.predict(dev)["probs"]
    elif contender == "b":
        from transformers import pipeline

        pipe = pipeline("text-classification", model=str(hf_dir), tokenizer=str(hf_dir), device="cpu",
                        truncation=True, max_length=128, top_k=None,
                        dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
        started = time.time()
        out = pipe(data, batch_size=batch_size)
        seconds = time.time() - started
        assert len(out) == n
        names = pipe.model.config.id2label
        dev_probs = np.array([[next(s["score"] for s in row if s["label"] == names[k]) for k in range(2)]
                              for row in pipe(dev, batch_size=batch_size)])
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

        def predict(rows):
            enc = tokenizer(rows, truncation=True, max_length=128)  # tokenizing is part of the job for everyone
            dataset = [{"input_ids": i, "attention_mask": m, "token_type_ids": t}
                       for i, m, t in zip(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])]
            return trainer.predict(dataset).predictions

        started = time.time()
        out = predict(data)
        seconds = time.time() - started
        assert out.shape[0] == n
        dev_probs = predict(dev)
    accuracy = float((np.asarray(dev_probs).argmax(1) == np.array(dev_labels)).mean())
    return {"seconds": seconds, "dev_accuracy": accuracy}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=["auto", "no", "bf16"])
    parser.add_argument("--tag", type=_common.tag, help="results: predict_throughput[-bsN]-<tag>.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _common.report(child(args.child, args.n, args.batch_size, args.precision))
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
    names = {"a": "textclf Predictor", "b": "transformers pipeline", "c": "Trainer.predict",
             "d": "textclf OnnxPredictor fp32", "e": "textclf OnnxPredictor int8", "f": "textclf Predictor int8"}
    runs = {c: [] for c in names}
    accuracy = {}
    for _ in range(args.repeats):
        for contender in names:
            # the child protocol passes `--child <contender>`: the contender is the flag's value
            result = _common.run_child(__file__, contender, "--n", args.n, "--batch-size", args.batch_size,
                                       "--precision", choice.precision, label=contender)
            if result is not None:
                runs[contender].append(result["seconds"])
                accuracy[contender] = result["dev_accuracy"]
    results = _common.record("predict_throughput", choice, rows=args.n, batch_size=args.batch_size, contenders={})
    for contender, seconds in runs.items():
        if not seconds:
            continue
        median = sorted(seconds)[len(seconds) // 2]
        results["contenders"][contender] = dict(name=names[contender], seconds=round(median, 2),
                                                samples_per_s=round(args.n / median, 1),
                                                all_runs_samples_per_s=[round(args.n / s, 1) for s in seconds],
                                                sst2_dev_accuracy=round(accuracy[contender], 4))
        print(f"{names[contender]:28} {args.n / median:8.1f} samples/s   SST-2 dev accuracy {accuracy[contender]:.4f}",
              flush=True)
    c = results["contenders"]
    for ours in ("a", "d", "e", "f"):
        for peer in ("b", "c"):
            if ours in c and peer in c:
                c[ours][f"speedup_vs_{peer}"] = round(c[ours]["samples_per_s"] / c[peer]["samples_per_s"], 2)
    if "e" in c and "b" in c and "a" in c:
        loss = (c["a"]["sst2_dev_accuracy"] - c["e"]["sst2_dev_accuracy"]) * 100
        results["target_onnx_int8"] = dict(speedup_vs_pipeline=c["e"]["speedup_vs_b"], accuracy_loss_points=round(loss, 2),
                                           met=c["e"]["speedup_vs_b"] >= 3 and loss <= 0.5,
                                           target=">= 3x pipeline at <= 0.5 point accuracy loss on SST-2 dev")
        print(f"ONNX int8: {c['e']['speedup_vs_b']:.2f}x pipeline, accuracy loss {loss:.2f} points "
              f"({'met' if results['target_onnx_int8']['met'] else 'MISSED'})", flush=True)
    if "f" in c and "b" in c and "a" in c:
        loss = (c["a"]["sst2_dev_accuracy"] - c["f"]["sst2_dev_accuracy"]) * 100
        results["target_predictor_int8"] = dict(speedup_vs_pipeline=c["f"]["speedup_vs_b"],
                                                accuracy_loss_points=round(loss, 2),
                                                met=c["f"]["speedup_vs_b"] >= 3 and loss <= 0.5,
                                                target=">= 3x pipeline at <= 0.5 point accuracy loss on SST-2 dev")
        print(f"Predictor int8: {c['f']['speedup_vs_b']:.2f}x pipeline, accuracy loss {loss:.2f} points against "
              f"the Predictor in {choice.precision} ({'met' if results['target_predictor_int8']['met'] else 'MISSED'})",
              flush=True)
    _common.save(results, "" if args.batch_size == 64 else f"-bs{args.batch_size}", tag=args.tag)


if __name__ == "__main__":
    main()
