"""Scoring later labelled data with a trained run: a raw labelled file (eval.input) or another
processed data set (eval.data, or data.name on the command line), checked against the run's
tokenization and labels; every refusal names a command that works, and the tests follow it."""

import csv
import json
import shlex

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from conftest import run_stage, write
from test_train import toy_rows

LABELS = "neg pos".split()


@pytest.fixture(scope="module")
def run(tmp_path_factory, premodels):
    tmp = tmp_path_factory.mktemp("scoring")
    write(tmp / "train.csv", "id,text,label\n" + "".join(f"r{i},{t},{LABELS[l]}\n" for i, (t, l) in enumerate(toy_rows(48))))
    later = toy_rows(20, seed=9)
    write(tmp / "later.csv", "id,text,label\n" + "".join(f"l{i},{t},{LABELS[l]}\n" for i, (t, l) in enumerate(later)))
    base = [f"model.name={premodels('bert')}", f"data.output_dir={tmp / 'data'}", "data.id_column=id",
            "data.max_len=24"]
    assert run_stage("data_process", *base, "data.name=toy", f"data.train_file={tmp / 'train.csv'}").code == 0
    result = run_stage("train", *base, "data.name=toy", f"train.output_dir={tmp / 'ck'}", "train.epochs=2",
                       "train.batch_size=8", "train.lr=2e-3", "train.precision=no")
    assert result.code == 0, result
    return dict(tmp=tmp, base=base, run=tmp / "ck" / "toy", later=[LABELS[l] for _, l in later])


def written(result):
    return next(line.split("evaluate: wrote ")[1] for line in result.out.splitlines() if "evaluate: wrote" in line)


def test_a_labelled_input_file_is_scored(stage, run, tmp_path):
    result = stage("evaluate", *run["base"], f"eval.run={run['run']}", f"eval.input={run['tmp'] / 'later.csv'}",
                   f"eval.output_dir={tmp_path}", "eval.precision=no")
    assert result.code == 0, result
    out = tmp_path / "toy-texts"
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labelled"] and [r["id"] for r in rows] == [f"l{i}" for i in range(20)]
    got = accuracy_score(run["later"], [r["label"] for r in rows])
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == pytest.approx(got)
    assert manifest["metrics"]["accuracy"] == pytest.approx(got) and (out / "report.txt").is_file()


def test_a_later_file_is_read_with_the_runs_columns(stage, premodels, tmp_path):
    """A run made with data.id_column / data.label_column / data.text_columns of its own reads a
    later file of the same layout by them, without repeating them on evaluate's command line; a
    file whose text column is named otherwise is refused with advice that works."""
    rows = toy_rows(24)
    write(tmp_path / "train.csv", "rid,body,y\n" + "".join(f"r{i},{t},{LABELS[l]}\n" for i, (t, l) in enumerate(rows)))
    write(tmp_path / "later.csv", "rid,body,y\n" + "".join(f"x{i},{t} too,{LABELS[l]}\n"
                                                         for i, (t, l) in enumerate(rows[:6])))
    base = [f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}", "data.name=own",
            f"train.output_dir={tmp_path / 'ck'}", "train.precision=no", "eval.precision=no"]
    assert stage("data_process", *base, f"data.train_file={tmp_path / 'train.csv'}", "data.id_column=rid",
                 "data.label_column=y", "data.text_columns=[body]").code == 0
    assert stage("train", *base, "train.epochs=1", "train.batch_size=8").code == 0
    result = stage("evaluate", *base, f"eval.run={tmp_path / 'ck' / 'own'}", f"eval.input={tmp_path / 'later.csv'}",
                   f"eval.output_dir={tmp_path / 'mp'}")
    assert result.code == 0, result
    out = tmp_path / "mp" / "own-texts"
    assert [r["id"] for r in csv.DictReader((out / "predictions.csv").open())] == [f"x{i}" for i in range(6)]
    assert json.loads((out / "manifest.json").read_text())["labelled"]
    write(tmp_path / "renamed.csv", "rid,text,y\nq1,some words,pos\n")
    result = stage("evaluate", *base, f"eval.run={tmp_path / 'ck' / 'own'}", f"eval.input={tmp_path / 'renamed.csv'}",
                   f"eval.output_dir={tmp_path / 'mp'}")
    assert result.code == 2 and "name the file's column 'body'" in result.err, result
    write(tmp_path / "renamed.csv", "rid,body,y\nq1,some words,pos\n")  # following the advice
    result = stage("evaluate", *base, f"eval.run={tmp_path / 'ck' / 'own'}", f"eval.input={tmp_path / 'renamed.csv'}",
                   f"eval.output_dir={tmp_path / 'mp'}")
    assert result.code == 0, result


