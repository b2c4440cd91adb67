"""Predict with a trained run: every split it is asked for, or raw texts.

    python evaluate.py --config configs/sst2.yaml eval.run=checkpoints/sst2
    python evaluate.py --config configs/sst2.yaml eval.texts='["a gripping film", "dull and long"]'
    python evaluate.py --config configs/sst2.yaml eval.input=new_rows.csv
    accelerate launch evaluate.py --config configs/sst2.yaml     # same rows as one process

Writes model_predictions/<run>/ (see textclf/evaluate.py for the layout).
"""

from textclf import cli
from textclf.errors import run_cli


def main(argv):
    cli.evaluate(argv, prog="evaluate.py")


if __name__ == "__main__":
    run_cli(main)
