"""Tuning (textclf.tune): the space refused as every config key is, a killed study that resumes
without running a finished trial again, two processes sharing one SQLite study, the pruner's stop
through the run's own stop path, and a best.yaml that train.py takes."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_stage, write
from test_train import toy_rows
from textclf import train, tune
from textclf.config import parse_args

SPACE = "tune.space={train.lr: {low: 3.0e-4, high: 3.0e-3, log: true}, model.head: [cls, mean]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory, premodels):
    tmp = tmp_path_factory.mktemp("tune")
    rows = toy_rows(40, seed=5)
    write(tmp / "train.csv", "id,text,label\n" + "".join(f"r{i},{t},{y}\n" for i, (t, y) in enumerate(rows)))
    common = [f"model.name={premodels('bert')}", f"data.output_dir={tmp / 'data'}", "data.name=toy",
              "train.precision=no", "data.max_len=24"]
    assert run_stage("data_process", *common, f"data.train_file={tmp / 'train.csv'}", "data.id_column=id",
                     "data.n_folds=2").code == 0
    return tmp, common + ["train.batch_size=8", "train.epochs=1", "train.report_to=none"]


def _args(tmp, common, out, *extra):
    return [*common, f"train.output_dir={tmp / out}", SPACE, "tune.startup_trials=2", *extra]


def _tune(*args):
    return run_stage_module(list(args))


def run_stage_module(argv):
    """python -m textclf.tune argv, in this process."""
    import contextlib
    import io

    from conftest import _reset_accelerate
    from textclf.errors import run_cli

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(tune.main, argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            _reset_accelerate()
    return code, out.getvalue(), err.getvalue()


def _trials(folder):
    with open(folder / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("entry, why", [
    ("{train.lrr: {low: 1.0e-5, high: 1.0e-4}}", "did you mean train.lr"),
    ("{data.max_len: {low: 16, high: 64}}", "fixed when data_process.py makes the arrays"),
    ("{train.output_dir: [a, b]}", "not a setting of the model"),
    ("{train.lr: {low: 1.0e-3, high: 1.0e-4}}", "needs low below high"),
    ("{train.lr: {low: 0, high: 1.0e-4, log: true}}", "needs low above 0"),
    ("{train.lr: {low: 1.0e-5, high: 5}}", "would be refused by every trial"),
    ("{train.batch_size: {low: 4, high: 16, step: 0.5}}", "not an integer"),
    ("{model.head: [cls, cls]}", "lists a choice twice"),
    ("{model.head: [cls, nope]}", "is not one of"),
    ("{train.lr: {low: 1.0e-5, high: 1.0e-4, spread: 2}}", "unknown setting 'spread'"),
    ("{train.metric: [accuracy, loss]}", "not a setting of the model"),
    ("{train.epochs: {low: 1, high: 3, step: 5}}", "whole steps"),
    ("{model.freeze_layers: {low: 0, high: 9}}", "would be refused by every trial"),
])
def test_a_bad_space_is_one_line_and_nothing_is_written(data, entry, why):
    tmp, common = data
    code, out, err = _tune(*common, f"train.output_dir={tmp / 'bad'}", f"tune.space={entry}")
    assert code == 2 and why in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp / "bad").exists()


def test_a_time_limited_base_config_is_refused(data):
    tmp, common = data
    code, _, err = _tune(*common, f"train.output_dir={tmp / 'timed'}", SPACE, "train.max_time=60")
    assert code == 2 and "leave train.max_time at 0" in err and not (tmp / "timed").exists()


def test_a_pruned_run_stops_through_its_stop_path_and_stays_resumable(data):
    tmp, common = data
    config = parse_args([*common, f"train.output_dir={tmp / 'pruned'}", "train.run=p", "train.eval_every_steps=1"])
    seen = []
    run_dir = train.run(config, on_eval=lambda fold, step, value: seen.append((fold, step)) or len(seen) == 2)
    tune.reset_accelerate()
    assert seen == [(0, 1), (0, 2)]  # it stopped at the evaluation the pruner answered
    assert (run_dir / "run.json").is_file() and not (run_dir / "fold0" / "done.json").exists()
    assert list((run_dir / "fold0").glob("last-*")) and (run_dir / "fold0" / "best").is_dir()
    result = run_stage("train", *common, f"train.output_dir={tmp / 'pruned'}", f"train.resume={run_dir}")
    assert result.code == 0, result
    assert "fold 0: resuming from last-" in result.out and (run_dir / "summary.json").is_file()


def test_a_killed_study_resumes_and_never_runs_a_finished_trial_again(data):
    tmp, common = data
    args = _args(tmp, common, "killed", "tune.study=k", "tune.trials=3", "tune.pruner=none")
    log = open(tmp / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "textclf.tune", *args], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    run1 = tmp / "killed" / "k-t001"
    deadline = time.time() + 300
    while time.time() < deadline and not (run1 / "run.json").is_file() and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # mid trial 1: no chance to clean up
    proc.wait()
    assert (run1 / "run.json").is_file(), (tmp / "killed.log").read_text()[-2000:]
    first = (tmp / "killed" / "k-t000" / "summary.json")
    assert first.is_file()
    stamp = first.stat().st_mtime_ns
    code, out, err = _tune(*args)
    assert code == 0, err[-2000:]
    assert "trial 1 was cut off" in out and "-> run k-t001 (resumed)" in out
    assert "trial 0 (" not in out  # the finished trial was not run again
    assert first.stat().st_mtime_ns == stamp
    states = [row["state"] for row in _trials(tmp / "killed" / "k-tune")]
    assert states.count("complete") == 3 and states.count("fail") == 1
    # a finished study runs nothing more
    code, out, _ = _tune(*args)
    assert code == 0 and "3 of 3 trials finished" in out and "-> run" not in out
    # another study under the same name (its database gone) does not take the old runs for its own
    (tmp / "killed" / "k-tune" / "study.db").rename(tmp / "killed" / "old-study.db")
    code, out, err = _tune(*args)
    assert code == 2 and "is an earlier study's run" in err and len(err.strip().splitlines()) == 1
    (tmp / "killed" / "old-study.db").rename(tmp / "killed" / "k-tune" / "study.db")
    best = tmp / "killed" / "k-tune" / "best.yaml"
    record = json.loads((tmp / "killed" / "k-tune" / "tune.json").read_text())
    config = parse_args(["--config", str(best)])
    assert config.train.lr == pytest.approx(record["best"]["params"]["train.lr"])
    assert config.model.head == record["best"]["params"]["model.head"] and config.train.run == "k-best"
    assert (tmp / "killed" / "k-tune" / "history.png").is_file()


def test_two_processes_share_one_sqlite_study(data):
    tmp, common = data
    args = _args(tmp, common, "shared", "tune.study=s", "tune.trials=4", "tune.pruner=none")
    procs = [subprocess.Popen([sys.executable, "-m", "textclf.tune", *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][-2000:] + outputs[1][-2000:]
    ran = [[line for line in out.splitlines() if "-> run s-t" in line] for out in outputs]
    assert all(ran), "each process ran trials of the one study"
    rows = _trials(tmp / "shared" / "s-tune") if (tmp / "shared" / "s-tune" / "trials.csv").is_file() else []
    complete = [r for r in rows if r["state"] == "complete"]
    assert 4 <= len(complete) <= 5  # the last trial may start in both at once
    assert len({r["run"] for r in complete}) == len(complete)
    for row in complete:
        assert (tmp / "shared" / row["run"] / "summary.json").is_file()