def test_labels_that_are_not_the_runs_are_predicted_unscored_or_refused_on_request(stage, run, tmp_path):
    write(tmp_path / "junk.csv", "id,text,label\n1,good fun,maybe\n2,bad dull,neg\n")
    result = stage("evaluate", *run["base"], f"eval.run={run['run']}", f"eval.input={tmp_path / 'junk.csv'}",
                   f"eval.output_dir={tmp_path / 'a'}")
    assert result.code == 0 and "not scored" in result.out and "'maybe'" in result.out, result
    assert not json.loads((tmp_path / "a" / "toy-texts" / "manifest.json").read_text())["labelled"]
    refused = stage("evaluate", *run["base"], f"eval.run={run['run']}", f"eval.input={tmp_path / 'junk.csv'}",
                    f"eval.output_dir={tmp_path / 'b'}", "eval.read_labels=always")
    assert refused.code == 2 and "line 2" in refused.err and "eval.read_labels=never" in refused.err
    assert not (tmp_path / "b").exists()
    # a file whose label column has another name: data.label_column describes the file
    write(tmp_path / "renamed.csv", "id,text,target\n1,good fun,pos\n2,bad dull,neg\n")
    result = stage("evaluate", *run["base"], f"eval.run={run['run']}", f"eval.input={tmp_path / 'renamed.csv'}",
                   f"eval.output_dir={tmp_path / 'c'}", "data.label_column=target")
    assert result.code == 0 and json.loads((tmp_path / "c" / "toy-texts" / "manifest.json").read_text())["labelled"]


def test_another_processed_data_set_is_predicted_and_scored(stage, run, tmp_path):
    assert stage("data_process", *run["base"], "data.name=later", f"data.train_file={run['tmp'] / 'later.csv'}",
                 "data.valid_size=0.5").code == 0
    # data.name on a shared command line is noted, not followed: eval.data names the set to score
    noted = stage("evaluate", *run["base"], f"eval.run={run['run']}", "data.name=later",
                  f"eval.output_dir={tmp_path / 'own'}", "eval.splits=[train]")
    assert noted.code == 0 and "pass eval.data=later" in noted.out and (tmp_path / "own" / "toy").is_dir()
    for key in ("eval.data=later",):
        out = tmp_path / key.split(".")[0]
        result = stage("evaluate", *run["base"], f"eval.run={run['run']}", key, f"eval.output_dir={out}",
                       "eval.splits=[train]", "eval.precision=no")
        assert result.code == 0, result
        folder = out / "toy-later"
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["data_dir"].endswith("later") and "accuracy" in manifest["splits"]["train"]["metrics"]
        probs, labels = np.load(folder / "train" / "probs.npy"), np.load(folder / "train" / "labels.npy")
        assert manifest["splits"]["train"]["metrics"]["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))


def test_a_set_tokenized_otherwise_is_refused_with_a_command_that_works(stage, run, tmp_path):
    assert stage("data_process", *run["base"], "data.name=wide", f"data.train_file={run['tmp'] / 'later.csv'}",
                 "data.max_len=32").code == 0
    base = [a for a in run["base"] if not a.startswith("data.max_len")]  # the arrays say it
    result = stage("evaluate", *base, f"eval.run={run['run']}", "eval.data=wide", f"eval.output_dir={tmp_path}")
    assert result.code == 2 and "max_len 32 (the run: 24)" in result.err and not tmp_path.joinpath("toy-wide").exists()
    # follow the advice literally: the file becomes the test split of the run's own data, then evaluate that set
    advice = result.err.split("process the file as the test split of the run's own data: ")[1]
    for name, later in (("again", run["tmp"] / "later.csv"), ("one-class", tmp_path / "one.csv"),
                        ("unlabelled", tmp_path / "bare.csv")):
        write(tmp_path / "one.csv", "id,text,label\nz1,good great film,pos\nz2,a fine plot,pos\n")
        write(tmp_path / "bare.csv", "id,text\nz1,good great film\nz2,a fine plot\n")
        process = shlex.split(advice.split(", then ")[0].replace("<new name>", name).replace("<file>", str(later)))
        assert process[:2] == ["python", "data_process.py"]
        made = stage("data_process", *process[2:], f"data.output_dir={run['tmp'] / 'data'}")
        assert made.code == 0, made
        evaluate = shlex.split(advice.split(", then ")[1].split(";")[0].replace("<new name>", name))
        result = stage("evaluate", *evaluate[1:], f"data.output_dir={run['tmp'] / 'data'}",
                       f"eval.output_dir={tmp_path}")
        assert result.code == 0, result
        manifest = json.loads((tmp_path / f"toy-{name}" / "manifest.json").read_text())
        assert ("metrics" in manifest["splits"]["test"]) == (name != "unlabelled"), manifest["splits"]
