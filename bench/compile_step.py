"""Does torch.compile pay here? textclf's eager step against the compiled one, compile time counted.

    .venv/bin/python bench/compile_step.py                        # SST-2 training steps, precision auto
    .venv/bin/python bench/compile_step.py --stage predict        # forward-only (eval.compile)
    .venv/bin/python bench/compile_step.py --dataset imdb --batches 12 --warmup 0

Each mode runs in its own process, with an empty inductor cache (a first run's compile time),
on the same length-grouped batches of real rows (packaged MiniLM-L6, mean head, autocast in the
precision auto picks, fused AdamW):
    eager           what train.compile=false runs: widths cut to the longest row, train.cpu_speedups
    eager-bucketed  the same with widths rounded up to compiling.bucket (the padding's own cost)
    compiled        what train.compile=true runs: compiling.compile_model, bucketed widths, no speed-ups
Each mode passes over the batches twice: the first pass holds the compiling (the seconds of the
first batch of every shape are reported too), the second is all warm and is the fair step time.
The break-even is how many passes a run must make before the compiled one is ahead:
(compiled first pass - eager first pass) / (eager second pass - compiled second pass).
Writes bench/results/compile_step-<stage>-<precision>.json. A benchmark, not a test.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _common  # noqa: E402
from step_profile import batches  # noqa: E402  (the same rows, lengths and batch sizes)
from textclf.premodels import install_minilm  # noqa: E402
from train_throughput import DATASETS  # noqa: E402

MODES = ("eager", "eager-bucketed", "compiled")


def child(args):
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")  # a first run: nothing cached
    import torch
    from transformers import AutoTokenizer

    from textclf import speedups
    from textclf.compiling import bucket, compile_model
    from textclf.model import HeadConfig, build_classifier

    torch.manual_seed(0)
    model_dir = install_minilm()
    data = batches(args.dataset, args.batches, AutoTokenizer.from_pretrained(model_dir))
    if args.mode != "eager":
        data = [(pad(x, bucket(x.shape[1])), pad(mask, bucket(x.shape[1]))) for x, mask in data]
    model = build_classifier(model_dir, HeadConfig(n_outputs=2, head="mean"))
    training = args.stage == "train"
    model.train(training)
    if args.mode == "compiled":
        compile_model(model)
    elif training:
        speedups.apply(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    first, passes = {}, []
    for _ in range(2):
        started = time.perf_counter()
        for x, mask in data:
            step(model, optimizer, x, mask, training, args.precision, first)
        passes.append(time.perf_counter() - started)
    _common.report({"shapes": len(first), "first_batches_s": sum(first.values()), "pass_s": passes,
                    "step_ms": passes[1] / len(data) * 1e3, "steps": len(data),
                    "real_tokens": int(sum(m.sum() for _, m in data)),
                    "padded_tokens": int(sum(m.numel() for _, m in data))})


def step(model, optimizer, x, mask, training, precision, first):
    """One batch (training: forward, backward, AdamW); the first batch of each shape is timed into `first`."""
    import torch

    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"), torch.set_grad_enabled(training):
        logits = model(x, mask)
    if training:
        torch.nn.functional.cross_entropy(logits.float(), torch.zeros(len(x), dtype=torch.long)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if tuple(x.shape) not in first:
        first[tuple(x.shape)] = time.perf_counter() - t0


def pad(t, width):
    import torch

    return torch.nn.functional.pad(t, (0, width - t.shape[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="sst2", choices=sorted(DATASETS))
    parser.add_argument("--stage", default="train", choices=["train", "predict"])
    parser.add_argument("--batches", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=["auto", "no", "bf16"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from textclf.precision import NAMES, resolve

    choice = resolve(args.precision, "cpu", key="--precision")
    print(f"precision {choice.describe()}", flush=True)
    if not DATASETS[args.dataset][0].is_file():
        print(f"skipped: {DATASETS[args.dataset][0]} not found")
        return
    runs = {mode: [] for mode in MODES}
    for _ in range(args.repeats):  # interleaved: the machine's drift falls on every mode alike
        for mode in MODES:
            r = _common.run_child(__file__, "--mode", mode, "--dataset", args.dataset, "--stage", args.stage,
                                  "--batches", args.batches, "--precision", choice.precision, label=mode)
            if r:
                runs[mode].append(r)
                print(f"{args.dataset} {args.stage} {mode:15} {r['shapes']:3} shapes, first batches "
                      f"{r['first_batches_s']:6.1f} s, passes {r['pass_s'][0]:6.1f} s then {r['pass_s'][1]:6.1f} s "
                      f"({r['step_ms']:.1f} ms a batch)", flush=True)
    summary = {}
    for mode, rs in runs.items():
        if rs:
            summary[mode] = {"first_pass_s": statistics.median(r["pass_s"][0] for r in rs),
                             "second_pass_s": statistics.median(r["pass_s"][1] for r in rs),
                             "first_batches_s": statistics.median(r["first_batches_s"] for r in rs),
                             "step_ms": statistics.median(r["step_ms"] for r in rs), "shapes": rs[0]["shapes"],
                             "padded_tokens": rs[0]["padded_tokens"], "real_tokens": rs[0]["real_tokens"], "runs": rs}
    eager, compiled = summary.get("eager"), summary.get("compiled")
    if eager and compiled:
        gain = eager["second_pass_s"] - compiled["second_pass_s"]
        extra = compiled["first_pass_s"] - eager["first_pass_s"]
        summary["compiled_vs_eager_warm"] = round(eager["second_pass_s"] / compiled["second_pass_s"], 3)
        summary["break_even_passes"] = round(extra / gain, 1) if gain > 0 else None  # None: never
        print(f"compiled warm pass {summary['compiled_vs_eager_warm']}x eager's; break-even after "
              f"{summary['break_even_passes'] or 'never (the compiled pass is slower)'} passes of "
              f"{args.batches} batches", flush=True)
    _common.save(_common.record("compile_step", choice, dataset=args.dataset, stage=args.stage,
                                batches=args.batches, **summary), f"-{args.stage}-{NAMES[choice.precision]}")


if __name__ == "__main__":
    main()
