"""Placeholder for the train stage."""

import sys

if __name__ == "__main__":
    print("train.py: not implemented yet", file=sys.stderr)
    sys.exit(1)
