"""Submissions that score: what ensemble_and_submit.py writes follows the sample and the
competition's metric (labels, the positive class's probability, one probability column per class),
and every layout is scored here from the written file against held-out labels."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

from conftest import write
from textclf.errors import UserError
from textclf.fileio import ids_sha256
from textclf.problem import problem_type
from textclf.submission import Sample, placeholders_are_probabilities, plan


def prediction_set(folder, probs, labels, oof_probs, oof_labels, names, problem="single_label", data=None):
    """A prediction set as evaluate.py writes it: test rows (labelled) and out-of-fold rows."""
    ids = np.array([f"t{i}" for i in range(len(probs))])
    oof_ids = np.array([f"r{i}" for i in range(len(oof_probs))])
    for split, p, y, i in (("test", probs, labels, ids), ("oof", oof_probs, oof_labels, oof_ids)):
        (folder / split).mkdir(parents=True)
        np.save(folder / split / "probs.npy", p.astype(np.float32))
        np.save(folder / split / "labels.npy", y)
        np.save(folder / split / "ids.npy", i)
    manifest = {"label_names": names, "problem_type": problem, "config": {"data": data or {}},
                "splits": {"test": {"rows": len(ids), "ids_sha256": ids_sha256(ids), "source_sha256": "s",
                                    "metrics": {}},
                           "oof": {"rows": len(oof_ids), "ids_sha256": ids_sha256(oof_ids)}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def noisy_binary(rng, n, strength):
    labels = rng.integers(0, 2, n)
    p = np.clip(0.5 + strength * (labels - 0.5) + rng.normal(0, 0.25, n), 0.01, 0.99)
    return np.stack([1 - p, p], 1), labels


@pytest.fixture
def binary_sets(tmp_path):
    rng = np.random.default_rng(0)
    sets = []
    test_labels = rng.integers(0, 2, 80)
    oof_labels = rng.integers(0, 2, 120)
    for k, strength in enumerate((0.5, 0.3)):
        test = np.clip(0.5 + strength * (test_labels - 0.5) + rng.normal(0, 0.25, 80), 0.01, 0.99)
        oof = np.clip(0.5 + strength * (oof_labels - 0.5) + rng.normal(0, 0.25, 120), 0.01, 0.99)
        sets.append(prediction_set(tmp_path / f"set{k}", np.stack([1 - test, test], 1), test_labels,
                                   np.stack([1 - oof, oof], 1), oof_labels, ["neg", "pos"]))
    return sets, test_labels


def submit(stage, tmp_path, sets, sample_text=None, *extra):
    args = [f"ensemble.predictions=[{','.join(str(s) for s in sets)}]", f"ensemble.output_dir={tmp_path / 'subs'}",
            "ensemble.name=s", *extra]
    if sample_text is not None:
        args.append(f"ensemble.sample_submission={write(tmp_path / 'sample.csv', sample_text)}")
    result = stage("ensemble_and_submit", *args)
    assert result.code == 0, result
    written = Path(result.out.split("ensemble: wrote ")[1].split(" (")[0])  # s.csv, then s-v2.csv, ...
    return list(csv.reader(written.open())), json.loads(written.with_suffix(".json").read_text())


def test_a_probability_sample_gets_the_positive_class_probability_scored_by_roc_auc(stage, tmp_path, binary_sets):
    sets, labels = binary_sets
    sample = "id,target\n" + "".join(f"t{i},0.5\n" for i in reversed(range(80)))
    rows, summary = submit(stage, tmp_path, sets, sample)
    assert rows[0] == ["id", "target"] and [r[0] for r in rows[1:]] == [f"t{i}" for i in reversed(range(80))]
    written = {r[0]: float(r[1]) for r in rows[1:]}
    p = np.array([written[f"t{i}"] for i in range(80)])
    assert len(np.unique(p)) > 10  # probabilities, not 0/1 labels
    assert summary["output"] == "probability" and summary["metric"] == "roc_auc" and summary["thresholds"] is None
    assert roc_auc_score(labels, p) == pytest.approx(summary["test_score"], abs=1e-4)
    assert roc_auc_score(labels, p) > roc_auc_score(labels, (p >= 0.5).astype(int))


def test_a_probability_metric_never_gets_hard_labels_nor_a_threshold(stage, tmp_path, binary_sets):
    sets, labels = binary_sets
    sample = "id,target\n" + "".join(f"t{i},0\n" for i in range(80))  # placeholders that could be labels
    rows, summary = submit(stage, tmp_path, sets, sample, "ensemble.metric=roc_auc")
    p = np.array([float(r[1]) for r in rows[1:]])
    assert summary["output"] == "probability" and summary["thresholds"] is None and len(np.unique(p)) > 10
    assert roc_auc_score(labels, p) == pytest.approx(summary["test_score"], abs=1e-4)
    # a labels sample scored by accuracy keeps labels (and may tune its threshold)
    rows, summary = submit(stage, tmp_path, sets, "id,label\n" + "".join(f"t{i},neg\n" for i in range(80)))
    assert summary["output"] == "labels" and {r[1] for r in rows[1:]} <= {"neg", "pos"}
    predicted = np.array([r[1] == "pos" for r in rows[1:]]).astype(int)
    assert accuracy_score(labels, predicted) == pytest.approx(summary["test_score"], abs=1e-9)


def test_class_probability_columns_in_the_samples_order_clipped_for_log_loss(stage, tmp_path, binary_sets):
    sets, labels = binary_sets
    sample = "id,pos,neg\n" + "".join(f"t{i},0,0\n" for i in range(80))
    rows, summary = submit(stage, tmp_path, sets, sample)
    assert rows[0] == ["id", "pos", "neg"] and summary["output"] == "class_probabilities"
    assert summary["metric"] == "log_loss" and summary["thresholds"] is None
    written = np.array([[float(r[2]), float(r[1])] for r in rows[1:]])  # back to label order neg, pos
    assert written.min() >= 1e-6 and written.max() <= 1 - 1e-6
    assert log_loss(labels, written, labels=[0, 1]) == pytest.approx(summary["test_score"], abs=1e-4)
    blended = np.mean([np.load(s / "test" / "probs.npy") for s in sets], axis=0)
    assert np.abs(written - blended).max() < 0.5  # the blend's probabilities, in the sample's columns


def test_without_a_sample_the_metric_decides_and_says_so(stage, tmp_path, binary_sets):
    sets, labels = binary_sets
    rows, summary = submit(stage, tmp_path, sets, None, "ensemble.metric=log_loss")
    assert rows[0] == ["id", "pos"] and summary["output"] == "probability"
    p = np.array([float(r[1]) for r in rows[1:]])
    assert log_loss(labels, np.stack([1 - p, p], 1)) == pytest.approx(summary["test_score"], abs=1e-4)
    rows, summary = submit(stage, tmp_path, sets, None, "ensemble.output=class_probabilities")
    assert rows[0] == ["id", "neg", "pos"] and summary["metric"] == "log_loss"


def test_multi_label_labels_use_the_datas_delimiter_and_class_columns_get_probabilities(stage, tmp_path):
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, (60, 3))
    oof_truth = rng.integers(0, 2, (90, 3))
    probs = np.clip(0.5 + 0.4 * (truth - 0.5) + rng.normal(0, 0.2, truth.shape), 0.01, 0.99)
    oof = np.clip(0.5 + 0.4 * (oof_truth - 0.5) + rng.normal(0, 0.2, oof_truth.shape), 0.01, 0.99)
    names = ["a", "b", "c"]
    sets = [prediction_set(tmp_path / "m", probs, truth.astype(np.uint8), oof, oof_truth.astype(np.uint8), names,
                           "multi_label", data={"label_delimiter": "|"})]
    rows, summary = submit(stage, tmp_path, sets, "id,tags\n" + "".join(f"t{i},\n" for i in range(60)))
    assert summary["output"] == "labels" and summary["metric"] == "f1_micro" and any("|" in r[1] for r in rows[1:])
    decided = np.array([[name in r[1].split("|") for name in names] for r in rows[1:]]).astype(int)
    assert f1_score(truth, decided, average="micro") == pytest.approx(summary["test_score"], abs=1e-9)
    rows, summary = submit(stage, tmp_path, sets, "id,c,a,b\n" + "".join(f"t{i},0,0,0\n" for i in range(60)))
    assert summary["output"] == "class_probabilities" and summary["metric"] == "roc_auc"
    written = np.array([[float(r[2]), float(r[3]), float(r[1])] for r in rows[1:]])
    assert roc_auc_score(truth, written, average="macro") == pytest.approx(summary["test_score"], abs=1e-4)
    rows, summary = submit(stage, tmp_path, sets, "id,c,a,b\n" + "".join(f"t{i},0,0,0\n" for i in range(60)),
                           "ensemble.output=labels", "ensemble.metric=f1_micro")
    zero_one = np.array([[int(r[2]), int(r[3]), int(r[1])] for r in rows[1:]])
    assert f1_score(truth, zero_one, average="micro") == pytest.approx(summary["test_score"], abs=1e-9)


def test_layouts_that_cannot_hold_the_answer_are_refused(stage, tmp_path, binary_sets):
    sets, _ = binary_sets
    three = Sample(tmp_path / "s.csv", ["id", "x"], [["t0", "0.5"]])
    with pytest.raises(UserError, match="for two classes"):
        plan(three, ["a", "b", "c"], problem_type("single_label"), output="probability")
    with pytest.raises(UserError, match="scores probabilities"):
        plan(None, ["neg", "pos"], problem_type("single_label"), metric="roc_auc", output="labels")
    with pytest.raises(UserError, match="one column per label"):
        plan(Sample(tmp_path / "s.csv", ["id", "x", "y"], [["t0", "0", "0"]]), ["neg", "pos"],
             problem_type("single_label"), output="class_probabilities")
    result = stage("ensemble_and_submit", f"ensemble.predictions=[{sets[0]}]", f"ensemble.output_dir={tmp_path / 'o'}",
                   "ensemble.output=probability", "ensemble.metric=rmse")
    assert result.code == 2 and "regression" in result.err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("examples, expected", [(["0.5", "0.5"], True), (["0", "1"], False), (["0.0", "1.0"], False),
                                                (["neg"], False), (["0.25", "1.5"], False), ([], False)])
def test_placeholders_read_as_probabilities_only_when_they_are(examples, expected):
    assert placeholders_are_probabilities(examples, ["neg", "pos"]) is expected
