"""Killed runs, stop signals, a kill while a checkpoint is written, non-finite losses,
and state files that are not plain tensors."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, write
from test_train import records, strip_time, toy_rows

ARGS = ["train.epochs=3", "train.batch_size=4", "train.lr=1e-3", "train.save_every_steps=3", "train.log_every_steps=1"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory, premodels):
    """Data, and one uninterrupted run to compare against."""
    from conftest import run_stage

    tmp = tmp_path_factory.mktemp("faults")
    write(tmp / "train.csv", "text,label\n" + "".join(f"{t},{l}\n" for t, l in toy_rows(80)))
    base = [f"model.name={premodels('bert')}", f"data.output_dir={tmp / 'data'}", "data.name=toy"]
    assert run_stage("data_process", *base, f"data.train_file={tmp / 'train.csv'}").code == 0
    result = run_stage("train", *base, f"train.output_dir={tmp / 'straight'}", *ARGS)
    assert result.code == 0, result
    return dict(tmp=tmp, base=base, straight=tmp / "straight" / "toy")


def start_training(toy, out):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *toy["base"], f"train.output_dir={out}", *ARGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def wait_for_state(proc, fold_dir, min_step, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [int(p.name.split("-")[1]) for p in fold_dir.glob("last-*")] if fold_dir.exists() else []
        if steps and max(steps) >= min_step:
            return max(steps)
        assert proc.poll() is None, "training finished before it could be stopped"
        time.sleep(0.01)
    raise AssertionError("no state appeared in time")


def assert_same_as_straight(run, straight, where=""):
    assert strip_time(records(run, "eval")) == strip_time(records(straight, "eval")), where
    assert (run / "fold0/best/model.safetensors").read_bytes() == \
        (straight / "fold0/best/model.safetensors").read_bytes(), where
    assert np.array_equal(np.load(run / "oof/probs.npy"), np.load(straight / "oof/probs.npy")), where


def test_kill_9_mid_epoch_then_resume_is_bit_identical(toy, stage):
    out = toy["tmp"] / "killed"
    # 18 steps an epoch, 54 in all: a random point mid-run, or the one a failure reported
    target = int(os.environ.get("TEXTCLF_KILL_STEP") or random.Random().randint(4, 30))
    proc = start_training(toy, out)
    reached = wait_for_state(proc, out / "toy" / "fold0", target)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    where = f"killed after the state of step {reached} (target {target}; rerun with TEXTCLF_KILL_STEP={target})"
    print(where)
    assert proc.returncode == -signal.SIGKILL, where
    assert not (out / "toy" / "fold0" / "done.json").exists(), where
    result = stage("train", *toy["base"], f"train.output_dir={out}", *ARGS, "train.resume=auto")
    assert result.code == 0, (where, result)
    assert "resuming from last-" in result.out, where
    assert_same_as_straight(out / "toy", toy["straight"], where)


def test_sigterm_saves_state_and_exits_cleanly(toy, stage):
    out = toy["tmp"] / "terminated"
    proc = start_training(toy, out)
    saved = wait_for_state(proc, out / "toy" / "fold0", 6)
    print(f"SIGTERM sent after the state of step {saved}")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped by a stop signal; state saved" in stdout and "train.resume=" in stdout
    assert "Traceback" not in stderr
    steps = sorted(int(p.name.split("-")[1]) for p in (out / "toy" / "fold0").glob("last-*"))
    assert steps[-1] >= saved  # the state of the step where it stopped
    result = stage("train", *toy["base"], f"train.output_dir={out}", *ARGS, "train.resume=auto")
    assert result.code == 0, result
    assert_same_as_straight(out / "toy", toy["straight"])


KILL_DURING_WRITE = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from textclf import fileio
target, mode = sys.argv[2], sys.argv[3]
if mode == "while_writing":
    with fileio.atomic_dir(target, replace=True) as tmp:
        (tmp / "model.safetensors").write_bytes(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
else:  # between moving the old folder away and moving the new one in
    real_rename = os.rename
    calls = []
    def rename(a, b):
        calls.append(a)
        real_rename(a, b)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
    fileio.os.rename = rename
    with fileio.atomic_dir(target, replace=True) as tmp:
        (tmp / "model.safetensors").write_bytes(b"new weights")
"""


