"""evaluate.py, Predictor and ensemble_and_submit.py on tiny runs, plus the blend maths."""

import csv
import json

import numpy as np
import pytest

from conftest import write
from test_train import toy_rows
from textclf import ensemble
from textclf.errors import UserError
from textclf.problem import problem_type


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, premodels):
    """One trained toy run with a labelled test file, evaluated once."""
    from conftest import run_stage

    tmp = tmp_path_factory.mktemp("toy_run")
    rows = toy_rows(60)
    test_rows = toy_rows(21, seed=5)
    # long and short texts mixed, so length-sorted batching reorders them
    test_rows = [(t + " very" * (i % 7) * 3, l) for i, (t, l) in enumerate(test_rows)]
    write(tmp / "train.csv", "id,text,label\n" + "".join(f"r{i},{t},{'neg pos'.split()[l]}\n" for i, (t, l) in enumerate(rows)))
    write(tmp / "test.csv", "id,text,label\n" + "".join(f"t{i},{t},{'neg pos'.split()[l]}\n" for i, (t, l) in enumerate(test_rows)))
    common = [f"model.name={premodels('bert')}", f"data.output_dir={tmp / 'data'}", "data.name=toy",
              f"train.output_dir={tmp / 'ck'}", f"eval.output_dir={tmp / 'mp'}",
              "train.precision=no", "eval.precision=no"]  # fp32: the tests compare numbers across batchings
    assert run_stage("data_process", *common, f"data.train_file={tmp / 'train.csv'}", f"data.test_file={tmp / 'test.csv'}",
                     "data.id_column=id", "data.max_len=48").code == 0
    for run, head in (("a", "mean"), ("b", "cls")):
        result = run_stage("train", *common, f"train.run={run}", f"model.head={head}", "train.epochs=3",
                           "train.batch_size=8", "train.lr=2e-3")
        assert result.code == 0, result
        result = run_stage("evaluate", *common, f"eval.run={tmp / 'ck' / run}", "eval.batch_size=4")
        assert result.code == 0, result
    return dict(tmp=tmp, common=common, test_rows=test_rows)


