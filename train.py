"""Fine-tune an encoder on the arrays written by data_process.py.

    python train.py --config configs/sst2.yaml
    python train.py --config configs/sst2.yaml train.lr=2e-4 train.epochs=1 train.folds=[0,1]
    accelerate launch --num_processes 2 train.py --config configs/sst2.yaml
    python train.py --config configs/sst2.yaml train.resume=auto      # continue a stopped run

Writes checkpoints/<run>/ (see textclf/train.py for the layout).
"""

from textclf import cli
from textclf.errors import run_cli


def main(argv):
    cli.train(argv, prog="train.py")


if __name__ == "__main__":
    run_cli(main)
