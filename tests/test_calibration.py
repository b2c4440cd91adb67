"""Calibration, abstention and distillation: temperature scaling recovers a known temperature, the
distillation loss is the one written down, a teacher that saw a row is refused, and a student
trains from a teacher's out-of-fold probabilities (also cut smaller by premodels shrink)."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import run_stage, write
from test_train import toy_rows
from textclf import calibration, distillation
from textclf.config import TrainConfig
from textclf.problem import PROBLEMS


def _overconfident(rng, rows, classes, true_t):
    """Labels drawn from softmax(z); the model reports softmax(z * true_t): true_t times too sure."""
    z = rng.normal(0, 2.0, size=(rows, classes))
    p_true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(classes, p=p) for p in p_true])
    reported = np.exp(z * true_t) / np.exp(z * true_t).sum(1, keepdims=True)
    return reported, labels


@pytest.mark.parametrize("true_t", [2.5, 0.6])
def test_temperature_fitted_on_an_overconfident_model_recovers_the_known_temperature(true_t):
    reported, labels = _overconfident(np.random.default_rng(0), 20000, 4, true_t)
    problem = PROBLEMS["single_label"]
    fitted = calibration.fit_temperature(reported, labels, problem)
    assert abs(fitted - true_t) / true_t < 0.05, fitted
    after = calibration.apply(reported, fitted, problem)
    assert (after.argmax(1) == reported.argmax(1)).all()  # the decisions never change
    before_ece = calibration.expected_calibration_error(reported, labels, problem)
    after_ece = calibration.expected_calibration_error(after, labels, problem)
    assert after_ece < before_ece / 2 and after_ece < 0.02


def test_multi_label_temperature_is_recovered_per_class_sigmoid():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2.0, size=(20000, 3))
    labels = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.int64)
    reported = 1 / (1 + np.exp(-3.0 * z))
    fitted = calibration.fit_temperature(reported, labels, PROBLEMS["multi_label"])
    assert abs(fitted - 3.0) < 0.15


def test_a_calibrated_model_keeps_its_temperature_near_one():
    rng = np.random.default_rng(2)
    reported, labels = _overconfident(rng, 20000, 3, 1.0)
    assert abs(calibration.fit_temperature(reported, labels, PROBLEMS["single_label"]) - 1.0) < 0.05


def test_abstain_marks_rows_below_the_threshold_and_refuses_multi_label():
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.3, 0.7]])
    answers, unsure = calibration.abstain(["a", "a", "b"], probs, 0.6, "none")
    assert answers == ["a", "none", "b"] and unsure.tolist() == [False, True, False]
    with pytest.raises(Exception, match="multi_label"):
        calibration.check_abstain(0.5, PROBLEMS["multi_label"])


# ---------------------------------------------------------------------------- distillation


def test_distillation_loss_equals_a_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, -0.3]])
    teacher = np.array([[0.7, 0.1, 0.2], [0.2, 0.5, 0.3]], dtype=np.float32)
    labels = torch.tensor([0, 2])
    t, alpha = 2.0, 0.3

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    q_t = softmax(np.log(teacher.astype(np.float64)) / t)
    p_t = softmax(logits.numpy().astype(np.float64) / t)
    kl = (q_t * (np.log(q_t) - np.log(p_t))).sum(1).mean()
    hard = -np.log(softmax(logits.numpy().astype(np.float64))[[0, 1], [0, 2]]).mean()
    want = (1 - alpha) * hard + alpha * t * t * kl
    cfg = TrainConfig(distill_alpha=alpha, distill_temperature=t)
    problem = PROBLEMS["single_label"]
    loss_fn = problem.loss(None, 0.0, None, "auto", 1.0)
    loss = distillation.batch_loss(torch.from_numpy(teacher), loss_fn, cfg, problem)
    got = loss(logits, {"labels": labels, "index": torch.tensor([0, 1])})
    assert math.isclose(float(got), want, rel_tol=1e-5)
    # the batch's rows pick their own teacher rows, by the dataset position in "index"
    swapped = loss(logits[[1, 0]], {"labels": labels[[1, 0]], "index": torch.tensor([1, 0])})
    assert math.isclose(float(swapped), want, rel_tol=1e-5)
    # the soft loss is zero where the student already gives the teacher's distribution
    assert float(distillation.soft_loss(torch.log(torch.from_numpy(teacher)), torch.from_numpy(teacher), t,
                                        problem)) < 1e-6


def test_the_soft_loss_gradient_through_a_tiny_model_is_the_textbook_one():
    """d/dz T^2 KL(q_T || softmax(z / T)) = T (softmax(z / T) - q_T), per row, over the batch."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x = torch.randn(4, 5)
    teacher = torch.softmax(torch.randn(4, 3), -1)
    t = 3.0
    logits = model(x)
    logits.retain_grad()
    distillation.soft_loss(logits, teacher, t, PROBLEMS["single_label"]).backward()
    q_t = torch.softmax(teacher.log() / t, -1)
    want = t * (torch.softmax(logits.detach() / t, -1) - q_t) / len(x)
    torch.testing.assert_close(logits.grad, want, atol=1e-6, rtol=1e-5)
    assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all()


