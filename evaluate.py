"""Placeholder for the evaluate stage."""

import sys

if __name__ == "__main__":
    print("evaluate.py: not implemented yet", file=sys.stderr)
    sys.exit(1)
