"""SST-2 accuracy benchmark: configs/sst2.yaml end to end, with its wall time.

    .venv/bin/python bench/sst2_accuracy.py [key=value ...]     # e.g. train.epochs=1

Needs ../shared/data/sst2 (or data.train_file=... overrides) and premodels/all-MiniLM-L6-v2
(`python -m textclf.premodels minilm`); skips with a message when the data is absent.
Works in bench/work/ and writes bench/results/sst2_accuracy.json. Target: >= 0.89 dev
accuracy on the 2-core CPU machine (TF-IDF + LR: 0.83; published MiniLM-L12: 0.93).
"""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(overrides):
    from textclf.config import parse_args, resolve_path

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
    result = {
        "benchmark": "sst2_accuracy",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "overrides": overrides,
        "dev_accuracy": manifest["splits"]["valid"]["metrics"]["accuracy"],
        "test_accuracy": manifest["splits"]["test"]["metrics"]["accuracy"],
        "wall_seconds": timings,
        "train_minutes": round(timings["train.py"] / 60, 1),
        "target_dev_accuracy": 0.89,
    }
    out = ROOT / "bench" / "results" / "sst2_accuracy.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
