"""Careless and hostile input, by class. Every case below stops with one line that names the
thing and the fix, exit code 2, no traceback, and leaves every output folder byte-for-byte as it
was (the shared world and the case's own folder are both compared before and after).

Classes: names that would be paths; values out of range; input semantics; corrupt or foreign
state files; resumes with another config; submissions; evaluate; and, after the table, the inputs
that must now work (YAML words kept as text, a space delimiter, a torn log line, ...)."""

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field

import numpy as np
import pytest

from conftest import run_stage, write
from test_bad_inputs import expect_refusal

ROWS = "".join(f"r{i},row {i} is {'ab'[i % 2]} {'ab'[i % 2]},{'ab'[i % 2]}\n" for i in range(24))


@dataclass
class World:
    root: object
    model: object
    base: list = field(default_factory=list)


@pytest.fixture(scope="module")
def world(tmp_path_factory, premodels):
    """Data sets, finished runs and prediction sets that every case may read and none may change."""
    root = tmp_path_factory.mktemp("world")
    model = premodels("bert")
    base = [f"model.name={model}", f"data.output_dir={root / 'data'}", f"train.output_dir={root / 'ck'}",
            f"eval.output_dir={root / 'mp'}", f"ensemble.output_dir={root / 'subs'}", "train.precision=no",
            "eval.precision=no"]
    write(root / "in" / "train.csv", "id,text,label\n" + ROWS)
    write(root / "in" / "test.csv", "id,text\n" + "".join(f"t{i},row {i}\n" for i in range(6)))
    write(root / "in" / "sample.csv", "id,label\n" + "".join(f"t{i},a\n" for i in range(6)))
    ag = "".join(f'{i},row {i} is {"wxyz"[i % 4]},{i % 4 + 1}\n' for i in range(24))
    write(root / "in" / "ag.csv", "id,text,label\n" + ag)
    write(root / "in" / "ag_test.csv", "id,text\n" + "".join(f"q{i},row {i}\n" for i in range(6)))
    write(root / "in" / "ag_sample.csv", "id,label\n" + "".join(f"q{i},0\n" for i in range(6)))
    steps = [("data_process", "data.name=ds", f"data.train_file={root / 'in' / 'train.csv'}",
              f"data.test_file={root / 'in' / 'test.csv'}", "data.id_column=id"),
             ("train", "data.name=ds", "train.epochs=1", "train.batch_size=8", "train.save_total_limit=3",
              "train.save_every_steps=1"),
             ("evaluate", "data.name=ds", f"eval.run={root / 'ck' / 'ds'}"),
             ("data_process", "data.name=ds2", f"data.train_file={root / 'in' / 'train.csv'}", "data.id_column=id",
              "data.n_folds=2"),
             ("train", "data.name=ds2", "train.epochs=1", "train.batch_size=8"),
             ("data_process", "data.name=ag", f"data.train_file={root / 'in' / 'ag.csv'}",
              f"data.test_file={root / 'in' / 'ag_test.csv'}", "data.id_column=id"),
             ("train", "data.name=ag", "train.epochs=1", "train.batch_size=8"),
             ("evaluate", "data.name=ag", f"eval.run={root / 'ck' / 'ag'}")]
    for name, *args in steps:
        result = run_stage(name, *base, *args)
        assert result.code == 0, (name, args, result)
    os.makedirs(root / "ck" / "foreign")
    write(root / "ck" / "foreign" / "notes.txt", "a user's own folder, not a run")
    os.makedirs(root / "data" / "foreign")
    write(root / "data" / "foreign" / "notes.txt", "a user's own folder, not a data set")
    return World(root, model, base)


def snapshot(*roots):
    """Every file and folder under the roots, with the sha256 of each file."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            out[dirpath] = "dir"
            for name in filenames:
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    out[path] = "link to " + os.readlink(path)
                    continue
                with open(path, "rb") as fh:
                    out[path] = hashlib.sha256(fh.read()).hexdigest()
    return out


# ---------------------------------------------------------------------------- case set-ups


def copy_run(world, tmp, name="ds"):
    shutil.copytree(world.root / "ck" / name, tmp / "ck" / name)
    return tmp / "ck" / name


def edit_json(path, change):
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(change(doc)) if callable(change) else change)


def corrupt(relative, content):
    """A set-up that copies the run and replaces one of its files."""
    def setup(world, tmp):
        run = copy_run(world, tmp)
        (run / relative).write_text(content)
    return setup


def corrupt_meta(change):
    def setup(world, tmp):
        shutil.copytree(world.root / "data" / "ds", tmp / "data" / "ds")
        edit_json(tmp / "data" / "ds" / "meta.json", change)
    return setup


def corrupt_manifest(change):
    def setup(world, tmp):
        shutil.copytree(world.root / "mp" / "ds", tmp / "mp" / "ds")
        edit_json(tmp / "mp" / "ds" / "manifest.json", change)
    return setup


def unfinished_fold(world, tmp):
    run = copy_run(world, tmp, "ds2")
    (run / "fold1" / "done.json").unlink()


def stopped_run(world, tmp):
    """A run of ds stopped after its first step, resumable."""
    result = run_stage("train", *world.base, "data.name=ds", f"train.output_dir={tmp / 'ck'}", "train.epochs=2",
                       "train.batch_size=8", "train.max_time=0.000001")
    assert result.code == 0, result


def stopped_run_with(change):
    def setup(world, tmp):
        stopped_run(world, tmp)
        state = next((tmp / "ck" / "ds" / "fold0").glob("last-*")) / "state.json"
        edit_json(state, change)
    return setup


def other_data(world, tmp):
    """A stopped run of ds, then data ds re-made from other rows under the same name in the case's folder."""
    shutil.copytree(world.root / "data" / "ds", tmp / "data" / "ds")
    result = run_stage("train", *world.base, "data.name=ds", f"data.output_dir={tmp / 'data'}",
                       f"train.output_dir={tmp / 'ck'}", "train.epochs=2", "train.batch_size=8",
                       "train.max_time=0.000001")
    assert result.code == 0, result
    write(tmp / "other.csv", "id,text,label\n" + ROWS.replace(" is ", " was "))
    result = run_stage("data_process", *world.base, "data.name=ds", f"data.output_dir={tmp / 'data'}",
                       f"data.train_file={tmp / 'other.csv'}", "data.id_column=id", "data.overwrite=true")
    assert result.code == 0, result


def broken_model(change):
    """A set-up: a copy of the world's model in {t}/pm/m, changed by `change(folder)`."""
    def setup(world, tmp):
        shutil.copytree(world.model, tmp / "pm" / "m")
        change(tmp / "pm" / "m")
    return setup


def edit_config(**values):
    return lambda folder: edit_json(folder / "config.json", lambda d: {**d, **values})


def edit_weights(change):
    """Rewrite model.safetensors with `change(tensors)` applied."""
    def apply(folder):
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(folder / "model.safetensors"))
        change(tensors)
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return apply


