"""Which precision to train and predict in, per device: `train.precision` and `eval.precision`.

    no      fp32 everywhere
    bf16    bf16 autocast (matmuls in bf16, weights and optimizer in fp32)
    fp16    fp16 autocast with loss scaling (training), plain fp16 autocast (prediction)
    auto    the fastest of these that is exact enough on this device:

    CUDA     bf16 where the GPU has it natively (compute capability >= 8.0: A100, L4, H100, RTX 30xx+);
             else fp16 with loss scaling where fp16 is fast (tensor cores from 7.0: V100, T4, RTX 20xx;
             P100's 6.0); else fp32. torch.cuda.is_bf16_supported() counts emulation, so it is not asked.
    CPU      bf16 where the CPU has native bf16 matmul (AVX512-BF16 or AMX); else fp32. Without them
             a bf16 matmul is 20-100x slower than fp32. Flags that leave doubt (another architecture,
             oneDNN's ISA capped by ONEDNN_MAX_CPU_ISA, no flags readable) are settled by timing a
             256^3 matmul in each precision (well under a second, even where bf16 is slow).
    other    (Apple MPS, Intel XPU, ...) the probe decides among the precisions with an autocast on
             that device, keeping only those whose product agrees with fp32.

An explicit bf16 or fp16 that would be slow or unsupported on the device is refused with the
measured reason; `no` is never refused. Under `accelerate launch --mixed_precision X` (X not `no`),
`auto` means X, and an explicit value that differs from X is refused: both name one precision.
"""

import dataclasses
import os
import platform
import time

import torch

from .errors import UserError

