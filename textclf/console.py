"""Rank-aware printing: one process speaks for a run of several."""


def say(accelerator, message):
    """Print `message` once, from the main process (of all machines), flushed at once."""
    if accelerator.is_main_process:
        print(message, flush=True)


def shown(text, width=70):
    """A text as a line of output shows it: cut to `width` characters, with ... where it was cut."""
    return text if len(text) <= width else text[:width - 3] + "..."
