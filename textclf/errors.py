"""User-facing errors: one line, exit code 2, no traceback."""

import os
import sys


class UserError(Exception):
    """A problem with the user's input (config, files, models).

    The message is one line that says what is wrong, where, and how to fix it.
    """


def first_line(err, limit=200):
    """An exception's message cut to its first line (for the middle of a one-line error)."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else "no detail"


def run_cli(main, argv=None):
    """Run `main(argv)`; turn a UserError into one line on stderr and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        try:
            main(argv)
        finally:
            sys.stdout.flush()  # a reader that left early (| head) shows here, not as a traceback at exit
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # the reader of our output went away (`--help | head`): nothing more to say, and nowhere to say it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
