"""One training step, taken apart: the stock path against train.cpu_speedups, on real batches.

    .venv/bin/python bench/step_profile.py                      # SST-2, 50 batches of 32
    .venv/bin/python bench/step_profile.py --dataset imdb --batches 7 --warmup 2

Each mode runs in its own process (freed-memory settings are process-wide): the packaged
MiniLM-L6 with a mean head, autocast in the precision train.precision=auto picks here (or
--precision), length-grouped batches of real rows, and per step
forward, backward, clipping (max norm 1) and fused AdamW. Prints milliseconds per step and
its parts after `--warmup` steps. A benchmark, not a test; it writes nothing.
"""

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _common  # noqa: E402
from textclf.premodels import install_minilm  # noqa: E402
from train_throughput import DATASETS, source_rows  # noqa: E402  (the same rows, lengths and batch sizes)


def batches(dataset, n_batches, tokenizer):
    """Length-grouped batches of the dataset's rows, in shuffled order, cut to their longest row."""
    import torch

    max_len, batch_size = DATASETS[dataset][4], DATASETS[dataset][5]
    texts = [text for text, _ in source_rows(dataset, batch_size * n_batches)]
    ids = tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    random.Random(1).shuffle(groups)
    out = []
    for group in groups:
        width = max(len(ids[i]) for i in group)
        x = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros_like(x)
        for row, i in enumerate(group):
            x[row, :len(ids[i])] = torch.tensor(ids[i])
            mask[row, :len(ids[i])] = 1
        out.append((x, mask))
    return out


def child(args):
    import torch
    from transformers import AutoTokenizer

    from textclf import speedups
    from textclf.model import HeadConfig, build_classifier

    torch.manual_seed(0)
    model_dir = install_minilm()
    data = batches(args.dataset, args.batches, AutoTokenizer.from_pretrained(model_dir))
    model = build_classifier(model_dir, HeadConfig(n_outputs=2, head="mean"))
    model.train()
    if args.mode == "speedups":
        speedups.apply(model)
        from accelerate import Accelerator

        from textclf.loop import clip_gradients

        accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    params = list(model.parameters())
    parts = dict(forward=0.0, backward=0.0, clip=0.0, optimizer=0.0)
    for k, (x, mask) in enumerate(data):
        if k == args.warmup:
            parts = dict.fromkeys(parts, 0.0)
            started = time.perf_counter()
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logits = model(x, mask)
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.zeros(len(x), dtype=torch.long))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if args.mode == "speedups":  # train.py's clipping (the rows a FastEmbedding wrote)
            clip_gradients(accelerator, model, 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[name] += dt
    steps = len(data) - args.warmup
    _common.report({"step_ms": (time.perf_counter() - started) / steps * 1e3,
                    **{f"{k}_ms": v / steps * 1e3 for k, v in parts.items()}})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="sst2", choices=sorted(DATASETS))
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=["auto", "no", "bf16"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from textclf.errors import UserError
    from textclf.precision import resolve

    try:
        choice = resolve(args.precision, "cpu", key="--precision")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"precision {choice.describe()}", flush=True)
    if not DATASETS[args.dataset][0].is_file():
        print(f"skipped: {DATASETS[args.dataset][0]} not found")
        return
    for rep in range(args.repeats):
        for mode in ("stock", "speedups"):
            r = _common.run_child(__file__, "--mode", mode, "--dataset", args.dataset, "--batches", args.batches,
                                  "--warmup", args.warmup, "--precision", choice.precision, label=mode)
            if r:
                print(f"{args.dataset} {mode:9} step {r['step_ms']:7.1f} ms | forward {r['forward_ms']:6.1f} backward "
                      f"{r['backward_ms']:6.1f} clip {r['clip_ms']:5.1f} AdamW {r['optimizer_ms']:5.1f}", flush=True)


if __name__ == "__main__":
    main()