def test_evaluate_writes_probabilities_keyed_by_id(toy_run):
    out = toy_run["tmp"] / "mp" / "a"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["label_names"] == ["neg", "pos"] and manifest["problem_type"] == "single_label"
    assert len(manifest["checkpoints"][0]["sha256"]) == 64
    assert manifest["splits"]["test"]["rows"] == 21
    ids = np.load(out / "test" / "ids.npy")
    assert ids.tolist() == [f"t{i}" for i in range(21)]
    probs = np.load(out / "test" / "probs.npy")
    assert probs.dtype == np.float32 and probs.shape == (21, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.array_equal(probs, np.load(out / "test" / "fold0.npy"))
    assert (out / "test" / "report.txt").read_text().count("neg") >= 1
    assert (out / "test" / "confusion.txt").is_file()
    for picture in ("confusion.png", "roc_pr.png"):  # binary: the ROC / PR curves too
        assert (out / "test" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy" in json.loads((out / "test" / "metrics.json").read_text())
    assert np.load(out / "oof" / "probs.npy").shape[1] == 2


def test_predictor_matches_evaluate_row_for_row(toy_run):
    """Raw texts through the Python API == evaluate.py's arrays, in row order despite
    evaluate batching the rows longest-first."""
    from textclf import Predictor

    predictor = Predictor.from_run(toy_run["tmp"] / "ck" / "a", batch_size=5, precision="no")
    texts = [t for t, _ in toy_run["test_rows"]]
    out = predictor.predict(texts)
    expected = np.load(toy_run["tmp"] / "mp" / "a" / "test" / "probs.npy")
    assert np.allclose(out["probs"], expected, atol=1e-5)
    assert out["labels"] == [["neg", "pos"][k] for k in expected.argmax(1)]
    manifest = json.loads((toy_run["tmp"] / "mp" / "a" / "manifest.json").read_text())
    assert manifest["precision"]["precision"] == "no" and manifest["precision"]["reason"] == "eval.precision=no"


def test_predictor_auto_precision_is_the_training_choice_and_close_to_fp32(toy_run):
    from textclf import Predictor
    from textclf.precision import resolve

    texts = [t for t, _ in toy_run["test_rows"]]
    auto = Predictor.from_run(toy_run["tmp"] / "ck" / "a", batch_size=5)
    assert auto.precision.precision == resolve("auto", "cpu").precision
    fp32 = Predictor.from_run(toy_run["tmp"] / "ck" / "a", batch_size=5, precision="no").predict(texts)["probs"]
    assert np.allclose(auto.predict(texts)["probs"], fp32, atol=2e-2)  # bf16 where auto picks it: ~3 digits


def test_raw_texts_from_the_command_line(toy_run, stage):
    result = stage("evaluate", *toy_run["common"], f"eval.run={toy_run['tmp'] / 'ck' / 'a'}",
                   'eval.texts=["great fun film", "boring and bad, really"]')
    assert result.code == 0, result
    written = sorted((toy_run["tmp"] / "mp").glob("a-texts*/predictions.csv"))[-1]
    rows = list(csv.DictReader(written.open()))
    assert [r["id"] for r in rows] == ["0", "1"] and set(rows[0]) == {"id", "label", "prob_neg", "prob_pos"}


def test_ensemble_writes_a_checked_submission(toy_run, stage):
    tmp = toy_run["tmp"]
    sample = write(tmp / "sample.csv", "id,label\n" + "".join(f"t{i},neg\n" for i in reversed(range(21))))
    result = stage("ensemble_and_submit", *toy_run["common"], f"ensemble.predictions=[{tmp / 'mp' / 'a'},{tmp / 'mp' / 'b'}]",
                   f"ensemble.sample_submission={sample}", f"ensemble.output_dir={tmp / 'subs'}", "ensemble.name=toy")
    assert result.code == 0, result
    rows = list(csv.reader((tmp / "subs" / "toy.csv").open()))
    assert rows[0] == ["id", "label"] and [r[0] for r in rows[1:]] == [f"t{i}" for i in reversed(range(21))]
    assert {r[1] for r in rows[1:]} <= {"neg", "pos"}
    summary = json.loads((tmp / "subs" / "toy.json").read_text())
    assert summary["blend_score"] >= summary["mean_score"] - 1e-12 and len(summary["weights"]) == 2
    again = stage("ensemble_and_submit", *toy_run["common"], f"ensemble.predictions=[{tmp / 'mp' / 'a'}]",
                  f"ensemble.sample_submission={sample}", f"ensemble.output_dir={tmp / 'subs'}", "ensemble.name=toy")
    assert again.code == 0 and (tmp / "subs" / "toy-v2.csv").is_file()  # never overwrites


def test_ensemble_refuses_sets_that_do_not_line_up(toy_run, stage, tmp_path):
    tmp = toy_run["tmp"]
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tmp / "mp" / "b", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["splits"]["test"]["ids_sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    result = stage("ensemble_and_submit", f"ensemble.predictions=[{tmp / 'mp' / 'a'},{other}]",
                   f"ensemble.output_dir={tmp_path / 'subs'}")
    assert result.code == 2 and "different 'test' rows" in result.err
    manifest["splits"]["test"]["ids_sha256"] = json.loads((tmp / "mp" / "a" / "manifest.json").read_text())["splits"]["test"]["ids_sha256"]
    manifest["label_names"] = ["neg", "neutral"]
    (other / "manifest.json").write_text(json.dumps(manifest))
    result = stage("ensemble_and_submit", f"ensemble.predictions=[{tmp / 'mp' / 'a'},{other}]",
                   f"ensemble.output_dir={tmp_path / 'subs'}")
    assert result.code == 2 and "has labels" in result.err
    assert not (tmp_path / "subs").exists()


def test_weight_search_beats_or_equals_the_mean():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=400)
    good = np.full((400, 3), 0.1)
    good[np.arange(400), labels] = 0.8
    flip = rng.random(400) < 0.15  # the good member is wrong on 15% of rows
    good[flip] = np.roll(good[flip], 1, axis=1)
    noise = rng.dirichlet(np.ones(3), size=400)
    members = [good, noise]
    weights, best = ensemble.search_weights(members, labels, problem_type("single_label"), "accuracy", "weighted")
    mean = ensemble.score(ensemble.blend(members, [0.5, 0.5], "mean"), labels, problem_type("single_label"), "accuracy")
    assert best >= mean
    assert weights[0] > weights[1]
    alone = ensemble.score(good, labels, problem_type("single_label"), "accuracy")
    assert best >= alone


def test_thresholds_improve_f1_on_an_imbalanced_case():
    rng = np.random.default_rng(1)
    labels = (rng.random(1000) < 0.1).astype(int)  # 10% positives
    score = np.clip(0.25 * labels + rng.normal(0.2, 0.1, 1000), 0, 1)  # positives score higher, but below 0.5
    probs = np.stack([1 - score, score], 1)
    t = ensemble.tune_thresholds(probs, labels, problem_type("single_label"), "f1_macro")
    from sklearn.metrics import f1_score

    before = f1_score(labels, probs.argmax(1), average="macro")
    after = f1_score(labels, problem_type("single_label").decide(probs, t), average="macro")
    assert t < 0.5 and after > before + 0.1
    multi = np.stack([labels, 1 - labels], 1)
    per_class = ensemble.tune_thresholds(np.stack([score, 1 - score], 1), multi, problem_type("multi_label"), "f1_micro")
    assert len(per_class) == 2 and per_class[0] < 0.5


def test_submission_layouts_follow_the_sample():
    ids = np.array(["a", "b", "c"])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    pred = probs.argmax(1)
    names = ["x", "y", "z"]
    rows = ensemble.submission_rows(["id", "label"], [["c", "x"], ["a", "x"], ["b", "x"]], ids, probs, pred, names, problem_type("single_label"))
    assert rows == [["id", "label"], ["c", "z"], ["a", "x"], ["b", "y"]]
    rows = ensemble.submission_rows(["id", "target"], [["a", "0"], ["b", "0"], ["c", "0"]], ids, probs, pred, names, problem_type("single_label"))
    assert [r[1] for r in rows[1:]] == ["0", "1", "2"]  # the sample uses class numbers
    rows = ensemble.submission_rows(["id", "z", "x", "y"], [["a", "0", "0", "0"], ["b", "0", "0", "0"], ["c", "0", "0", "0"]],
                                    ids, probs, pred, names, problem_type("single_label"))
    assert rows[1] == ["a", "0.100000", "0.700000", "0.200000"]
    with pytest.raises(UserError, match="ids do not match"):
        ensemble.submission_rows(["id", "label"], [["a", "x"], ["q", "x"], ["c", "x"]], ids, probs, pred, names, problem_type("single_label"))


# ---------------------------------------------------------------------------- classic task configs

def _ncbi(tmp):
    rows = toy_rows(30, classes=3)
    write(tmp / "train.tsv", "".join(f"{t}\t{l}\n" for t, l in rows[9:]))
    write(tmp / "dev.tsv", "".join(f"{t}\t{l}\n" for t, l in rows[:9]))  # other rows: a valid file of train rows is refused
    write(tmp / "test.tsv", "".join(f"{t}\n" for t, _ in rows[:6]))
    return ["data.train_file={t}/train.tsv", "data.valid_file={t}/dev.tsv", "data.test_file={t}/test.tsv",
            'eval.texts=["the tumor cells grew", "a nerve disorder"]']


def _sst2(tmp):
    rows = toy_rows(38)
    write(tmp / "train.tsv", "sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows[8:]))
    write(tmp / "dev.tsv", "sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows[:8]))
    write(tmp / "test.tsv", "sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows[8:14]))
    return ["data.train_file={t}/train.tsv", "data.valid_file={t}/dev.tsv", "data.test_file={t}/test.tsv"]


def _imdb(tmp):
    rows = toy_rows(24)
    body = lambda rs, off: "".join(f'"{t} <br /> {"long " * 40}""quoted"" end {t}",{l},{off + i},{7 if l else 2}\n'
                                   for i, (t, l) in enumerate(rs))
    write(tmp / "train.csv", "text,label,id,rating\n" + body(rows, 0))
    write(tmp / "test.csv", "text,label,id,rating\n" + body(rows[:6], 1000))
    return ["data.train_file={t}/train.csv", "data.test_file={t}/test.csv", "data.max_len=64", "data.head_tokens=16"]


def _paper(tmp):
    rows = toy_rows(30)
    write(tmp / "train.csv", "id,title,abstract,label\n" + "".join(f'p{i},"{t}","{t} abstract",{l}\n' for i, (t, l) in enumerate(rows)))
    write(tmp / "test.csv", "id,title,abstract\n" + "".join(f'q{i},"{t}","{t} more"\n' for i, (t, _) in enumerate(rows[:6])))
    write(tmp / "sample.csv", "id,label\n" + "".join(f"q{i},0\n" for i in range(6)))
    return ["data.train_file={t}/train.csv", "data.test_file={t}/test.csv", "data.n_folds=2", "data.max_len=48",
            "ensemble.sample_submission={t}/sample.csv"]


def _ag_news(tmp):
    rows = toy_rows(32, classes=2)
    write(tmp / "train.csv", "".join(f'"{l + 1 + 2 * (i % 2)}","{t}","{t} desc"\n' for i, (t, l) in enumerate(rows)))
    write(tmp / "test.csv", "".join(f'"{l + 1 + 2 * (i % 2)}","{t}","{t} desc"\n' for i, (t, l) in enumerate(rows[:8])))
    return ["data.train_file={t}/train.csv", "data.test_file={t}/test.csv", "data.valid_size=0.25"]


@pytest.mark.parametrize("name, setup", [("ncbi_tc3", _ncbi), ("sst2", _sst2), ("imdb", _imdb),
                                         ("paper_binary", _paper), ("ag_news", _ag_news)])
def test_classic_config_runs_end_to_end(stage, premodels, tmp_path, name, setup):
    from conftest import ROOT

    args = [a.format(t=tmp_path) for a in setup(tmp_path)]
    common = ["--config", str(ROOT / "configs" / f"{name}.yaml"), f"model.name={premodels('bert')}",
              f"data.output_dir={tmp_path / 'data'}", f"train.output_dir={tmp_path / 'ck'}",
              f"eval.output_dir={tmp_path / 'mp'}", "train.epochs=1", "train.batch_size=8", "train.precision=no",
              "train.eval_every_steps=0", *args]
    for script in ("data_process", "train"):
        result = stage(script, *common)
        assert result.code == 0, (script, result)
    eval_args = [a for a in common if not a.startswith("eval.texts")]
    result = stage("evaluate", *eval_args)
    assert result.code == 0, result
    if any(a.startswith("eval.texts") for a in common):
        result = stage("evaluate", *common)
        assert result.code == 0 and "evaluate: wrote" in result.out, result
    if name == "paper_binary":
        result = stage("ensemble_and_submit", *common, f"ensemble.predictions=[{tmp_path / 'mp' / name}]",
                       f"ensemble.output_dir={tmp_path / 'subs'}")
        assert result.code == 0, result
        assert (tmp_path / "subs" / "paper_binary.csv").read_text().splitlines()[0] == "id,label"
    meta = json.loads((tmp_path / "data" / name / "meta.json").read_text())
    assert meta["name"] == name


def test_embeddings_from_evaluate_and_predictor(toy_run, stage):
    from textclf import Predictor

    tmp, common = toy_run["tmp"], toy_run["common"]
    result = stage("evaluate", *common, f"eval.run={tmp / 'ck' / 'a'}", "eval.embeddings=true",
                   "eval.hidden_states=true", "eval.splits=[test]", f"eval.output_dir={tmp / 'emb'}")
    assert result.code == 0, result
    out = next((tmp / "emb").iterdir()) / "test"
    vectors, hidden, lengths = (np.load(out / f"{n}.npy") for n in ("embeddings", "hidden_states", "lengths"))
    width = hidden.shape[1]  # the split's array width
    assert vectors.shape == (21, 32) and hidden.shape == (21, width, 32) and width == lengths.max()
    assert np.all(hidden[np.arange(width)[None, :] >= lengths[:, None]] == 0)  # zero at padding
    # run "a" has the mean head: its vector is the mean of the token states
    np.testing.assert_allclose(vectors, hidden.sum(1) / lengths[:, None], atol=1e-5)
    manifest = json.loads((out.parent / "manifest.json").read_text())
    assert manifest["splits"]["test"]["embeddings"] == {"fold": 0, "dim": 32, "hidden_states": True}
    texts = [t for t, _ in toy_run["test_rows"]]
    one = Predictor.from_run(tmp / "ck" / "b", device="cpu", batch_size=1, precision="no").embed(texts)
    many = Predictor.from_run(tmp / "ck" / "b", device="cpu", batch_size=64, precision="no").embed(texts)
    assert one["embeddings"].shape == (21, 32) and one["fold"] == 0
    np.testing.assert_allclose(one["embeddings"], many["embeddings"], atol=1e-5)  # batching does not change them
    # run "b" has the cls head, whose last layer computes the first row only: asked for, every row comes
    full = Predictor.from_run(tmp / "ck" / "b", device="cpu", batch_size=64, precision="no").embed(
        texts, hidden_states=True)
    assert full["hidden_states"].shape[1] >= full["lengths"].max() > 1
    np.testing.assert_allclose(full["hidden_states"][:, 0], many["embeddings"], atol=1e-5)
    assert not np.allclose(full["hidden_states"][:, 1], full["hidden_states"][:, 0], atol=1e-3)  # its own states
    # hidden states come with the embeddings: asking for them alone writes both
    result = stage("evaluate", *common, f"eval.run={tmp / 'ck' / 'a'}", "eval.hidden_states=true",
                   f"eval.output_dir={tmp / 'hidden-only'}")
    assert result.code == 0, result
    assert {"embeddings.npy", "hidden_states.npy"} <= {p.name for p in (tmp / "hidden-only").rglob("*.npy")}
