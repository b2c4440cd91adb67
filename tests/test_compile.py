"""train.compile / eval.compile (textclf/compiling.py): a few bucketed shapes, a compiled run that trains
and predicts like an eager one, and a killed compiled run that resumes where it stopped."""

import json
import re
import signal

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import run_stage
from test_faults import wait_for_state
from test_train import make_data, records, strip_time, toy_rows

from textclf.compiling import bucket, resolve
from textclf.errors import UserError

# no dropout anywhere: inductor draws its own dropout masks, so only a run without them can match eager
# one thread: inductor's CPU embedding gradient adds rows with atomics, so with several threads the sum's order
# (and the last bits of the weights) varies from run to run; with one it is fixed and a resumed run is bit-exact
PINNED = ["train.epochs=2", "train.batch_size=4", "train.lr=1e-3", "train.save_every_steps=2", "train.log_every_steps=1",
          "model.dropout=0", "model.backbone_dropout=0", "train.calibrate=false"]


def test_buckets_are_few_and_pad_at_most_a_third():
    widths = [bucket(w) for w in range(1, 1025)]
    assert sorted(set(widths)) == [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
    assert all(b >= w and (b - w) / b < 1 / 3 for w, b in zip(range(17, 1025), widths[16:]))
    assert bucket(300, cap=256) == 256 and bucket(5, cap=12) == 12


def test_auto_compiles_only_where_it_was_measured_to_pay():
    cpu = resolve("auto", "cpu")
    assert not cpu.on and cpu.requested == "auto" and "measured" in cpu.reason
    assert not resolve("auto", "cuda").on and "true turns it on" in resolve("auto", "cuda").reason
    assert resolve(True, "cpu").on and not resolve(False, "cuda").on
    assert resolve(True, "cpu").record() == {"on": True, "requested": "true", "reason": "as asked"}
    for wrong in (1, 1.0, 0.0, "yes", None):  # 1.0 == True and 0.0 == False, but neither is a setting
        with pytest.raises(UserError, match="use True, False or auto"):
            resolve(wrong, "cpu", "compile")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, premodels):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _runs(tmp_path_factory, premodels)
    finally:
        torch.set_num_threads(threads)


def _runs(tmp_path_factory, premodels):
    tmp = tmp_path_factory.mktemp("compile")
    base = make_data(run_stage, premodels, tmp, toy_rows(48))
    out = {}
    for name, flags in (("eager", ["train.compile=false", "train.cpu_speedups=false"]),
                        ("compiled", ["train.compile=true"])):
        result = run_stage("train", *base, f"train.output_dir={tmp / name}", *PINNED, *flags)
        assert result.code == 0, result
        out[name] = (tmp / name / "toy", result.out)
    return dict(tmp=tmp, base=base, **out)


def test_a_compiled_run_trains_like_an_eager_one_on_a_few_shapes(runs):
    (eager, _), (compiled, log) = runs["eager"], runs["compiled"]
    assert "compiled on (true: as asked)" in log
    graphs = int(re.search(r"(\d+) graphs compiled", log).group(1))
    assert 1 <= graphs <= 8, log  # training and evaluation graphs, one per bucket met
    a, b = records(eager, "eval"), records(compiled, "eval")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=2e-3)
    np.testing.assert_allclose(np.load(compiled / "oof/probs.npy"), np.load(eager / "oof/probs.npy"), atol=2e-3)
    assert json.loads((compiled / "run.json").read_text())["compile"]["on"] is True
    assert json.loads((eager / "run.json").read_text())["compile"]["on"] is False


def test_a_compiled_predictor_predicts_like_an_eager_one(runs):
    from textclf.predict import Predictor

    texts = [t for t, _ in toy_rows(30, seed=5)]
    eager = Predictor.from_run(runs["compiled"][0], precision="no", compile=False).predict(texts)["probs"]
    compiled = Predictor.from_run(runs["compiled"][0], precision="no", compile=True)
    assert compiled.compiled.on
    np.testing.assert_allclose(compiled.predict(texts)["probs"], eager, atol=1e-4)


def test_a_killed_compiled_run_resumes_exactly_where_it_stopped(runs):
    import os
    import subprocess
    import sys

    import torch
    from conftest import ROOT

    tmp, base = runs["tmp"], runs["base"]
    args = [*base, f"train.output_dir={tmp / 'killed'}", *PINNED, "train.compile=true"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    wait_for_state(proc, tmp / "killed" / "toy" / "fold0", 2, timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (tmp / "killed" / "toy" / "fold0" / "done.json").exists(), "killed after it finished: nothing to resume"
    result = run_stage("train", *args, "train.resume=auto")
    assert result.code == 0, result
    run, straight = tmp / "killed" / "toy", runs["compiled"][0]
    assert strip_time(records(run, "eval")) == strip_time(records(straight, "eval"))
    resumed, whole = (load_file(r / "fold0/best/model.safetensors") for r in (run, straight))
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole), "on one thread a resumed run is bit-exact"


def test_compile_on_a_cpu_without_a_cpp_compiler_is_one_line_and_writes_nothing(runs, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(runs["tmp"] / "no-such-bin"))
    result = run_stage("train", *runs["base"], f"train.output_dir={runs['tmp'] / 'nocc'}", "train.compile=true")
    assert result.code == 2 and "train.compile=true on a CPU needs a C++ compiler" in result.err, result
    assert len(result.err.strip().splitlines()) == 1
    assert not list((runs["tmp"] / "nocc").glob("*/fold0"))
