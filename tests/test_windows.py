"""Sliding windows over long texts (data.window_stride): windows cover every token and are keyed
to their text; training reads windows with their text's label; OOF, evaluate, Predictor and
ONNX aggregate windows back to one row per text, in row order, under any batching and any
number of processes."""

import json
import os
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import write
from test_distributed import launch
from textclf.problem import problem_type
from textclf.tokenization import aggregate_windows, per_text, window_starts

FILLER = "the movie was a film story plot actor one two three very really".split()


def long_rows(n, seed=0, prefix="r"):
    """Texts of 5 to 60 words; the label's cue sits near the end of the longer ones, so a head-only
    window misses it."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(5, 60))]
        words.insert(len(words) - rng.randint(0, 3), ["great", "awful"][label])
        rows.append((f"{prefix}{i}", " ".join(words), label))
    return rows


def write_rows(path, rows):
    return write(path, "id,text,label\n" + "".join(f"{i},{t},{y}\n" for i, t, y in rows))


# ---------------------------------------------------------------------------- windows and aggregation


@settings(max_examples=300, deadline=None, derandomize=os.environ.get("TEXTCLF_EXPLORE") != "1")
@given(n=st.integers(0, 400), budget=st.integers(1, 64), data=st.data())
def test_windows_cover_every_token_and_end_at_the_text_end(n, budget, data):
    stride = data.draw(st.integers(1, budget))
    starts = window_starts(n, budget, stride)
    covered = np.zeros(n, dtype=bool)
    for s in starts:
        covered[s:s + budget] = True
    assert covered.all() and starts[0] == 0 and starts == sorted(set(starts))
    assert n <= budget or starts[-1] + budget == n  # the last window ends at the text's end
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))
    limit = data.draw(st.integers(1, 6))
    kept = window_starts(n, budget, stride, limit)
    assert len(kept) == min(limit, len(starts)) and kept[-1] == starts[-1]  # the first ones and the last
    assert kept == starts[:limit - 1] + starts[-1:] if len(starts) > limit else kept == starts


@settings(max_examples=200, deadline=None, derandomize=os.environ.get("TEXTCLF_EXPLORE") != "1")
@given(counts=st.lists(st.integers(1, 5), min_size=1, max_size=12), k=st.integers(1, 4), seed=st.integers(0, 99))
def test_aggregation_equals_a_hand_computation_in_any_window_order(counts, k, seed):
    rng = np.random.default_rng(seed)
    owner = np.repeat(np.arange(len(counts)), counts)
    values = rng.dirichlet(np.ones(k + 1), size=len(owner))
    for how in ("mean", "max", "first_last"):
        want = []
        for t in range(len(counts)):
            v = values[owner == t]
            if how == "mean":
                want.append(v.mean(0))
            elif how == "max":
                want.append(v.max(0) / v.max(0).sum())
            else:
                want.append((v[0] + v[-1]) / 2)
        got = aggregate_windows(values, owner, len(counts), how, problem_type("single_label"))
        np.testing.assert_allclose(got, np.array(want), rtol=1e-6)
        # texts' windows interleaved (as batches or processes may hand them back), each text's in order
        by_text = {t: list(np.flatnonzero(owner == t)) for t in range(len(counts))}
        order = []
        while any(by_text.values()):  # take the next window of a random text that has one left
            t = rng.choice([t for t, w in by_text.items() if w])
            order.append(by_text[t].pop(0))
        order = np.array(order)
        np.testing.assert_allclose(aggregate_windows(values[order], owner[order], len(counts), how, problem_type("single_label")),
                                   np.array(want), rtol=1e-6)


# ---------------------------------------------------------------------------- data_process


def process(stage, premodels, tmp_path, *extra, name="win"):
    train = write_rows(tmp_path / "train.csv", long_rows(40))
    test = write_rows(tmp_path / "test.csv", long_rows(17, seed=4, prefix="t"))
    return stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}",
                 f"data.name={name}", f"data.train_file={train}", f"data.test_file={test}", "data.id_column=id",
                 "data.max_len=16", *extra)


def test_data_process_writes_windows_keyed_to_their_texts(stage, premodels, tmp_path):
    from transformers import AutoTokenizer

    result = process(stage, premodels, tmp_path, "data.window_stride=7", "data.n_folds=2")
    assert result.code == 0, result
    folder = tmp_path / "data" / "win"
    tokenizer = AutoTokenizer.from_pretrained(str(premodels("bert")))
    rows = long_rows(40)
    doc = np.load(folder / "train" / "window_doc.npy")
    ids = np.load(folder / "train" / "input_ids.npy")
    lengths = np.load(folder / "train" / "lengths.npy")
    assert np.load(folder / "train" / "ids.npy").tolist() == [r[0] for r in rows]  # one id per text
    assert len(np.load(folder / "train" / "labels.npy")) == len(np.load(folder / "train" / "folds.npy")) == 40
    assert len(doc) == len(ids) == len(lengths) > 40 and (np.diff(doc) >= 0).all()
    budget = 16 - 2  # [CLS] ... [SEP]
    for t, (_, text, _) in enumerate(rows):
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        windows = [ids[w, 1:lengths[w] - 1].tolist() for w in np.flatnonzero(doc == t)]
        starts = window_starts(len(tokens), budget, 7)
        assert windows == [tokens[s:s + budget] for s in starts]
        assert all(ids[w, 0] == tokenizer.cls_token_id for w in np.flatnonzero(doc == t))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["windows"] == {"stride": 7, "max_windows": 0, "aggregate": "mean"}
    assert meta["splits"]["train"]["rows"] == 40 and meta["splits"]["train"]["windows"] == len(doc)


@pytest.mark.parametrize("extra, expected", [
    (["data.window_stride=15"], "data.window_stride=15 is more than a window's 14 text tokens"),
    (["data.window_stride=4", "data.truncation=tail"], "does not apply with sliding windows"),
    (["data.max_windows=3"], "set data.window_stride too"),
    (["data.window_stride=4", "data.text_pair_column=id"], "text pairs"),
    (["data.window_stride=-1"], "must be 0 (no windows)"),
])
def test_window_settings_that_cannot_work_are_refused(stage, premodels, tmp_path, extra, expected):
    result = process(stage, premodels, tmp_path, *extra)
    assert result.code == 2 and expected in result.err and len(result.err.strip().splitlines()) == 1, result
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------------------- train, evaluate, predict


@pytest.fixture(scope="module")
def win_run(tmp_path_factory, premodels):
    from conftest import run_stage

    tmp = tmp_path_factory.mktemp("windows")
    common = [f"model.name={premodels('bert')}", f"data.output_dir={tmp / 'data'}", "data.name=win",
              f"train.output_dir={tmp / 'ck'}", f"eval.output_dir={tmp / 'mp'}", "train.precision=no",
              "eval.precision=no"]
    write_rows(tmp / "train.csv", long_rows(40))
    write_rows(tmp / "test.csv", long_rows(17, seed=4, prefix="t"))
    result = run_stage("data_process", *common, f"data.train_file={tmp / 'train.csv'}",
                       f"data.test_file={tmp / 'test.csv'}", "data.id_column=id", "data.max_len=16",
                       "data.window_stride=7", "data.max_windows=4", "data.window_aggregate=first_last",
                       "data.n_folds=2")
    assert result.code == 0, result
    result = run_stage("train", *common, "train.epochs=2", "train.batch_size=8", "train.lr=1e-3")
    assert result.code == 0, result
    result = run_stage("evaluate", *common, f"eval.run={tmp / 'ck' / 'win'}", "eval.batch_size=5")
    assert result.code == 0, result
    return dict(tmp=tmp, common=common)


def test_oof_and_evaluate_have_one_row_per_text_in_row_order(win_run):
    tmp = win_run["tmp"]
    run, mp, data = tmp / "ck" / "win", tmp / "mp" / "win", tmp / "data" / "win"
    folds = np.load(data / "train" / "folds.npy")
    train_ids = np.load(data / "train" / "ids.npy")
    oof_ids = np.load(run / "oof" / "ids.npy")
    assert sorted(oof_ids.tolist()) == sorted(train_ids.tolist()) and len(oof_ids) == 40
    for k in range(2):
        assert np.load(run / f"fold{k}" / "oof" / "ids.npy").tolist() == train_ids[folds == k].tolist()
        assert np.load(run / f"fold{k}" / "oof" / "probs.npy").shape == ((folds == k).sum(), 2)
    probs = np.load(mp / "test" / "probs.npy")
    assert np.load(mp / "test" / "ids.npy").tolist() == [f"t{i}" for i in range(17)] and probs.shape == (17, 2)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    head = json.loads((run / "fold0" / "best" / "head.json").read_text())["tokenization"]
    assert (head["window_stride"], head["max_windows"], head["window_aggregate"]) == (7, 4, "first_last")


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_predictor_aggregates_raw_texts_like_evaluate_under_any_batching(win_run, batch_size):
    from textclf import Predictor

    tmp = win_run["tmp"]
    texts = [t for _, t, _ in long_rows(17, seed=4, prefix="t")]
    want = np.load(tmp / "mp" / "win" / "test" / "probs.npy")
    predictor = Predictor.from_run(tmp / "ck" / "win", batch_size=batch_size, precision="no")
    got = predictor.predict(texts)
    np.testing.assert_allclose(got["probs"], want, atol=1e-5)
    assert got["labels"] == [predictor.label_names[j] for j in want.argmax(1)]
    # a text on its own gets the same row as among others
    np.testing.assert_allclose(predictor.predict([texts[5]])["probs"][0], want[5], atol=1e-5)
    embedded = predictor.embed(texts[:4])
    assert embedded["embeddings"].shape[0] == 4 and (embedded["lengths"] >= 1).all()


def test_onnx_export_reads_every_window(win_run):
    from textclf import export
    from textclf.onnx_predict import OnnxPredictor

    tmp = win_run["tmp"]
    report = export.export(tmp / "ck" / "win", "onnx", tmp / "onnx", fold="mean", int8=True)
    assert any("sliding windows" in n for n in report["notes"])
    assert report["folders"][0]["int8"]["rows"] == 40  # held-out texts, each from its windows
    texts = [t for _, t, _ in long_rows(17, seed=4, prefix="t")]
    got = OnnxPredictor.from_export(tmp / "onnx").predict(texts)["probs"]
    # first_last is linear, so aggregating the fold mean equals the mean of the folds' aggregates
    np.testing.assert_allclose(got, np.load(tmp / "mp" / "win" / "test" / "probs.npy"), atol=1e-4)


def test_onnx_export_of_max_windows_takes_each_folds_max_then_the_mean(stage, premodels, tmp_path):
    """The max over a text's windows does not commute with the fold mean: the export keeps each
    fold's probabilities, and OnnxPredictor aggregates them as Predictor and evaluate.py do."""
    from textclf import Predictor, export
    from textclf.onnx_predict import OnnxPredictor

    assert process(stage, premodels, tmp_path, "data.window_stride=5", "data.window_aggregate=max",
                   "data.n_folds=2").code == 0
    common = [f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}", "data.name=win",
              f"train.output_dir={tmp_path / 'ck'}", "train.precision=no", "eval.precision=no"]
    trained = stage("train", *common, "train.epochs=1", "train.batch_size=8", "train.lr=1e-3")
    assert trained.code == 0 and "not calibrated: texts are read as sliding windows" in trained.out
    assert not (tmp_path / "ck" / "win" / "calibration.json").exists()
    assert stage("evaluate", *common, f"eval.run={tmp_path / 'ck' / 'win'}",
                 f"eval.output_dir={tmp_path / 'mp'}").code == 0
    report = export.export(tmp_path / "ck" / "win", "onnx", tmp_path / "onnx", fold="mean", int8=True)
    doc = json.loads((tmp_path / "onnx" / "textclf_onnx.json").read_text())
    assert doc["outputs"] == ["fold_probs"] and doc["folds"] == 2 and report["folders"][0]["int8"]["rows"] == 40
    texts = [t for _, t, _ in long_rows(17, seed=4, prefix="t")]
    want = np.load(tmp_path / "mp" / "win" / "test" / "probs.npy")
    got = OnnxPredictor.from_export(tmp_path / "onnx", batch_size=3).predict(texts)["probs"]
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(Predictor.from_run(tmp_path / "ck" / "win", precision="no").predict(texts)["probs"],
                               want, atol=1e-5)
    # the max of the fold mean is another number: what the export gave before
    per_fold = OnnxPredictor.from_export(tmp_path / "onnx")
    ids, types, _, lengths, owner = per_fold.tokenizer.rows(texts)
    folds = per_fold.probs(ids, types, lengths)
    assert folds.shape[0] == 2
    max_of_mean = per_text(folds.mean(0), owner, len(texts), per_fold.tokenizer.aggregate, per_fold.problem)
    assert np.abs(max_of_mean - want).max() > 1e-4