@pytest.mark.parametrize("mode", ["while_writing", "between_renames"])
def test_a_kill_during_a_checkpoint_write_keeps_the_previous_one(toy, tmp_path, mode):
    from textclf.fileio import recover_dir
    from textclf.model import load_classifier

    best = tmp_path / "fold0" / "best"
    shutil.copytree(toy["straight"] / "fold0" / "best", best)
    before = (best / "model.safetensors").read_bytes()
    script = write(tmp_path / "kill.py", KILL_DURING_WRITE)
    proc = subprocess.run([sys.executable, str(script), str(ROOT), str(best), mode], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    recover_dir(best)  # what train.py and evaluate.py do before reading a fold
    assert (best / "model.safetensors").read_bytes() == before
    assert [p.name for p in best.parent.iterdir()] == ["best"]
    model, spec = load_classifier(best)
    assert spec.labels.names == ["0", "1"]


@pytest.fixture
def inf_loss_on_class_1(monkeypatch):
    """Fault injection: the loss is +inf on every batch that holds a class-1 row, as an fp16
    overflow makes it (a class weight that overflows float32 is refused by the config now)."""
    from textclf.problem import Problem

    original = Problem.loss

    def loss(self, *args, **kwargs):
        inner = original(self, *args, **kwargs)
        return lambda logits, labels: inner(logits, labels) * torch.where((labels == 1).any(), float("inf"), 1.0)

    monkeypatch.setattr(Problem, "loss", loss)


def test_non_finite_losses_are_skipped_and_counted(toy, stage, inf_loss_on_class_1):
    # every batch holding a class-1 row has a non-finite loss
    out = toy["tmp"] / "nonfinite"
    result = stage("train", *toy["base"], f"train.output_dir={out}", "train.epochs=1", "train.batch_size=1",
                   "train.max_nonfinite=1000", "train.sampler=random")
    assert result.code == 0, result
    done = json.loads((out / "toy" / "fold0" / "done.json").read_text())
    assert 20 < done["nonfinite_total"] < 52  # about half of the 72 one-row steps
    weights = load_file(str(out / "toy" / "fold0" / "best" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_too_many_non_finite_steps_stop_the_run(toy, stage, inf_loss_on_class_1):
    result = stage("train", *toy["base"], f"train.output_dir={toy['tmp'] / 'nan'}", "train.epochs=1",
                   "train.batch_size=8", "train.max_nonfinite=3")
    assert result.code == 2
    assert "not finite for 3 steps in a row" in result.err and "train.lr" in result.err


def test_a_pickle_bearing_state_file_is_refused(toy, stage):
    out = toy["tmp"] / "pickled"
    first = stage("train", *toy["base"], f"train.output_dir={out}", *ARGS, "train.max_time=0.000001")
    assert first.code == 0, first
    state_dir = next((out / "toy" / "fold0").glob("last-*"))
    torch.save({"state": {}, "param_groups": [], "payload": Payload()}, state_dir / "optimizer.pt")
    result = stage("train", *toy["base"], f"train.output_dir={out}", *ARGS, "train.resume=auto")
    assert result.code == 2
    assert "cannot be loaded safely" in result.err and "optimizer.pt" in result.err
    assert "Traceback" not in result.err


class Payload:
    """Any object beyond plain tensors and containers: `weights_only=True` must refuse it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_the_printed_resume_command_resumes_the_run_with_its_settings(toy, stage):
    """After a stop signal, the command the run prints (no config file, no overrides) resumes it
    with the settings it was started with, and finishes it as the uninterrupted run."""
    import shlex

    out = toy["tmp"] / "hinted"
    proc = start_training(toy, out)
    wait_for_state(proc, out / "toy" / "fold0", 3)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    hint = stdout.split("Continue with: ")[1].splitlines()[0]
    words = shlex.split(hint)
    assert words[:2] == ["python", "train.py"] and len(words) == 3 and words[2].startswith("train.resume=")
    result = stage("train", *words[2:])
    assert result.code == 0, result
    assert "resuming from last-" in result.out
    assert_same_as_straight(out / "toy", toy["straight"])
    # a changed setting on the command line is still refused, and the refusal names a command that works
    again = stage("train", words[2], "train.lr=0.5", "train.resume=" + str(out / "toy"))
    assert again.code == 2 and f"python train.py train.resume={out / 'toy'}" in again.err


CLAIM = """
import sys, time
from textclf.fileio import claim_folder
start = float(sys.argv[2])
while time.time() < start:
    pass
print(claim_folder(sys.argv[1], "tune"))
"""


def test_processes_claiming_one_folder_at_once_all_find_it_theirs(tmp_path):
    """A shared output folder (a study) claimed by several processes at the same instant: each sees it
    absent or made with its marker, never a bare folder it would refuse as someone else's."""
    for attempt in range(3):
        folder = tmp_path / f"s{attempt}-tune"
        start = time.time() + 2.0
        procs = [subprocess.Popen([sys.executable, "-c", CLAIM, str(folder), str(start)], cwd=ROOT,
                                  stdout=subprocess.PIPE, text=True) for _ in range(6)]
        assert [p.communicate(timeout=60)[0].strip() for p in procs] == ["True"] * 6
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    from textclf.fileio import claim_folder
    assert claim_folder(tmp_path / "user", "tune") is False and (tmp_path / "user" / "notes.txt").read_text() == "mine"
