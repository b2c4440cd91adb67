"""Pseudo-labelling (textclf/pseudo.py): confident test predictions become train rows, with leak
guards: pseudo rows are never a fold's validation rows, OOF covers original rows only, ids stay
apart, labels come from the predictions alone, and a new round replaces the last one."""

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from conftest import Result, run_stage, write
from test_train import toy_rows
from textclf.errors import run_cli
from textclf.problem import problem_type
from textclf.pseudo import main as pseudo_main


@pytest.fixture(scope="module")
def sets(tmp_path_factory, premodels):
    """toy data (2 folds, a labelled test split), two runs evaluated, and their weighted blend."""
    tmp = tmp_path_factory.mktemp("pseudo")
    train_rows, test_rows = toy_rows(48, seed=1), toy_rows(40, seed=2)
    write(tmp / "train.csv", "id,text,label\n" + "".join(f"r{i},{t},{y}\n" for i, (t, y) in enumerate(train_rows)))
    # the test labels are all wrong on purpose: pseudo labels must come from the predictions only
    write(tmp / "test.csv", "id,text,label\n" + "".join(f"r{i},{t},{1 - y}\n" for i, (t, y) in enumerate(test_rows)))
    common = [f"model.name={premodels('bert')}", f"data.output_dir={tmp / 'data'}", "data.name=toy",
              f"train.output_dir={tmp / 'ck'}", f"eval.output_dir={tmp / 'mp'}", "train.precision=no",
              "eval.precision=no"]
    result = run_stage("data_process", *common, f"data.train_file={tmp / 'train.csv'}",
                       f"data.test_file={tmp / 'test.csv'}", "data.id_column=id", "data.max_len=32", "data.n_folds=2")
    assert result.code == 0, result
    for run, seed in (("a", 1), ("b", 2)):
        result = run_stage("train", *common, f"train.run={run}", f"train.seed={seed}", "train.epochs=3",
                           "train.batch_size=8", "train.lr=1e-3")
        assert result.code == 0, result
        result = run_stage("evaluate", *common, f"eval.run={tmp / 'ck' / run}")
        assert result.code == 0, result
    result = run_stage("ensemble_and_submit", *common, f"ensemble.predictions=[{tmp / 'mp' / 'a'},{tmp / 'mp' / 'b'}]",
                       f"ensemble.output_dir={tmp / 'subs'}", "ensemble.name=blend")
    assert result.code == 0, result
    probs = [np.load(tmp / "mp" / run / "test" / "probs.npy").astype(np.float64) for run in ("a", "b")]
    return dict(tmp=tmp, common=common, probs=probs, train_rows=train_rows, test_rows=test_rows)


