"""Two real processes (gloo on the CPU) against one: same rows, right step counts, one writer."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from conftest import ROOT, write
from test_train import toy_rows

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def free_port():
    """A port no other process listens on now, so launches in parallel test workers do not meet."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(script, *args, processes=2, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    prefix = [*LAUNCH, "--main_process_port", str(free_port())] if processes == 2 else [sys.executable]
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


SHARDS = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from accelerate import Accelerator
from textclf.loader import LengthGroupedBatches, SplitArrays, make_loader
accelerator = Accelerator(cpu=True)
dataset = SplitArrays(sys.argv[2], np.arange(int(sys.argv[3])))
sampler = LengthGroupedBatches(dataset.lengths(), 8, 42)
loader = accelerator.prepare(make_loader(dataset, sampler))
seen = []
for epoch in range(4):
    sampler.epoch = epoch
    rows = [batch["index"].tolist() for batch in loader]
    seen.append({"rows": rows, "batches": len(rows), "len": len(loader)})
# one file per process: two processes printing long lines to one pipe can interleave them
with open(f"{sys.argv[4]}/shard-{accelerator.process_index}.json", "w") as f:
    json.dump({"process": accelerator.process_index, "epochs": seen}, f)
"""


def test_two_processes_see_every_row_of_every_epoch(stage, premodels, tmp_path):
    """Length-grouped batches in shuffled order, sharded over two processes: every row in every
    epoch, as many batches as len(loader) says (a short batch mid-epoch used to drop a pair)."""
    rows = toy_rows(58)  # 7 batches of 8 and one of 2
    write(tmp_path / "train.csv", "text,label\n" + "".join(f"{t},{l}\n" for t, l in rows))
    assert stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}",
                 "data.name=toy", f"data.train_file={tmp_path / 'train.csv'}", "data.valid_size=0.1").code == 0
    n = json.loads((tmp_path / "data" / "toy" / "meta.json").read_text())["splits"]["train"]["rows"]
    script = write(tmp_path / "shards.py", SHARDS)
    launch(str(script), ROOT, tmp_path / "data" / "toy" / "train", n, tmp_path)
    shards = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("shard-*.json"))]
    assert [shard["process"] for shard in shards] == [0, 1]
    for epoch in range(4):
        covered = set()
        for shard in shards:
            record = shard["epochs"][epoch]
            assert record["batches"] == record["len"] == 4, (epoch, record)
            covered.update(i for batch in record["rows"] for i in batch)
        assert covered == set(range(n)), (epoch, sorted(set(range(n)) - covered))


def test_two_processes_with_fgm_and_ema_step_like_one_process_accumulating(stage, premodels, tmp_path):
    """FGM perturbs along each batch's own gradient, so two processes with a batch each take the
    same steps as one process accumulating those two batches; the EMA follows the same weights."""
    rows = toy_rows(72)  # 64 train rows: 16 full batches of 4, 8 per process
    write(tmp_path / "train.csv", "text,label\n" + "".join(f"{t},{l}\n" for t, l in rows))
    common = [f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}", "data.name=toy",
              "train.log_every_steps=1", "train.precision=no", "train.epochs=1", "train.batch_size=4",
              "train.lr=1e-3", "train.sampler=random", "model.backbone_dropout=0", "model.dropout=0",
              "train.adversarial=fgm", "train.ema_decay=0.5"]
    assert stage("data_process", *common, f"data.train_file={tmp_path / 'train.csv'}").code == 0
    launch("train.py", *common, f"train.output_dir={tmp_path / 'two'}")
    launch("train.py", *common, "train.grad_accum=2", f"train.output_dir={tmp_path / 'one'}", processes=1)
    logs = {}
    for name in ("one", "two"):
        lines = (tmp_path / name / "toy" / "metrics.jsonl").read_text().splitlines()
        logs[name] = [json.loads(line) for line in lines if json.loads(line)["type"] in ("train", "eval")]
    assert [r["step"] for r in logs["one"]] == [r["step"] for r in logs["two"]] and len(logs["one"]) == 9
    for a, b in zip(logs["one"], logs["two"]):
        assert abs(a["loss"] - b["loss"]) < 1e-4 and abs(a.get("grad_norm", 0) - b.get("grad_norm", 0)) < 1e-3
    probs = [np.load(tmp_path / name / "toy" / "oof" / "probs.npy") for name in ("one", "two")]
    assert np.allclose(*probs, atol=1e-4)
