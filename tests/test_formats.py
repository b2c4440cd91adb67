"""Data where users keep it: Parquet, Feather (Arrow IPC), a datasets folder, a DataFrame in Python.

The same table of bad inputs that CSV files get (tests/test_bad_inputs.py, and the input cases of
tests/test_hostile_inputs.py) runs on every format: one line, the same phrases (a CSV's "line 12"
is a table's "row 11"), nothing written. The same rows in any format give the same arrays."""

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import textclf
from conftest import write
from test_bad_inputs import DATA_CASES, data_process, expect_refusal
from textclf.errors import UserError

datasets = pytest.importorskip("datasets")

FORMATS = ("parquet", "feather", "datasets", "dataframe")
EXT = {"parquet": ".parquet", "feather": ".feather", "datasets": ".ds"}
# cases about a CSV file's own syntax (delimiters, bytes, quoting, headerless files, JSON lines): a table has none
CSV_ONLY = {"wrong delimiter", "semicolon delimiter", "undecodable bytes", "ragged row", "headerless without columns",
            "invalid json line", "jsonl missing key", "unknown option"}
# what a table says where the CSV case's phrase cannot apply
PHRASES = {("empty file", "datasets"): ["not a folder that datasets' save_to_disk wrote"],
           ("empty file", "dataframe"): ["no data rows"]}
GOOD = "text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(12))
INPUT_CASES = [  # tests/test_hostile_inputs.py's input semantics that are not CSV syntax
    ("zero-width text", {"t.csv": GOOD + "\u200b\u200b,a\n"}, ["data.train_file={tmp}/t.csv"],
     ["line 14", "invisible"]),
    ("BOM and joiner text", {"t.csv": GOOD + "\ufeff\u200d ,b\n"}, ["data.train_file={tmp}/t.csv"],
     ["line 14", "empty"]),
    ("labels 1 and 1.0", {"t.csv": "text,label\n" + "".join(f"t {i},{['1', '1.0', '2'][i % 3]}\n" for i in range(9))},
     ["data.train_file={tmp}/t.csv"], ["'1' and '1.0'", "same number"]),
    ("labels 01 and 1", {"t.csv": "text,label\n" + "".join(f"t {i},{['01', '1', '2'][i % 3]}\n" for i in range(9))},
     ["data.train_file={tmp}/t.csv"], ["same number"]),
    ("more folds than rows", {"t.csv": "text,label\na b,x\nc d,y\ne f,x\n"},
     ["data.train_file={tmp}/t.csv", "data.n_folds=5"], ["data.n_folds=5", "3 rows"]),
    ("a holdout with no rows", {"t.csv": "text,label\na b,x\nc d,y\n"}, ["data.train_file={tmp}/t.csv"],
     ["holds out 0", "data.valid_size"]),
    ("template field missing", {"t.csv": GOOD}, ["data.train_file={tmp}/t.csv", "data.template=T:{{title}} {{text}}"],
     ["no column 'title'", "data.template"]),
    ("fold cell not a number", {"t.csv": "text,label,f\n" + "".join(f"t {i},{'ab'[i % 2]},{i % 2}\n" for i in range(6))
                                + "t 9,a,x\n"}, ["data.train_file={tmp}/t.csv", "data.fold_column=f"],
     ["line 8", "the fold ('f')", "'x'"]),
    ("empty group", {"t.csv": "text,label,g\n" + "".join(f"t {i},{'ab'[i % 2]},g{i % 3}\n" for i in range(8))
                     + "t 9,a,\n"}, ["data.train_file={tmp}/t.csv", "data.group_column=g", "data.n_folds=2"],
     ["line 10", "group ('g') is empty"]),
]
CASES = [c for c in DATA_CASES + INPUT_CASES if c[0] not in CSV_ONLY]


def as_table_words(phrase, fmt):
    """A CSV case's phrase in a table's words: line N (the header is line 1) is row N - 1."""
    phrase = re.sub(r"\blines (\d+) and (\d+)", lambda m: f"rows {int(m[1]) - 1} and {int(m[2]) - 1}", phrase)
    phrase = re.sub(r"\bline (\d+)", lambda m: f"row {int(m[1]) - 1}", phrase)
    return phrase.replace(".csv", EXT.get(fmt, ".csv"))


def frame(text):
    """A CSV text as a DataFrame of strings, blanks kept as empty strings."""
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)


