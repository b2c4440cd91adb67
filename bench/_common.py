"""Shared by the benchmark scripts: each contender runs as `<script> --child ...` in a fresh
process (so its time and peak RSS are its own) and reports one `RESULT {json}` line; the
parent writes its table to bench/results/<name>.json."""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results"

PREFIX = "RESULT "


def report(result):
    """Called in the child: hand the measurements to the parent."""
    print(PREFIX + json.dumps(result), flush=True)


def run_child(script, *args, label=""):
    """Run `script --child args...`; return the child's result dict, or None after printing its error."""
    proc = subprocess.run([sys.executable, str(script), "--child", *map(str, args)], capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith(PREFIX)), None)
    if proc.returncode != 0 or line is None:
        print(f"{label or ' '.join(map(str, args))} failed:\n{proc.stderr[-2000:]}", flush=True)
        return None
    return json.loads(line[len(PREFIX):])


def run_logged(cmd, log):
    """Run a command from the checkout with its output appended to `log`; its wall seconds. A failure
    stops the benchmark, naming the log."""
    started = time.time()
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n$ {' '.join(map(str, cmd))}\n")
        fh.flush()
        proc = subprocess.run(list(map(str, cmd)), cwd=RESULTS.parent.parent, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd[:4]))} failed; see {log}")
    return time.time() - started


def mean_sd(values):
    """{mean, sd, values} of a few seeds' figures, rounded to 4 places (sd 0 for one value)."""
    return {"mean": round(statistics.mean(values), 4), "sd": round(statistics.stdev(values), 4) if len(values) > 1
            else 0.0, "values": [round(v, 4) for v in values]}


def machine():
    """The machine a figure was measured on: CPU model, torch's capability level (AVX2, AVX512, ...),
    the instruction sets that decide bf16 speed, and the GPU if there is one."""
    import torch

    from textclf.precision import cpu_device

    cpu = cpu_device()
    out = {"cpu": cpu.name, "cpu_capability": cpu.capability, "cpu_flags": list(cpu.flags), "arch": cpu.arch,
           "cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def record(name, precision, **fields):
    """The head of a results file: what ran, when, in which precision, on which machine.
    `precision` is a textclf.precision.Choice, its record (a dict), or a plain word where none applies."""
    if hasattr(precision, "record"):
        precision = precision.record()
    if isinstance(precision, dict):
        precision = {k: v for k, v in precision.items() if k != "device"}  # the machine is recorded below
    return {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": machine(), "precision": precision,
            **fields}


def tag(text):
    """--tag: a word added to the results file's name, so a run sits beside the earlier ones."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use up to 40 letters, digits, '_', '.' or '-', starting "
                                         "with a letter or digit (it becomes part of a file name)")
    return text


def save(results, suffix="", tag=None):
    """Write bench/results/<benchmark><suffix>[-<tag>].json and say where."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{results['benchmark']}{suffix}{'-' + tag if tag else ''}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return out
