"""Turn raw CSV / TSV / JSONL files into padded token arrays for training.

    python data_process.py --config configs/sst2.yaml
    python data_process.py --config configs/sst2.yaml data.max_len=64 data.n_folds=5

Writes models_input_files/<data.name>/ (see textclf/data.py for the layout).
"""

from textclf import cli
from textclf.errors import run_cli


def main(argv):
    cli.process(argv, prog="data_process.py")


if __name__ == "__main__":
    run_cli(main)