def save(df, path, fmt):
    if fmt == "parquet":
        df.to_parquet(path)
    elif fmt == "feather":
        df.reset_index(drop=True).to_feather(path)
    elif fmt == "datasets":
        datasets.Dataset.from_pandas(df, preserve_index=False).save_to_disk(str(path))
    return path


def convert(files, fmt, tmp):
    """Write the case's CSV files in `fmt`; {csv name: path or DataFrame}."""
    out = {}
    for name, content in files.items():
        target = tmp / name.replace(".csv", EXT.get(fmt, ".csv"))
        if content in ("", b""):  # an empty file is an empty file in every format (a folder: an empty one)
            if fmt == "datasets":
                target.mkdir(parents=True)
            elif fmt == "dataframe":
                out[name] = pd.DataFrame({"text": [], "label": []}, dtype=str)
                continue
            else:
                write(target, "")
            out[name] = target
            continue
        df = frame(content)
        out[name] = df if fmt == "dataframe" else save(df, target, fmt)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name, files, args, phrases", CASES, ids=[c[0] for c in CASES])
def test_the_bad_input_table_on_every_format(stage, premodels, tmp_path, name, files, args, phrases, fmt):
    converted = convert(files, fmt, tmp_path)
    args = [a.format(tmp=tmp_path) for a in args]
    phrases = PHRASES.get((name, fmt)) or [as_table_words(p, fmt) for p in phrases]
    if fmt != "dataframe":
        args = [as_table_words(a, fmt) if a.startswith("data.") and a.endswith(".csv") else a for a in args]
        expect_refusal(data_process(stage, premodels, tmp_path, *args), *phrases)
        return
    # Python: textclf.process(df, ...) raises the same one-line UserError and writes nothing
    tables, rest = {}, []
    for a in args:
        key, _, value = a.partition("=")
        if key in ("data.train_file", "data.valid_file", "data.test_file") and Path(value).name in converted:
            tables[key[5:-5]] = converted[Path(value).name]
        else:
            rest.append(a)
    overrides = [f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'out'}", "data.name=ds", *rest]
    train = tables.pop("train", None)  # none: the case's train path stays among the overrides
    with pytest.raises(UserError) as err:
        textclf.process(train, None, overrides=overrides, **tables)
    message = str(err.value)
    assert "\n" not in message
    for phrase in phrases:
        assert phrase.replace(".csv", "") in message, (phrase, message)
    assert not (tmp_path / "out" / "ds").exists()


ROWS = pd.DataFrame({
    "id": [f"r{i}" for i in range(24)],
    "title": [f"title {i} {'ab'[i % 2]}" for i in range(24)],
    "text": [" ".join(["alpha beta gamma delta"] * (1 + i % 5)) + f" {'ab'[i % 2]}" for i in range(24)],
    "other": [f"second segment {i}" for i in range(24)],
    "author": [f"g{i % 6}" for i in range(24)],
    "label": ["pos" if i % 2 else "neg" for i in range(24)],
})
SETTINGS = {
    "template, ids, group folds": ["data.template=T: {{title}} | {{text}}", "data.id_column=id",
                                   "data.group_column=author", "data.n_folds=2"],
    "windows, ids": ["data.window_stride=6", "data.max_len=12", "data.id_column=id"],
    "pairs, holdout": ["data.text_pair_column=other", "data.valid_size=0.25"],
}