def _pseudo(sets, *args):
    """python -m textclf.pseudo <common> args..., in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(pseudo_main, [str(a) for a in (*sets["common"], *args)])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def test_threshold_keeps_confident_rows_as_fold_minus_one_with_prefixed_ids(sets):
    tmp = sets["tmp"]
    mean = (sets["probs"][0] + sets["probs"][1]) / 2
    threshold = float(np.quantile(mean.max(1), 0.5))  # about half the rows
    result = _pseudo(sets, "pseudo.name=p1", f"pseudo.predictions=[{tmp / 'mp' / 'a'},{tmp / 'mp' / 'b'}]",
                     f"pseudo.threshold={threshold}")
    assert result.code == 0, result
    src, out = tmp / "data" / "toy", tmp / "data" / "p1"
    kept = np.flatnonzero(mean.max(1) >= threshold)
    assert 0 < len(kept) < 40
    n = 48 + len(kept)
    origin = np.load(out / "train" / "origin.npy")
    assert origin.tolist() == [0] * 48 + [1] * len(kept)
    assert np.load(out / "train" / "source_row.npy").tolist() == list(range(48)) + kept.tolist()
    folds = np.load(out / "train" / "folds.npy")
    assert np.array_equal(folds[:48], np.load(src / "train" / "folds.npy")) and (folds[48:] == -1).all()
    ids = np.load(out / "train" / "ids.npy").tolist()
    test_ids = np.load(src / "test" / "ids.npy").tolist()
    assert ids[:48] == np.load(src / "train" / "ids.npy").tolist()
    assert ids[48:] == ["pseudo:" + test_ids[i] for i in kept]
    labels = np.load(out / "train" / "labels.npy")
    assert labels[48:].tolist() == mean.argmax(1)[kept].tolist()  # the blend's labels, not the (wrong) test labels
    pad = {"input_ids": json.loads((src / "meta.json").read_text())["tokenizer"]["pad_token_id"]}
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        array, source = np.load(out / "train" / f"{name}.npy"), np.load(src / "test" / f"{name}.npy")
        width = source.shape[1]
        assert array.shape[0] == n and array.shape[1] >= width
        assert np.array_equal(array[48:, :width], source[kept])  # the test rows' tokens, padded to a common width
        assert (array[48:, width:] == pad.get(name, 0)).all()
    for split in ("test",):  # copied as they were
        for f in (src / split).iterdir():
            assert (out / split / f.name).read_bytes() == f.read_bytes()
    meta = json.loads((out / "meta.json").read_text())
    manifest = json.loads((out / "pseudo.json").read_text())
    assert meta["pseudo"] == manifest and meta["splits"]["train"]["rows"] == n
    assert manifest["rows"] == len(kept) and manifest["blend"]["method"] == "mean"
    assert manifest["label_accuracy_on_labelled_test"] == pytest.approx(
        float((mean.argmax(1)[kept] == 1 - np.array([y for _, y in sets["test_rows"]])[kept]).mean()))
    assert sum(meta["splits"]["train"]["label_counts"].values()) == n

    # training on it: pseudo rows train every fold and are no fold's validation rows, so OOF = original rows
    result = run_stage("train", *sets["common"], "data.name=p1", "train.run=onp", "train.epochs=1",
                       "train.batch_size=8")
    assert result.code == 0, result
    run = tmp / "ck" / "onp"
    assert sorted(np.load(run / "oof" / "ids.npy").tolist()) == sorted(ids[:48])
    for k in range(2):
        held = np.load(run / f"fold{k}" / "oof" / "ids.npy").tolist()
        assert held and not any(i.startswith("pseudo:") for i in held)
    # its predictions blend with a run on the original data (same OOF and test rows)
    assert run_stage("evaluate", *sets["common"], f"eval.run={run}").code == 0
    result = run_stage("ensemble_and_submit", *sets["common"], f"ensemble.predictions=[{tmp / 'mp' / 'a'},{tmp / 'mp' / 'onp'}]",
                       f"ensemble.output_dir={tmp / 'subs'}", "ensemble.name=mixed")
    assert result.code == 0, result

    # a second round on the pseudo folder replaces the first round's rows instead of stacking them
    result = _pseudo(sets, "data.name=p1", "pseudo.name=p2", f"pseudo.predictions=[{tmp / 'mp' / 'onp'}]",
                     "pseudo.top_k=3")
    assert result.code == 0, result
    origin = np.load(tmp / "data" / "p2" / "train" / "origin.npy")
    assert (origin == 0).sum() == 48 and 1 <= (origin == 1).sum() <= 6
    assert json.loads((tmp / "data" / "p2" / "pseudo.json").read_text())["replaced_previous_round"] == len(kept)


def test_top_k_and_the_ensemble_summary_blend(sets):
    tmp = sets["tmp"]
    summary = json.loads((tmp / "subs" / "blend.json").read_text())
    w = np.array(summary["weights"]) / sum(summary["weights"])
    blended = w[0] * sets["probs"][0] + w[1] * sets["probs"][1]
    blended = blended / blended.sum(1, keepdims=True)
    result = _pseudo(sets, "pseudo.name=k", f"pseudo.predictions=[{tmp / 'subs' / 'blend.json'}]", "pseudo.top_k=4")
    assert result.code == 0, result
    out = tmp / "data" / "k"
    rows = np.load(out / "train" / "source_row.npy")[48:]
    labels = np.load(out / "train" / "labels.npy")[48:]
    pred, conf = blended.argmax(1), blended.max(1)
    want = sorted(r for c in (0, 1) for r in sorted(np.flatnonzero(pred == c), key=lambda r: -conf[r])[:4])
    assert rows.tolist() == want and labels.tolist() == pred[want].tolist()
    manifest = json.loads((out / "pseudo.json").read_text())
    assert manifest["blend"]["weights"] == pytest.approx(w.tolist()) and manifest["blend"]["summary"].endswith(
        "blend.json")


@pytest.mark.parametrize("args, expected", [
    (["pseudo.name=x", "pseudo.predictions=[MP/a]"], "pseudo.threshold and pseudo.top_k are both unset"),
    (["pseudo.name=x", "pseudo.predictions=[MP/a]", "pseudo.threshold=1.0"], "no test row reaches"),
    (["pseudo.name=toy", "pseudo.predictions=[MP/a]", "pseudo.threshold=0.5"], "is data.name"),
    (["pseudo.name=x", "pseudo.predictions=[MP/nope]", "pseudo.threshold=0.5"], "is not a prediction set"),
    (["pseudo.name=x", "pseudo.predictions=[MP/a]", "pseudo.threshold=0.5", "data.name=other"], "has no meta.json"),
    (["pseudo.name=../x", "pseudo.predictions=[MP/a]", "pseudo.threshold=0.5"], "is not a plain name"),
    (["pseudo.name=x", "pseudo.predictions=[MP/a]", "pseudo.threshold=1.5"], "between 0 and 1"),
])
def test_refusals_write_nothing(sets, args, expected):
    tmp = sets["tmp"]
    before = sorted(p.name for p in (tmp / "data").iterdir())
    result = _pseudo(sets, *[a.replace("MP", str(tmp / "mp")) for a in args])
    assert result.code == 2 and expected in result.err, result
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert sorted(p.name for p in (tmp / "data").iterdir()) == before


@pytest.mark.parametrize("change, expected", [
    (dict(weights=[0, 0]), "must be numbers of 0 or more, not all 0"),
    (dict(weights=[float("nan"), 1]), "must be numbers of 0 or more"),
    (dict(weights=[-1, 2]), "must be numbers of 0 or more"),
    (dict(weights=["a", 1]), "must be numbers of 0 or more"),
    (dict(weights=[1]), "weights [1] for 2 prediction sets"),
    (dict(weights=0), "weights 0 for 2 prediction sets"),
    (dict(weights=[]), "weights [] for 2 prediction sets"),
    (dict(weights=[1e308, 1e308]), "must be numbers of 0 or more"),
    (dict(weights=[10 ** 400, 1]), "must be numbers of 0 or more"),
    (dict(predictions=[5, 6]), "must list prediction-set folders"),
    (dict(method="median"), "blend method 'median' is not one of"),
    (dict(thresholds=2.0), "must be numbers from 0 to 1"),
    (dict(thresholds=[0.5, 0.5, 0.2]), "3 threshold(s) for a single_label blend, which takes 1"),
])
def test_an_edited_blend_summary_is_refused(sets, tmp_path, change, expected):
    """Blend weights of 0, NaN or below 0, unknown methods and thresholds that are not
    probabilities would pseudo-label from nonsense: one line, nothing written."""
    tmp = sets["tmp"]
    summary = json.loads((tmp / "subs" / "blend.json").read_text())
    write(tmp_path / "edited.json", json.dumps({**summary, **change}))
    before = sorted(p.name for p in (tmp / "data").iterdir())
    result = _pseudo(sets, "pseudo.name=x", f"pseudo.predictions=[{tmp_path / 'edited.json'}]", "pseudo.threshold=0.5")
    assert result.code == 2 and expected in result.err, result
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert sorted(p.name for p in (tmp / "data").iterdir()) == before


def test_predictions_of_other_rows_are_refused(sets, tmp_path, premodels):
    """A prediction set made on another test file (other rows) cannot label this folder's test rows."""
    tmp = sets["tmp"]
    rows = toy_rows(20, seed=9)
    write(tmp_path / "train.csv", "id,text,label\n" + "".join(f"q{i},{t},{y}\n" for i, (t, y) in enumerate(rows)))
    base = [f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}", "data.name=other"]
    write(tmp_path / "test.csv", "id,text\n" + "".join(f"q{i},{t} too\n" for i, (t, _) in enumerate(rows)))
    assert run_stage("data_process", *base, f"data.train_file={tmp_path / 'train.csv'}", "data.id_column=id",
                     f"data.test_file={tmp_path / 'test.csv'}", "data.max_len=32").code == 0
    result = _pseudo(dict(sets, common=base), "pseudo.name=x", f"pseudo.predictions=[{tmp / 'mp' / 'a'}]",
                     "pseudo.threshold=0.5")
    assert result.code == 2 and "predicted other test rows" in result.err, result
    assert not (tmp_path / "data" / "x").exists()