def test_two_processes_evaluate_windows_like_one(win_run):
    tmp = win_run["tmp"]
    two = launch("evaluate.py", *win_run["common"], f"eval.run={tmp / 'ck' / 'win'}",
                 f"eval.output_dir={tmp / 'two'}", "eval.batch_size=3")
    assert two.stdout.count("evaluate: wrote") == 1
    a, b = tmp / "mp" / "win" / "test", tmp / "two" / "win" / "test"
    assert np.load(b / "ids.npy").tolist() == np.load(a / "ids.npy").tolist()
    np.testing.assert_allclose(np.load(b / "probs.npy"), np.load(a / "probs.npy"), atol=1e-6)


def test_resume_with_windows_is_bit_exact(stage, premodels, tmp_path):
    from test_train import records, strip_time

    assert process(stage, premodels, tmp_path, "data.window_stride=5").code == 0
    base = [f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}", "data.name=win",
            "train.epochs=2", "train.batch_size=8", "train.precision=no", "train.log_every_steps=1"]
    assert stage("train", *base, f"train.output_dir={tmp_path / 'straight'}").code == 0
    first = stage("train", *base, f"train.output_dir={tmp_path / 'stopped'}", "train.max_time=0.000001")
    assert first.code == 0 and "train.resume=" in first.out
    second = stage("train", *base, f"train.output_dir={tmp_path / 'stopped'}", "train.resume=auto")
    assert second.code == 0, second
    run, straight = tmp_path / "stopped" / "win", tmp_path / "straight" / "win"
    assert strip_time(records(run, "eval")) == strip_time(records(straight, "eval"))
    assert (run / "fold0/best/model.safetensors").read_bytes() == (straight / "fold0/best/model.safetensors").read_bytes()
    assert np.array_equal(np.load(run / "oof/probs.npy"), np.load(straight / "oof/probs.npy"))


