"""Property-based tests (hypothesis) for the raw-file readers and the config parser: whatever the
input, the result is rows or one UserError, never another exception; rows written by a standard
writer come back as written; a name a user gives never resolves outside its output folder."""

import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from textclf.config import DataConfig, SECTIONS, field_types, parse_args, resolve_path
from textclf.errors import UserError
from textclf.rawdata import RawFile, RowReader
from textclf.text_rules import clean_text

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
LABELS = st.sampled_from(["a", "b", "pos", "neg", "1", "2", "x y"])


def read_all(content, suffix, **settings_):
    """Every (text, labels) the readers give for a file with `content`, or the UserError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"train{suffix}"
        path.write_bytes(content)
        cfg = DataConfig(**settings_)
        try:
            raw = RawFile(path, cfg, "train")
            reader = RowReader(raw, cfg, need_labels=True)
            return [(reader.text(values, line), reader.labels(values, line)) for line, values in raw.rows()]
        except UserError as err:
            return err


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from([".csv", ".tsv", ".jsonl"]))
def test_any_bytes_are_rows_or_one_user_error(content, suffix):
    result = read_all(content, suffix)
    assert isinstance(result, (list, UserError))
    if isinstance(result, UserError):
        assert "\n" not in str(result).strip()


@SETTINGS
@given(st.lists(st.tuples(TEXT, LABELS), min_size=1, max_size=12))
def test_csv_written_by_the_csv_module_reads_back_as_written(rows):
    buf = io.StringIO()
    writer = csv.writer(buf)  # "\r\n" rows: the writer then quotes any field holding "\r" or "\n"
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    result = read_all(buf.getvalue().encode("utf-8"), ".csv")
    assert not isinstance(result, UserError), result
    assert result == [(clean_text(text), label) for text, label in rows]


@SETTINGS
@given(st.lists(st.tuples(TEXT, LABELS), min_size=1, max_size=12))
def test_tsv_without_tabs_or_newlines_reads_back_as_written(rows):
    rows = [(t.replace("\t", " ").replace("\n", " ").replace("\r", " ").replace("\0", " "), label)
            for t, label in rows]
    content = "text\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows)
    result = read_all(content.encode("utf-8"), ".tsv")
    assert not isinstance(result, UserError), result
    # a row whose text is all whitespace reads as one empty field where two are expected: refused per row,
    # never mis-read; the others come back as written
    assert result == [(clean_text(text), label) for text, label in rows]


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                           max_leaves=6)


@SETTINGS
@given(st.lists(st.fixed_dictionaries({"text": JSON_VALUES, "label": JSON_VALUES}), min_size=1, max_size=8))
def test_jsonl_of_any_values_is_rows_or_one_user_error(records):
    content = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    result = read_all(content, ".jsonl")
    assert isinstance(result, (list, UserError))
    if all(isinstance(r["text"], str) and isinstance(r["label"], str) and r["label"].strip() for r in records):
        assert result == [(clean_text(r["text"]), r["label"].strip()) for r in records]


KEYS = [f"{section}.{key}" for section in SECTIONS for key in field_types(section)]


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.text(max_size=30)), max_size=5))
def test_any_overrides_give_a_config_or_one_user_error(pairs):
    try:
        config = parse_args([f"{key}={value}" for key, value in pairs])
    except UserError as err:
        assert "\n" not in str(err).strip()
        return
    for key, value in pairs[-1:]:
        section, name = key.split(".")
        if field_types(section)[name] is str:  # a string key keeps exactly what was given
            assert getattr(getattr(config, section), name) == value


@SETTINGS
@given(st.text(max_size=200))
def test_any_yaml_file_gives_a_config_or_one_user_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            parse_args(["--config", str(path)])
        except UserError as err:
            assert "\n" not in str(err).strip()


@SETTINGS
@given(st.text(max_size=60), st.sampled_from(["train.run", "data.name", "ensemble.name"]))
def test_an_accepted_name_stays_inside_its_output_folder(name, key):
    try:
        config = parse_args([f"{key}={name}"])
    except UserError:
        return
    if not name and key != "ensemble.name":
        return  # empty: the default (the data name, the config file's name)
    section, field = key.split(".")
    base = resolve_path(getattr(getattr(config, section), "output_dir"))
    target = (base / getattr(getattr(config, section), field)).resolve()
    assert target.parent == base.resolve() and target.name == name