def test_a_blends_tuned_thresholds_decide_the_pseudo_labels():
    """Labels follow the submission's decision (a tuned threshold), confidence is that label's probability."""
    from textclf.pseudo import select

    probs = np.array([[0.8, 0.2], [0.35, 0.65], [0.6, 0.4], [0.05, 0.95]])
    rows, labels, confidence = select(probs, problem_type("single_label"), 0.0, 0, thresholds=0.3)
    assert labels.tolist() == [0, 1, 1, 1] and confidence.tolist() == pytest.approx([0.8, 0.65, 0.4, 0.95])
    rows, labels, _ = select(probs, problem_type("single_label"), 0.6, 0, thresholds=0.3)
    assert rows.tolist() == [0, 1, 3]
    multi = np.array([[0.9, 0.1, 0.2], [0.5, 0.97, 0.02]])
    _, labels, confidence = select(multi, problem_type("multi_label"), 0.0, 0, thresholds=[0.05, 0.5, 0.5])
    assert labels.tolist() == [[1, 0, 0], [1, 1, 0]] and confidence.tolist() == pytest.approx([0.8, 0.5])


def test_per_fold_rows_are_labelled_by_that_folds_models_and_train_that_fold_only(sets):
    """pseudo.per_fold: fold k's pseudo rows are chosen and labelled by the sets' fold-k models
    alone and train fold k only, so no fold learns from labels its validation rows helped make."""
    from textclf.config import TrainConfig
    from textclf.preflight import fold_plans

    tmp = sets["tmp"]
    per = [np.mean([np.load(tmp / "mp" / run / "test" / f"fold{k}.npy").astype(np.float64) for run in ("a", "b")],
                   axis=0) for k in (0, 1)]
    threshold = float(np.quantile(np.concatenate([p.max(1) for p in per]), 0.5))
    result = _pseudo(sets, "pseudo.name=pf", f"pseudo.predictions=[{tmp / 'mp' / 'a'},{tmp / 'mp' / 'b'}]",
                     f"pseudo.threshold={threshold}", "pseudo.per_fold=true")
    assert result.code == 0, result
    out = tmp / "data" / "pf"
    kept = [np.flatnonzero(p.max(1) >= threshold) for p in per]
    assert all(len(k) for k in kept) and not np.array_equal(*kept)  # the folds' models disagree somewhere
    test_ids = np.load(tmp / "data" / "toy" / "test" / "ids.npy").tolist()
    n = 48 + len(kept[0]) + len(kept[1])
    assert np.load(out / "train" / "source_row.npy").tolist() == list(range(48)) + kept[0].tolist() + kept[1].tolist()
    assert np.load(out / "train" / "labels.npy")[48:].tolist() == per[0].argmax(1)[kept[0]].tolist() + \
        per[1].argmax(1)[kept[1]].tolist()
    only = np.load(out / "train" / "only_fold.npy")
    assert only.tolist() == [-1] * 48 + [0] * len(kept[0]) + [1] * len(kept[1])
    assert np.load(out / "train" / "ids.npy")[48:].tolist() == [f"pseudo:fold{k}:{test_ids[i]}" for k in (0, 1)
                                                                 for i in kept[k]]
    assert (np.load(out / "train" / "folds.npy")[48:] == -1).all()
    manifest = json.loads((out / "pseudo.json").read_text())
    assert manifest["rule"]["per_fold"] and [f["fold"] for f in manifest["folds"]] == [0, 1]
    assert [sum(f["label_counts"].values()) for f in manifest["folds"]] == [len(kept[0]), len(kept[1])]

    meta = json.loads((out / "meta.json").read_text())
    folds = np.load(out / "train" / "folds.npy")
    for plan in fold_plans(meta, TrainConfig(), out):
        fold, train_rows, eval_rows = plan.fold, plan.train_rows, plan.eval_rows
        pseudo_rows = train_rows[train_rows >= 48]
        assert (only[pseudo_rows] == fold).all() and len(pseudo_rows) == len(kept[fold])
        assert train_rows[train_rows < 48].tolist() == np.flatnonzero(folds[:48] != fold).tolist()
        assert (eval_rows < 48).all()
    result = run_stage("train", *sets["common"], "data.name=pf", "train.run=onpf", "train.epochs=1",
                       "train.batch_size=8")
    assert result.code == 0, result
    oof_ids = np.load(tmp / "ck" / "onpf" / "oof" / "ids.npy").tolist()
    assert sorted(oof_ids) == sorted(np.load(tmp / "data" / "toy" / "train" / "ids.npy").tolist())
    assert len(np.load(out / "train" / "lengths.npy")) == n