def test_multi_label_distillation_is_each_class_binary_kl():
    logits = torch.tensor([[1.0, -2.0]])
    teacher = torch.tensor([[0.8, 0.3]])
    t = 1.0
    p = torch.sigmoid(logits).numpy()[0].astype(np.float64)
    q = teacher.numpy()[0].astype(np.float64)
    want = np.mean(q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p)))
    got = distillation.soft_loss(logits, teacher, t, PROBLEMS["multi_label"])
    assert math.isclose(float(got), want, rel_tol=1e-5)


@pytest.fixture(scope="module")
def teacher_sets(tmp_path_factory, premodels):
    """A 2-fold data set, a teacher run evaluated (its out-of-fold rows cover every training row),
    a holdout data set whose teacher covers only its validation rows, and another data set."""
    tmp = tmp_path_factory.mktemp("distil")
    rows = toy_rows(48, seed=3)
    write(tmp / "train.csv", "id,text,label\n" + "".join(f"r{i},{t},{y}\n" for i, (t, y) in enumerate(rows)))
    write(tmp / "valid.csv", "id,text,label\n" + "".join(f"v{i},{t},{y}\n" for i, (t, y) in enumerate(toy_rows(16, 4))))
    common = [f"model.name={premodels('bert')}", f"data.output_dir={tmp / 'data'}", f"train.output_dir={tmp / 'ck'}",
              f"eval.output_dir={tmp / 'mp'}", "train.precision=no", "eval.precision=no", "data.id_column=id",
              "data.max_len=24", "train.batch_size=8"]
    assert run_stage("data_process", *common, "data.name=kf", f"data.train_file={tmp / 'train.csv'}",
                     "data.n_folds=2").code == 0
    assert run_stage("data_process", *common, "data.name=ho", f"data.train_file={tmp / 'train.csv'}",
                     f"data.valid_file={tmp / 'valid.csv'}").code == 0
    for data in ("kf", "ho"):
        result = run_stage("train", *common, f"data.name={data}", f"train.run=teach-{data}", "train.epochs=2",
                           "train.lr=2e-3")
        assert result.code == 0, result
        assert run_stage("evaluate", *common, f"data.name={data}", f"eval.run={tmp / 'ck' / f'teach-{data}'}",
                         "eval.splits=[train]").code == 0
    return dict(tmp=tmp, common=common)


def test_a_student_learns_from_out_of_fold_teacher_probabilities(teacher_sets):
    tmp, common = teacher_sets["tmp"], teacher_sets["common"]
    result = run_stage("train", *common, "data.name=kf", "train.run=student", "train.epochs=1",
                       f"train.teacher=[{tmp / 'mp' / 'teach-kf'}]", "train.distill_alpha=0.7")
    assert result.code == 0, result
    assert "distilled from" in result.out
    assert (tmp / "ck" / "student" / "summary.json").is_file()


def test_a_teacher_that_trained_on_the_rows_is_refused_before_anything_is_written(teacher_sets):
    tmp, common = teacher_sets["tmp"], teacher_sets["common"]
    # the holdout teacher's out-of-fold rows are its validation rows; its 'train' predictions are in-fold
    result = run_stage("train", *common, "data.name=ho", "train.run=bad-student", "train.epochs=1",
                       f"train.teacher=[{tmp / 'mp' / 'teach-ho'}]")
    assert result.code == 2
    assert "no out-of-fold probability for 48 of 48 training rows" in result.err
    assert "predicted by models that trained on them" in result.err
    assert not (tmp / "ck" / "bad-student").exists()


def test_a_teacher_of_other_rows_is_refused_by_id(teacher_sets, tmp_path):
    tmp, common = teacher_sets["tmp"], teacher_sets["common"]
    rows = toy_rows(24, seed=9)
    write(tmp_path / "other.csv", "id,text,label\n" + "".join(f"x{i},{t},{y}\n" for i, (t, y) in enumerate(rows)))
    assert run_stage("data_process", *common, "data.name=other", f"data.train_file={tmp_path / 'other.csv'}",
                     "data.n_folds=2").code == 0
    result = run_stage("train", *common, "data.name=other", "train.run=s2",
                       f"train.teacher=[{tmp / 'mp' / 'teach-kf'}]")
    assert result.code == 2 and "first id: 'x0'" in result.err
    assert not (tmp / "ck" / "s2").exists()