def arrays(folder):
    out = {p.relative_to(folder).as_posix(): np.load(p) for p in sorted(folder.rglob("*.npy"))}
    meta = json.loads((folder / "meta.json").read_text())
    return out, meta["label_names"], meta.get("folds")


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_the_same_rows_give_the_same_arrays_in_every_format(stage, premodels, tmp_path, setting):
    args = [f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'out'}", "data.max_len=24",
            *[a.replace("{{", "{").replace("}}", "}") for a in SETTINGS[setting]]]
    test = ROWS.iloc[:6].drop(columns=["label"]).assign(text=lambda d: "new " + d["text"], id=lambda d: "t" + d["id"])
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    ROWS.to_csv(csv_dir / "t.csv", index=False)
    test.to_csv(csv_dir / "s.csv", index=False)
    sources = {"csv": (csv_dir / "t.csv", csv_dir / "s.csv")}
    for fmt in ("parquet", "feather", "datasets"):
        sources[fmt] = (save(ROWS, tmp_path / f"t{EXT[fmt]}", fmt), save(test, tmp_path / f"s{EXT[fmt]}", fmt))
    results = {}
    for fmt, (train, tst) in sources.items():
        result = stage("data_process", *args, f"data.name={fmt}", f"data.train_file={train}", f"data.test_file={tst}")
        assert result.code == 0, result
        results[fmt] = arrays(tmp_path / "out" / fmt)
    textclf.process(ROWS, None, test=test, overrides=[*args, "data.name=df"])
    results["dataframe"] = arrays(tmp_path / "out" / "df")
    reference = results.pop("csv")
    for fmt, (got, names, folds) in results.items():
        assert names == reference[1] and folds == reference[2], fmt
        assert got.keys() == reference[0].keys(), fmt
        for name, array in reference[0].items():
            np.testing.assert_array_equal(got[name], array, err_msg=f"{fmt}: {name}")


def test_typed_columns_class_labels_and_missing_cells(stage, premodels, tmp_path):
    """datasets' ClassLabel reads as its names (-1: no label); a NaN label cell is blank; numbers as text."""
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    rows = {"text": [f"words {i} {'xy'[i % 2]}" for i in range(12)], "label": [i % 2 for i in range(12)]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "train.ds"))
    unlabelled = {"text": ["a new one", "another"], "label": [-1, -1]}  # GLUE's test sets look like this
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(unlabelled, features=features)}).save_to_disk(
        str(tmp_path / "dd"))
    result = data_process_ok(stage, premodels, tmp_path, "d1", f"data.train_file={tmp_path / 'train.ds'}",
                             f"data.test_file={tmp_path / 'dd'}")  # a DatasetDict: its "test" split
    meta = json.loads((tmp_path / "out" / "d1" / "meta.json").read_text())
    assert meta["label_names"] == ["neg", "pos"], result
    assert meta["splits"]["test"]["labelled"] is False and meta["splits"]["test"]["rows"] == 2
    # pandas: an int label column, a float label column made NaN by missing cells (test placeholders)
    df = pd.DataFrame({"text": rows["text"], "label": rows["label"]})
    df.to_parquet(tmp_path / "t.parquet")
    pd.DataFrame({"text": ["x y", "z"], "label": [np.nan, np.nan]}).to_parquet(tmp_path / "s.parquet")
    data_process_ok(stage, premodels, tmp_path, "d2", f"data.train_file={tmp_path / 't.parquet'}",
                    f"data.test_file={tmp_path / 's.parquet'}")
    meta = json.loads((tmp_path / "out" / "d2" / "meta.json").read_text())
    assert meta["label_names"] == ["0", "1"] and meta["splits"]["test"]["labelled"] is False


def data_process_ok(stage, premodels, tmp_path, name, *args):
    result = stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'out'}",
                   f"data.name={name}", "data.max_len=16", *args)
    assert result.code == 0, result
    return result


TYPED = [  # a table's own ways to be wrong, one line each
    ("text is a number", lambda: pd.DataFrame({"text": [1, 2, 3, 4], "label": ["a", "b"] * 2}),
     ["row 1", "Parquet number", "not a string"]),
    ("text is a list", lambda: pd.DataFrame({"text": [["a"], ["b"], ["c"], ["d"]], "label": ["a", "b"] * 2}),
     ["row 1", "Parquet array"]),
    ("text is bytes", lambda: pd.DataFrame({"text": [b"a", b"b", b"c", b"d"], "label": ["a", "b"] * 2}),
     ["row 1", "Parquet binary"]),
    ("label is a struct", lambda: pd.DataFrame({"text": ["a b", "c d"], "label": [{"x": 1}, {"x": 2}]}),
     ["row 1", "label", "Parquet object"]),
]


@pytest.mark.parametrize("name, make, phrases", TYPED, ids=[t[0] for t in TYPED])
def test_typed_cells_are_refused_in_a_tables_words(stage, premodels, tmp_path, name, make, phrases):
    make().to_parquet(tmp_path / "t.parquet")
    expect_refusal(data_process(stage, premodels, tmp_path, f"data.train_file={tmp_path / 't.parquet'}"), *phrases)


@pytest.mark.parametrize("case", ["corrupt parquet", "corrupt feather", "folder not datasets", "datasetdict split",
                                  "file as datasets", "folder as parquet", "hub offline", "unknown extension"])
