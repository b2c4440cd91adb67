"""Pictures (training curves, confusion matrices, ROC / PR) and train.report_to's checks."""

import importlib.util

import numpy as np
import pytest

from textclf import figures, trackers
from textclf.errors import UserError


def png_shape(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path).shape


def test_series_keeps_the_last_value_of_a_repeated_step_and_skips_non_finite():
    records = [{"type": "train", "fold": 0, "step": 1, "loss": 0.9}, {"type": "train", "fold": 0, "step": 2, "loss": 0.8},
               {"type": "train", "fold": 0, "step": 2, "loss": 0.7},  # a resumed run logs step 2 again
               {"type": "train", "fold": 0, "step": 3, "loss": float("nan")},
               {"type": "train", "fold": 1, "step": 1, "loss": 1.1}, {"type": "eval", "fold": 0, "step": 2, "loss": 5.0}]
    assert figures.series(records, "train", "loss") == {0: ([1, 2], [0.9, 0.7]), 1: ([1], [1.1])}
    assert figures.series(records, "eval", "accuracy") == {}


def test_training_curves_png(tmp_path):
    records = [{"type": "train", "fold": f, "step": s, "loss": 1 / s, "lr": 1e-4 * (10 - s)} for f in (0, 1)
               for s in range(1, 10)] + [{"type": "eval", "fold": 0, "step": 9, "accuracy": 0.8}]
    path = figures.training_curves(records, tmp_path / "curves.png", "accuracy")
    height, width, _ = png_shape(path)
    assert width > 2 * height  # three panels side by side
    assert not list(tmp_path.glob(".*tmp*"))  # written under a temporary name, then renamed
    figures.training_curves([], tmp_path / "empty.png", "accuracy")  # nothing logged yet: still a picture
    assert png_shape(tmp_path / "empty.png")


def test_confusion_matrix_counts_and_png(tmp_path):
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    counts = figures.confusion_matrix(labels, preds, ["cardiology", "oncology", "neurology"], tmp_path / "c.png")
    np.testing.assert_array_equal(counts, confusion_matrix(labels, preds))
    assert png_shape(tmp_path / "c.png")
    many = figures.confusion_matrix(rng.integers(0, 40, 500), rng.integers(0, 40, 500), [f"c{i}" for i in range(40)],
                                    tmp_path / "many.png")  # no per-cell text above 30 classes
    assert many.shape == (40, 40) and many.sum() == 500


def test_roc_pr_needs_both_classes(tmp_path):
    assert figures.roc_pr_curves(np.ones(10, int), np.linspace(0, 1, 10), "pos", tmp_path / "r.png") is None
    assert not (tmp_path / "r.png").exists()
    path = figures.roc_pr_curves(np.arange(10) % 2, np.linspace(0, 1, 10), "pos", tmp_path / "r.png")
    assert png_shape(path)


def test_report_to_is_checked_before_anything_runs(monkeypatch):
    assert trackers.check("tensorboard") == ["tensorboard"]
    assert trackers.check(None) == [] and trackers.check("none") == [] and trackers.check([]) == []
    with pytest.raises(UserError, match="unknown tracker 'tensorbord'"):
        trackers.check("tensorbord")
    with pytest.raises(UserError, match="none cannot be combined"):
        trackers.check(["none", "tensorboard"])
    with pytest.raises(UserError, match="twice"):
        trackers.check(["tensorboard", "tensorboard"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match="pip install wandb"):
        trackers.check(["tensorboard", "wandb"])


def test_train_refuses_a_missing_tracker_before_writing(stage, premodels, tmp_path, monkeypatch):
    from test_train import make_data

    base = make_data(stage, premodels, tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    result = stage("train", *base, f"train.output_dir={tmp_path / 'ck'}", "train.report_to=mlflow")
    assert result.code == 2 and "pip install mlflow" in result.err and result.err.count("\n") == 1
    assert not (tmp_path / "ck").exists()


def test_flat_config_for_trackers():
    assert trackers.flat({"train": {"lr": 1e-4, "folds": [0, 1], "head_lr": None}, "seed": 3}) == {
        "train.lr": 1e-4, "train.folds": "[0, 1]", "train.head_lr": "None", "seed": 3}
