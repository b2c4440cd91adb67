"""The command line: the four stages, export and premodels, as installed commands.

    textclf-process  --config configs/sst2.yaml data.max_len=64      # = python data_process.py ...
    textclf-train    --config configs/sst2.yaml train.epochs=1       # = python train.py ...
    textclf-evaluate --config configs/sst2.yaml eval.run=checkpoints/sst2
    textclf-submit   --config configs/demo.yaml                      # = python ensemble_and_submit.py ...
    textclf-pseudo   --config configs/x.yaml pseudo.name=x-pseudo pseudo.predictions=[...]  # = python -m textclf.pseudo ...
    textclf-export   --run checkpoints/sst2 --format onnx --out exported/sst2-onnx   # = python -m textclf.export ...
    textclf-select   --predictions model_predictions/r8 --k 100 --out to_label.csv  # = python -m textclf.select ...
    textclf-premodels random bert                                    # = python -m textclf.premodels ...
    textclf-tune     --config configs/sst2.yaml tune.trials=8        # = python -m textclf.tune ...

Each stage function takes the arguments and the program name its usage line shows; the
top-level scripts of a checkout call them with their own file names. Installed, relative
paths resolve against the working directory (textclf.config.project_root).
"""

from .config import parse_args
from .errors import run_cli


# Each stage imports its module after parsing, so `--help` and config errors stay fast.
def process(argv, prog="textclf-process"):
    config = parse_args(argv, prog=prog)
    from .data import process as run

    run(config)


def train(argv, prog="textclf-train"):
    config = parse_args(argv, prog=prog)
    from .train import run

    run(config)


def evaluate(argv, prog="textclf-evaluate"):
    config = parse_args(argv, prog=prog)
    from .evaluate import run

    run(config)


def submit(argv, prog="textclf-submit"):
    config = parse_args(argv, prog=prog)
    from .ensemble import run

    run(config)


def pseudo(argv, prog="textclf-pseudo"):
    config = parse_args(argv, prog=prog)
    from .pseudo import run

    run(config)


def export(argv):
    from .export import main

    main(argv)


def tune(argv, prog="textclf-tune"):
    from .tune import main
    main(argv, prog)


def select(argv):
    from .select import main

    main(argv)


def premodels(argv):
    from .premodels import main

    main(argv)


# Console-script entry points (pyproject.toml [project.scripts]): no arguments, sys.argv is read.
def process_entry():
    run_cli(process)


def train_entry():
    run_cli(train)


def evaluate_entry():
    run_cli(evaluate)


def submit_entry():
    run_cli(submit)


def pseudo_entry():
    run_cli(pseudo)


def export_entry():
    run_cli(export)


def tune_entry():
    run_cli(tune)


def select_entry():
    run_cli(select)


def premodels_entry():
    run_cli(premodels)
