"""SST-2 accuracy benchmark: configs/sst2.yaml end to end, with its wall time.

    .venv/bin/python bench/sst2_accuracy.py [key=value ...]     # e.g. train.epochs=1
    .venv/bin/python bench/sst2_accuracy.py --peer [key=value ...]

--peer also trains HF Trainer with train_sampling_strategy="group_by_length" (the peer (c) of
train_throughput.py) on the same rows with the same model, epochs, batch size, learning rate,
warmup, schedule, weight decay, precision and evaluation steps, and reports both dev accuracies:
the best of the evaluations (what each keeps as its best model) and the last one.

Needs ../shared/data/sst2 (or data.train_file=... overrides) and premodels/all-MiniLM-L6-v2
(`python -m textclf.premodels minilm`); skips with a message when the data is absent.
Works in bench/work/ and writes bench/results/sst2_accuracy.json. Target: >= 0.89 dev
accuracy on the 2-core CPU machine (TF-IDF + LR: 0.83; published MiniLM-L12: 0.93).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _common  # noqa: E402


def read_tsv(path, text_column, label_column):
    import csv

    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r[text_column] for r in rows], [int(r[label_column]) for r in rows]


def run_peer(config, precision):
    """HF Trainer, group_by_length, with the hyperparameters of `config`; dev accuracy at each evaluation."""
    import numpy as np
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)
    from transformers.utils import logging

    from textclf.config import resolve_path
    from textclf.premodels import install_minilm

    logging.set_verbosity_error()
    cfg, data = config.train, config.data
    model_dir = install_minilm()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def encode(path):
        texts, labels = read_tsv(resolve_path(path), data.text_columns[0], data.label_column)
        enc = tokenizer(texts, truncation=True, max_length=data.max_len)
        return [{"input_ids": i, "attention_mask": m, "token_type_ids": t, "labels": y}
                for i, m, t, y in zip(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], labels)]

    train, dev = encode(data.train_file), encode(data.valid_file)
    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, dtype=torch.float32)
    args = TrainingArguments(
        output_dir=str(ROOT / "bench" / "work" / "peer"), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, num_train_epochs=cfg.epochs, learning_rate=cfg.lr,
        warmup_steps=cfg.warmup, lr_scheduler_type=cfg.scheduler, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, bf16=precision == "bf16", use_cpu=True, seed=cfg.seed,
        eval_strategy="steps", eval_steps=cfg.eval_every_steps, save_strategy="no", report_to=[],
        logging_steps=cfg.eval_every_steps, disable_tqdm=True, train_sampling_strategy="group_by_length")

    def accuracy(prediction):  # label_ids come back in the (length-grouped) order of the predictions
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)
    started = time.time()
    trainer.train()
    seconds = time.time() - started
    final = trainer.evaluate()["eval_accuracy"]
    evals = [r["eval_accuracy"] for r in trainer.state.log_history if "eval_accuracy" in r]
    return {"dev_accuracy_best": max(evals), "dev_accuracy_last": final, "evaluations": len(evals),
            "train_minutes": round(seconds / 60, 1)}


def main(overrides):
    from textclf.config import parse_args, resolve_path

    peer = "--peer" in overrides
    overrides = [o for o in overrides if o != "--peer"]

    config = parse_args(["--config", "configs/sst2.yaml", *overrides])
    missing = [f for f in (config.data.train_file, config.data.valid_file) if f and not resolve_path(f).is_file()]
    if missing:
        print(f"skipped: SST-2 files not found ({', '.join(missing)})")
        return 0
    work = ROOT / "bench" / "work"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    common = ["--config", "configs/sst2.yaml", f"data.output_dir={work / 'data'}", f"data.name=sst2-{stamp}",
              f"train.output_dir={work / 'ck'}", f"train.run=sst2-{stamp}", f"eval.output_dir={work / 'mp'}", *overrides]
    timings = {}
    for script in ("data_process.py", "train.py", "evaluate.py"):
        start = time.time()
        extra = [f"eval.run={work / 'ck' / f'sst2-{stamp}'}"] if script == "evaluate.py" else []
        subprocess.run([sys.executable, str(ROOT / script), *common, *extra], cwd=ROOT, check=True)
        timings[script] = round(time.time() - start, 1)
    manifest = json.loads((work / "mp" / f"sst2-{stamp}" / "manifest.json").read_text())
    log = [json.loads(line) for line in (work / "ck" / f"sst2-{stamp}" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["accuracy"] for r in log if r["type"] == "eval"]
    precision = json.loads((work / "ck" / f"sst2-{stamp}" / "run.json").read_text())["precision"]
    result = _common.record(
        "sst2_accuracy", precision,
        overrides=overrides,
        dev_accuracy=manifest["splits"]["valid"]["metrics"]["accuracy"],
        dev_accuracy_last=evals[-1],
        evaluations=len(evals),
        test_accuracy=manifest["splits"]["test"]["metrics"]["accuracy"],
        wall_seconds=timings,
        train_minutes=round(timings["train.py"] / 60, 1),
        target_dev_accuracy=0.89,
    )
    if peer:
        result["peer_trainer_group_by_length"] = run_peer(config, precision["precision"])  # the same precision
        result["dev_accuracy_minus_peer"] = round(result["dev_accuracy"]
                                                  - result["peer_trainer_group_by_length"]["dev_accuracy_best"], 4)
    print(json.dumps(result, indent=2))
    _common.save(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
