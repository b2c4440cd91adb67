"""Bad input: one line naming the problem and the fix, exit code 2, no traceback, nothing written."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, write

GOOD = "text,label\n" + "".join(f"row number {i} is fine,{'ab'[i % 2]}\n" for i in range(10))


def expect_refusal(result, *phrases):
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
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
