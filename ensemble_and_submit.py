"""Placeholder for the ensemble_and_submit stage."""

import sys

if __name__ == "__main__":
    print("ensemble_and_submit.py: not implemented yet", file=sys.stderr)
    sys.exit(1)
