"""Numeric targets (data.task=regression) through every stage, on tiny data with tiny random models:
parsing and refusing targets, learning a count, K-fold OOF, metrics against hand computations,
evaluate, Predictor, the blend and its submission, export, and a bit-exact resume."""

import csv
import json
import random

import numpy as np
import pytest
from scipy import stats

from conftest import write
from test_train import records, strip_time
from textclf import export, metrics
from textclf.problem import problem_type

FILLER = "the movie was a film story plot actor one two three very really".split()
CUE = "great"


def count_rows(n, seed=0, prefix="r"):
    """Eight words, k of them the cue word: the target is 2.5 k + 10 (units and offset on purpose)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = i % 4
        words = rng.sample(FILLER, 8 - k) + [CUE] * k
        rng.shuffle(words)
        rows.append((f"{prefix}{i}", " ".join(words), 2.5 * k + 10))
    return rows


def write_rows(path, rows):
    return write(path, "id,text,score\n" + "".join(f"{i},{t},{y}\n" for i, t, y in rows))


def rmse(pred, target):
    return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2)))


@pytest.fixture(scope="module")
def reg_run(tmp_path_factory, premodels):
    """Count data (3 folds, a labelled test file), two runs (mean head; pooler head with huber loss),
    each evaluated."""
    from conftest import run_stage

    tmp = tmp_path_factory.mktemp("reg_run")
    train_rows, test_rows = count_rows(60), count_rows(20, seed=5, prefix="t")
    write_rows(tmp / "train.csv", train_rows)
    write_rows(tmp / "test.csv", test_rows)
    common = [f"model.name={premodels('bert')}", f"data.output_dir={tmp / 'data'}", "data.name=count",
              f"train.output_dir={tmp / 'ck'}", f"eval.output_dir={tmp / 'mp'}", "train.precision=no",
              "eval.precision=no"]
    result = run_stage("data_process", *common, f"data.train_file={tmp / 'train.csv'}",
                       f"data.test_file={tmp / 'test.csv'}", "data.id_column=id", "data.label_column=score",
                       "data.task=regression", "data.max_len=16", "data.n_folds=3")
    assert result.code == 0, result
    for run, extra in (("a", ["model.head=mean", "train.epochs=8"]),
                       ("b", ["model.head=pooler", "train.epochs=4", "train.loss=huber", "train.huber_delta=0.5"])):
        result = run_stage("train", *common, f"train.run={run}", "train.batch_size=8", "train.lr=2e-3", *extra)
        assert result.code == 0, result
        result = run_stage("evaluate", *common, f"eval.run={tmp / 'ck' / run}", "eval.batch_size=4")
        assert result.code == 0, result
    return dict(tmp=tmp, common=common, train_rows=train_rows, test_rows=test_rows)


# ---------------------------------------------------------------------------- data_process


def test_data_process_stores_float_targets_and_stratifies_folds_on_their_bins(stage, premodels, tmp_path):
    rows = [(f"r{i}", f"text number {i} {CUE * (i % 3)}", y) for i, y in enumerate(np.linspace(-7.5, 52, 60))]
    lines = "".join(f"{i},{t},{float(y)!r}\n" for i, t, y in rows).replace(",-7.5\n", ", -7.5e0 \n")  # spaces, exponent
    write(tmp_path / "train.csv", "id,text,score\n" + lines)
    result = stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}",
                   "data.name=num", f"data.train_file={tmp_path / 'train.csv'}", "data.id_column=id",
                   "data.label_column=score", "data.task=regression", "data.n_folds=3", "data.max_len=16")
    assert result.code == 0, result
    out = tmp_path / "data" / "num"
    labels = np.load(out / "train" / "labels.npy")
    want = np.array([y for _, _, y in rows], dtype=np.float32)[:, None]
    assert labels.dtype == np.float32 and labels.shape == (60, 1) and np.array_equal(labels, want)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["problem_type"] == "regression" and meta["label_names"] == ["score"]
    assert meta["config"]["data"]["task"] == "regression"
    y = want[:, 0].astype(np.float64)
    assert meta["target_stats"]["score"] == pytest.approx({"mean": y.mean(), "std": y.std()}, rel=1e-6)
    split_stats = meta["splits"]["train"]["target_stats"]["score"]
    assert split_stats["min"] == pytest.approx(-7.5) and split_stats["max"] == pytest.approx(52)
    # 60 rows: 6 quantile bins of 10 rows; every fold takes 3 or 4 rows of each bin
    folds = np.load(out / "train" / "folds.npy")
    bins = np.searchsorted(np.quantile(y, np.arange(1, 6) / 6), y, side="right")
    per_fold = np.array([[np.sum((folds == k) & (bins == b)) for b in range(6)] for k in range(3)])
    assert per_fold.sum() == 60 and per_fold.min() >= 3 and per_fold.max() <= 4
    assert sorted(np.bincount(folds).tolist()) == [20, 20, 20]


def test_several_targets_from_label_columns(stage, premodels, tmp_path):
    write(tmp_path / "train.jsonl", "".join(json.dumps({"text": f"row {i}", "a": i * 0.5, "b": -i, "c": "x"}) + "\n"
                                            for i in range(30)))
    result = stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}",
                   "data.name=two", f"data.train_file={tmp_path / 'train.jsonl'}", "data.label_columns=[b,a]",
                   "data.task=regression", "data.max_len=16")
    assert result.code == 0, result
    labels = np.load(tmp_path / "data" / "two" / "train" / "labels.npy")
    assert labels.shape == (30, 2)
    assert np.array_equal(labels, np.array([[-i, i * 0.5] for i in range(30)], dtype=np.float32))
    meta = json.loads((tmp_path / "data" / "two" / "meta.json").read_text())
    assert meta["label_names"] == ["b", "a"] and list(meta["target_stats"]) == ["b", "a"]
    held = (np.load(tmp_path / "data" / "two" / "train" / "folds.npy") == 0).sum()
    assert held == 3  # valid_size 0.1 of 30 rows, taken from each of 3 bins of the first target


@pytest.mark.parametrize("cell, expected", [
    ("abc", "target 'score' is 'abc', not a number"),
    ("nan", "target 'score' is 'nan'; targets must be finite"),
    ("-inf", "target 'score' is '-inf'; targets must be finite"),
    ("1e39", "target 'score' is '1e39'; targets must be finite numbers within +-1e30"),
    ("", "target 'score' is empty"),
])
def test_bad_targets_are_refused_with_one_line_and_nothing_written(stage, premodels, tmp_path, cell, expected):
    train = write(tmp_path / "train.csv", "text,score\nfirst row,1\nsecond row," + cell + "\nthird row,2\n")
    result = stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}",
                   "data.name=bad", f"data.train_file={train}", "data.label_column=score", "data.task=regression")
    assert result.code == 2
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"line 3 of {train}" in lines[0] and expected in lines[0], result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("body, extra, expected", [
    ("text,score\na,3\nb,3\nc,3\n", [], "target 'score' is 3 on every row"),
    ("text,score\na,3\nb,4\n", ["data.labels=[x,y]"], "data.labels"),
    ("text,score\na,3\nb,4\n", ["data.label_delimiter=|"], "data.label_columns=[a,b] with data.task=regression"),
])
def test_regression_settings_that_cannot_work_are_refused(stage, premodels, tmp_path, body, extra, expected):
    train = write(tmp_path / "train.csv", body)
    result = stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}",
                   "data.name=bad", f"data.train_file={train}", "data.label_column=score", "data.task=regression",
                   *extra)
    assert result.code == 2 and expected in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------------------- metrics


def test_metrics_equal_hand_computations():
    target = np.array([3.0, -1.0, 2.0, 2.0, 7.5, 0.0, 4.0])
    pred = np.array([2.5, 0.0, 2.0, 3.0, 6.0, 1.0, 1.0])
    got = metrics.compute(pred[:, None], target[:, None], problem_type("regression"))
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean((pred - target) ** 2)), abs=1e-12)
    assert got["mae"] == pytest.approx(np.mean(np.abs(pred - target)), abs=1e-12)
    assert got["pearson"] == pytest.approx(np.corrcoef(pred, target)[0, 1], abs=1e-12)
    assert got["spearman"] == pytest.approx(stats.spearmanr(pred, target).statistic, abs=1e-12)  # ties in both
    # two targets: each metric is the mean over the columns
    second = np.stack([target, target * 10], 1), np.stack([pred, pred[::-1] * 10], 1)
    both = metrics.compute(second[1], second[0], problem_type("regression"))
    col2 = pred[::-1] * 10 - target * 10
    assert both["rmse"] == pytest.approx((np.sqrt(np.mean((pred - target) ** 2)) + np.sqrt(np.mean(col2 ** 2))) / 2)
    assert both["spearman"] == pytest.approx((stats.spearmanr(pred, target).statistic
                                              + stats.spearmanr(pred[::-1], target).statistic) / 2)
    # a constant prediction correlates 0 (never NaN, which no comparison would ever beat)
    flat = metrics.compute(np.full((7, 1), 2.0), target[:, None], problem_type("regression"))
    assert flat["pearson"] == 0.0 and flat["spearman"] == 0.0
    assert metrics.metric_mode("rmse", "auto") == "min" and metrics.metric_mode("mae", "auto") == "min"
    assert metrics.metric_mode("pearson", "auto") == "max" and metrics.metric_mode("spearman", "auto") == "max"
    def decide(probs, names, name):
        return problem_type(name).labels(probs, names)

    assert decide(np.array([[1.5], [-2.0]]), ["score"], "regression") == [1.5, -2.0]
    assert decide(np.array([[1.5, 2.0]]), ["a", "b"], "regression") == [[1.5, 2.0]]


# ---------------------------------------------------------------------------- train


def test_a_tiny_model_learns_the_count_and_oof_covers_every_row_once(reg_run):
    tmp = reg_run["tmp"]
    run = tmp / "ck" / "a"
    targets = np.array([y for _, _, y in reg_run["train_rows"]])
    oof = np.load(run / "oof" / "probs.npy")
    assert oof.shape == (60, 1) and oof.dtype == np.float32
    assert np.load(run / "oof" / "ids.npy").tolist() == [i for i, _, _ in reg_run["train_rows"]]
    folds = np.load(run / "oof" / "folds.npy")
    assert np.array_equal(folds, np.load(tmp / "data" / "count" / "train" / "folds.npy"))
    assert sorted(set(folds.tolist())) == [0, 1, 2]
    # predicting the mean would score the targets' std; the model must do far better
    baseline = rmse(np.full(60, targets.mean()), targets)
    score = json.loads((run / "oof" / "metrics.json").read_text())
    assert score["rmse"] == pytest.approx(rmse(oof[:, 0], targets), rel=1e-6)
    assert score["rmse"] < 0.4 * baseline, (score, baseline)
    assert score["pearson"] > 0.9
    # auto resolved to rmse (minimised), and the run says so
    assert "metric: rmse" in (run / "config.yaml").read_text()
    evals = records(run, "eval")
    best = [min(r["rmse"] for r in evals if r["fold"] == k) for k in range(3)]
    assert [json.loads((run / f"fold{k}" / "done.json").read_text())["best"] for k in range(3)] == pytest.approx(best)
    head = json.loads((run / "fold0" / "best" / "head.json").read_text())
    meta = json.loads((tmp / "data" / "count" / "meta.json").read_text())
    assert head["labels"] == {"names": ["score"], "problem_type": "regression"}
    assert head["head"]["target_mean"] == [meta["target_stats"]["score"]["mean"]]
    assert head["head"]["target_std"] == [meta["target_stats"]["score"]["std"]]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["rows"] == 20 and summary["test"]["rmse"] < 0.5 * baseline
    assert "pearson" in (run / "test_report.txt").read_text()


@pytest.mark.parametrize("args, expected", [
    (["train.class_weights=auto"], "train.class_weights weights classes"),
    (["train.label_smoothing=0.1"], "train.label_smoothing smooths class targets"),
    (["train.metric=accuracy"], "train.metric=accuracy is not computed for this problem"),
    (["model.problem_type=single_label"], "does not fit numeric targets"),
])
def test_train_refuses_classification_settings(reg_run, stage, tmp_path, args, expected):
    result = stage("train", *reg_run["common"], f"train.output_dir={tmp_path / 'ck'}", *args)
    assert result.code == 2 and expected in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert not (tmp_path / "ck").exists()


def test_resume_of_a_regression_run_is_bit_exact(stage, premodels, tmp_path):
    write_rows(tmp_path / "train.csv", count_rows(40))
    base = [f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}", "data.name=count"]
    assert stage("data_process", *base, f"data.train_file={tmp_path / 'train.csv'}", "data.id_column=id",
                 "data.label_column=score", "data.task=regression", "data.max_len=16").code == 0
    args = [*base, "train.epochs=2", "train.batch_size=8", "train.lr=1e-3", "train.precision=no", "train.loss=huber",
            "train.log_every_steps=1"]
    assert stage("train", *args, f"train.output_dir={tmp_path / 'straight'}").code == 0
    first = stage("train", *args, f"train.output_dir={tmp_path / 'stopped'}", "train.max_time=0.000001")
    assert first.code == 0 and "train.resume=" in first.out
    run = tmp_path / "stopped" / "count"
    assert not (run / "fold0" / "done.json").exists()
    second = stage("train", *args, f"train.output_dir={tmp_path / 'stopped'}", "train.resume=auto")
    assert second.code == 0 and "resuming from last-00000001" in second.out, second
    straight = tmp_path / "straight" / "count"
    assert strip_time(records(run, "eval")) == strip_time(records(straight, "eval"))
    assert (run / "fold0/best/model.safetensors").read_bytes() == (straight / "fold0/best/model.safetensors").read_bytes()
    assert np.array_equal(np.load(run / "oof/probs.npy"), np.load(straight / "oof/probs.npy"))


# ---------------------------------------------------------------------------- evaluate and Predictor


def test_evaluate_writes_predictions_keyed_by_id_and_predictor_matches(reg_run):
    from textclf import Predictor

    out = reg_run["tmp"] / "mp" / "a"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["problem_type"] == "regression" and manifest["label_names"] == ["score"]
    ids = np.load(out / "test" / "ids.npy")
    assert ids.tolist() == [i for i, _, _ in reg_run["test_rows"]]
    preds = np.load(out / "test" / "probs.npy")
    assert preds.dtype == np.float32 and preds.shape == (20, 1)
    folds = np.stack([np.load(out / "test" / f"fold{k}.npy") for k in range(3)])
    assert np.allclose(preds, folds.mean(0), atol=1e-6)
    labels = np.load(out / "test" / "labels.npy")
    written = json.loads((out / "test" / "metrics.json").read_text())
    assert written["rmse"] == pytest.approx(rmse(preds, labels), rel=1e-6)
    assert written == manifest["splits"]["test"]["metrics"]
    assert "spearman" in (out / "test" / "report.txt").read_text()
    assert not (out / "test" / "confusion.txt").exists() and not (out / "test" / "confusion.png").exists()
    assert np.load(out / "oof" / "probs.npy").shape == (60, 1)

    predictor = Predictor.from_run(reg_run["tmp"] / "ck" / "a", batch_size=3, precision="no")
    got = predictor.predict([t for _, t, _ in reg_run["test_rows"]])
    assert np.allclose(got["predictions"], preds, atol=1e-5) and got["predictions"] is got["probs"]
    assert got["labels"] == pytest.approx(got["predictions"][:, 0].tolist())


def test_raw_texts_get_one_value_column_per_target(reg_run, stage):
    from textclf import Predictor

    texts = [f"{CUE} {CUE} {CUE} the film", "a plot the actor"]
    result = stage("evaluate", *reg_run["common"], f"eval.run={reg_run['tmp'] / 'ck' / 'a'}",
                   f"eval.texts={json.dumps(texts)}")
    assert result.code == 0, result
    written = sorted((reg_run["tmp"] / "mp").glob("a-texts*/predictions.csv"))[-1]
    rows = list(csv.reader(written.open()))
    assert rows[0] == ["id", "score"] and [r[0] for r in rows[1:]] == ["0", "1"]
    want = Predictor.from_run(reg_run["tmp"] / "ck" / "a", precision="no").predict(texts)["predictions"][:, 0]
    assert [float(r[1]) for r in rows[1:]] == pytest.approx(want.tolist(), rel=1e-6)
    assert float(rows[1][1]) > float(rows[2][1]) + 2.5  # three cue words against none


# ---------------------------------------------------------------------------- ensemble


def test_ensemble_blends_two_regression_runs_into_a_numeric_submission(reg_run, stage):
    tmp = reg_run["tmp"]
    sample = write(tmp / "sample.csv", "id,target\n" + "".join(f"t{i},0\n" for i in reversed(range(20))))
    sets = f"ensemble.predictions=[{tmp / 'mp' / 'a'},{tmp / 'mp' / 'b'}]"
    result = stage("ensemble_and_submit", *reg_run["common"], sets, "ensemble.method=mean",
                   f"ensemble.sample_submission={sample}", f"ensemble.output_dir={tmp / 'subs'}", "ensemble.name=mean")
    assert result.code == 0, result
    members = [np.load(tmp / "mp" / run / "oof" / "probs.npy").astype(np.float64) for run in ("a", "b")]
    labels = np.load(tmp / "mp" / "a" / "oof" / "labels.npy")
    summary = json.loads((tmp / "subs" / "mean.json").read_text())
    assert summary["metric"] == "rmse" and summary["thresholds"] is None
    assert summary["blend_score"] == pytest.approx(rmse((members[0] + members[1]) / 2, labels), rel=1e-9)
    rows = list(csv.reader((tmp / "subs" / "mean.csv").open()))
    assert rows[0] == ["id", "target"] and [r[0] for r in rows[1:]] == [f"t{i}" for i in reversed(range(20))]
    test = [np.load(tmp / "mp" / run / "test" / "probs.npy").astype(np.float64)[:, 0] for run in ("a", "b")]
    want = (test[0] + test[1]) / 2
    assert [float(r[1]) for r in rows[1:]] == pytest.approx(want[::-1].tolist(), rel=1e-6)
    assert all("e" not in r[1] for r in rows[1:])

    result = stage("ensemble_and_submit", *reg_run["common"], sets, f"ensemble.output_dir={tmp / 'subs'}",
                   "ensemble.name=weighted")
    assert result.code == 0, result
    summary = json.loads((tmp / "subs" / "weighted.json").read_text())
    weights = np.array(summary["weights"])
    assert summary["blend_score"] <= summary["mean_score"] + 1e-12
    assert summary["blend_score"] == pytest.approx(rmse(weights[0] * members[0] + weights[1] * members[1], labels))
    rows = list(csv.reader((tmp / "subs" / "weighted.csv").open()))
    assert rows[0] == ["id", "score"] and len(rows) == 21  # no sample: the target's own name

    for bad, expected in (("ensemble.method=geometric", "regression predictions blend with"),
                          ("ensemble.metric=accuracy", "does not score regression predictions")):
        result = stage("ensemble_and_submit", *reg_run["common"], sets, f"ensemble.output_dir={tmp / 'subs'}",
                       "ensemble.name=bad", bad)
        assert result.code == 2 and expected in result.err, result
    assert not list((tmp / "subs").glob("bad*"))


# ---------------------------------------------------------------------------- export


@pytest.mark.parametrize("run, fold, native", [("a", "mean", False), ("b", "0", True)])
def test_hf_export_round_trips_the_predictions(reg_run, run, fold, native):
    from transformers import pipeline

    from textclf import Predictor

    out = reg_run["tmp"] / f"hf-{run}"
    report = export.export(reg_run["tmp"] / "ck" / run, "hf", out, fold=fold)
    entry = report["folders"][0]
    assert entry["max_difference"] <= 1e-5 and ("BertForSequenceClassification" == entry["class"]) == native
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "score"}
    texts = [t for _, t, _ in reg_run["test_rows"][:6]]
    want = Predictor.from_run(reg_run["tmp"] / "ck" / run, folds="all" if fold == "mean" else [0],
                              precision="no").predict(texts)["predictions"][:, 0]
    pipe = pipeline("text-classification", model=str(out), trust_remote_code=not native)
    got = [row["score"] for row in pipe(texts, truncation=True)]  # regression: no function on the logits
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_onnx_export_predicts_the_values(reg_run):
    from textclf import Predictor
    from textclf.onnx_predict import OnnxPredictor

    out = reg_run["tmp"] / "onnx-a"
    export.export(reg_run["tmp"] / "ck" / "a", "onnx", out, fold="0")
    doc = json.loads((out / "textclf_onnx.json").read_text())
    assert doc["problem_type"] == "regression" and doc["outputs"] == ["predictions"]
    texts = [t for _, t, _ in reg_run["test_rows"][:6]]
    got = OnnxPredictor.from_export(out).predict(texts)
    want = Predictor.from_run(reg_run["tmp"] / "ck" / "a", folds=[0], precision="no").predict(texts)
    np.testing.assert_allclose(got["predictions"], want["predictions"], atol=1e-4)
    assert got["labels"] == pytest.approx(want["labels"], abs=1e-4)