def test_broken_sources_are_one_line(stage, premodels, tmp_path, case):
    args, phrases = {
        "corrupt parquet": (["data.train_file={t}/t.parquet"], ["not a readable Parquet file", "re-save"]),
        "corrupt feather": (["data.train_file={t}/t.feather"], ["not a readable Feather", "re-save"]),
        "folder not datasets": (["data.train_file={t}/plain"], ["not a folder that datasets' save_to_disk wrote"]),
        "datasetdict split": (["data.train_file={t}/dd"], ["splits test", "none named train", "/<split>"]),
        "file as datasets": (["data.train_file={t}/t.parquet", "data.format=datasets"], ["is a file"]),
        "folder as parquet": (["data.train_file={t}/plain", "data.format=parquet"], ["is a folder"]),
        "hub offline": (["data.train_file=hub:someone/some-data"], ["hub dataset someone/some-data", "HF_HUB_OFFLINE",
                                                                    "save_to_disk"]),
        "unknown extension": (["data.train_file={t}/t.xlsx"], ["cannot tell the format", "parquet"]),
    }[case]
    write(tmp_path / "t.parquet", b"PAR1 this is not parquet at all PAR1")
    write(tmp_path / "t.feather", b"ARROW1 nor an arrow file")
    write(tmp_path / "t.xlsx", b"PK not read")
    (tmp_path / "plain").mkdir()
    write(tmp_path / "plain" / "x.txt", "x")
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": ["a"], "label": ["b"]})}).save_to_disk(
        str(tmp_path / "dd"))
    args = [a.format(t=tmp_path) for a in args]
    expect_refusal(data_process(stage, premodels, tmp_path, *args), *phrases)


