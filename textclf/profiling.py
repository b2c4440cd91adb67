"""train.profile_steps=N: a torch profiler over one warm-up step and then N optimizer steps of the
first fold trained in a session, written as a Chrome trace (open it in Perfetto,
chrome://tracing, or TensorBoard's profiler plugin) under <run>/profile/.

The training loop starts it with `start` and calls `after_step` after each optimizer step, one
line each; the trace is written after its steps or when the fold stops, whichever comes first.
"""

import torch


class Profiler:
    def __init__(self, steps, folder, worker, report=print):
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.profiler = profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),
                                on_trace_ready=tensorboard_trace_handler(str(folder), worker_name=worker),
                                record_shapes=True, profile_memory=True)
        self.steps, self.folder, self.report = steps, folder, report
        self.steps_left = steps + 1  # the warm-up step, then the recorded ones
        self.profiler.start()

    def after_step(self, last=False):
        """One optimizer step done (`last`: the fold stops after it). Returns the profiler while it
        records, None once it has written its trace."""
        self.steps_left -= 1
        self.profiler.step()
        if self.steps_left > 0 and not last:
            return self
        self.profiler.stop()
        self.report(f"train: profiler trace of {self.steps} step(s) in {self.folder}")
        return None


def start(steps, folder, worker, report=print):
    """A Profiler recording `steps` optimizer steps into `folder` (None when steps is 0)."""
    return Profiler(steps, folder, worker, report) if steps else None
