"""Bad input: one line naming the problem and the fix, exit code 2, no traceback, nothing written."""

import json
import re
import shutil
import os
import subprocess
import sys

import pytest

from conftest import ROOT, write

GOOD = "text,label\n" + "".join(f"row number {i} is fine,{'ab'[i % 2]}\n" for i in range(10))


PROGRESS = re.compile(r"\d+%\||it/s|rows/s|step/s|s/step")


def expect_refusal(result, *phrases):
    assert result.code == 2, result
    # progress bars may come before a late error; the error itself is one line
    lines = [l for l in result.err.replace("\r", "\n").strip().splitlines() if l.strip() and not PROGRESS.search(l)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


def data_process(stage, premodels, tmp_path, *args):
    result = stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'out'}",
                   "data.name=ds", *args)
    assert not (tmp_path / "out" / "ds").exists(), "a refused run must write nothing"
    leftovers = list((tmp_path / "out").glob(".*")) if (tmp_path / "out").exists() else []
    assert not leftovers, leftovers
    return result


# name, files to write {name: content}, extra args, phrases the message must contain
DATA_CASES = [
    ("missing file", {}, ["data.train_file={tmp}/nope.csv"], ["not found", "nope.csv", "data.train_file"]),
    ("empty file", {"t.csv": ""}, ["data.train_file={tmp}/t.csv"], ["is empty"]),
    ("header only", {"t.csv": "text,label\n"}, ["data.train_file={tmp}/t.csv"], ["no data rows"]),
    ("missing text column", {"t.csv": GOOD.replace("text,", "body,", 1)}, ["data.train_file={tmp}/t.csv"],
     ["no column 'text'", "columns found: body, label", "data.text_columns"]),
    ("missing label column", {"t.csv": GOOD.replace(",label", ",target", 1)}, ["data.train_file={tmp}/t.csv"],
     ["no column 'label'", "columns found: text, target"]),
    ("wrong delimiter", {"t.csv": GOOD.replace(",", "\t")}, ["data.train_file={tmp}/t.csv"],
     ["one column", "tab-separated", "data.format=tsv"]),
    ("semicolon delimiter", {"t.csv": GOOD.replace(",", ";")}, ["data.train_file={tmp}/t.csv"],
     ["semicolon-separated", "data.delimiter=';'"]),
    ("undecodable bytes", {"t.csv": GOOD.encode() + b"caf\xe9 bad bytes,a\n"}, ["data.train_file={tmp}/t.csv"],
     ["not utf-8", "line 12", "data.encoding"]),
    ("empty text", {"t.csv": GOOD + '"   ",a\n'}, ["data.train_file={tmp}/t.csv"],
     ["line 12", "empty", "data.drop_empty=true"]),
    ("empty label", {"t.csv": GOOD + "some text,\n"}, ["data.train_file={tmp}/t.csv"], ["line 12", "label", "empty"]),
    ("unseen label in valid", {"t.csv": GOOD, "v.csv": "text,label\nfine text,a\nnew label row,zzz\n"},
     ["data.train_file={tmp}/t.csv", "data.valid_file={tmp}/v.csv"], ["line 3", "'zzz'", "never occurs"]),
    ("unseen label in test", {"t.csv": GOOD, "s.csv": "text,label\nfine text,c\n"},
     ["data.train_file={tmp}/t.csv", "data.test_file={tmp}/s.csv"], ["'c'", "never occurs"]),
    ("duplicate ids", {"t.csv": "id,text,label\n1,a b,a\n2,c d,b\n3,e f,a\n2,g h,b\n"},
     ["data.train_file={tmp}/t.csv", "data.id_column=id"], ["id '2'", "lines 3 and 5", "unique"]),
    ("ragged row", {"t.csv": GOOD + "one,two,three\n"}, ["data.train_file={tmp}/t.csv"],
     ["line 12", "3 fields", "header has 2"]),
    ("max_len above model limit", {"t.csv": GOOD}, ["data.train_file={tmp}/t.csv", "data.max_len=4096"],
     ["data.max_len=4096", "limit", "512"]),
    ("unknown config key", {"t.csv": GOOD}, ["data.train_file={tmp}/t.csv", "data.max_lenght=64"],
     ["unknown config key 'data.max_lenght'", "data.max_len"]),
    ("unknown option", {"t.csv": GOOD}, ["--max-len", "64"], ["unknown option", "data.max_len=<value>"]),
    ("model missing", {"t.csv": GOOD}, ["data.train_file={tmp}/t.csv", "model.name=not-a-model",
                                        "model.premodels_dir={tmp}/pm"], ["'not-a-model' not found", "textclf.premodels"]),
    ("invalid json line", {"t.jsonl": '{"text": "a b", "label": 1}\n{"text": oops}\n'},
     ["data.train_file={tmp}/t.jsonl"], ["line 2", "not valid JSON"]),
    ("jsonl missing key", {"t.jsonl": '{"text": "a b", "label": 1}\n{"text": "c d"}\n'},
     ["data.train_file={tmp}/t.jsonl"], ["line 2", "'label'"]),
    ("single class", {"t.csv": "text,label\na b,x\nc d,x\n"}, ["data.train_file={tmp}/t.csv"], ["only one label"]),
    ("headerless without columns", {"t.tsv": "a b\t1\n"}, ["data.train_file={tmp}/t.tsv", "data.header=false"],
     ["data.columns"]),
    ("bad multi-label flag", {"t.csv": "text,x,y\na b,1,0\nc d,0,2\n"},
     ["data.train_file={tmp}/t.csv", "data.label_columns=[x,y]"], ["line 3", "'y'", "0 or 1"]),
]


