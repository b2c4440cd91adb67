"""What to label next (textclf/select.py): each strategy ranks planted probabilities as its formula
says, diversity spreads the picks over planted clusters, the labelling file round-trips through
data_process.py (unlabelled as a test file, labelled as a train file), and bad inputs are one line
with nothing written. The sets are real ones (a tiny random model, two folds), copied and planted."""

import contextlib
import csv
import io
import json
import shutil

import numpy as np
import pytest

from conftest import Result, run_stage, write
from test_train import toy_rows
from textclf.errors import run_cli
from textclf.select import coreset_pick, kmeans_pick, main as select_main, scores


@pytest.fixture(scope="module")
def sets(tmp_path_factory, premodels):
    """toy data (2 folds, an unlabelled test file), one run, its set with embeddings, one without,
    and an eval.input set of the test file."""
    tmp = tmp_path_factory.mktemp("select")
    train_rows, test_rows = toy_rows(48, seed=1), toy_rows(40, seed=2)
    write(tmp / "train.csv", "id,text,label\n" + "".join(f"tr{i},{t},{y}\n" for i, (t, y) in enumerate(train_rows)))
    write(tmp / "test.csv", "id,text\n" + "".join(f"te{i},{t}\n" for i, (t, _) in enumerate(test_rows)))
    common = [f"model.name={premodels('bert')}", f"data.output_dir={tmp / 'data'}", "data.id_column=id",
              f"train.output_dir={tmp / 'ck'}", f"eval.output_dir={tmp / 'mp'}", "train.precision=no",
              "eval.precision=no", "data.max_len=32"]
    result = run_stage("data_process", *common, "data.name=toy", f"data.train_file={tmp / 'train.csv'}",
                       f"data.test_file={tmp / 'test.csv'}", "data.n_folds=2")
    assert result.code == 0, result
    result = run_stage("train", *common, "data.name=toy", "train.run=a", "train.epochs=2", "train.batch_size=8",
                       "train.lr=1e-3")
    assert result.code == 0, result
    run = tmp / "ck" / "a"
    for extra in (["eval.embeddings=true"], [], [f"eval.input={tmp / 'test.csv'}"]):
        result = run_stage("evaluate", *common, "data.name=toy", f"eval.run={run}", "eval.splits=[test]", *extra)
        assert result.code == 0, result
    return dict(tmp=tmp, common=common, test_rows=test_rows, set=tmp / "mp" / "a", bare=tmp / "mp" / "a-v2",
                input=tmp / "mp" / "a-texts")


