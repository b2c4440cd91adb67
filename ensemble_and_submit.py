"""Blend several prediction sets and write a checked Kaggle-style submission.

    python ensemble_and_submit.py --config configs/demo.yaml
    python ensemble_and_submit.py --config configs/x.yaml \
        ensemble.predictions='[model_predictions/a, model_predictions/b]' \
        ensemble.method=weighted ensemble.sample_submission=data/sample_submission.csv

Writes submissions/<ensemble.name>.csv and a .json with the blend's validation score.
"""

from textclf import cli
from textclf.errors import run_cli


def main(argv):
    cli.submit(argv, prog="ensemble_and_submit.py")


if __name__ == "__main__":
    run_cli(main)