PRECISIONS = ("no", "fp16", "bf16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}

# The CPU instruction sets that decide a precision's speed (int8's too: VNNI, AMX-INT8); recorded with
# every decision and benchmark.
CPU_FLAGS = ("avx2", "avx512_f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16",
             "avx_ne_convert", "bf16", "sve", "sve2", "i8mm", "avx512_vnni", "avx_vnni", "amx_int8")
_FLAG_ALIASES = {"avx512f": "avx512_f", "amx-bf16": "amx_bf16", "amx-tile": "amx_tile", "amx-fp16": "amx_fp16",
                 "amx-int8": "amx_int8", "avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni"}

FASTER = 1.25  # a precision must be this much faster than fp32 in the probe to be picked
SLOWER = 1.5  # an explicit precision this much slower than fp32 is refused


@dataclasses.dataclass(frozen=True)
class Device:
    """What decides a precision's speed on one device."""

    type: str  # cpu | cuda | mps | xpu | ...
    name: str = ""  # CPU model or GPU name
    capability: str = ""  # CPU: torch's dispatch level (AVX2, AVX512, ...); CUDA: compute capability "7.5"
    flags: tuple = ()  # CPU: the instruction sets of CPU_FLAGS that it has
    arch: str = ""  # CPU: x86_64, aarch64, ...
    rocm: bool = False  # then capability is the GPU architecture (gfx90a, ...)
    capped_isa: str = ""  # ONEDNN_MAX_CPU_ISA, when set

    def describe(self):
        if self.type == "cpu":
            native = [f for f in ("amx_bf16", "avx512_bf16") if f in self.flags]
            return f"CPU {self.name or self.arch} ({self.capability}{', ' + ', '.join(native) if native else ''})"
        if self.type == "cuda":
            return f"GPU {self.name} (compute capability {self.capability}{', ROCm' if self.rocm else ''})"
        return f"{self.type} device {self.name}".strip()

    def record(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items() if v}


@dataclasses.dataclass(frozen=True)
class Choice:
    """The precision to run in, and why."""

    precision: str
    requested: str
    reason: str
    device: Device
    probe_ms: dict | None = None  # matmul times that settled it, when a probe ran

    def describe(self):
        return f"{NAMES[self.precision]} ({self.requested}: {self.reason})"

    def record(self):
        out = {"precision": self.precision, "requested": self.requested, "reason": self.reason,
               "device": self.device.record()}
        if self.probe_ms:
            out["probe_ms"] = self.probe_ms
        return out

    @property
    def dtype(self):
        return DTYPES.get(self.precision)


# ---------------------------------------------------------------------------- the device


def _proc_cpuinfo():
    """(model name, flags) from /proc/cpuinfo on Linux; ("", set()) elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read(1 << 20)
    except OSError:
        return "", set()
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = {_FLAG_ALIASES.get(f, f) for f in value.split()}
    return name, flags


def cpu_device():
    name, flags = _proc_cpuinfo()
    try:  # torch >= 2.13: a dict of cpuinfo's flags; older versions give a string or lack it
        info = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):
        info = None
    if isinstance(info, dict):
        name = name or str(info.get("cpu_name") or "")
        flags |= {_FLAG_ALIASES.get(k, k) for k, v in info.items() if v is True}
    for flag, check in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_tile", "_is_amx_tile_supported"),
                        ("amx_fp16", "_is_amx_fp16_supported")):
        try:
            if getattr(torch.cpu, check)():
                flags.add(flag)
        except (AttributeError, RuntimeError):
            pass
    return Device("cpu", name=name or platform.processor(), capability=torch.backends.cpu.get_cpu_capability(),
                  flags=tuple(f for f in CPU_FLAGS if f in flags), arch=platform.machine().lower(),
                  capped_isa=os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "")


def describe_device(device):
    """The Device facts of a torch.device."""
    device = torch.device(device)
    if device.type == "cpu":
        return cpu_device()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        if torch.version.hip is not None:
            arch = getattr(torch.cuda.get_device_properties(index), "gcnArchName", "")
            return Device("cuda", name=torch.cuda.get_device_name(index), capability=arch.split(":")[0], rocm=True)
        major, minor = torch.cuda.get_device_capability(index)
        return Device("cuda", name=torch.cuda.get_device_name(index), capability=f"{major}.{minor}")
    return Device(device.type, name=str(device))


# ---------------------------------------------------------------------------- the probe


def probe(device, precisions=("bf16",), size=256, budget_s=1.0):
    """Milliseconds of a size^3 matmul in fp32 and in each precision on `device` (best of a few);
    a precision that fails or whose product disagrees with fp32 is left out."""
    device = torch.device(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device)
    b = torch.randn(size, size, generator=generator).to(device)
    reference = (a @ b).float()
    out = {}
    for name in ("no", *precisions):
        try:
            x, y = (a, b) if name == "no" else (a.to(DTYPES[name]), b.to(DTYPES[name]))
            product = x @ y  # the first call also sets up the kernel: not timed
            sync()
            error = (product.float() - reference).norm() / reference.norm()
            if not torch.isfinite(error) or error > 2e-2:
                continue
            best, spent = float("inf"), 0.0
            for _ in range(5):
                started = time.perf_counter()
                x @ y
                sync()
                took = time.perf_counter() - started
                best, spent = min(best, took), spent + took
                if spent > budget_s:
                    break
            out[name] = round(best * 1e3, 4)
        except (RuntimeError, TypeError):
            continue
    return out


# ---------------------------------------------------------------------------- the decision


def _native_cpu_bf16(device):
    """True / False from the CPU's flags, or None where they leave doubt (then a probe decides)."""
    if device.arch not in ("x86_64", "amd64", "i686", "x86") or device.capped_isa or not device.flags:
        return None
    return "avx512_bf16" in device.flags or "amx_bf16" in device.flags


def _cuda_fast(device, precision):
    """(fast, why) for a CUDA or ROCm GPU."""
    if device.rocm:  # AMD: fp16 is native on every ROCm GPU; bf16 on MI100 (gfx908), MI200/300, RDNA3 and later
        if precision == "bf16":
            arch = device.capability
            native = arch in ("gfx908", "gfx90a") or arch.startswith(("gfx94", "gfx95", "gfx11", "gfx12"))
            return native, "has native bf16" if native else "has no native bf16 (an MI100 or RDNA3 and later has)"
        return True, "runs fp16 natively"
    major, minor = (int(x) for x in device.capability.split(".")[:2])
    if precision == "bf16":
        if major >= 8:
            return True, "has native bf16"
        return False, "has no native bf16 (needs compute capability 8.0): torch would emulate it far slower than fp16"
    if major >= 7:
        return True, "has fp16 tensor cores"
    if (major, minor) in ((6, 0), (6, 2)):
        return True, "runs fp16 at twice its fp32 rate"
    return False, "runs fp16 at a small fraction of its fp32 rate"


def _ratio_text(probe_ms, precision):
    fp32, other = probe_ms.get("no"), probe_ms.get(precision)
    if other is None:
        return f"a {NAMES[precision]} matmul failed or disagreed with fp32 here"
    return (f"a 256^3 {NAMES[precision]} matmul measured {other / fp32:.1f}x the fp32 time here "
            f"({other:.2f} ms vs {fp32:.2f} ms)")


def choose(requested, device, probe_fn=None, key="train.precision", via_accelerate=True, launcher=None):
    """The Choice for `requested` (auto | no | fp16 | bf16) on `device` (a Device).

    probe_fn(precisions) -> {"no": ms, "bf16": ms, ...} times matmuls on the device; it is called
    only where the flags leave doubt or a refusal needs its measured reason. `via_accelerate`: the
    autocast is Accelerate's (train.py, evaluate.py), which has none for fp16 on a CPU; the
    Predictor autocasts itself. `launcher` is the precision `accelerate launch` asked for
    (ACCELERATE_MIXED_PRECISION), if any. Raises UserError for a precision slow or unsupported here."""
    if launcher not in (None, "", "no"):
        if launcher not in PRECISIONS:
            raise UserError(f"accelerate launch asks for mixed precision {launcher!r}, which textclf does not run; "
                            f"launch with --mixed_precision no and set {key}=auto, bf16 or fp16")
        if requested not in ("auto", launcher):
            raise UserError(f"accelerate launch says --mixed_precision {launcher} but {key}={requested}; they must "
                            f"agree: launch with --mixed_precision no (the sample configs do) and let {key} decide")
        requested = launcher
    launched = launcher not in (None, "", "no") and launcher == requested
    source = "auto" if requested == "auto" else ("accelerate launch" if launched else "requested")
    fix = f"use {key}=auto (picks the fastest precision here) or {key}=no"
    where = device.describe()

    if requested == "no":
        return Choice("no", source, f"{key}=no", device)

    if device.type == "cuda":
        if requested == "auto":
            for precision in ("bf16", "fp16"):
                fast, why = _cuda_fast(device, precision)
                if fast:
                    return Choice(precision, source, f"{where} {why}", device)
            return Choice("no", source, f"{where} {why}", device)
        fast, why = _cuda_fast(device, requested)
        if not fast:
            raise UserError(f"{key}={requested} is slow or unsupported here: {where} {why}; {fix}")
        return Choice(requested, source, f"{where} {why}", device)

    if device.type == "cpu":
        if requested == "fp16" and via_accelerate:
            raise UserError(f"{key}=fp16 on a CPU: Accelerate runs no fp16 autocast there, so it would run in fp32 "
                            f"labelled fp16; {fix}")
        wanted = ("amx_fp16", "avx512_fp16") if requested == "fp16" else ("amx_bf16", "avx512_bf16")
        flag = ", ".join(f for f in wanted if f in device.flags)
        native = _native_cpu_bf16(device) if requested != "fp16" else (bool(flag) if device.flags else None)
        if requested == "auto":
            if native is None:
                measured = probe_fn(("bf16",))
                fast = "bf16" in measured and measured["bf16"] * FASTER <= measured["no"]
                reason = f"{where}: {_ratio_text(measured, 'bf16')}"
                return Choice("bf16" if fast else "no", source, reason, device, measured)
            if native:
                return Choice("bf16", source, f"{where} has native bf16 matmul", device)
            return Choice("no", source, f"{where} has no native bf16 matmul (no AVX512-BF16 or AMX)", device)
        if native:
            return Choice(requested, source, f"{where} has native {NAMES[requested]} matmul ({flag})", device)
        measured = probe_fn((requested,))
        slow = requested not in measured or measured[requested] > SLOWER * measured["no"]
        if slow:
            raise UserError(f"{key}={requested} would be slow here: {where}, {_ratio_text(measured, requested)}; "
                            f"{fix}")
        return Choice(requested, source, f"{where}: {_ratio_text(measured, requested)}", device, measured)

    # MPS, XPU and other accelerators: the probe decides among the precisions with an autocast there
    candidates = tuple(p for p in ("bf16", "fp16") if torch.amp.is_autocast_available(device.type))
    if requested == "auto":
        measured = probe_fn(candidates)
        timed = {p: measured[p] for p in candidates if p in measured}
        best = min(timed, key=timed.get, default=None)
        if best is not None and timed[best] * FASTER <= measured["no"]:
            return Choice(best, source, f"{where}: {_ratio_text(measured, best)}", device, measured)
        return Choice("no", source, f"{where}: no precision measured faster than fp32 ({measured})", device, measured)
    if requested not in candidates:
        raise UserError(f"{key}={requested} is not supported on {where}: torch has no autocast there; {fix}")
    measured = probe_fn((requested,))
    if requested not in measured or measured[requested] > SLOWER * measured["no"]:
        raise UserError(f"{key}={requested} would be slow or wrong here: {where}, {_ratio_text(measured, requested)}; "
                        f"{fix}")
    return Choice(requested, source, f"{where}: {_ratio_text(measured, requested)}", device, measured)


def resolve(requested, device, key="train.precision", via_accelerate=True, launcher=None):
    """choose() on the real device, with the real probe."""
    facts = describe_device(device)
    return choose(requested, facts, lambda precisions: probe(device, precisions), key=key,
                  via_accelerate=via_accelerate, launcher=launcher)


def launcher_precision():
    """The mixed precision `accelerate launch` passed down (it always sets one; `no` is its default)."""
    value = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    return value or None


def autocast(choice, device_type):
    """A torch.autocast context for the choice (disabled for fp32)."""
    return torch.autocast(device_type, dtype=choice.dtype or torch.float32, enabled=choice.dtype is not None)


def resolve_shared(requested, key="train.precision"):
    """resolve() on the main process, handed to every process: they must all run one precision
    (a probe's timing could differ between them). Sets up accelerate's process state first, as
    the Accelerator made afterwards would (it reads ACCELERATE_USE_CPU; PartialState does not)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))

    def decide():
        return resolve(requested, state.device, key=key, launcher=launcher_precision())

    if state.num_processes == 1:
        return decide()
    from accelerate.utils import broadcast_object_list

    box = [None]
    if state.is_main_process:
        try:
            box[0] = decide()
        except Exception as err:  # every process must leave the broadcast, with the same outcome
            box[0] = err if isinstance(err, UserError) else RuntimeError(f"choosing the precision failed: {err!r}")
    broadcast_object_list(box)
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]
