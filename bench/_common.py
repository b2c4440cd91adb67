"""Shared by the benchmark scripts: each contender runs as `<script> --child ...` in a fresh
process (so its time and peak RSS are its own) and reports one `RESULT {json}` line; the
parent writes its table to bench/results/<name>.json."""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

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


def record(name, **fields):
    """The head of a results file: what ran, when, and on which machine."""
    return {"benchmark": name, "date": time.strftime("%Y-%m-%d"),
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()}, **fields}


def save(results):
    """Write bench/results/<benchmark>.json and say where."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{results['benchmark']}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return out