def test_a_student_cut_from_the_model_trains_on_the_teachers_data(teacher_sets, premodels, tmp_path):
    from textclf.premodels import shrink

    tmp, common = teacher_sets["tmp"], teacher_sets["common"]
    small = shrink(str(premodels("bert")), 1, dest=str(tmp_path))
    config = json.loads((small / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    result = run_stage("train", *common, "data.name=kf", f"model.name={small}", "train.run=small-student",
                       "train.epochs=1", f"train.teacher=[{tmp / 'mp' / 'teach-kf'}]")
    assert result.code == 0, result
    result = run_stage("evaluate", *common, "data.name=kf", f"eval.run={tmp / 'ck' / 'small-student'}")
    assert result.code == 0, result
    with pytest.raises(Exception, match="keep from 1 to 0"):
        shrink(str(small), 1, dest=str(tmp_path))


def test_run_calibration_is_stored_and_evaluate_applies_it_to_the_out_of_fold_rows(teacher_sets):
    tmp = teacher_sets["tmp"]
    run = tmp / "ck" / "teach-kf"
    record = json.loads((run / "calibration.json").read_text())
    assert record["ece_after"] <= record["ece_before"] + 1e-9 and (run / "reliability.png").is_file()
    heads = [json.loads((run / f"fold{k}" / "best" / "head.json").read_text())["head"]["temperature"] for k in (0, 1)]
    assert heads == pytest.approx([record["temperature"]] * 2, rel=1e-5)
    manifest = json.loads((tmp / "mp" / "teach-kf" / "manifest.json").read_text())
    assert manifest["temperature"] == heads[0]
    raw = np.load(run / "oof" / "probs.npy")
    got = np.load(tmp / "mp" / "teach-kf" / "oof" / "probs.npy")
    want = calibration.apply(raw, heads[0], PROBLEMS["single_label"])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_too_few_out_of_fold_rows_keep_the_temperature_at_one():
    reported, labels = _overconfident(np.random.default_rng(3), calibration.MIN_ROWS - 1, 3, 3.0)
    temperature, record, probs = calibration.calibrate(reported, labels, PROBLEMS["single_label"])
    assert temperature == 1.0 and "not_fitted" in record
    np.testing.assert_array_equal(probs, reported.astype(np.float32))


def test_evaluate_reports_coverage_and_accuracy_of_the_rows_it_answers(teacher_sets):
    tmp, common = teacher_sets["tmp"], teacher_sets["common"]
    run = tmp / "ck" / "teach-kf"
    result = run_stage("evaluate", *common, "data.name=kf", f"eval.run={run}", "eval.abstain_below=0.55",
                       f"eval.output_dir={tmp / 'mp-abstain'}")
    assert result.code == 0, result
    entry = json.loads((tmp / "mp-abstain" / "teach-kf" / "manifest.json").read_text())["splits"]["oof"]["abstain"]
    probs = np.load(tmp / "mp-abstain" / "teach-kf" / "oof" / "probs.npy")
    labels = np.load(tmp / "mp-abstain" / "teach-kf" / "oof" / "labels.npy")
    answered = probs.max(1) >= 0.55
    assert entry["coverage"] == pytest.approx(answered.mean(), abs=1e-6)
    if answered.any():
        assert entry["accuracy_answered"] == pytest.approx((probs.argmax(1) == labels)[answered].mean(), abs=1e-6)


def test_folds_calibrated_apart_are_refused_until_the_run_is_calibrated_again(teacher_sets, tmp_path):
    import shutil

    from textclf.errors import UserError
    from textclf.predict import Predictor

    run = tmp_path / "mixed"
    shutil.copytree(teacher_sets["tmp"] / "ck" / "teach-kf", run)
    head = run / "fold1" / "best" / "head.json"
    doc = json.loads(head.read_text())
    doc["head"]["temperature"] = 1.0  # as a fold trained again after calibration would be
    head.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="calibrated with temperature"):
        Predictor.from_run(run, device="cpu", precision="no")
    assert Predictor.from_run(run, device="cpu", precision="no", calibrated=False).temperature == 1.0


def test_a_run_started_uncalibrated_stays_so_when_resumed(teacher_sets):
    tmp, common = teacher_sets["tmp"], teacher_sets["common"]
    first = run_stage("train", *common, "data.name=kf", "train.run=nocal", "train.calibrate=false",
                      "train.max_time=0.01", "train.epochs=1")
    assert first.code == 0 and "stopped by train.max_time" in first.out
    resumed = run_stage("train", *common, "data.name=kf", f"train.resume={tmp / 'ck' / 'nocal'}")
    assert resumed.code == 0, resumed
    assert "calibrated on the out-of-fold rows" not in resumed.out
    assert not (tmp / "ck" / "nocal" / "calibration.json").exists()
    heads = [json.loads((tmp / "ck" / "nocal" / f"fold{k}" / "best" / "head.json").read_text()) for k in (0, 1)]
    assert all(h["head"].get("temperature", 1.0) == 1.0 for h in heads)
