"""Compiled models (`train.compile`, `eval.compile`): torch.compile (inductor) with bucketed batch widths.

A compiled model runs one graph per input shape, and compiling a graph takes seconds to a minute. textclf
cuts every batch to its longest row, so a run would meet nearly one width per batch; with compile on,
widths are rounded up to a bucket (16, 24, 32, 48, 64, 96, 128, ...: powers of two and 1.5 times them,
at most a third of padding) and a run compiles a handful of shapes: one per bucket its batches reach,
times full and last-partial batches, times training and evaluation.

`auto` compiles only where compiling was measured to pay, the compile time counted (`bench/compile_step.py`,
bench/README.md). On a CPU it did not (2-core AMD EPYC, AVX512 with avx512_bf16, bf16, MiniLM-L6 on SST-2
batches): a warm compiled training pass took 1.5x eager's (1.14x eager's on the same bucketed widths:
inductor's kernels do not beat train.cpu_speedups, and the buckets' padding costs 1.3x), after ~29 s of
compiling per shape; prediction, 1.18x eager's (0.82x on the same widths), after ~10 s per shape. On an
AVX2-only CPU in fp32 (2026-12-07) the same: a warm compiled training pass took 1.43x eager's (1.07x on the
same widths) after ~59 s of compiling per shape. On a GPU it has not been measured here: `true` turns it on.
With compile on, the CPU speed-ups are not applied (inductor fuses dropout and attention itself).
"""

import dataclasses
import os
import shutil

import torch

from .errors import UserError

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


def resolve(setting, device_type, key="train.compile"):
    """The Decision for train.compile / eval.compile (True, False or "auto") on a device type."""
    if not (isinstance(setting, bool) or isinstance(setting, str) and setting == "auto"):
        raise UserError(f"{key}={setting!r}: use True, False or auto")
    if setting is True and device_type == "cpu" and not cpp_compiler():
        raise UserError(f"{key}=true on a CPU needs a C++ compiler (inductor builds its kernels with one) and none "
                        f"was found (CXX, g++, clang++, c++); install one, e.g. apt install g++, or set {key}=false")
    if setting is True or setting is False:
        return Decision(setting, str(setting).lower(), "as asked")
    if device_type in MEASURED_TO_PAY:
        return Decision(True, "auto", f"measured to pay on {device_type}")
    why = ("measured slower than eager on a CPU, and 30-60 s of compiling per shape" if device_type == "cpu"
           else f"not measured on {device_type}; true turns it on")
    return Decision(False, "auto", why)


def cpp_compiler():
    """The C++ compiler inductor would build CPU kernels with, or None."""
    return os.environ.get("CXX") or next(filter(None, map(shutil.which, ("g++", "clang++", "c++"))), None)


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