def test_per_fold_refuses_sets_of_other_folds(sets, tmp_path):
    """A set whose fold k may have seen this data's fold-k rows cannot label fold k: one trained on
    other folds (another data.seed), on some folds only, or on pseudo rows that every fold's
    models labelled together."""
    tmp = sets["tmp"]
    common = [a.replace(str(tmp / "ck"), str(tmp_path / "ck")).replace(str(tmp / "mp"), str(tmp_path / "mp"))
              for a in sets["common"]]
    assert run_stage("data_process", *common, "data.name=reseeded", "data.seed=7", "data.n_folds=2",
                     f"data.train_file={tmp / 'train.csv'}", f"data.test_file={tmp / 'test.csv'}", "data.id_column=id",
                     "data.max_len=32").code == 0
    # a pseudo folder made without per_fold: its rows were labelled by both folds' models together
    shutil.copytree(tmp / "data" / "toy", tmp_path / "data" / "toy")
    assert _pseudo(dict(sets, common=common), f"data.output_dir={tmp_path / 'data'}", "pseudo.name=blended",
                   f"pseudo.predictions=[{tmp / 'mp' / 'a'}]", "pseudo.top_k=2").code == 0
    runs = (("reseeded", ["data.name=reseeded"]), ("half", ["train.folds=[0]"]),
            ("blended", ["data.name=blended", f"data.output_dir={tmp_path / 'data'}"]))
    for name, extra in runs:
        assert run_stage("train", *common, *extra, f"train.run={name}", "train.epochs=1").code == 0
        assert run_stage("evaluate", *common, *extra, f"eval.run={tmp_path / 'ck' / name}").code == 0
    before = sorted(p.name for p in (tmp / "data").iterdir())
    for name, expected in (("reseeded", "model trained on"), ("half", "predicted the test rows with fold(s) [0]"),
                           ("blended", "labelled by every fold's models together")):
        result = _pseudo(sets, "pseudo.name=x", f"pseudo.predictions=[{tmp_path / 'mp' / name}]", "pseudo.threshold=0.5",
                         "pseudo.per_fold=true")
        assert result.code == 2 and expected in result.err and "Traceback" not in result.err, result
        assert len(result.err.strip().splitlines()) == 1
    # without per_fold both are fine (the default blends whatever folds a set has)
    assert _pseudo(sets, "pseudo.name=x", f"pseudo.predictions=[{tmp_path / 'mp' / 'reseeded'}]",
                   "pseudo.threshold=0.5").code == 0
    assert sorted(p.name for p in (tmp / "data").iterdir()) == sorted(before + ["x"])


