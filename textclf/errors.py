"""User-facing errors: one line, exit code 2, no traceback."""

import sys


class UserError(Exception):
    """A problem with the user's input (config, files, models).

    The message is one line that says what is wrong, where, and how to fix it.
    """


def run_cli(main, argv=None):
    """Run `main(argv)`; turn a UserError into one line on stderr and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