@pytest.mark.parametrize("name, files, args, phrases", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_data_process_refuses(stage, premodels, tmp_path, name, files, args, phrases):
    for fname, content in files.items():
        write(tmp_path / fname, content)
    args = [a.format(tmp=tmp_path) for a in args]
    expect_refusal(data_process(stage, premodels, tmp_path, *args), *phrases)


def test_drop_empty_turns_the_error_into_a_count(stage, premodels, tmp_path):
    write(tmp_path / "t.csv", GOOD + '"   ",a\n')
    result = stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'out'}",
                   "data.name=ds", f"data.train_file={tmp_path / 't.csv'}", "data.drop_empty=true")
    assert result.code == 0, result
    meta = json.loads((tmp_path / "out" / "ds" / "meta.json").read_text())
    assert meta["splits"]["train"]["dropped_empty"] == 1 and "dropped 1 empty" in result.out


def test_command_line_exit_code_and_no_traceback(tmp_path):
    """The real process: exit status 2 and a single line, for a config error and a data error."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for args in (["train.lrr=1"], [f"data.train_file={tmp_path}/missing.csv", f"model.premodels_dir={tmp_path}"]):
        proc = subprocess.run([sys.executable, str(ROOT / "data_process.py"), *args], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- later stages

@pytest.fixture(scope="module")
def trained(tmp_path_factory, premodels):
    """Data, a finished run and its predictions, shared by the cases below (never modified)."""
    from conftest import run_stage

    tmp = tmp_path_factory.mktemp("trained")
    write(tmp / "train.csv", "id,text,label\n" + "".join(f"r{i},row {i} is {'ab'[i % 2]},{'ab'[i % 2]}\n" for i in range(24)))
    write(tmp / "test.csv", "id,text\n" + "".join(f"t{i},row {i}\n" for i in range(6)))
    base = [f"model.name={premodels('bert')}", f"data.output_dir={tmp / 'data'}", "data.name=ds",
            f"train.output_dir={tmp / 'ck'}", f"eval.output_dir={tmp / 'mp'}"]
    assert run_stage("data_process", *base, f"data.train_file={tmp / 'train.csv'}", f"data.test_file={tmp / 'test.csv'}",
                     "data.id_column=id").code == 0
    assert run_stage("train", *base, "train.epochs=1", "train.batch_size=8").code == 0
    assert run_stage("evaluate", *base, f"eval.run={tmp / 'ck' / 'ds'}").code == 0
    write(tmp / "sample.csv", "id,label\n" + "".join(f"t{i},a\n" for i in range(6)))
    return dict(tmp=tmp, base=base, run=tmp / "ck" / "ds", preds=tmp / "mp" / "ds")


def copy_run(trained, tmp_path):
    run = tmp_path / "ck" / "ds"
    shutil.copytree(trained["run"], run)
    return run


def test_train_without_processed_data(stage, trained, tmp_path):
    result = stage("train", *trained["base"], "data.name=never_processed", f"train.output_dir={tmp_path / 'ck'}")
    expect_refusal(result, "no meta.json", "run data_process.py first")
    assert not (tmp_path / "ck").exists()


def test_train_on_arrays_of_another_tokenizer(stage, trained, premodels, tmp_path):
    result = stage("train", *trained["base"], f"model.name={premodels('roberta')}", f"train.output_dir={tmp_path / 'ck'}")
    expect_refusal(result, "vocabulary differs", "run data_process.py with model.name=")
    assert not (tmp_path / "ck").exists()


def test_train_with_a_corrupted_meta(stage, trained, tmp_path):
    shutil.copytree(trained["tmp"] / "data", tmp_path / "data")
    (tmp_path / "data" / "ds" / "meta.json").write_text("{ not json")
    result = stage("train", *trained["base"], f"data.output_dir={tmp_path / 'data'}", f"train.output_dir={tmp_path / 'ck'}")
    expect_refusal(result, "meta.json is not valid JSON", "data.overwrite=true")


@pytest.mark.parametrize("args, phrases", [
    (["train.folds=[3]"], ["train.folds contains 3", "1 fold(s)"]),
    (["train.class_weights=[1.0,2.0,3.0]"], ["class_weights has 3 values for 2 labels"]),
    (["train.resume=/nonexistent/run"], ["not inside a run folder", "train.resume=auto"]),
    (["model.problem_type=multi_label"], ["multi_label needs multi-label data"]),
    (["train.batch_size=0"], ["must be positive"]),
    (["train.metric=brier"], ["train.metric=brier", "choose from"]),
])
def test_train_refuses(stage, trained, tmp_path, args, phrases):
    result = stage("train", *trained["base"], f"train.output_dir={tmp_path / 'ck'}", "train.epochs=1", *args)
    expect_refusal(result, *phrases)


def test_resume_from_truncated_weights(stage, trained, tmp_path):
    out = tmp_path / "ck"
    assert stage("train", *trained["base"], f"train.output_dir={out}", "train.max_time=0.000001").code == 0
    state = next((out / "ds" / "fold0").glob("last-*"))
    data = (state / "model.safetensors").read_bytes()
    (state / "model.safetensors").write_bytes(data[: len(data) // 2])
    result = stage("train", *trained["base"], f"train.output_dir={out}", "train.resume=auto")
    expect_refusal(result, "model.safetensors is corrupted", "delete")


def test_evaluate_a_missing_run(stage, trained, tmp_path):
    result = stage("evaluate", *trained["base"], f"eval.run={tmp_path / 'nope'}", f"eval.output_dir={tmp_path / 'mp'}")
    expect_refusal(result, "no such folder", "pass the run's folder, e.g. eval.run=")
    assert not (tmp_path / "mp").exists()


def test_evaluate_truncated_best_weights(stage, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    weights = run / "fold0" / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    result = stage("evaluate", *trained["base"], f"eval.run={run}", f"eval.output_dir={tmp_path / 'mp'}")
    expect_refusal(result, "corrupted or truncated", "model.safetensors")
    assert not (tmp_path / "mp").exists()


def test_evaluate_a_run_without_finished_folds(stage, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    shutil.rmtree(run / "fold0" / "best")
    result = stage("evaluate", *trained["base"], f"eval.run={run}", f"eval.output_dir={tmp_path / 'mp'}")
    expect_refusal(result, "no trained fold", f"python train.py train.resume={run}")


def test_evaluate_a_checkpoint_from_another_label_set(stage, trained, premodels, tmp_path):
    run = copy_run(trained, tmp_path)
    write(tmp_path / "other.csv", "text,label\n" + "".join(f"row {i},{'xyz'[i % 3]}\n" for i in range(12)))
    assert stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}",
                 "data.name=other", f"data.train_file={tmp_path / 'other.csv'}").code == 0
    info = json.loads((run / "run.json").read_text())
    info["data_dir"] = str(tmp_path / "data" / "other")
    (run / "run.json").write_text(json.dumps(info))
    result = stage("evaluate", *trained["base"], f"eval.run={run}", f"eval.output_dir={tmp_path / 'mp'}")
    expect_refusal(result, "has labels", "trained on")


@pytest.mark.parametrize("case", ["no sets", "not a set", "other ids", "missing sample", "sample columns"])
def test_ensemble_refuses(stage, trained, tmp_path, case):
    preds = trained["preds"]
    args = {
        "no sets": ([], ["ensemble.predictions is empty"]),
        "not a set": ([f"ensemble.predictions=[{tmp_path}]"], ["not a prediction set", "manifest.json"]),
        "other ids": ([f"ensemble.predictions=[{preds}]",
                       f"ensemble.sample_submission={write(tmp_path / 's1.csv', 'id,label' + chr(10) + 't0,a' + chr(10) + 'zz,a' + chr(10))}"],
                      ["ids do not match", "'zz'"]),
        "missing sample": ([f"ensemble.predictions=[{preds}]", f"ensemble.sample_submission={tmp_path / 'none.csv'}"],
                           ["sample submission", "not found"]),
        "sample columns": ([f"ensemble.predictions=[{preds}]",
                            f"ensemble.sample_submission={write(tmp_path / 's2.csv', 'id,p,q' + chr(10) + ''.join(f't{i},1,2' + chr(10) for i in range(6)))}"],
                           ["neither one label column nor one column per label"]),
    }[case]
    result = stage("ensemble_and_submit", *args[0], f"ensemble.output_dir={tmp_path / 'subs'}")
    expect_refusal(result, *args[1])
    assert not (tmp_path / "subs").exists() or not list((tmp_path / "subs").iterdir())


def test_read_only_output_folder(stage, premodels, tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    write(tmp_path / "t.csv", GOOD)
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if "out" in self.parts:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    result = data_process(stage, premodels, tmp_path, f"data.train_file={tmp_path / 't.csv'}")
    expect_refusal(result, "cannot write", "read-only", "writable output folder")


def test_full_disk_while_writing(stage, premodels, trained, tmp_path, monkeypatch):
    import errno

    from textclf import fileio

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    write(tmp_path / "t.csv", GOOD)
    monkeypatch.setattr(fileio.os, "fsync", no_space)
    result = data_process(stage, premodels, tmp_path, f"data.train_file={tmp_path / 't.csv'}")
    expect_refusal(result, "no space left", "free some disk space")
    result = stage("ensemble_and_submit", f"ensemble.predictions=[{trained['preds']}]",
                   f"ensemble.output_dir={tmp_path / 'subs'}", f"ensemble.sample_submission={trained['tmp'] / 'sample.csv'}")
    expect_refusal(result, "no space left")
    assert not list((tmp_path / "subs").glob("*.csv"))


def test_bad_yaml_config(stage, tmp_path):
    cfg = write(tmp_path / "bad.yaml", "data:\n  max_len: [64\n")
    expect_refusal(stage("train", "--config", cfg), "not valid YAML", "line")
