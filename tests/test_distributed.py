"""Two real processes (gloo on the CPU) against one: same rows, right step counts, one writer."""

import json
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT, write
from test_train import toy_rows

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def launch(script, *args, processes=2, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    prefix = LAUNCH if processes == 2 else [sys.executable]
    proc = subprocess.run([*prefix, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_processes_train_and_evaluate_like_one(stage, premodels, tmp_path):
    rows = toy_rows(70)
    test_rows = toy_rows(25, seed=3)  # 25 rows in batches of 4: 7 batches, uneven across 2 processes
    write(tmp_path / "train.csv", "id,text,label\n" + "".join(f"r{i},{t},{l}\n" for i, (t, l) in enumerate(rows)))
    write(tmp_path / "test.csv", "id,text,label\n" + "".join(f"t{i},{t},{l}\n" for i, (t, l) in enumerate(test_rows)))
    common = [f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}", "data.name=toy",
              f"train.output_dir={tmp_path / 'ck'}", "train.log_every_steps=1",
              "train.precision=no", "eval.precision=no"]  # fp32: one and two processes must agree to 1e-6
    assert stage("data_process", *common, f"data.train_file={tmp_path / 'train.csv'}",
                 f"data.test_file={tmp_path / 'test.csv'}", "data.id_column=id").code == 0

    proc = launch("train.py", *common, "train.epochs=2", "train.batch_size=4", "train.grad_accum=2", "train.lr=1e-3")
    assert proc.stdout.count("train: run folder") == 1  # only the main process prints
    run = tmp_path / "ck" / "toy"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["type"] == "train"]
    # 62 train rows (8 held out) / 4 = 16 batches -> 8 per process -> 4 optimizer steps an epoch at accumulation 2
    assert [r["step"] for r in train_records] == list(range(1, 9))
    assert train_records[-1]["lr"] == 0.0  # the linear schedule ends exactly at the last step
    assert sum(r["type"] == "eval" for r in records) == 2  # one evaluation per epoch, logged once
    assert len(np.load(run / "oof" / "ids.npy")) == 8

    launch("evaluate.py", *common, f"eval.run={run}", f"eval.output_dir={tmp_path / 'one'}",
                 "eval.batch_size=4", processes=1)
    two = launch("evaluate.py", *common, f"eval.run={run}", f"eval.output_dir={tmp_path / 'two'}",
                 "eval.batch_size=4")
    assert two.stdout.count("evaluate: wrote") == 1
    a, b = tmp_path / "one" / "toy" / "test", tmp_path / "two" / "toy" / "test"
    assert np.load(a / "ids.npy").tolist() == np.load(b / "ids.npy").tolist() == [f"t{i}" for i in range(25)]
    assert np.allclose(np.load(a / "probs.npy"), np.load(b / "probs.npy"), atol=1e-6)
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())
    assert not list((tmp_path / "two").glob(".*"))  # nothing half-written by another process
