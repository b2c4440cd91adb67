"""data_process.py on small files written here: every format and text/label variant must
round-trip into arrays that match the tokenizer, with correct labels, ids and folds."""

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from conftest import write

TEXTS = [
    "the movie was great fun", "a boring plot and a bad actor", "cancer cells in the brain",
    "the quick brown fox jumps over the lazy dog", "really very good!", "one two three",
    "market price of the company", "the team won the game this season", "hello world", "quite sad story",
    "news about science and technology", "the best film of the year",
]


def run_dp(stage, premodels, tmp_path, *args, family="bert", name="ds"):
    result = stage("data_process", f"model.name={premodels(family)}", f"data.output_dir={tmp_path / 'out'}",
                   f"data.name={name}", *args)
    assert result.code == 0, result
    return tmp_path / "out" / name


def load(folder, split, key):
    return np.load(folder / split / f"{key}.npy")


def check_rows_match_tokenizer(folder, split, model_dir, texts, pairs=None):
    """Every stored row equals a direct tokenizer call on the text, padded to the split's width."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids, mask, lengths = load(folder, split, "input_ids"), load(folder, split, "attention_mask"), load(folder, split, "lengths")
    assert ids.dtype == np.int32 and mask.dtype == np.uint8 and lengths.dtype == np.int32
    assert ids.shape[1] == lengths.max()  # padded to the longest row, not to max_len
    for row, text in enumerate(texts):
        expected = tok(text, pairs[row]) if pairs else tok(text)
        n = len(expected["input_ids"])
        assert lengths[row] == n
        assert ids[row, :n].tolist() == expected["input_ids"]
        assert (ids[row, n:] == tok.pad_token_id).all()
        assert mask[row].tolist() == [1] * n + [0] * (ids.shape[1] - n)
        decoded = tok.decode(ids[row, :n], skip_special_tokens=True)
        assert decoded.replace(" ", "") == text.lower().replace(" ", "") or pairs


def test_csv_with_header_round_trips(stage, premodels, tmp_path):
    labels = ["pos", "neg", "other"] * 4
    rows = "\n".join(f'"{t}",{l},id{i}' for i, (t, l) in enumerate(zip(TEXTS, labels)))
    train = write(tmp_path / "train.csv", "text,label,uid\n" + rows + "\n")
    out = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", "data.id_column=uid", "data.max_len=32")
    check_rows_match_tokenizer(out, "train", premodels("bert"), TEXTS)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["label_names"] == ["neg", "other", "pos"]  # sorted: stable whatever the row order
    assert load(out, "train", "labels").tolist() == [meta["label_names"].index(l) for l in labels]
    assert load(out, "train", "ids").tolist() == [f"id{i}" for i in range(12)]
    assert meta["splits"]["train"]["rows"] == 12
    assert len(meta["splits"]["train"]["source_sha256"]) == 64
    assert len(meta["tokenizer"]["vocab_sha256"]) == 64
    assert meta["config"]["data"]["max_len"] == 32
    assert (out / "config.yaml").read_text().startswith("# resolved config")
    assert not list(out.parent.glob(".*tmp*"))  # no temporary folder left behind


def test_headerless_tsv_like_nemo(stage, premodels, tmp_path):
    labels = [0, 1, 2] * 4
    train = write(tmp_path / "train.tsv", "".join(f"{t}\t{l}\n" for t, l in zip(TEXTS, labels)))
    test = write(tmp_path / "test.tsv", "".join(f"{t}\n" for t in TEXTS[:5]))
    out = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", f"data.test_file={test}",
                 "data.header=false", "data.columns=[text,label]")
    check_rows_match_tokenizer(out, "train", premodels("bert"), TEXTS)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["label_names"] == ["0", "1", "2"]
    assert load(out, "train", "labels").tolist() == labels
    # the test file has no label column: it is unlabelled, ids are row numbers
    assert not (out / "test" / "labels.npy").exists()
    assert meta["splits"]["test"]["labelled"] is False
    assert load(out, "test", "ids").tolist() == ["0", "1", "2", "3", "4"]


def test_jsonl_int_labels_sort_numerically(stage, premodels, tmp_path):
    labels = [1, 2, 10, 3] * 3
    train = write(tmp_path / "train.jsonl", "\n".join(json.dumps({"text": t, "label": l}) for t, l in zip(TEXTS, labels)))
    out = run_dp(stage, premodels, tmp_path, f"data.train_file={train}")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["label_names"] == ["1", "2", "3", "10"]
    assert load(out, "train", "labels").tolist() == [meta["label_names"].index(str(l)) for l in labels]
    check_rows_match_tokenizer(out, "train", premodels("bert"), TEXTS)


def test_fixed_label_order_from_config(stage, premodels, tmp_path):
    train = write(tmp_path / "train.csv", "text,label\n" + "".join(f"{t},{'ab'[i % 2]}\n" for i, t in enumerate(TEXTS)))
    out = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", "data.labels=[b,a,c]")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["label_names"] == ["b", "a", "c"]
    assert load(out, "train", "labels").tolist()[:2] == [1, 0]


def test_several_text_columns_are_joined(stage, premodels, tmp_path):
    rows = [(TEXTS[i], TEXTS[i + 1], (i // 2) % 2) for i in range(0, 12, 2)] * 2
    train = write(tmp_path / "papers.csv", "title,abstract,label\n" + "".join(f"{a},{b},{l}\n" for a, b, l in rows))
    out = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", "data.text_columns=[title,abstract]",
                 "data.text_separator=. ")
    check_rows_match_tokenizer(out, "train", premodels("bert"), [f"{a}. {b}" for a, b, _ in rows])


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_text_pair_gets_second_segment_type(stage, premodels, tmp_path, family):
    pairs = [(TEXTS[i], TEXTS[-1 - i], i % 2) for i in range(12)]
    train = write(tmp_path / "pairs.tsv", "q\tp\tlabel\n" + "".join(f"{a}\t{b}\t{l}\n" for a, b, l in pairs))
    out = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", "data.text_columns=q",
                 "data.text_pair_column=p", family=family)
    check_rows_match_tokenizer(out, "train", premodels(family), [p[0] for p in pairs], [p[1] for p in pairs])
    types = load(out, "train", "token_type_ids")
    tok = AutoTokenizer.from_pretrained(premodels(family))
    for row, (a, b, _) in enumerate(pairs):
        expected = tok(a, b).get("token_type_ids")
        if expected is None:  # RoBERTa-family: a single token type
            assert types[row].max() == 0
        else:
            assert types[row, :len(expected)].tolist() == expected and max(expected) == 1


def test_multi_label_columns_and_delimited(stage, premodels, tmp_path):
    flags = [(1, 0, 1), (0, 1, 0), (1, 1, 0), (0, 0, 1)] * 3
    train = write(tmp_path / "ml.csv", "text,sport,tech,art\n" + "".join(
        f"{t},{a},{b},{c}\n" for t, (a, b, c) in zip(TEXTS, flags)))
    out = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", "data.label_columns=[sport,tech,art]")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["problem_type"] == "multi_label" and meta["label_names"] == ["sport", "tech", "art"]
    labels = load(out, "train", "labels")
    assert labels.dtype == np.uint8 and labels.tolist() == [list(f) for f in flags]

    names = ["sport", "tech", "art"]
    listed = ["|".join(n for n, f in zip(names, fl) if f) for fl in flags]
    train = write(tmp_path / "ml2.tsv", "text\ttags\n" + "".join(f"{t}\t{l}\n" for t, l in zip(TEXTS, listed)))
    out2 = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", "data.label_column=tags",
                  "data.label_delimiter=|", name="ds2")
    meta2 = json.loads((out2 / "meta.json").read_text())
    assert meta2["label_names"] == ["art", "sport", "tech"]
    order = [names.index(n) for n in meta2["label_names"]]
    assert load(out2, "train", "labels").tolist() == [[f[i] for i in order] for f in flags]


def test_truncation_modes(stage, premodels, tmp_path):
    long_text = " ".join(["one", "two", "three"] * 10 + ["hello", "world"])
    train = write(tmp_path / "t.csv", "text,label\n" + f"{long_text},a\nshort one,b\n" * 6)
    tok = AutoTokenizer.from_pretrained(premodels("bert"))
    body = tok(long_text, add_special_tokens=False)["input_ids"]
    cls, sep = tok.cls_token_id, tok.sep_token_id
    expected = {
        "head": [cls] + body[:14] + [sep],
        "tail": [cls] + body[-14:] + [sep],
        "head_tail": [cls] + body[:4] + body[-10:] + [sep],
    }
    for mode, want in expected.items():
        out = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", "data.max_len=16",
                     f"data.truncation={mode}", "data.head_tokens=4", name=mode)
        ids = load(out, "train", "input_ids")
        assert ids.shape[1] == 16
        assert ids[0].tolist() == want, mode
        meta = json.loads((out / "meta.json").read_text())
        assert meta["splits"]["train"]["length_stats"]["truncated_rows"] == 6


def test_kfold_is_stratified_and_reproducible(stage, premodels, tmp_path):
    labels = ["a"] * 30 + ["b"] * 15 + ["c"] * 6
    train = write(tmp_path / "f.csv", "text,label\n" + "".join(f"{TEXTS[i % 12]} {i},{l}\n" for i, l in enumerate(labels)))
    first = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", "data.n_folds=3", "data.seed=7", name="f1")
    second = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", "data.n_folds=3", "data.seed=7", name="f2")
    other = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", "data.n_folds=3", "data.seed=8", name="f3")
    folds = load(first, "train", "folds")
    assert folds.tolist() == load(second, "train", "folds").tolist()
    assert folds.tolist() != load(other, "train", "folds").tolist()
    y = np.array(labels)
    for k in range(3):  # every fold holds a third of every class
        assert [(y[folds == k] == c).sum() for c in "abc"] == [10, 5, 2]


def test_holdout_split_keeps_class_shares(stage, premodels, tmp_path):
    labels = ["a"] * 40 + ["b"] * 20
    train = write(tmp_path / "h.csv", "text,label\n" + "".join(f"{TEXTS[i % 12]} {i},{l}\n" for i, l in enumerate(labels)))
    out = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", "data.valid_size=0.25")
    folds = load(out, "train", "folds")
    y = np.array(labels)
    assert (y[folds == 0] == "a").sum() == 10 and (y[folds == 0] == "b").sum() == 5
    assert set(folds.tolist()) == {-1, 0}


def test_chunking_does_not_change_the_arrays(stage, premodels, tmp_path):
    labels = [0, 1] * 6
    train = write(tmp_path / "c.csv", "text,label\n" + "".join(f"{t},{l}\n" for t, l in zip(TEXTS, labels)))
    big = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", name="big")
    small = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", "data.chunk_rows=5", name="small")
    for key in ("input_ids", "attention_mask", "token_type_ids", "lengths", "labels", "ids", "folds"):
        assert np.array_equal(load(big, "train", key), load(small, "train", key)), key


@pytest.mark.parametrize("family", ["distilbert", "deberta-v2", "electra"])
def test_other_families_round_trip(stage, premodels, tmp_path, family):
    train = write(tmp_path / "x.csv", "text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(TEXTS)))
    out = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", family=family)
    check_rows_match_tokenizer(out, "train", premodels(family), TEXTS)


def test_drop_empty_counts_rows(stage, premodels, tmp_path):
    train = write(tmp_path / "e.csv", "text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(TEXTS)) + '"  ",1\n,0\n')
    out = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", "data.drop_empty=true")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["train"]["rows"] == 12 and meta["splits"]["train"]["dropped_empty"] == 2


def test_existing_output_is_kept_unless_overwrite(stage, premodels, tmp_path):
    train = write(tmp_path / "o.csv", "text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(TEXTS)))
    out = run_dp(stage, premodels, tmp_path, f"data.train_file={train}", "data.max_len=8")
    again = stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'out'}",
                  "data.name=ds", f"data.train_file={train}")
    assert again.code == 2 and "data.overwrite=true" in again.err
    assert json.loads((out / "meta.json").read_text())["max_len"] == 8
    run_dp(stage, premodels, tmp_path, f"data.train_file={train}", "data.max_len=24", "data.overwrite=true")
    assert json.loads((out / "meta.json").read_text())["max_len"] == 24
    assert [p.name for p in out.parent.iterdir()] == ["ds"]
