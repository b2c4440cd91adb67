"""textclf/precision.py: the precision `auto` picks on each kind of device, and the refusals.

The decision table runs on faked devices (every branch: CUDA with and without native bf16,
CPUs with and without native bf16 matmul, doubtful flags settled by a probe, other devices,
the launcher's setting); one test runs the real probe on the machine the tests run on."""

import json
import math
import time

import pytest
import torch

from textclf import precision
from textclf.errors import UserError
from textclf.precision import Device, choose

AVX2 = Device("cpu", "AMD EPYC", "AVX2", ("avx2",), "x86_64")
SPR = Device("cpu", "Intel Xeon Platinum 8480", "AVX512", ("avx2", "avx512_f", "avx512_bf16", "amx_tile", "amx_bf16"),
             "x86_64")
ZEN4 = Device("cpu", "AMD EPYC 9654", "AVX512", ("avx2", "avx512_f", "avx512_bf16"), "x86_64")
SKYLAKE = Device("cpu", "Intel Xeon Gold 6148", "AVX512", ("avx2", "avx512_f"), "x86_64")
GRAVITON = Device("cpu", "Neoverse-V1", "SVE256", ("bf16", "sve"), "aarch64")
T4 = Device("cuda", "Tesla T4", "7.5")
P100 = Device("cuda", "Tesla P100-PCIE-16GB", "6.0")
GTX1080 = Device("cuda", "NVIDIA GeForce GTX 1080", "6.1")
A100 = Device("cuda", "NVIDIA A100-SXM4-80GB", "8.0")
H100 = Device("cuda", "NVIDIA H100 80GB HBM3", "9.0")


class Probe:
    """A fake matmul probe: fixed milliseconds per precision; counts its calls."""

    def __init__(self, **ms):
        self.ms, self.calls = {"no": 1.0, **ms}, 0

    def __call__(self, precisions):
        self.calls += 1
        return {k: v for k, v in self.ms.items() if k == "no" or k in precisions}


def no_probe(precisions):
    raise AssertionError("the flags were clear: no probe should run")


@pytest.mark.parametrize("device, expected", [(A100, "bf16"), (H100, "bf16"), (T4, "fp16"), (P100, "fp16"),
                                              (GTX1080, "no"), (Device("cuda", "Tesla K80", "3.7"), "no")])
def test_auto_on_cuda_picks_native_bf16_then_fast_fp16_then_fp32(device, expected):
    choice = choose("auto", device, no_probe)
    assert choice.precision == expected
    assert choice.requested == "auto" and device.name in choice.reason


def test_explicit_bf16_on_a_gpu_without_native_bf16_is_refused_with_the_fix():
    for gpu in (T4, P100, GTX1080):
        with pytest.raises(UserError, match=r"train.precision=bf16 .*no native bf16.*train.precision=auto"):
            choose("bf16", gpu, no_probe)
    assert choose("bf16", A100, no_probe).precision == "bf16"
    assert choose("fp16", T4, no_probe).precision == "fp16"
    with pytest.raises(UserError, match="fp16 at a small fraction"):
        choose("fp16", GTX1080, no_probe)


@pytest.mark.parametrize("device, expected", [(SPR, "bf16"), (ZEN4, "bf16"), (AVX2, "no"), (SKYLAKE, "no")])
def test_auto_on_a_cpu_follows_native_bf16_matmul_flags_without_a_probe(device, expected):
    choice = choose("auto", device, no_probe)
    assert choice.precision == expected
    assert ("has native bf16" in choice.reason) == (expected == "bf16")


def test_explicit_bf16_on_a_cpu_without_it_is_refused_with_the_measured_slowdown():
    probe = Probe(bf16=73.0)
    with pytest.raises(UserError) as err:
        choose("bf16", AVX2, probe, key="train.precision")
    message = str(err.value)
    assert "73.0x the fp32 time" in message and "AVX2" in message
    assert "train.precision=auto" in message and "train.precision=no" in message
    assert probe.calls == 1
    # where the flags say native bf16, an explicit bf16 is taken without measuring
    assert choose("bf16", SPR, no_probe).precision == "bf16"
    # no flags, yet the probe finds bf16 no slower: accepted with the measurement as its reason
    assert choose("bf16", SKYLAKE, Probe(bf16=1.2)).precision == "bf16"