def test_a_large_row_group_streams_in_batches(tmp_path):
    """Rows come out of a Parquet file batch by batch: a row group of 200k rows is never one list."""
    from textclf.config import DataConfig
    from textclf.rawdata import RawFile

    import pyarrow.parquet as pq

    n = 200_000
    table = pa.table({"text": pa.array([f"row {i}" for i in range(n)]), "label": pa.array(["a", "b"] * (n // 2))})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=n)
    raw = RawFile(tmp_path / "big.parquet", DataConfig(), "train")
    batches = raw.source.batches()
    first = next(iter(batches))
    assert first.num_rows <= 4096
    count = sum(1 for _ in raw.rows())
    assert count == n


def test_a_dataframe_run_predicts_dataframes_and_parquet_inputs(stage, premodels, tmp_path):
    """process(df) -> train -> Predictor.predict(df) and evaluate's eval.input as Parquet: the same answers
    as the texts given one by one and as the CSV file."""
    base = [f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}", "data.max_len=24",
            f"train.output_dir={tmp_path / 'ck'}", f"eval.output_dir={tmp_path / 'mp'}", "train.precision=no",
            "eval.precision=no", "data.name=tpl"]
    template = "data.template=T: {title} | {text}"
    textclf.process(ROWS, None, overrides=[*base, template, "data.id_column=id"])
    result = stage("train", *base, "train.epochs=1", "train.batch_size=8")
    assert result.code == 0, result
    predictor = textclf.Predictor.from_run(tmp_path / "ck" / "tpl", precision="no")
    new = ROWS.iloc[:5].assign(text=lambda d: "unseen " + d["text"])
    from_frame = predictor.predict(new)
    from_fields = predictor.predict([{"title": t, "text": x} for t, x in zip(new["title"], new["text"])])
    np.testing.assert_allclose(from_frame["probs"], from_fields["probs"], rtol=1e-6)
    assert from_frame["labels"] == from_fields["labels"]
    assert predictor.embed(new)["embeddings"].shape[0] == 5
    with pytest.raises(UserError, match="no column 'title'"):
        predictor.predict(new.drop(columns=["title"]))
    with pytest.raises(UserError, match="row 2 of .*empty or missing"):
        predictor.predict(new.assign(text=["fine", None, "x", "y", "z"], title=["a", None, "c", "d", "e"]))
    explained = predictor.explain(new.iloc[:1], steps=4)
    assert len(explained) == 1 and explained[0]["words"]
    new.to_csv(tmp_path / "new.csv", index=False)
    new.to_parquet(tmp_path / "new.parquet")
    outputs = []
    for name in ("new.csv", "new.parquet"):
        result = stage("evaluate", *base, f"eval.run={tmp_path / 'ck' / 'tpl'}", f"eval.input={tmp_path / name}")
        assert result.code == 0, result
        outputs.append(sorted((tmp_path / "mp").glob("tpl-texts*"))[-1] / "predictions.csv")
    assert outputs[0] != outputs[1] and outputs[0].read_text() == outputs[1].read_text()
    scored = json.loads((outputs[1].parent / "manifest.json").read_text())
    assert scored["labelled"] and scored["metrics"]
    # what to label next, from the Parquet input's predictions: a CSV that data_process reads back
    from textclf.select import select

    select(outputs[1].parent, tmp_path / "l.csv", 3)
    picked = pd.read_csv(tmp_path / "l.csv", dtype=str, keep_default_na=False)
    assert len(picked) == 3 and set(picked["id"]) <= set(new["id"]) and (picked["label"] == "").all()
    back = textclf.process(ROWS, None, test=str(tmp_path / "l.csv"),
                           overrides=[*base, template, "data.id_column=id", "data.name=back"])
    assert json.loads((back / "meta.json").read_text())["splits"]["test"]["rows"] == 3


def test_list_cells_class_label_lists_and_binary_labels(stage, premodels, tmp_path):
    """A list label cell: multi-label with data.label_delimiter (missing items dropped; a Sequence of
    ClassLabel read as names), refused without it; a binary label refused."""
    texts = [f"words {i} {'xyz'[i % 3]}" for i in range(12)]
    lists = [["x", None] if i % 2 else ["y", "z"] for i in range(12)]
    pd.DataFrame({"text": texts, "label": lists}).to_parquet(tmp_path / "l.parquet")
    expect_refusal(data_process(stage, premodels, tmp_path, f"data.train_file={tmp_path / 'l.parquet'}"),
                   "row 1", "a list of labels", "data.label_delimiter")
    data_process_ok(stage, premodels, tmp_path, "ml", f"data.train_file={tmp_path / 'l.parquet'}",
                    "data.label_delimiter=|")
    assert json.loads((tmp_path / "out" / "ml" / "meta.json").read_text())["label_names"] == ["x", "y", "z"]
    features = datasets.Features({"text": datasets.Value("string"),
                                  "labels": datasets.Sequence(datasets.ClassLabel(names=["p", "q", "r"]))})
    datasets.Dataset.from_dict({"text": texts, "labels": [[i % 3] if i % 2 else [0, 2] for i in range(12)]},
                               features=features).save_to_disk(str(tmp_path / "seq.ds"))
    data_process_ok(stage, premodels, tmp_path, "seq", f"data.train_file={tmp_path / 'seq.ds'}",
                    "data.label_column=labels", "data.label_delimiter=|")
    assert json.loads((tmp_path / "out" / "seq" / "meta.json").read_text())["label_names"] == ["p", "q", "r"]
    pd.DataFrame({"text": texts, "label": [b"a", b"b"] * 6}).to_parquet(tmp_path / "b.parquet")
    expect_refusal(data_process(stage, premodels, tmp_path, f"data.train_file={tmp_path / 'b.parquet'}"),
                   "row 1", "Parquet binary", "decode")


def test_python_and_format_mistakes_are_one_line(stage, premodels, tmp_path):
    base = [f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'out'}", "data.name=x"]
    with pytest.raises(UserError, match="train is a Series; pass a pandas DataFrame"):
        textclf.process(ROWS["text"], None, overrides=base)
    doubled = pd.concat([ROWS[["text"]], ROWS[["text", "label"]]], axis=1)
    with pytest.raises(UserError, match="column 'text' more than once"):
        textclf.process(doubled, None, overrides=base)
    ROWS.to_parquet(tmp_path / "t.parquet")
    expect_refusal(data_process(stage, premodels, tmp_path, f"data.train_file={tmp_path / 't.parquet'}",
                                "data.format=csv"), "is a parquet file read as csv", "data.format=parquet")
    # data.format=hub: the name is a hub name, never a path of the project
    expect_refusal(data_process(stage, premodels, tmp_path, "data.train_file=someone/data", "data.format=hub"),
                   "hub:someone/data", "HF_HUB_OFFLINE=1")
    assert not (tmp_path / "out" / "x").exists()