def test_a_blend_is_calibrated_and_abstains_only_where_the_sample_allows_it(sets, tmp_path):
    tmp, common = sets["tmp"], sets["common"]
    preds = f"ensemble.predictions=[{tmp / 'mp' / 'a'},{tmp / 'mp' / 'b'}]"
    summary = json.loads((tmp / "subs" / "blend.json").read_text())
    record = summary["calibration"]
    assert record["temperature"] > 0 and record["ece_after"] <= record["ece_before"] + 1e-9
    assert (tmp / "subs" / record["diagram"]).is_file() and record["diagram"] == "blend-reliability.png"
    result = run_stage("ensemble_and_submit", *common, preds, f"ensemble.output_dir={tmp_path}", "ensemble.name=x",
                       "ensemble.abstain_below=0.9", "ensemble.output=labels")
    assert result.code == 2 and "no sample submission was given" in result.err
    assert not list(tmp_path.iterdir())
    ids = [f"r{i}" for i in range(len(sets["test_rows"]))]
    write(tmp_path / "sample.csv", "id,label\n" + "".join(f"{i},{'abstain' if k == 0 else 0}\n"
                                                          for k, i in enumerate(ids)))
    no_abstain = tmp_path / "plain.csv"
    write(no_abstain, "id,label\n" + "".join(f"{i},0\n" for i in ids))
    result = run_stage("ensemble_and_submit", *common, preds, f"ensemble.output_dir={tmp_path}", "ensemble.name=x",
                       "ensemble.abstain_below=0.9", f"ensemble.sample_submission={no_abstain}")
    assert result.code == 2 and "never holds 'abstain'" in result.err
    result = run_stage("ensemble_and_submit", *common, preds, f"ensemble.output_dir={tmp_path}", "ensemble.name=x",
                       "ensemble.abstain_below=0.9", f"ensemble.sample_submission={tmp_path / 'sample.csv'}")
    assert result.code == 0, result
    written = (tmp_path / "x.csv").read_text().splitlines()[1:]
    abstained = [line for line in written if line.endswith(",abstain")]
    blend_summary = json.loads((tmp_path / "x.json").read_text())
    assert len(abstained) == blend_summary["abstain"]["rows"] > 0