def test_fp16_through_accelerate_on_a_cpu_is_refused_because_accelerate_would_run_fp32():
    for key in ("train.precision", "eval.precision"):  # both autocast through Accelerate
        with pytest.raises(UserError, match="no fp16 autocast"):
            choose("fp16", SPR, no_probe, key=key)
    # the Predictor autocasts by itself: fp16 is judged by speed there, and by the flags that make it fast
    with pytest.raises(UserError, match="would be slow"):
        choose("fp16", AVX2, Probe(fp16=60.0), key="precision", via_accelerate=False)
    sapphire = Device("cpu", "Intel Xeon 8480", "AVX512", SPR.flags + ("avx512_fp16",), "x86_64")
    assert "avx512_fp16" in choose("fp16", sapphire, no_probe, key="precision", via_accelerate=False).reason


def test_rocm_bf16_follows_the_gpu_architecture():
    assert choose("auto", Device("cuda", "AMD Instinct MI250X", "gfx90a", rocm=True), no_probe).precision == "bf16"
    assert choose("auto", Device("cuda", "AMD Instinct MI50", "gfx906", rocm=True), no_probe).precision == "fp16"
    with pytest.raises(UserError, match="no native bf16"):
        choose("bf16", Device("cuda", "AMD Radeon RX 6800", "gfx1030", rocm=True), no_probe)


def test_doubtful_cpu_flags_are_settled_by_the_probe():
    fast, slow = Probe(bf16=0.5), Probe(bf16=40.0)
    assert choose("auto", GRAVITON, fast).precision == "bf16"
    assert fast.calls == 1
    choice = choose("auto", GRAVITON, slow)
    assert choice.precision == "no" and "40.0x the fp32 time" in choice.reason
    assert choice.record()["probe_ms"] == {"no": 1.0, "bf16": 40.0}
    capped = Device("cpu", "Intel Xeon", "AVX512", SPR.flags, "x86_64", capped_isa="AVX2")
    assert choose("auto", capped, Probe(bf16=30.0)).precision == "no"
    assert choose("auto", Device("cpu", "", "AVX2", (), "x86_64"), Probe(bf16=0.6)).precision == "bf16"
    # a probe within noise of fp32 is not worth bf16's rounding
    assert choose("auto", GRAVITON, Probe(bf16=0.9)).precision == "no"


def test_other_devices_take_the_fastest_correct_precision_measured():
    mps = Device("mps", "mps")
    assert choose("auto", mps, Probe(bf16=0.7, fp16=0.4)).precision == "fp16"
    assert choose("auto", mps, Probe(bf16=0.95, fp16=0.9)).precision == "no"
    # a precision the probe left out (it failed or disagreed with fp32) is never picked
    assert choose("auto", mps, Probe(fp16=0.4)).precision == "fp16"
    with pytest.raises(UserError, match="slow or wrong"):
        choose("bf16", mps, Probe(fp16=0.4))


def test_no_is_never_refused_and_the_launcher_setting_must_agree():
    assert choose("no", AVX2, no_probe).precision == "no"
    assert choose("no", GTX1080, no_probe).precision == "no"
    # accelerate launch --mixed_precision no is its default: auto still decides
    assert choose("auto", A100, no_probe, launcher="no").precision == "bf16"
    taken = choose("auto", A100, no_probe, launcher="fp16")
    assert (taken.precision, taken.requested) == ("fp16", "accelerate launch")
    with pytest.raises(UserError, match="must agree"):
        choose("bf16", A100, no_probe, launcher="fp16")
    with pytest.raises(UserError, match="no native bf16"):  # the launcher's choice is checked like any other
        choose("auto", T4, no_probe, launcher="bf16")
    with pytest.raises(UserError, match="does not run"):
        choose("auto", H100, no_probe, launcher="fp8")