def _select(*args):
    """python -m textclf.select args..., in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(select_main, [str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def _rows(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _planted(sets, tmp_path, probs=None, folds=None, embeddings=None, train_embeddings=None):
    """A copy of the real set with planted test probabilities (fold files too) and embeddings."""
    folder = tmp_path / "planted"
    shutil.copytree(sets["set"], folder)
    if folds is not None:
        for k, fold in enumerate(folds):
            np.save(folder / "test" / f"fold{k}.npy", np.asarray(fold, dtype=np.float32))
        probs = np.mean(folds, axis=0)
    if probs is not None:
        np.save(folder / "test" / "probs.npy", np.asarray(probs, dtype=np.float32))
    if embeddings is not None:
        np.save(folder / "test" / "embeddings.npy", np.asarray(embeddings, dtype=np.float32))
    if train_embeddings is not None:
        (folder / "train").mkdir(exist_ok=True)
        np.save(folder / "train" / "embeddings.npy", np.asarray(train_embeddings, dtype=np.float32))
    return folder


def _confident(n=40):
    probs = np.tile([0.95, 0.05], (n, 1))
    probs[1::2] = [0.03, 0.97]
    return probs


# ---------------------------------------------------------------------------- the formulas


def test_margin_entropy_and_least_confidence_differ_on_three_classes():
    tie, spread = [0.5, 0.5, 0.0], [0.4, 0.3, 0.3]
    probs = np.array([tie, spread])
    assert scores(probs, "margin") == pytest.approx([1.0, 0.9])  # 1 - (p1 - p2): the near tie first
    assert scores(probs, "entropy") == pytest.approx([np.log(2), -(0.4 * np.log(0.4) + 0.6 * np.log(0.3))])
    assert scores(probs, "least_confidence") == pytest.approx([0.5, 0.6])
    assert np.argmax(scores(probs, "margin")) == 0 and np.argmax(scores(probs, "entropy")) == 1
    assert np.argmax(scores(probs, "least_confidence")) == 1


def test_disagreement_is_the_folds_mutual_information():
    folds = np.array([[[0.9, 0.1], [0.5, 0.5], [0.99, 0.01]], [[0.1, 0.9], [0.5, 0.5], [0.97, 0.03]]])
    got = scores(folds.mean(0), "disagreement", fold_probs=folds)
    entropy = lambda p: -(p * np.log(p)).sum(-1)  # noqa: E731
    assert got == pytest.approx(entropy(folds.mean(0)) - entropy(folds).mean(0))
    assert got[1] == pytest.approx(0.0, abs=1e-9) and got[0] > got[2] > 0  # agreed uncertainty is no disagreement


def test_multi_label_scores_each_class_as_yes_or_no():
    probs = np.array([[0.5, 0.99], [0.9, 0.8], [0.01, 0.02]])
    assert scores(probs, "least_confidence", multi_label=True) == pytest.approx([0.5, 0.2, 0.02])
    assert scores(probs, "margin", multi_label=True) == pytest.approx([1.0, 0.4, 1 - 0.96])
    binary = -(probs * np.log(probs) + (1 - probs) * np.log(1 - probs))
    assert scores(probs, "entropy", multi_label=True) == pytest.approx(binary.mean(1))
    assert np.argsort(-binary.mean(1)).tolist() == [1, 0, 2]  # two unsure classes outweigh one tie and one sure


def test_diversity_on_planted_clusters_in_memory():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    vectors = np.concatenate([centres[c] + rng.normal(0, 0.1, (n, 3)) for c, n in ((0, 20), (1, 10), (2, 10))])
    score = np.concatenate([np.linspace(0.9, 0.8, 20), np.linspace(0.5, 0.4, 10), np.linspace(0.3, 0.2, 10)])
    picked = kmeans_pick(vectors, score, 3, seed=0)
    assert sorted(picked.tolist()) == [0, 20, 30]  # the most uncertain row of each cluster
    cluster = np.repeat([0, 1, 2], [20, 10, 10])
    cover = coreset_pick(vectors, score, 3)
    assert cover[0] == 0 and sorted(cluster[cover].tolist()) == [0, 1, 2]  # the most uncertain, then the far ones


# ---------------------------------------------------------------------------- the command on real sets


def test_least_confidence_ranks_the_planted_tie_first(sets, tmp_path):
    probs = _confident()
    probs[7], probs[3] = [0.5, 0.5], [0.6, 0.4]
    folder = _planted(sets, tmp_path, probs=probs)
    result = _select("--predictions", folder, "--k", 3, "--strategy", "least_confidence", "--out", tmp_path / "o.csv")
    assert result.code == 0, result
    rows = _rows(tmp_path / "o.csv")
    assert [r["id"] for r in rows[:2]] == ["te7", "te3"] and [r["select_rank"] for r in rows] == ["1", "2", "3"]
    assert float(rows[0]["select_score"]) == pytest.approx(0.5) and float(rows[1]["select_score"]) == pytest.approx(0.4)
    names = json.loads((folder / "manifest.json").read_text())["label_names"]
    assert rows[1]["select_guess"] == names[0] and rows[0]["label"] == ""
    texts = {f"te{i}": t for i, (t, _) in enumerate(sets["test_rows"])}
    assert all(r["text"] == texts[r["id"]] for r in rows)  # the raw file's columns, as read


def test_fold_disagreement_ranks_the_disagreed_row_first(sets, tmp_path):
    fold0, fold1 = _confident(), _confident()
    fold0[12], fold1[12] = [0.9, 0.1], [0.1, 0.9]  # the folds disagree: their mean is a tie
    fold0[7] = fold1[7] = [0.5, 0.5]  # both unsure: the same mean, no disagreement
    folder = _planted(sets, tmp_path, folds=[fold0, fold1])
    result = _select("--predictions", folder, "--k", 1, "--strategy", "disagreement", "--out", tmp_path / "d.csv")
    assert result.code == 0, result
    assert [r["id"] for r in _rows(tmp_path / "d.csv")] == ["te12"]
    result = _select("--predictions", folder, "--k", 2, "--strategy", "entropy", "--out", tmp_path / "e.csv")
    assert result.code == 0, result
    assert [r["id"] for r in _rows(tmp_path / "e.csv")] == ["te7", "te12"]  # a tie in entropy: row order


def test_kmeans_and_coreset_pick_from_different_planted_clusters(sets, tmp_path):
    rng = np.random.default_rng(1)
    cluster = np.array([0] * 20 + [1] * 10 + [2] * 10)
    embeddings = np.eye(8)[cluster] * 5 + rng.normal(0, 0.05, (40, 8))
    probs = np.zeros((40, 2))
    probs[:, 0] = np.concatenate([np.linspace(0.5, 0.6, 20), np.linspace(0.7, 0.8, 10), np.linspace(0.85, 0.9, 10)])
    probs[:, 1] = 1 - probs[:, 0]
    folder = _planted(sets, tmp_path, probs=probs, embeddings=embeddings)
    picked = {}
    for diversity in ("none", "kmeans", "coreset"):
        pool = ["--pool", 40] if diversity != "none" else []
        result = _select("--predictions", folder, "--k", 3, "--diversity", diversity, *pool,
                         "--out", tmp_path / f"{diversity}.csv")
        assert result.code == 0, result
        picked[diversity] = [int(r["id"][2:]) for r in _rows(tmp_path / f"{diversity}.csv")]
    assert picked["none"] == [0, 1, 2]  # the three most uncertain, all of one cluster
    assert picked["kmeans"] == [0, 20, 30]  # each cluster's most uncertain row, ranked by score
    assert sorted(cluster[picked["coreset"]].tolist()) == [0, 1, 2] and 0 in picked["coreset"]
    # seeded with labelled rows of clusters 0 and 1: the cover goes to cluster 2 first, never to 0
    seeded = _planted(sets, tmp_path / "s", probs=probs, embeddings=embeddings,
                      train_embeddings=embeddings[[5, 25]])
    result = _select("--predictions", seeded, "--k", 2, "--diversity", "coreset", "--pool", 40,
                     "--out", tmp_path / "seeded.csv")
    assert result.code == 0, result
    chosen = [int(r["id"][2:]) for r in _rows(tmp_path / "seeded.csv")]
    assert 0 not in cluster[chosen].tolist() and 2 in cluster[chosen].tolist()


def test_without_embeddings_the_first_fold_model_embeds_the_rows(sets, tmp_path):
    out = tmp_path / "k.csv"
    result = _select("--predictions", sets["bare"], "--k", 4, "--diversity", "kmeans", "--pool", 12, "--out", out)
    assert result.code == 0, result
    assert "embedding 12 rows with fold 0" in result.out
    score = np.array([float(r["select_score"]) for r in _rows(out)])
    assert len(score) == 4 and (np.diff(score) <= 0).all()


def test_an_eval_input_set_and_exclude(sets, tmp_path):
    first = tmp_path / "first.csv"
    result = _select("--predictions", sets["input"], "--k", 5, "--out", first)
    assert result.code == 0, result
    ids = [r["id"] for r in _rows(first)]
    probs = np.load(sets["input"] / "probs.npy").astype(np.float64)  # as select.py ranks: near ties stay apart
    entropy = -(probs * np.log(probs)).sum(1)
    assert ids == [f"te{i}" for i in np.argsort(-entropy, kind="stable")[:5]]
    second = tmp_path / "second.csv"
    result = _select("--predictions", sets["input"], "--k", 5, "--exclude", first, "--out", second)
    assert result.code == 0, result
    assert [r["id"] for r in _rows(second)] == [f"te{i}" for i in np.argsort(-entropy, kind="stable")[5:10]]
    assert "(5 excluded)" in result.out
    # --overwrite replaces a file this command wrote
    result = _select("--predictions", sets["input"], "--k", 2, "--out", second, "--overwrite")
    assert result.code == 0 and len(_rows(second)) == 2, result


def test_the_file_round_trips_through_data_process(sets, tmp_path):
    out = tmp_path / "to_label.csv"
    assert _select("--predictions", sets["set"], "--k", 12, "--out", out).code == 0
    rows = _rows(out)
    base = [a for a in sets["common"] if not a.startswith("data.output_dir")] + [f"data.output_dir={tmp_path / 'data'}"]
    # as a test file: the blank label column is unlabelled
    result = run_stage("data_process", *base, "data.name=rt", f"data.train_file={sets['tmp'] / 'train.csv'}",
                       f"data.test_file={out}")
    assert result.code == 0, result
    meta = json.loads((tmp_path / "data" / "rt" / "meta.json").read_text())
    assert meta["splits"]["test"]["labelled"] is False and meta["splits"]["test"]["rows"] == 12
    assert np.load(tmp_path / "data" / "rt" / "test" / "ids.npy").tolist() == [r["id"] for r in rows]
    # labelled by hand: a train file
    truth = {f"te{i}": str(y) for i, (_, y) in enumerate(sets["test_rows"])}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "label": truth[r["id"]]} for r in rows)
    labelled = write(tmp_path / "labelled.csv", buf.getvalue())
    result = run_stage("data_process", *base, "data.name=rt2", f"data.train_file={labelled}", "data.n_folds=2")
    assert result.code == 0, result
    meta = json.loads((tmp_path / "data" / "rt2" / "meta.json").read_text())
    assert meta["splits"]["train"]["rows"] == 12
    labels = np.load(tmp_path / "data" / "rt2" / "train" / "labels.npy")
    assert [meta["label_names"][y] for y in labels] == [truth[r["id"]] for r in rows]


@pytest.mark.parametrize("args, expected", [
    (["--predictions", "MP/nope"], "no such folder"),
    (["--k", "0"], "--k 0: pass how many rows to select"),
    (["--k", "41"], "--k 41 is more than the 40 rows"),
    (["--k", "two"], "invalid int value"),
    (["--split", "valid"], "has no 'valid' split"),
    (["--strategy", "vibes"], "invalid choice: 'vibes'"),
    (["--pool", "5"], "the pool is what --diversity chooses from"),
    (["--diversity", "kmeans", "--pool", "1"], "the pool must hold at least --k=3 rows"),
    (["--out", "OUT/x.txt"], "give it a .csv name"),
    (["--out", "OUT/no/such/x.csv"], "does not exist"),
    (["--out", "MP/a/x.csv"], "a textclf output"),
    (["--out", "OUT/taken.csv"], "already exists; choose another name, or pass --overwrite"),
    (["--out", "OUT/taken.csv", "--overwrite"], "was not written by textclf.select"),
    (["--exclude", "OUT/nope.csv"], "no such file; pass a file of rows already sent"),
    (["--predictions", "MP/a-texts", "--strategy", "disagreement"], "holds only the fold mean"),
    (["--predictions", "MP/a-texts", "--split", "test"], "it has no splits"),
    (["--predictions", "MP/a", "--k", "3", "--extra"], "unrecognized arguments: --extra"),
])
def test_refusals_write_nothing(sets, tmp_path, args, expected):
    write(tmp_path / "taken.csv", "id,text\n1,a\n")
    args = [a.replace("MP", str(sets["tmp"] / "mp")).replace("OUT", str(tmp_path)) for a in args]
    defaults = {"--predictions": str(sets["set"]), "--k": "3", "--out": str(tmp_path / "new.csv")}
    full = args + [x for name, value in defaults.items() if name not in args for x in (name, value)]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = _select(*full)
    assert result.code == 2 and expected in result.err, result
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "taken.csv").read_text() == "id,text\n1,a\n"


def test_a_set_without_probabilities_or_raw_file_is_refused(sets, tmp_path):
    folder = _planted(sets, tmp_path)
    (folder / "test" / "probs.npy").unlink()
    result = _select("--predictions", folder, "--k", 2, "--out", tmp_path / "x.csv")
    assert result.code == 2 and "probs.npy cannot be read" in result.err, result
    # the raw test file changed after data_process.py read it: refused, then restored
    test_csv = sets["tmp"] / "test.csv"
    text = test_csv.read_text()
    try:
        test_csv.write_text(text.replace("te0,", "te0,x "))
        result = _select("--predictions", sets["set"], "--k", 2, "--out", tmp_path / "x.csv")
        assert result.code == 2 and "changed after data_process.py read it" in result.err, result
        test_csv.unlink()
        result = _select("--predictions", sets["set"], "--k", 2, "--out", tmp_path / "x.csv")
        assert result.code == 2 and "is gone" in result.err, result
    finally:
        test_csv.write_text(text)
    assert not (tmp_path / "x.csv").exists()