def test_per_fold_pseudo_rows_keep_every_window_of_their_text(win_run):
    """pseudo.per_fold on windowed data: a test text kept by both folds is two pseudo texts, each
    with all its windows, keyed to its own row."""
    from conftest import run_stage

    tmp = win_run["tmp"]
    result = run_stage_module_pseudo(*win_run["common"], "pseudo.name=winpf", f"pseudo.predictions=[{tmp / 'mp' / 'win'}]",
                                     "pseudo.top_k=3", "pseudo.per_fold=true")
    assert result == 0
    src, out = tmp / "data" / "win", tmp / "data" / "winpf"
    n_train = len(np.load(src / "train" / "ids.npy"))
    source_row = np.load(out / "train" / "source_row.npy")[n_train:]
    only = np.load(out / "train" / "only_fold.npy")[n_train:]
    from textclf.pseudo import select

    want = [select(np.load(tmp / "mp" / "win" / "test" / f"fold{k}.npy"), problem_type("single_label"), 0.0, 3)[0] for k in (0, 1)]
    assert source_row.tolist() == want[0].tolist() + want[1].tolist()  # at most 3 per predicted class per fold
    assert only.tolist() == [0] * len(want[0]) + [1] * len(want[1])
    assert len(np.intersect1d(*want))  # a text kept by both folds, once per fold
    doc, test_doc = np.load(out / "train" / "window_doc.npy"), np.load(src / "test" / "window_doc.npy")
    ids, test_ids = np.load(out / "train" / "input_ids.npy"), np.load(src / "test" / "input_ids.npy")
    assert np.array_equal(np.unique(doc), np.arange(n_train + len(source_row))) and (np.diff(doc) >= 0).all()
    for j, row in enumerate(source_row):
        mine, theirs = ids[doc == n_train + j], test_ids[test_doc == row]
        assert np.array_equal(mine[:, :theirs.shape[1]], theirs)
    assert run_stage("train", *win_run["common"], "data.name=winpf", "train.run=winpf", "train.epochs=1",
                     "train.batch_size=8").code == 0
    assert len(np.load(tmp / "ck" / "winpf" / "oof" / "ids.npy")) == n_train


def run_stage_module_pseudo(*args):
    from textclf.errors import run_cli
    from textclf.pseudo import main

    try:
        run_cli(main, [str(a) for a in args])
    except SystemExit as exc:
        return exc.code
    return 0
