"""Folds the user controls: data.fold_column (the train file's own fold numbers) and
data.group_column (StratifiedGroupKFold: a group never straddles a fold), with their refusals."""

import json
import random
from collections import defaultdict

import numpy as np
import pytest

from conftest import write

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def grouped_rows(n_groups, seed=0, labels=("a", "b", "c")):
    """Groups of 1-6 rows; a group's rows share a label (as near-duplicates of one source would)."""
    rng = random.Random(seed)
    rows = []
    for g in range(n_groups):
        label = labels[rng.randrange(len(labels))]
        for _ in range(rng.randint(1, 6)):
            rows.append((f"r{len(rows)}", " ".join(rng.sample(WORDS, 5)), label, f"g{g}"))
    return rows


def write_grouped(path, rows):
    return write(path, "id,text,label,author\n" + "".join(f"{i},{t},{y},{g}\n" for i, t, y, g in rows))


def process(stage, premodels, tmp_path, train, *extra, name="d"):
    return stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}",
                 f"data.name={name}", f"data.train_file={train}", "data.id_column=id", "data.max_len=16", *extra)


@pytest.mark.parametrize("n_folds", [0, 3, 5])
def test_group_folds_never_split_a_group_and_stay_stratified(stage, premodels, tmp_path, n_folds):
    rows = grouped_rows(80, seed=n_folds)
    train = write_grouped(tmp_path / "train.csv", rows)
    result = process(stage, premodels, tmp_path, train, "data.group_column=author", f"data.n_folds={n_folds}")
    assert result.code == 0, result
    folder = tmp_path / "data" / "d"
    folds = np.load(folder / "train" / "folds.npy")
    assert np.load(folder / "train" / "ids.npy").tolist() == [r[0] for r in rows]
    by_group = defaultdict(set)
    for (_, _, _, group), fold in zip(rows, folds.tolist()):
        by_group[group].add(fold)
    assert all(len(f) == 1 for f in by_group.values()), "a group was split across folds"
    meta = json.loads((folder / "meta.json").read_text())
    k = max(n_folds, 1)
    assert meta["folds"]["source"] == "group_column" and meta["folds"]["groups"] == 80
    assert meta["folds"]["n_folds"] == k and sum(meta["folds"]["sizes"]) == int((folds >= 0).sum())
    if n_folds:
        assert sorted(set(folds.tolist())) == list(range(n_folds))
        # stratified: each fold's share of label "a" is near the whole set's
        labels = np.array([r[2] for r in rows])
        share = (labels == "a").mean()
        for f in range(n_folds):
            assert abs((labels[folds == f] == "a").mean() - share) < 0.15
    else:  # a holdout of about valid_size (0.1) of the rows, whole groups only
        assert set(folds.tolist()) == {-1, 0} and 0.03 < (folds == 0).mean() < 0.2
    # the same seed gives the same folds in another process-like run (no salted hashing)
    again = process(stage, premodels, tmp_path, train, "data.group_column=author", f"data.n_folds={n_folds}",
                    name="again")
    assert again.code == 0 and np.array_equal(np.load(tmp_path / "data" / "again" / "train" / "folds.npy"), folds)


def test_given_folds_are_used_as_written_and_training_follows_them(stage, premodels, tmp_path):
    rows = grouped_rows(30, seed=1)
    given = [i % 3 if i % 7 else -1 for i in range(len(rows))]
    train = write(tmp_path / "train.csv", "id,text,label,fold\n" + "".join(
        f"{i},{t},{y},{f}\n" for (i, t, y, _), f in zip(rows, given)))
    result = process(stage, premodels, tmp_path, train, "data.fold_column=fold")
    assert result.code == 0, result
    folder = tmp_path / "data" / "d"
    assert np.load(folder / "train" / "folds.npy").tolist() == given
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["folds"]["mode"] == "kfold" and meta["folds"]["n_folds"] == 3
    assert meta["folds"]["source"] == "fold_column" and meta["folds"]["sizes"] == [given.count(k) for k in range(3)]
    ck = tmp_path / "ck"
    result = stage("train", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}", "data.name=d",
                   f"train.output_dir={ck}", "train.epochs=1", "train.batch_size=8", "train.precision=no")
    assert result.code == 0, result
    oof_ids = np.load(ck / "d" / "oof" / "ids.npy").tolist()
    assert sorted(oof_ids) == sorted(r[0] for r, f in zip(rows, given) if f >= 0)  # -1 rows: never held out
    assert np.load(ck / "d" / "oof" / "folds.npy").tolist() == [f for f in given if f >= 0]


@pytest.mark.parametrize("column, extra, expected", [
    ("0,1,3", [], "none numbered 2; number the folds 0..3 without gaps"),
    ("0,1,x", [], "the fold ('fold') is 'x'; data.fold_column holds fold numbers"),
    ("0,1,1.5", [], "the fold ('fold') is '1.5'"),
    ("0,1,-2", [], "the fold ('fold') is '-2'"),
    ("0,0,0", [], "puts every row in fold 0"),
    ("-1,-1,-1", [], "is -1 on every row"),
    ("0,1,1", ["data.n_folds=3"], "numbers 2 fold(s)"),
    ("0,1,1", ["data.group_column=author"], "data.fold_column are both set"),
    ("0,1,1", ["data.valid_file=VALID"], "and data.valid_file are both set"),
])
def test_bad_given_folds_are_refused_before_writing(stage, premodels, tmp_path, column, extra, expected):
    folds = column.split(",")
    rows = [(f"r{i}", f"text number {i}", "ab"[i % 2], folds[i % 3]) for i in range(9)]
    train = write(tmp_path / "train.csv", "id,text,label,fold,author\n" + "".join(
        f"{i},{t},{y},{f},a{k % 2}\n" for k, (i, t, y, f) in enumerate(rows)))
    extra = [e.replace("VALID", str(train)) for e in extra]
    result = process(stage, premodels, tmp_path, train, "data.fold_column=fold", *extra)
    assert result.code == 2 and expected in result.err, result
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("body, extra, expected", [
    ("id,text,label,author\n1,a b,x,g1\n2,c d,y,g1\n3,e f,x,g2\n", ["data.n_folds=3"],
     "has 2 group(s), fewer than data.n_folds=3; groups are never split, so use data.n_folds=2 or fewer"),
    ("id,text,label,author\n1,a b,x,g1\n2,c d,y,\n3,e f,x,g2\n", [], "line 3 of"),
    ("id,text,label\n1,a b,x\n2,c d,y\n", [], "has no column 'author' (data.group_column)"),
])
def test_bad_groups_are_refused_before_writing(stage, premodels, tmp_path, body, extra, expected):
    train = write(tmp_path / "train.csv", body)
    result = process(stage, premodels, tmp_path, train, "data.group_column=author", *extra)
    assert result.code == 2 and expected in result.err, result
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_groups_too_small_to_stratify_still_keep_groups_whole(stage, premodels, tmp_path):
    """Every class smaller than the number of group folds: groups whole, unstratified, no traceback."""
    rows = [(f"r{i}", f"text number {i}", "ab"[i % 2], f"g{i % 12}") for i in range(18)]
    train = write_grouped(tmp_path / "train.csv", rows)
    result = process(stage, premodels, tmp_path, train, "data.group_column=author")
    assert result.code == 0, result
    folds = np.load(tmp_path / "data" / "d" / "train" / "folds.npy")
    by_group = defaultdict(set)
    for (_, _, _, group), fold in zip(rows, folds.tolist()):
        by_group[group].add(fold)
    assert all(len(f) == 1 for f in by_group.values()) and (folds == 0).any() and (folds == -1).any()
