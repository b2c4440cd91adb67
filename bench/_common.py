"""Shared by the benchmark scripts: each contender runs as `<script> --child ...` in a fresh
process (so its time and peak RSS are its own) and reports one `RESULT {json}` line."""

import json
import subprocess
import sys

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