def pickled_weights(change):
    """model.safetensors rewritten as pytorch_model.bin (the older format) with `change(tensors)`."""
    def apply(folder):
        import torch
        from safetensors.torch import load_file

        tensors = load_file(str(folder / "model.safetensors"))
        change(tensors)
        torch.save(tensors, folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return apply


def first_matching(tensors, part):
    return next(k for k in tensors if part in k)


def broken_data(change):
    """A set-up: a copy of data set ds in {t}/data/ds, changed by `change(folder)`."""
    def setup(world, tmp):
        shutil.copytree(world.root / "data" / "ds", tmp / "data" / "ds")
        change(tmp / "data" / "ds")
    return setup


def symlinked_run(world, tmp):
    """{t}/ck/ds is a symbolic link to a run that lives elsewhere."""
    copy_run(world, tmp)
    os.rename(tmp / "ck" / "ds", tmp / "elsewhere")
    os.symlink(tmp / "elsewhere", tmp / "ck" / "ds")


@dataclass
class Case:
    id: str
    stage: str
    args: list
    phrases: list
    files: dict = field(default_factory=dict)
    setup: object = None


TRAIN = ["data.name=ds", "train.epochs=1", "train.batch_size=8"]
DATA = ["data.name=new", "data.train_file={t}/t.csv"]
GOOD_CSV = "text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(12))
ENSEMBLE = ["ensemble.predictions=[{w}/mp/ds]", "ensemble.sample_submission={w}/in/sample.csv"]

CASES = [
    # 1. names are plain names, inside their output folder
    *[Case(f"name {key}={value}", stage, [f"{key}={value}", *extra], ["is not a plain name", key])
      for key, value, stage, extra in [
          ("train.run", "../../x", "train", TRAIN), ("train.run", "/tmp/x", "train", TRAIN),
          ("train.run", "..", "train", TRAIN), ("train.run", ".hidden", "train", TRAIN),
          ("train.run", "a/b", "train", TRAIN), ("train.run", "two words", "train", TRAIN),
          ("train.run", "x" * 200, "train", TRAIN), ("data.name", ".", "data_process", ["data.train_file={t}/t.csv"]),
          ("data.name", "../other", "data_process", ["data.train_file={t}/t.csv"]),
          ("data.name", "/tmp/x", "data_process", ["data.train_file={t}/t.csv"]),
          ("ensemble.name", "../../x", "ensemble_and_submit", ENSEMBLE),
          ("ensemble.name", "team/final", "ensemble_and_submit", ENSEMBLE),
          ("ensemble.name", "", "ensemble_and_submit", ENSEMBLE)]],
    Case("overwrite a folder textclf did not make (run)", "train", [*TRAIN, "train.run=foreign", "train.overwrite=true"],
         ["was not made by textclf", "train.overwrite"]),
    Case("overwrite a folder textclf did not make (data)", "data_process",
         ["data.name=foreign", "data.train_file={t}/t.csv", "data.overwrite=true"],
         ["was not made by data_process.py", "data.overwrite"], {"t.csv": GOOD_CSV}),
    Case("config file whose name is not a plain name", "data_process", ["--config", "{t}/my config.yaml"],
         ["cannot name an output folder", "data.name=<name>"], {"my config.yaml": "data:\n  max_len: 32\n"}),

    # 2. values checked before anything is written
    *[Case(f"value {arg}", stage, [*extra, arg], [arg.split("=")[0], *more])
      for stage, extra, arg, more in [
          ("train", TRAIN, "model.dropout=1.5", ["below 1"]), ("train", TRAIN, "model.dropout=-0.1", []),
          ("train", TRAIN, "model.backbone_dropout=1", []), ("train", TRAIN, "model.multi_sample_dropout=0", []),
          ("train", TRAIN, "train.betas=[0.9]", ["two numbers"]), ("train", TRAIN, "train.betas=[0.9,1.5]", []),
          ("train", TRAIN, "train.epochs=inf", ["positive"]), ("train", TRAIN, "train.epochs=0", []),
          ("train", TRAIN, "train.epochs=nan", []), ("train", TRAIN, "train.epochs=.inf", []),
          ("train", TRAIN, "train.log_every_steps=0", ["at least 1"]),
          ("train", TRAIN, "train.eval_batch_size=0", []), ("train", TRAIN, "train.folds=[]", ["distinct"]),
          ("train", TRAIN, "train.folds=[0,0]", []), ("train", TRAIN, "train.folds=[-1]", []),
          ("train", TRAIN, "train.seed=-3", ["2**32"]), ("train", TRAIN, "train.seed=8589934592", []),
          ("train", TRAIN, "train.lr=-1", ["0 or more"]), ("train", TRAIN, "train.lr=inf", []),
          ("train", TRAIN, "train.head_lr=-0.1", []), ("train", TRAIN, "train.weight_decay=-1", []),
          ("train", TRAIN, "train.warmup=-2", []), ("train", TRAIN, "train.max_grad_norm=-1", []),
          ("train", TRAIN, "train.label_smoothing=1", []), ("train", TRAIN, "train.class_weights=[1,-1]", []),
          ("train", TRAIN, "train.class_weights=[0,0]", ["not all 0"]),
          ("train", TRAIN, "train.layer_lr_decay=0", []), ("train", TRAIN, "train.layer_lr_decay=2", []),
          ("train", TRAIN, "train.adam_eps=0", []), ("train", TRAIN, "train.max_time=-5", []),
          ("train", TRAIN, "train.save_total_limit=0", []), ("train", TRAIN, "train.grad_accum=0", []),
          ("train", TRAIN, "train.pad_to_multiple=0", []), ("train", TRAIN, "train.max_nonfinite=0", []),
          ("train", TRAIN, "train.patience=-1", []), ("train", TRAIN, "model.freeze_layers=-1", []),
          ("train", TRAIN, "train.metric=brierr", ["choose from"]),
          ("evaluate", ["data.name=ds"], "eval.batch_size=0", []),
          ("evaluate", ["data.name=ds"], "eval.splits=[test,test]", ["distinct"]),
          ("evaluate", ["data.name=ds"], "eval.splits=[holdout]", ["not one of"]),
          ("evaluate", ["data.name=ds"], "eval.folds=[]", []),
          ("data_process", DATA, "data.encoding=utf-99", ["known text encoding"]),
          ("data_process", DATA, "data.delimiter=ab", ["one character"]),
          ("data_process", DATA, "data.seed=-1", []), ("data_process", DATA, "data.valid_size=1.5", []),
          ("data_process", DATA, "data.valid_size=0", []), ("data_process", DATA, "data.n_folds=1", [">= 2"]),
          ("data_process", DATA, "data.max_len=2", []), ("data_process", DATA, "data.head_tokens=-1", []),
          ("data_process", DATA, "data.labels=[a,a]", ["distinct"]),
          ("data_process", DATA, "data.text_columns=[]", []),
          ("data_process", DATA, "data.text_columns=[text,text]", []),
          ("data_process", DATA, "data.text_pair_column=text", ["another column"]),
          ("data_process", DATA, "data.chunk_rows=0", []),
          ("ensemble_and_submit", ENSEMBLE, "ensemble.method=rank", ["roc_auc"])]],
    Case("a prediction set listed twice", "ensemble_and_submit", ["ensemble.predictions=[{w}/mp/ds,{w}/mp/ds]"],
         ["ensemble.predictions", "twice"]),
    Case("fp16 through Accelerate on a CPU", "train", [*TRAIN, "train.precision=fp16"], ["no fp16 autocast"]),

    # 3. input semantics
    *[Case(f"input {name}", "data_process", ["data.name=new", f"data.train_file={{t}}/{fname}", *extra], phrases,
           {fname: content})
      for name, fname, content, extra, phrases in [
          ("duplicate column", "t.csv", "text,label,text\n" + "".join(f"a {i},b,c\n" for i in range(6)), [],
           ["column 'text' more than once"]),
          ("jsonl duplicate key", "t.jsonl", '{"text": "a", "label": "x", "text": "b"}\n', [],
           ["key 'text' more than once"]),
          ("jsonl text is a list", "t.jsonl", '{"text": ["a", "b"], "label": "x"}\n{"text": "c", "label": "y"}\n', [],
           ["line 1", "JSON array", "JSON string"]),
          ("jsonl text is an object", "t.jsonl", '{"text": {"a": 1}, "label": "x"}\n', [], ["JSON object"]),
          ("jsonl text is a number", "t.jsonl", '{"text": 12, "label": "x"}\n{"text": "c", "label": "y"}\n', [],
           ["JSON number"]),
          ("jsonl label is an object", "t.jsonl", '{"text": "a b", "label": {"x": 1}}\n', [], ["label", "JSON object"]),
          ("zero-width text", "t.csv", GOOD_CSV + "\u200b\u200b,a\n", [], ["line 14", "invisible"]),
          ("BOM and joiner text", "t.csv", GOOD_CSV + "\ufeff\u200d ,b\n", [], ["line 14", "empty"]),
          ("labels 1 and 1.0", "t.csv", "text,label\n" + "".join(f"t {i},{['1', '1.0', '2'][i % 3]}\n"
                                                                for i in range(9)), [],
           ["'1' and '1.0'", "same number"]),
          ("labels 1 and 1.0 in JSONL", "t.jsonl", "".join(f'{{"text": "t {i}", "label": {[1, 1.0, 2][i % 3]}}}\n'
                                                           for i in range(9)), [], ["same number"]),
          ("labels 01 and 1", "t.csv", "text,label\n" + "".join(f"t {i},{['01', '1', '2'][i % 3]}\n"
                                                              for i in range(9)), [], ["same number"]),
          ("more folds than rows", "t.csv", "text,label\na b,x\nc d,y\ne f,x\n", ["data.n_folds=5"],
           ["data.n_folds=5", "3 rows"]),
          ("a holdout with no rows", "t.csv", "text,label\na b,x\nc d,y\n", [], ["holds out 0", "data.valid_size"]),
      ]],

    # 3b. found by a hostile review: each was a traceback, a half-made output or a silent loss
    Case("a learning rate with its minus sign lost", "train", [*TRAIN, "train.lr=2e5"], ["train.lr", "far above"]),
    Case("an infinite LoRA alpha", "train", [*TRAIN, "model.lora={{alpha: .inf}}"], ["model.lora.alpha"]),
    Case("an MLP head of a trillion units", "train", [*TRAIN, "model.mlp_hidden=1e12"], ["model.mlp_hidden", "65536"]),
    Case("an accumulation beyond int64", "train", [*TRAIN, "train.grad_accum=1e30"], ["train.grad_accum", "too large"]),
    Case("an accumulation beyond any use", "train", [*TRAIN, "train.grad_accum=1e9"], ["train.grad_accum", "at most"]),
    Case("a count written with an underscore", "train", [*TRAIN, "train.grad_accum=1_000"], ["not an integer"]),
    Case("train.output_dir is a file", "train", [*TRAIN, "train.output_dir={t}/t.csv"], ["is a file, not a folder"],
         {"t.csv": GOOD_CSV}),
    *[Case(f"template {template!r}", "data_process",
           [*DATA, "data.template=" + template.replace("{", "{{").replace("}", "}}")],
           ["data.template", "cannot be read", "{{ }}"], {"t.csv": GOOD_CSV})
      for template in ("T:{text", "x}{text}", "{text!}")],
    *[Case(f"encoding {codec}", "data_process", [*DATA, f"data.encoding={codec}"], ["not a known text encoding"],
           {"t.csv": GOOD_CSV}) for codec in ("rot13", "base64", "zlib")],
    Case("encoding punycode on a file that is not", "data_process", [*DATA, "data.encoding=punycode"],
         ["not punycode", "data.encoding"], {"t.csv": "text,label\n\u00e9t\u00e9 a,a\nb c,b\n" * 3}),
    Case("targets that differ only below float32", "data_process", [*DATA, "data.task=regression",
                                                                      "data.label_column=score"],
         ["target 'score' varies only from 1 to 1.000000001", "float32"],
         {"t.csv": "text,score\n" + "".join(f"t {i},{['1.0', '1.000000001'][i % 2]}\n" for i in range(12))}),
    Case("a target written with an underscore", "data_process", [*DATA, "data.task=regression",
                                                                   "data.label_column=score"],
         ["line 3", "'1_000'", "not a number"], {"t.csv": "text,score\na b,1\nc d,1_000\ne f,2\n"}),
    Case("a fold written with an underscore", "data_process", [*DATA, "data.fold_column=fold"],
         ["line 2", "the fold ('fold')"], {"t.csv": "text,label,fold\n" + "a b,a,0_1\n" + "c d,b,1\n" * 4}),
    Case("a test label column blank on some rows only", "data_process", [*DATA, "data.test_file={t}/test.csv"],
         ["line 3 of", "the label is empty while other rows"],
         {"t.csv": GOOD_CSV, "test.csv": "text,label\nx y,a\nz w,\n"}),
    Case("overwrite a foreign folder that holds a meta.json", "data_process",
         [*DATA, "data.output_dir={t}/data", "data.overwrite=true"], ["was not made by data_process.py"],
         {"t.csv": GOOD_CSV, "data/new/meta.json": '{"mine": 1}', "data/new/precious.txt": "keep me"}),
    Case("overwrite a foreign folder that holds a run.json", "train",
         [*TRAIN, "train.run=mine", "train.output_dir={t}/ck", "train.overwrite=true"], ["was not made by textclf"],
         {"ck/mine/run.json": "{}", "ck/mine/precious.txt": "keep me"}),
    Case("a config file with a section twice", "data_process", ["--config", "{t}/c.yaml"],
         ["key 'data' is given twice", "line 4"],
         {"c.yaml": "data:\n  name: new\n  max_len: 32\ndata:\n  n_folds: 3\n"}),
    Case("a config file with a key twice", "train", ["--config", "{t}/c.yaml"], ["key 'lr' is given twice"],
         {"c.yaml": "data:\n  name: ds\ntrain:\n  lr: 1.0e-4\n  lr: 2.0e-4\n"}),

    # 4. corrupt or foreign state files
    Case("run.json not JSON", "evaluate", ["data.name=ds", "eval.run={t}/ck/ds", "eval.output_dir={t}/mp"],
         ["run.json is not valid JSON"], setup=corrupt("run.json", "{ torn")),
    Case("run.json a list", "evaluate", ["data.name=ds", "eval.run={t}/ck/ds", "eval.output_dir={t}/mp"],
         ["run.json is not a textclf run.json", "not a JSON object"], setup=corrupt("run.json", "[1, 2]")),
    Case("run.json without data_dir", "evaluate", ["data.name=ds", "eval.run={t}/ck/ds", "eval.output_dir={t}/mp"],
         ["lacks data_dir"], setup=corrupt("run.json", '{"folds": [0]}')),
    Case("head.json not JSON", "evaluate", ["data.name=ds", "eval.run={t}/ck/ds", "eval.output_dir={t}/mp"],
         ["head.json is not valid JSON"], setup=corrupt("fold0/best/head.json", "{")),
    Case("head.json foreign", "evaluate", ["data.name=ds", "eval.run={t}/ck/ds", "eval.output_dir={t}/mp"],
         ["not a textclf head.json"], setup=corrupt("fold0/best/head.json", '{"format": 2, "head": {}}')),
    Case("head.json wrong types", "evaluate", ["data.name=ds", "eval.run={t}/ck/ds", "eval.output_dir={t}/mp"],
         ["not a textclf head.json", "labels.names"],
         setup=lambda w, t: edit_json(copy_run(w, t) / "fold0" / "best" / "head.json",
                                      lambda d: {**d, "labels": {"names": 3, "problem_type": "single_label"}})),
    Case("meta.json without label_names", "train", [*TRAIN, "data.output_dir={t}/data", "train.output_dir={t}/ck"],
         ["meta.json is not a data_process meta.json", "label_names"],
         setup=corrupt_meta(lambda d: {k: v for k, v in d.items() if k != "label_names"})),
    Case("meta.json of another version", "train", [*TRAIN, "data.output_dir={t}/data", "train.output_dir={t}/ck"],
         ["another version"], setup=corrupt_meta(lambda d: {**d, "format_version": 99})),
    Case("meta.json a string", "train", [*TRAIN, "data.output_dir={t}/data", "train.output_dir={t}/ck"],
         ["not a data_process meta.json"], setup=corrupt_meta('"meta"')),
    Case("manifest.json not JSON", "ensemble_and_submit", ["ensemble.predictions=[{t}/mp/ds]"],
         ["manifest.json is not valid JSON", "evaluate.py"], setup=corrupt_manifest("{")),
    Case("manifest.json without label_names", "ensemble_and_submit", ["ensemble.predictions=[{t}/mp/ds]"],
         ["lacks label_names"], setup=corrupt_manifest(lambda d: {k: v for k, v in d.items() if k != "label_names"})),
    Case("manifest.json split without ids", "ensemble_and_submit", ["ensemble.predictions=[{t}/mp/ds]"],
         ["no ids_sha256"], setup=corrupt_manifest(lambda d: {**d, "splits": {"test": {}}})),
    Case("state.json not JSON", "train", [*TRAIN, "train.epochs=2", "train.output_dir={t}/ck", "train.resume=auto"],
         ["state.json is not valid JSON", "earlier state"], setup=stopped_run_with("{")),
    Case("state.json with a foreign key", "train",
         [*TRAIN, "train.epochs=2", "train.output_dir={t}/ck", "train.resume=auto"],
         ["not a textclf training state", "surprise"], setup=stopped_run_with(lambda d: {**d, "surprise": 1})),
    Case("state.json with a wrong type", "train",
         [*TRAIN, "train.epochs=2", "train.output_dir={t}/ck", "train.resume=auto"],
         ["not a textclf training state", "step"], setup=stopped_run_with(lambda d: {**d, "step": "three"})),
    Case("state of another process count", "train",
         [*TRAIN, "train.epochs=2", "train.output_dir={t}/ck", "train.resume=auto"],
         ["saved by 2 process(es)", "--num_processes 2"], setup=stopped_run_with(lambda d: {**d, "processes": 2})),

    # 5. resume keeps what changes the result
    Case("resume with another lr", "train", [*TRAIN, "train.epochs=2", "train.output_dir={t}/ck", "train.resume=auto",
                                              "train.lr=5e-4"], ["train.lr", "then", "start a new run"],
         setup=stopped_run),
    Case("resume with another batch size", "train", ["data.name=ds", "train.epochs=2", "train.batch_size=4",
                                                    "train.output_dir={t}/ck", "train.resume=auto"],
         ["train.batch_size (8 then, 4 now)"], setup=stopped_run),
    Case("resume on other data", "train", [*TRAIN, "train.epochs=2", "data.output_dir={t}/data",
                                           "train.output_dir={t}/ck", "train.resume=auto"],
         ["meta.json differs", "start a new run"], setup=other_data),
    Case("resume from a path inside the run that is no state", "train",
         [*TRAIN, "train.epochs=2", "train.output_dir={t}/ck", "train.resume={t}/ck/ds/fold0"],
         ["name the run", "last-<step>"], setup=stopped_run),
    Case("resume from a fold the run does not train", "train",
         [*TRAIN, "train.epochs=2", "train.output_dir={t}/ck", "train.resume={t}/ck/ds/fold7/last-00000001"],
         ["k in 0"], setup=stopped_run),

    # 6. submissions
    Case("integer labels and a 0 placeholder", "ensemble_and_submit",
         ["ensemble.predictions=[{w}/mp/ag]", "ensemble.sample_submission={w}/in/ag_sample.csv"],
         ["could mean names or class indices", "ensemble.label_format"]),
    Case("sample with an id twice", "ensemble_and_submit",
         ["ensemble.predictions=[{w}/mp/ds]", "ensemble.sample_submission={t}/s.csv"], ["'t0' twice"],
         {"s.csv": "id,label\n" + "".join(f"t{i},a\n" for i in [0, 0, 1, 2, 3, 4])}),
    Case("sample with another id set", "ensemble_and_submit",
         ["ensemble.predictions=[{w}/mp/ds]", "ensemble.sample_submission={t}/s.csv"], ["ids do not match"],
         {"s.csv": "id,label\n" + "".join(f"t{i},a\n" for i in [0, 1, 2, 3, 4, 9])}),

    # 7. evaluate
    Case("a run with an unfinished fold", "evaluate", ["data.name=ds2", "eval.run={t}/ck/ds2", "eval.output_dir={t}/mp"],
         ["fold(s) 1 are not finished", "eval.folds=[0]"], setup=unfinished_fold),
    Case("eval.folds names a fold the run lacks", "evaluate",
         ["data.name=ds", "eval.run={w}/ck/ds", "eval.folds=[5]"], ["fold 5", "its folds: 0"]),
    Case("eval.texts of invisible characters", "evaluate",
         ["data.name=ds", "eval.run={w}/ck/ds", 'eval.texts=["\u200b", "ok"]'], ["item 0 is empty"]),
    Case("eval.input with an empty text", "evaluate", ["data.name=ds", "eval.run={w}/ck/ds", "eval.input={t}/in.csv"],
         ["line 3", "empty"], {"in.csv": "id,text\n1,fine\n2,\n"}),
    Case("eval.input with a duplicate id", "evaluate",
         ["data.name=ds", "eval.run={w}/ck/ds", "eval.input={t}/in.csv", "data.id_column=id"],
         ["id '1'", "unique"], {"in.csv": "id,text\n1,fine\n1,again\n"}),
    Case("eval.input with a duplicate column", "evaluate",
         ["data.name=ds", "eval.run={w}/ck/ds", "eval.input={t}/in.csv"], ["more than once"],
         {"in.csv": "text,text\na,b\n"}),
    Case("a data.* key that differs from the arrays", "evaluate", ["data.name=ds", "data.max_len=16"],
         ["data.max_len=16 differs", "data_process.py"]),
    Case("the newest run is an unfinished stub", "evaluate", ["data.name=ds", "train.output_dir={t}/ck"],
         ["newest run", "no finished fold", "eval.run="], setup=lambda w, t: (
             copy_run(w, t), shutil.copytree(t / "ck" / "ds", t / "ck" / "ds-v2"),
             [shutil.rmtree(p) for p in (t / "ck" / "ds-v2").glob("fold*")])),

    # 8. hostile round two: model folders refused up front, whatever is wrong in them
    *[Case(f"model folder {name}", stage, [*extra, "model.name={t}/pm/m"], phrases, {"t.csv": GOOD_CSV},
           broken_model(change))
      for name, change, phrases in [
          ("without config.json", lambda f: (f / "config.json").unlink(), ["has no config.json"]),
          ("with config.json not JSON", lambda f: (f / "config.json").write_text("{ torn"), ["config.json"]),
          ("with config.json a list", lambda f: (f / "config.json").write_text("[1]"), ["config.json"]),
          ("of an unknown model_type", edit_config(model_type="no-such-model"), ["no-such-model"]),
          ("without tokenizer files", lambda f: [(f / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
           ["no tokenizer files"]),
          ("with a torn tokenizer.json", lambda f: (f / "tokenizer.json").write_text('{"version": "1.0", "mod'),
           ["tokenizer"]),
          ("without weights", lambda f: (f / "model.safetensors").unlink(), ["has no weights"]),
          ("with weights cut short", lambda f: os.truncate(f / "model.safetensors", 4000),
           ["not a readable safetensors file", "cut short"]),
          ("whose config is wider than its weights", edit_config(hidden_size=64, intermediate_size=128),
           ["do not fit its config.json"]),
          ("whose config names another vocabulary", edit_config(vocab_size=50), ["do not fit its config.json"]),
          ("whose tokenizer outgrows its embeddings", lambda f: (edit_config(vocab_size=50)(f), edit_weights(
              lambda w: w.update({k: w[k][:50] for k in w if "word_embeddings" in k}))(f)), ["vocab"]),
          ("with an index naming a missing shard", lambda f: (
              os.rename(f / "model.safetensors", f / "model-00001-of-00002.safetensors"),
              (f / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
                  "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))),
           ["lacks", "model-00002-of-00002.safetensors"]),
      ] for stage, extra in (("data_process", DATA),)],
    Case("model weights holding NaN", "train", [*TRAIN, "model.name={t}/pm/m", "train.output_dir={t}/ck"],
         ["hold NaN or inf", "query"], setup=broken_model(edit_weights(
             lambda w: w[first_matching(w, "attention.self.query.weight")].__setitem__((0, 0), float("nan"))))),
    Case("model weights with a tensor renamed beside one spare", "train",
         [*TRAIN, "model.name={t}/pm/m", "train.output_dir={t}/ck"], ["lack 1 tensor(s)", "would start random"],
         setup=broken_model(edit_weights(lambda w: w.update(
             {"zzz.not.a.weight": w.pop(first_matching(w, "layer.1.attention.self.query.weight"))})))),
    Case("pickled model weights holding NaN in a bias", "train",
         [*TRAIN, "model.name={t}/pm/m", "train.output_dir={t}/ck"], ["hold NaN or inf", "bias"],
         setup=broken_model(pickled_weights(lambda w: w[first_matching(w, "output.dense.bias")].fill_(float("nan"))))),
    Case("pickled model weights of another shape", "train",
         [*TRAIN, "model.name={t}/pm/m", "train.output_dir={t}/ck"], ["do not fit its config.json"],
         setup=broken_model(pickled_weights(lambda w: w.update(
             {k: w[k][:, :16] for k in [first_matching(w, "attention.self.query.weight")]})))),
    Case("an adapter rank beyond the model's width", "train", [*TRAIN, "model.lora={{r: 64}}"],
         ["model.lora.r", "width", "model.lora.r=8"]),
    Case("class weights that overflow the loss", "train", [*TRAIN, "train.class_weights=[3e38,3e38]"],
         ["train.class_weights", "1e9"]),
    Case("class weights that vanish in float32", "train", [*TRAIN, "train.class_weights=[1e-46,1e-46]"],
         ["train.class_weights", "1e-9"]),
    Case("a valid file of the training rows spaced and cased otherwise", "data_process",
         [*DATA, "data.valid_file={t}/v.csv"], ["every row of the valid file", "spacing and case aside"],
         {"t.csv": GOOD_CSV, "v.csv": "text,label\n" + "".join(f"TEXT  {i},{'ab'[i % 2]}\n" for i in (3, 1, 4))}),
    Case("a test file that is the train file less a row", "data_process", [*DATA, "data.test_file={t}/test.csv"],
         ["every row of the test file"],
         {"t.csv": GOOD_CSV, "test.csv": "text\n" + "".join(f"text {i}\n" for i in range(11))}),
    Case("a group column that is the label renamed, three classes", "data_process",
         [*DATA, "data.group_column=g", "data.n_folds=2"], ["'g' follows the label"],
         {"t.csv": "text,label,g\n" + "".join(f"text {i},{'abc'[i % 3]},{'xyz'[i % 3]}\n" for i in range(12))}),
    Case("a dangling link where the data set would go", "data_process", [*DATA, "data.output_dir={t}/data"],
         ["symbolic link to a missing folder"], {"t.csv": GOOD_CSV},
         setup=lambda w, t: ((t / "data").mkdir(), os.symlink(t / "nowhere", t / "data" / "new"))),

    # 9. validation and test files that are the training rows; folds that follow the label
    Case("a valid file of the training rows", "data_process", [*DATA, "data.valid_file={t}/v.csv"],
         ["every row of the valid file", "drop data.valid_file"],
         {"t.csv": GOOD_CSV, "v.csv": "text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in (3, 1, 4))}),
    Case("a test file that is the train file", "data_process", [*DATA, "data.test_file={t}/t.csv"],
         ["every row of the test file", "eval.splits=[train]"], {"t.csv": GOOD_CSV}),
    Case("a fold column that is the label", "data_process", [*DATA, "data.fold_column=label"],
         ["data.fold_column", "is a label column"], {"t.csv": GOOD_CSV}),
    Case("a group column that is the label", "data_process", [*DATA, "data.group_column=label"],
         ["data.group_column", "is a label column"], {"t.csv": GOOD_CSV}),
    Case("a fold column that follows the label", "data_process", [*DATA, "data.fold_column=f"],
         ["'f' follows the label"],
         {"t.csv": "text,label,f\n" + "".join(f"text {i},{'ab'[i % 2]},{i % 2}\n" for i in range(12))}),
    Case("a group column that follows the label", "data_process", [*DATA, "data.group_column=g"],
         ["'g' follows the label"],
         {"t.csv": "text,label,g\n" + "".join(f"text {i},{'ab'[i % 2]},{'xy'[i % 2]}\n" for i in range(12))}),
    Case("fewer groups than folds", "data_process", [*DATA, "data.group_column=g", "data.n_folds=4"],
         ["3 group(s)", "data.n_folds=3 or fewer"],
         {"t.csv": "text,label,g\n" + "".join(f"text {i},{'ab'[i % 2]},g{i % 3}\n" for i in range(12))}),

    # 10. processed data folders missing or cutting an array
    *[Case(f"data folder {name} ({stage})", stage, [*extra, "data.output_dir={t}/data"], phrases,
           setup=broken_data(change))
      for name, change, phrases in [
          ("without labels.npy", lambda f: (f / "train" / "labels.npy").unlink(),
           ["labels.npy is missing", "data.overwrite=true"]),
          ("without test ids", lambda f: (f / "test" / "ids.npy").unlink(), ["ids.npy is missing"]),
          ("with input_ids cut short", lambda f: os.truncate(f / "train" / "input_ids.npy", 500),
           ["input_ids.npy cannot be read"]),
          ("with folds of other rows", lambda f: np.save(f / "train" / "folds.npy", np.zeros(5, np.int16)),
           ["folds.npy holds (5,)", "(24,)"]),
          ("with labels beyond its classes", lambda f: np.save(f / "train" / "labels.npy", np.full(24, 7)),
           ["not what data_process writes for single_label data with 2 label(s)", "values [7]"]),
          ("with labels of floats and a NaN",
           lambda f: np.save(f / "train" / "labels.npy", np.r_[np.nan, np.zeros(23)]),
           ["not what data_process writes", "float64"]),
          ("with folds beyond its fold count", lambda f: np.save(f / "train" / "folds.npy", np.full(24, 7, np.int16)),
           ["holds folds [7]", "1 fold(s)"]),
      ] for stage, extra in (("train", [*TRAIN, "train.output_dir={t}/ck"]),
                             ("evaluate", ["eval.data=ds", "eval.run={w}/ck/ds", "eval.output_dir={t}/mp"]))],

    # 11. labels and targets
    Case("multi-label declared with one label column", "data_process", [*DATA, "data.label_columns=[label]"],
         ["names one column", "data.label_column=label"], {"t.csv": GOOD_CSV}),
    Case("a label delimiter that splits nothing into one class", "data_process",
         [*DATA, "data.label_delimiter=;"], ["only one label", "data.label_delimiter=';' splits none"],
         {"t.csv": "text,label\n" + "".join(f"text {i},x\n" for i in range(6))}),
    Case("targets beyond what float32 holds with room", "data_process",
         [*DATA, "data.task=regression", "data.label_column=score"], ["line 3", "within +-1e30"],
         {"t.csv": "text,score\na b,1\nc d,3e35\ne f,2\n"}),

    # 12. refusals that name the right cause and advise a value that works
    Case("a template read through sliding windows", "data_process",
         [*DATA, "data.template=t: {{text}} answer:", "data.window_stride=4", "data.max_len=16"],
         ["data.window_stride", "data.template's own words"], {"t.csv": GOOD_CSV}),
    Case("a split the data does not have, asked for by name", "evaluate",
         ["data.name=ds2", "eval.run={w}/ck/ds2", "eval.splits=[test]", "eval.output_dir={t}/mp"],
         ["ds2 has no test split (its splits: train)", "eval.splits=[train]"]),
    Case("a semicolon delimiter on a comma file", "data_process", [*DATA, "data.delimiter=;"],
         ["comma-separated", "set data.delimiter=','"], {"t.csv": GOOD_CSV}),
    Case("eval.run as a bare run name", "evaluate", ["data.name=ds", "eval.run=ds"],
         ["no such folder", "world0/ck/ds"]),
    Case("eval.input that does not exist", "evaluate", ["data.name=ds", "eval.run={w}/ck/ds", "eval.input={t}/no.csv"],
         ["not found; check eval.input"]),
    Case("a model path that does not exist", "data_process", [*DATA, "model.name={t}/nowhere"],
         ["does not exist; check model.name"], {"t.csv": GOOD_CSV}),
    Case("more folds than rows and groups", "data_process", [*DATA, "data.group_column=g", "data.n_folds=20"],
         ["3 group(s)", "data.n_folds=3 or fewer"],
         {"t.csv": "text,label,g\n" + "".join(f"text {i},{'ab'[i % 2]},g{i % 3}\n" for i in range(12))}),
    Case("a sample whose id column is not first", "ensemble_and_submit",
         ["ensemble.predictions=[{w}/mp/ds]", "ensemble.sample_submission={t}/s.csv"], ["id column 'id'", "front"],
         {"s.csv": "label,id\n" + "".join(f"a,t{i}\n" for i in range(6))}),
    Case("a one-column-per-label sample for labels of one class per row", "ensemble_and_submit",
         ["ensemble.predictions=[{w}/mp/ds]", "ensemble.sample_submission={t}/s.csv", "ensemble.output=labels"],
         ["ensemble.output=class_probabilities"], {"s.csv": "id,a,b\n" + "".join(f"t{i},0,1\n" for i in range(6))}),
    Case("roc_auc for four classes", "ensemble_and_submit",
         ["ensemble.predictions=[{w}/mp/ag]", "ensemble.metric=roc_auc", "ensemble.method=rank"],
         ["scores two classes", "log_loss", "ensemble.method=weighted"]),

    Case("an adversarial pass that would start after training ends", "train",
         [*TRAIN, "train.adversarial=fgm", "train.adv_start_epoch=5"],
         ["train.adv_start_epoch", "would never run", "train.adv_start_epoch=0.5"]),
    Case("resume from a state folder that does not exist", "train",
         [*TRAIN, "train.epochs=2", "train.output_dir={t}/ck", "train.resume={t}/ck/ds/fold0/last-2"],
         ["no such folder", "fold0 has last-"], setup=stopped_run),

    # 13. two writers of one run
    Case("a dangling link where the run would go", "train",
         [*TRAIN, "train.run=gone", "train.output_dir={t}/ck", "train.overwrite=true"],
         ["symbolic link to a missing folder"], setup=lambda w, t: (
             (t / "ck").mkdir(), os.symlink(t / "nowhere", t / "ck" / "gone"))),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_with_one_line_and_nothing_changed(world, stage, tmp_path, case):
    for name, content in case.files.items():
        write(tmp_path / name, content)
    if case.setup:
        case.setup(world, tmp_path)
    before = snapshot(world.root, tmp_path)
    args = [a.format(w=world.root, t=tmp_path) for a in case.args]
    result = stage(case.stage, *world.base, *args)
    expect_refusal(result, *case.phrases)
    assert snapshot(world.root, tmp_path) == before, "a refused input changed an output folder"


def test_the_table_covers_every_class_with_enough_cases():
    assert len(CASES) >= 150


# ---------------------------------------------------------------------------- what must work


def data_process_ok(stage, world, tmp_path, *args):
    result = stage("data_process", *world.base, "data.name=new", f"data.output_dir={tmp_path / 'data'}", *args)
    assert result.code == 0, result
    return json.loads((tmp_path / "data" / "new" / "meta.json").read_text())


def test_yaml_words_stay_label_names(stage, world, tmp_path):
    write(tmp_path / "t.csv", "text,label\n" + "".join(f"text {i},{['no', 'yes'][i % 2]}\n" for i in range(12)))
    config = write(tmp_path / "c.yaml", "data:\n  labels: [no, yes]\n  label_column: label\n")
    meta = data_process_ok(stage, world, tmp_path, "--config", config, f"data.train_file={tmp_path / 't.csv'}")
    assert meta["label_names"] == ["no", "yes"]


def test_a_space_label_delimiter_splits_multi_labels(stage, world, tmp_path):
    write(tmp_path / "t.csv", "text,label\n" + "".join(f"text {i},{['x y', 'y', 'x'][i % 3]}\n" for i in range(12)))
    meta = data_process_ok(stage, world, tmp_path, f"data.train_file={tmp_path / 't.csv'}", "data.label_delimiter= ")
    assert meta["problem_type"] == "multi_label" and meta["label_names"] == ["x", "y"]


def test_jsonl_and_csv_give_the_same_labels(stage, world, tmp_path):
    rows = [(f"text {i}", ["1.0", "2.0"][i % 2]) for i in range(12)]
    write(tmp_path / "t.csv", "text,label\n" + "".join(f"{t},{l}\n" for t, l in rows))
    write(tmp_path / "t.jsonl", "".join(json.dumps({"text": t, "label": float(l)}) + "\n" for t, l in rows))
    csv_meta = data_process_ok(stage, world, tmp_path, f"data.train_file={tmp_path / 't.csv'}")
    shutil.rmtree(tmp_path / "data")
    jsonl_meta = data_process_ok(stage, world, tmp_path, f"data.train_file={tmp_path / 't.jsonl'}")
    assert csv_meta["label_names"] == jsonl_meta["label_names"] == ["1.0", "2.0"]


def test_a_killed_stage_leaves_nothing_the_next_run_keeps(stage, world, tmp_path):
    stale = tmp_path / "data" / ".new.tmp-0badc0de"
    stale.mkdir(parents=True)
    write(stale / ".textclf-writer", json.dumps({"pid": 2 ** 22 + 12345, "host": os.uname().nodename}))
    alive = tmp_path / "data" / ".other.tmp-0000beef"
    alive.mkdir()
    write(alive / ".textclf-writer", json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    write(tmp_path / "t.csv", GOOD_CSV)
    data_process_ok(stage, world, tmp_path, f"data.train_file={tmp_path / 't.csv'}")
    assert not stale.exists() and alive.exists()  # a dead writer's folder goes; a live one's stays
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".other.tmp-0000beef", "new"]
    assert json.loads((tmp_path / "data" / "new" / ".textclf").read_text())["kind"] == "data"


def test_a_torn_last_log_line_does_not_block_resume(stage, world, tmp_path):
    stopped_run(world, tmp_path)
    log = tmp_path / "ck" / "ds" / "metrics.jsonl"
    log.write_bytes(log.read_bytes() + b'{"type": "train", "st')  # killed mid-append
    result = stage("train", *world.base, *TRAIN, "train.epochs=2", f"train.output_dir={tmp_path / 'ck'}",
                   "train.resume=auto", "train.max_time=0")  # max_time may change on resume
    assert result.code == 0, result
    lines = log.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the torn line is gone, every line whole


def test_integer_labels_are_written_as_names_when_asked(stage, world, tmp_path):
    result = stage("ensemble_and_submit", *world.base, "ensemble.predictions=[" + str(world.root / "mp" / "ag") + "]",
                   f"ensemble.sample_submission={world.root / 'in' / 'ag_sample.csv'}", "ensemble.label_format=name",
                   f"ensemble.output_dir={tmp_path / 'subs'}")
    assert result.code == 0, result
    rows = list(csv.reader((tmp_path / "subs" / "submission.csv").open()))
    assert {r[1] for r in rows[1:]} <= {"1", "2", "3", "4"}


def test_eval_texts_are_taken_verbatim(stage, world, tmp_path):
    result = stage("evaluate", *world.base, "data.name=ds", f"eval.run={world.root / 'ck' / 'ds'}",
                   f"eval.output_dir={tmp_path / 'mp'}", "eval.texts=[yes, no, 010]")
    assert result.code == 0, result
    shown = [line.split()[-1] for line in result.out.splitlines() if "p=" in line]
    assert shown == ["yes", "no", "010"]


def test_eval_folds_predicts_with_the_finished_folds(stage, world, tmp_path):
    unfinished_fold(world, tmp_path)
    result = stage("evaluate", *world.base, "data.name=ds2", f"eval.run={tmp_path / 'ck' / 'ds2'}",
                   f"eval.output_dir={tmp_path / 'mp'}", "eval.folds=[0]", "eval.splits=[train]")
    assert result.code == 0, result
    manifest = json.loads((tmp_path / "mp" / "ds2" / "manifest.json").read_text())
    assert [c["fold"] for c in manifest["checkpoints"]] == [0]
    assert json.loads((tmp_path / "mp" / "ds2" / ".textclf").read_text())["kind"] == "predictions"


def test_overwrite_replaces_a_folder_textclf_made(stage, world, tmp_path):
    write(tmp_path / "t.csv", GOOD_CSV)
    data_process_ok(stage, world, tmp_path, f"data.train_file={tmp_path / 't.csv'}")
    data_process_ok(stage, world, tmp_path, f"data.train_file={tmp_path / 't.csv'}", "data.max_len=24",
                    "data.overwrite=true")
    assert json.loads((tmp_path / "data" / "new" / "meta.json").read_text())["max_len"] == 24


def test_a_blank_label_column_in_a_test_file_is_unlabelled_and_eval_input_never_reads_labels(stage, world, tmp_path):
    """Kaggle test files may carry the label column empty; eval.input ignores label columns."""
    write(tmp_path / "t.csv", GOOD_CSV)
    write(tmp_path / "test.csv", "text,label\nx y,\nz w,\n")
    meta = data_process_ok(stage, world, tmp_path, f"data.train_file={tmp_path / 't.csv'}",
                           f"data.test_file={tmp_path / 'test.csv'}")
    assert meta["splits"]["test"]["labelled"] is False and meta["splits"]["test"]["rows"] == 2
    assert not (tmp_path / "data" / "new" / "test" / "labels.npy").exists()
    write(tmp_path / "in.csv", "id,text,label\n1,fine,\n2,also fine,zzz\n")  # blank and unknown labels alike
    result = stage("evaluate", *world.base, "data.name=ds", f"eval.run={world.root / 'ck' / 'ds'}",
                   f"eval.input={tmp_path / 'in.csv'}", "data.id_column=id", f"eval.output_dir={tmp_path / 'mp'}")
    assert result.code == 0, result


def test_a_submission_never_replaces_a_summary_json_of_the_same_name(stage, world, tmp_path):
    write(tmp_path / "subs" / "final.json", '{"my": "notes"}')
    result = stage("ensemble_and_submit", *world.base, "ensemble.predictions=[" + str(world.root / "mp" / "ds") + "]",
                   f"ensemble.output_dir={tmp_path / 'subs'}", "ensemble.name=final")
    assert result.code == 0, result
    assert (tmp_path / "subs" / "final.json").read_text() == '{"my": "notes"}'
    assert (tmp_path / "subs" / "final-v2.csv").is_file() and (tmp_path / "subs" / "final-v2.json").is_file()


def test_evaluate_names_predictions_after_the_runs_real_folder(stage, world, tmp_path):
    result = stage("evaluate", *world.base, "data.name=ds", f"eval.run={world.root / 'ck' / 'ds' / 'fold0'}/..",
                   f"eval.output_dir={tmp_path / 'mp'}")
    assert result.code == 0, result
    assert [p.name for p in (tmp_path / "mp").iterdir()] == ["ds"]


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs-model", "a/b", ".."])
def test_premodels_names_stay_inside_dest(tmp_path, name):
    from textclf.errors import run_cli
    from textclf.premodels import main

    with pytest.raises(SystemExit) as stop:
        run_cli(main, ["random", "bert", "--name", name, "--dest", str(tmp_path / "pm")])
    assert stop.value.code == 2
    assert not (tmp_path / "escape").exists() and not os.path.exists("/tmp/abs-model") and not (tmp_path / "pm").exists()


def test_diverged_weights_are_named_not_blamed_on_batching():
    """NaN outputs (a diverged model) are one clear line, not "a bug in batching"."""
    import torch

    from textclf.errors import UserError
    from textclf.loader import SortedBatches, SplitArrays, make_loader
    from textclf.predict import predict_rows

    n = 5
    dataset = SplitArrays.in_memory({"input_ids": torch.ones(n, 3, dtype=torch.int64).numpy(),
                                     "attention_mask": torch.ones(n, 3, dtype=torch.int64).numpy(),
                                     "token_type_ids": torch.zeros(n, 3, dtype=torch.int64).numpy(),
                                     "lengths": torch.full((n,), 3).numpy()})
    loader = make_loader(dataset, SortedBatches(dataset.lengths(), 2))
    model = torch.nn.Module()
    fine = predict_rows(model, loader, n, compute=lambda m, b: b["index"].float()[:, None])
    assert fine[:, 0].tolist() == list(range(n))
    with pytest.raises(UserError, match="not finite .* on 2 of 5 rows: its weights have diverged"):
        predict_rows(model, loader, n, compute=lambda m, b: torch.where(
            b["index"][:, None] % 2 == 1, float("nan"), 1.0))


def test_predictor_takes_any_sequence_and_refuses_pairs_that_do_not_fit(world):
    import numpy as np

    from textclf import Predictor
    from textclf.errors import UserError

    predictor = Predictor.from_run(world.root / "ck" / "ds", precision="no")
    texts = ["row 1 is b b", "row 2 is a a", "row 5 is b"]
    want = predictor.predict(texts)["probs"]
    for given in (tuple(texts), (t for t in texts), np.array(texts), iter(texts)):
        np.testing.assert_array_equal(predictor.predict(given)["probs"], want)
    # a lone surrogate (a JSON '\ud800' escape) is read as U+FFFD, not a tokenizer crash
    np.testing.assert_array_equal(predictor.predict(["abc \ud800 def"])["probs"],
                                  predictor.predict(["abc \ufffd def"])["probs"])
    with pytest.raises(UserError, match="reads single texts"):
        predictor.predict(texts, pairs=["x", "y", "z"])
    with pytest.raises(UserError, match="no texts"):
        predictor.embed([])


def test_a_pair_model_refuses_pairs_of_another_length(stage, world, tmp_path):
    from textclf import Predictor
    from textclf.errors import UserError

    write(tmp_path / "p.csv", "text,second,label\n" + "".join(f"row {i},other {i},{'ab'[i % 2]}\n" for i in range(24)))
    data_process_ok(stage, world, tmp_path, f"data.train_file={tmp_path / 'p.csv'}", "data.text_pair_column=second")
    result = stage("train", *world.base, "data.name=new", f"data.output_dir={tmp_path / 'data'}",
                   f"train.output_dir={tmp_path / 'ck'}", "train.epochs=1", "train.batch_size=8")
    assert result.code == 0, result
    predictor = Predictor.from_run(tmp_path / "ck" / "new", precision="no")
    assert predictor.predict(["a", "b"], pairs=["x", "y"])["probs"].shape == (2, 2)
    for pairs, phrase in ((["x"], "2 text\\(s\\) but 1 pair"), (["x", "y", "z"], "but 3 pair"), ([None, "y"], "strings"),
                          (None, "trained on text pairs")):
        with pytest.raises(UserError, match=phrase):
            predictor.predict(["a", "b"], pairs=pairs)
    result = stage("evaluate", *world.base, "data.name=new", f"data.output_dir={tmp_path / 'data'}",
                   f"eval.run={tmp_path / 'ck' / 'new'}", 'eval.texts=["a"]', f"eval.output_dir={tmp_path / 'mp'}")
    expect_refusal(result, "trained on text pairs", "eval.input")


@pytest.mark.parametrize("change, phrase", [
    (lambda p: np.concatenate([p, p[:1]]), "has shape (7, 2)"),
    (lambda p: p[:, 0], "has shape (6,)"),
    (lambda p: np.concatenate([p, p[:, :1]], axis=1), "has shape (6, 3)"),
    (lambda p: p * np.nan, "not finite"),
])
def test_a_prediction_set_edited_after_evaluate_is_refused_before_writing(stage, world, tmp_path, change, phrase):
    shutil.copytree(world.root / "mp" / "ds", tmp_path / "mp" / "ds")
    path = tmp_path / "mp" / "ds" / "test" / "probs.npy"
    np.save(path, change(np.load(path)))
    result = stage("ensemble_and_submit", *world.base, f"ensemble.predictions=[{tmp_path / 'mp' / 'ds'}]",
                   f"ensemble.output_dir={tmp_path / 'subs'}", "ensemble.name=e")
    expect_refusal(result, phrase, "changed after evaluate.py")
    assert not (tmp_path / "subs").exists()


def test_evaluate_says_when_the_data_was_made_again_after_training(stage, world, tmp_path):
    common = [*world.base, "data.name=ds", f"data.output_dir={tmp_path / 'data'}", f"train.output_dir={tmp_path / 'ck'}",
              f"eval.output_dir={tmp_path / 'mp'}"]
    shutil.copytree(world.root / "data" / "ds", tmp_path / "data" / "ds")
    assert stage("train", *common, "train.epochs=1", "train.batch_size=8").code == 0
    assert stage("evaluate", *common, f"eval.output_dir={tmp_path / 'same'}").err.count("warning") == 0
    write(tmp_path / "other.csv", "id,text,label\n" + ROWS.replace(" is ", " was "))
    assert stage("data_process", *common, f"data.train_file={tmp_path / 'other.csv'}", "data.id_column=id",
                 "data.overwrite=true").code == 0
    result = stage("evaluate", *common)
    assert result.code == 0 and "was made again after this run trained" in result.err, result
    assert json.loads((tmp_path / "mp" / "ds" / "manifest.json").read_text())["data_changed_since_training"] is True


# ---------------------------------------------------------------------------- hostile round two, beyond the table


def test_a_fold_whose_every_step_was_skipped_fails_instead_of_keeping_an_untrained_model(stage, world, tmp_path):
    """An adversarial step so large that every loss is non-finite: the fold must not end as trained."""
    result = stage("train", *world.base, *TRAIN, f"train.output_dir={tmp_path / 'ck'}", "train.adversarial=fgm",
                   "train.adv_eps=1e38")
    line = expect_refusal(result, "every one of its", "never trained", "train.adv_eps")
    assert "3 optimizer step(s)" in line
    assert not (tmp_path / "ck" / "ds" / "fold0" / "done.json").exists()
    result = stage("evaluate", *world.base, "data.name=ds", f"eval.run={tmp_path / 'ck' / 'ds'}",
                   f"eval.output_dir={tmp_path / 'mp'}")
    expect_refusal(result, "no trained fold")


def test_targets_that_partly_collapse_in_float32_and_labels_that_read_as_lists_are_warned_about(stage, world, tmp_path):
    write(tmp_path / "t.csv", "text,score\n" + "".join(f"t {i},{100000000 + i}\n" for i in range(12)))
    result = stage("data_process", *world.base, "data.name=new", f"data.output_dir={tmp_path / 'data'}",
                   f"data.train_file={tmp_path / 't.csv'}", "data.task=regression", "data.label_column=score")
    assert result.code == 0, result
    assert "target 'score' has 12 distinct values but float32 (labels.npy) holds" in result.out, result.out
    write(tmp_path / "m.csv", "text,tags\n" + "".join(f"t {i},{['x;y', 'x', 'y', 'y;z', 'z'][i % 5]}\n"
                                                       for i in range(15)))
    result = stage("data_process", *world.base, "data.name=m", f"data.output_dir={tmp_path / 'data'}",
                   f"data.train_file={tmp_path / 'm.csv'}", "data.label_column=tags")
    assert result.code == 0, result
    assert "read as lists of other labels" in result.out and "data.label_delimiter=';'" in result.out, result.out


def test_test_rows_repeating_training_texts_are_counted_and_a_group_holdout_off_its_size_is_warned_about(
        stage, world, tmp_path):
    write(tmp_path / "t.csv", "text,label,g\n" + "".join(f"text {i},{'ab'[i % 2]},g{i % 3}\n" for i in range(24)))
    write(tmp_path / "test.csv", "text\ntext 1\ntext 2\nnew text\n")
    meta = data_process_ok(stage, world, tmp_path, f"data.train_file={tmp_path / 't.csv'}",
                           f"data.test_file={tmp_path / 'test.csv'}")
    assert meta["splits"]["test"]["texts_in_train"] == 2 and meta["splits"]["test"]["rows"] == 3
    result = stage("data_process", *world.base, "data.name=g", f"data.output_dir={tmp_path / 'data'}",
                   f"data.train_file={tmp_path / 't.csv'}", "data.group_column=g", "data.valid_size=0.1")
    assert result.code == 0, result
    assert "valid_size=0.1 asks for 10% of the rows; whole groups of 'g' hold out 8 of 24" in result.out, result.out


HOLD = """
import sys
from textclf.fileio import OutputLock
lock = OutputLock()
lock.take(sys.argv[1], "run", "resume it")
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_run_another_process_is_writing_is_neither_overwritten_nor_resumed(stage, world, tmp_path):
    """Two writers of one run name never mix: while another process holds the run, overwrite,
    resume and a new run that picked the same name are refused and nothing changes."""
    import subprocess
    import sys

    from conftest import ROOT

    run = copy_run(world, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(tmp_path)
        for extra in (["train.overwrite=true"], ["train.resume=auto"], [f"train.resume={run}"]):
            result = stage("train", *world.base, *TRAIN, f"train.output_dir={tmp_path / 'ck'}", *extra)
            expect_refusal(result, f"{run} is being written by process {holder.pid}", "two writers")
        assert snapshot(tmp_path) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    result = stage("train", *world.base, *TRAIN, f"train.output_dir={tmp_path / 'ck'}", "train.overwrite=true")
    assert result.code == 0, result  # the other writer has ended: the run is textclf's to replace


def test_overwrite_replaces_a_symbolic_link_never_what_it_points_at(stage, world, tmp_path):
    symlinked_run(world, tmp_path)
    kept = snapshot(tmp_path / "elsewhere")
    result = stage("train", *world.base, *TRAIN, f"train.output_dir={tmp_path / 'ck'}", "train.overwrite=true")
    assert result.code == 0, result
    run = tmp_path / "ck" / "ds"
    assert run.is_dir() and not run.is_symlink() and (run / "fold0" / "done.json").is_file()
    assert snapshot(tmp_path / "elsewhere") == kept
    shutil.copytree(world.root / "data" / "ds", tmp_path / "data-elsewhere")
    (tmp_path / "data").mkdir()
    os.symlink(tmp_path / "data-elsewhere", tmp_path / "data" / "new")
    kept = snapshot(tmp_path / "data-elsewhere")
    write(tmp_path / "t.csv", GOOD_CSV)
    data_process_ok(stage, world, tmp_path, f"data.train_file={tmp_path / 't.csv'}", "data.overwrite=true")
    assert not (tmp_path / "data" / "new").is_symlink() and snapshot(tmp_path / "data-elsewhere") == kept
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["new"]  # no link or old folder left behind