def test_the_record_says_what_was_chosen_on_which_device_and_why():
    record = choose("auto", SPR, no_probe).record()
    assert record["precision"] == "bf16" and record["requested"] == "auto"
    assert record["device"]["name"] == SPR.name and "amx_bf16" in record["device"]["flags"]
    assert "native bf16" in record["reason"]


def _matmul_seconds(dtype, size=256, reps=5):
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return best


def test_auto_on_this_machine_picks_a_precision_whose_matmul_is_not_slower_than_fp32():
    choice = precision.resolve("auto", "cpu")
    device = precision.cpu_device()
    assert choice.device == device and device.capability
    if choice.precision == "no":
        return  # fp32 is the reference itself
    fp32, picked = _matmul_seconds(torch.float32), _matmul_seconds(choice.dtype)
    assert picked <= 1.25 * fp32, (choice.record(), fp32, picked)


def test_the_real_probe_times_fp32_and_checks_each_product():
    measured = precision.probe("cpu", ("bf16",), size=64)
    assert measured["no"] > 0
    assert set(measured) <= {"no", "bf16"}


# ---------------------------------------------------------------------------- in training


def test_auto_is_recorded_in_the_banner_run_json_and_start_record(stage, premodels, tmp_path):
    from test_train import make_data, records, train

    base = make_data(stage, premodels, tmp_path, toy_rows_for_precision())
    result = train(stage, tmp_path, base, "train.epochs=6", "train.batch_size=8", "train.lr=2e-3",
                   "train.precision=auto")
    expected = precision.resolve("auto", "cpu")
    run = tmp_path / "ck" / "toy"
    recorded = json.loads((run / "run.json").read_text())["precision"]
    assert recorded["requested"] == "auto"
    if precision._native_cpu_bf16(precision.cpu_device()) is not None:  # the flags decide: no timing noise
        assert recorded["precision"] == expected.precision
    expected = precision.Choice(recorded["precision"], "auto", recorded["reason"], expected.device)
    assert recorded["device"]["capability"] == torch.backends.cpu.get_cpu_capability()
    start = records(run, "start")[0]
    assert start["precision"] == expected.precision and start["precision_reason"] == recorded["reason"]
    assert f"precision {precision.NAMES[expected.precision]} (auto: " in result.out
    assert json.loads((run / "oof" / "metrics.json").read_text())["accuracy"] >= 0.75  # it learns


def test_explicit_slow_precision_is_refused_before_anything_is_written(stage, premodels, tmp_path):
    from test_train import make_data

    base = make_data(stage, premodels, tmp_path, toy_rows_for_precision())
    result = stage("train", *base, f"train.output_dir={tmp_path / 'ck'}", "train.precision=fp16")
    assert result.code == 2 and "train.precision=auto" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "ck").exists()
    device = precision.cpu_device()
    if not precision._native_cpu_bf16(device):
        result = stage("train", *base, f"train.output_dir={tmp_path / 'ck'}", "train.precision=bf16")
        if result.code == 2:  # refused: the reason is the measured slowdown
            assert "the fp32 time" in result.err and not (tmp_path / "ck").exists()


def toy_rows_for_precision():
    from test_train import toy_rows

    return toy_rows(80)


@pytest.fixture
def fp16_with_a_scaler(monkeypatch):
    """fp16 autocast and a real torch GradScaler on the CPU, wired into Accelerate as it is on a GPU
    (Accelerate itself creates the scaler only on CUDA-like devices). The scaler starts at 2^24 so
    that the first steps overflow in fp16, as they do on a GPU with its default 2^16 on larger models."""
    from accelerate import Accelerator

    import textclf.train as training

    def make_accelerator(config, run_dir, recorded=None):
        accelerator = Accelerator(mixed_precision="fp16", gradient_accumulation_steps=config.train.grad_accum)
        accelerator.native_amp = True  # autocast forward in fp16, unscale before clipping
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24, growth_interval=1000)
        choice = precision.Choice("fp16", "requested", "fp16 with a loss scaler on the CPU (test)",
                                  precision.cpu_device())
        return accelerator, choice

    monkeypatch.setattr(training, "make_accelerator", make_accelerator)


