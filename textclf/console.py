"""Rank-aware printing: one process speaks for a run of several; and the end of such a run."""


def say(accelerator, message):
    """Print `message` once, from the main process (of all machines), flushed at once."""
    if accelerator.is_main_process:
        print(message, flush=True)


def shown(text, width=70):
    """A text as a line of output shows it: cut to `width` characters, with ... where it was cut."""
    return text if len(text) <= width else text[:width - 3] + "..."


def close_processes(accelerator):
    """The end of a stage: with several processes, close the process group before exit, as gloo's
    threads torn down at exit can abort a process ("terminate called without an active exception").
    Callers drop their own references to the prepared (DDP-wrapped) models first; the gc pass here
    then frees the wrappers, and any cycle holding one, while the group is still registered, so no
    wrapper is the group's last holder: one would destroy it holding the GIL, which a gloo thread
    finishing its last work may be waiting for (a hang)."""
    accelerator.free_memory()  # Accelerate's own references (the unwrapped models, optimizers), then gc.collect()
    accelerator.end_training()
