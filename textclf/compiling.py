"""Compiled models (`train.compile`, `eval.compile`): torch.compile (inductor) with bucketed batch widths.

A compiled model runs one graph per input shape, and compiling a graph takes seconds to a minute. textclf
cuts every batch to its longest row, so a run would meet nearly one width per batch; with compile on,
widths are rounded up to a bucket (16, 24, 32, 48, 64, 96, 128, ...: powers of two and 1.5 times them,
at most a third of padding) and a run compiles a handful of shapes: one per bucket its batches reach,
times full and last-partial batches, times training and evaluation.

`auto` compiles only where compiling was measured to pay, the compile time counted (bench/README.md,
`bench/compile_step.py`). On a CPU it was not: MiniLM-L6's training step, matmul-bound once
train.cpu_speedups has taken dropout and attention's overheads away, ran 0.98x-1.02x eager at equal
shapes (SST-2, bf16 and fp32) after ~30 s of compiling per shape, and the buckets' padding made a
compiled epoch slower still. On a GPU it has not been measured here: `true` turns it on.
With compile on, the CPU speed-ups are not applied (inductor fuses dropout and attention itself).
"""

import dataclasses

import torch

# device types where a compiled run was measured faster than eager, compile time included
MEASURED_TO_PAY = ()


@dataclasses.dataclass(frozen=True)
class Decision:
    """Whether models are compiled, and why."""

    on: bool
    requested: str
    reason: str

    def describe(self):
        return f"{'on' if self.on else 'off'} ({self.requested}: {self.reason})"

    def record(self):
        return dataclasses.asdict(self)


def resolve(setting, device_type):
    """The Decision for train.compile / eval.compile (True, False or "auto") on a device type."""
    if setting is True or setting is False:
        return Decision(setting, str(setting).lower(), "as asked")
    if device_type in MEASURED_TO_PAY:
        return Decision(True, "auto", f"measured to pay on {device_type}")
    why = ("measured no faster than eager on a CPU, ~30 s of compiling per shape" if device_type == "cpu"
           else f"not measured on {device_type}; true turns it on")
    return Decision(False, "auto", why)


def bucket(width, cap=None):
    """The smallest bucket width >= `width`: 16, 24, 32, 48, 64, 96, ... (capped at `cap`, the arrays' width)."""
    out = 16
    while out < width:
        out = out * 3 // 2 if out & (out - 1) == 0 else out * 4 // 3  # 16 -> 24 -> 32 -> 48 -> 64 ...
    return min(out, cap) if cap else out


def compile_model(model):
    """Compile `model` in place (its state_dict keys unchanged, so checkpoints are as eager ones); one graph per
    shape, with room for every bucket of training and evaluation."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    model.compile(dynamic=False)
    return model


def graphs_compiled():
    """How many graphs this process has compiled so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