def test_fp16_loss_scaling_skips_overflows_clips_unscaled_gradients_and_resumes_exactly(
        stage, premodels, tmp_path, fp16_with_a_scaler):
    from test_train import make_data, records, strip_time, train

    base = make_data(stage, premodels, tmp_path, toy_rows_for_precision())
    args = ["train.epochs=6", "train.batch_size=8", "train.lr=2e-3", "train.max_grad_norm=1.0",
            "train.scheduler=constant", "train.warmup=0"]
    train(stage, tmp_path, base, *args, out="straight")
    run = tmp_path / "straight" / "toy"
    steps = records(run, "train")
    scales = [r["loss_scale"] for r in steps]
    skipped = steps[-1]["nonfinite_total"]
    # the first steps overflow: each one is skipped and halves the scale, then training proceeds
    assert 1 <= skipped < len(steps) // 2, [(r["step"], r["nonfinite_total"], r["loss_scale"]) for r in steps]
    assert scales[0] < 2.0 ** 24 and scales[-1] == scales[skipped]
    assert all(r["nonfinite_total"] == skipped for r in steps[skipped:])
    # the logged norm is of the unscaled gradients (scaled ones would be ~scale times larger)
    finite = [r["grad_norm"] for r in steps if math.isfinite(r["grad_norm"])]
    assert finite and max(finite) < 100 < min(scales)
    # the scheduler steps only on real updates: warmup=0 constant, so the LR never moved; the loss falls
    assert steps[-1]["loss"] < steps[skipped]["loss"]
    assert json.loads((run / "oof" / "metrics.json").read_text())["accuracy"] >= 0.75

    # stopped after its first step, then resumed: the scaler's state comes back with the rest
    train(stage, tmp_path, base, *args, "train.max_time=0.000001", out="stopped")
    stopped = tmp_path / "stopped" / "toy"
    assert (next(stopped.glob("fold0/last-*")) / "scaler.pt").is_file()
    train(stage, tmp_path, base, *args, "train.resume=auto", out="stopped")
    assert strip_time(records(stopped, "train")) == strip_time(steps)
    assert (stopped / "fold0/best/model.safetensors").read_bytes() == (run / "fold0/best/model.safetensors").read_bytes()


def test_accelerate_launch_and_train_precision_must_agree(stage, premodels, tmp_path, monkeypatch):
    from test_train import make_data

    base = make_data(stage, premodels, tmp_path, toy_rows_for_precision())
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # what `accelerate launch --mixed_precision fp16` sets
    result = stage("train", *base, f"train.output_dir={tmp_path / 'ck'}", "train.precision=bf16")
    assert result.code == 2 and "must agree" in result.err and "--mixed_precision no" in result.err
    assert not (tmp_path / "ck").exists()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # the launcher's default leaves the choice to textclf
    result = stage("train", *base, f"train.output_dir={tmp_path / 'ck'}", "train.precision=no", "train.epochs=1")
    assert result.code == 0, result


def test_a_resumed_run_keeps_the_precision_it_started_in(stage, premodels, tmp_path, monkeypatch):
    from test_train import make_data, train

    import textclf.train as training

    base = make_data(stage, premodels, tmp_path, toy_rows_for_precision())
    args = ["train.epochs=2", "train.batch_size=8"]
    train(stage, tmp_path, base, *args, "train.precision=no", "train.max_time=0.000001")
    asked = []
    real = training.resolve_shared
    monkeypatch.setattr(training, "resolve_shared", lambda requested, *a, **k: asked.append(requested) or
                        real(requested, *a, **k))
    result = train(stage, tmp_path, base, *args, "train.precision=auto", "train.resume=auto")
    assert asked == ["no"]  # the recorded precision, not a fresh auto decision
    assert "resuming from last-" in result.out
    recorded = json.loads((tmp_path / "ck" / "toy" / "run.json").read_text())["precision"]
    assert recorded["precision"] == "no" and recorded["requested"] == "requested"
