"""Rank-aware printing: one process speaks for a run of several."""


def say(accelerator, message):
    """Print `message` once, from the main process (of all machines), flushed at once."""
    if accelerator.is_main_process:
        print(message, flush=True)
