"""Property-based tests (hypothesis) for the raw-file readers and the config parser: whatever the
input, the result is rows or one UserError, never another exception; rows written by a standard
writer come back as written; a name a user gives never resolves outside its output folder."""

import csv
import io
import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from textclf.config import DataConfig, SECTIONS, field_types, parse_args, resolve_path
from textclf.errors import UserError
from textclf.rawdata import RawFile, RowReader
from textclf.text_rules import clean_text

# The same examples on every run, so that CI judges the code and not the draw; TEXTCLF_EXPLORE=1 draws
# new ones (how the bugs these tests found were found).
EXPLORE = os.environ.get("TEXTCLF_EXPLORE") == "1"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=not EXPLORE)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
LABELS = st.sampled_from(["a", "b", "pos", "neg", "1", "2", "x y"])


def read_all(content, suffix, **settings_):
    """Every (text, labels) the readers give for a file with `content`, or the UserError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"train{suffix}"
        path.write_bytes(content)
        cfg = DataConfig(**settings_)
        try:
            raw = RawFile(path, cfg, "train")
            reader = RowReader(raw, cfg, need_labels=True)
            return [(reader.text(values, line), reader.labels(values, line)) for line, values in raw.rows()]
        except UserError as err:
            return err


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from([".csv", ".tsv", ".jsonl"]))
def test_any_bytes_are_rows_or_one_user_error(content, suffix):
    result = read_all(content, suffix)
    assert isinstance(result, (list, UserError))
    if isinstance(result, UserError):
        assert "\n" not in str(result).strip()


@SETTINGS
@given(st.lists(st.tuples(TEXT, LABELS), min_size=1, max_size=12))
def test_csv_written_by_the_csv_module_reads_back_as_written(rows):
    buf = io.StringIO()
    writer = csv.writer(buf)  # "\r\n" rows: the writer then quotes any field holding "\r" or "\n"
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    result = read_all(buf.getvalue().encode("utf-8"), ".csv")
    assert not isinstance(result, UserError), result
    assert result == [(clean_text(text), label) for text, label in rows]


@SETTINGS
@given(st.lists(st.tuples(TEXT, LABELS), min_size=1, max_size=12))
def test_tsv_without_tabs_or_newlines_reads_back_as_written(rows):
    rows = [(t.replace("\t", " ").replace("\n", " ").replace("\r", " ").replace("\0", " "), label)
            for t, label in rows]
    content = "text\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows)
    result = read_all(content.encode("utf-8"), ".tsv")
    assert not isinstance(result, UserError), result
    # a row whose text is all whitespace reads as one empty field where two are expected: refused per row,
    # never mis-read; the others come back as written
    assert result == [(clean_text(text), label) for text, label in rows]


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                           max_leaves=6)


@SETTINGS
@given(st.lists(st.fixed_dictionaries({"text": JSON_VALUES, "label": JSON_VALUES}), min_size=1, max_size=8))
def test_jsonl_of_any_values_is_rows_or_one_user_error(records):
    content = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    result = read_all(content, ".jsonl")
    assert isinstance(result, (list, UserError))
    if all(isinstance(r["text"], str) and isinstance(r["label"], str) and r["label"].strip() for r in records):
        assert result == [(clean_text(r["text"]), r["label"].strip()) for r in records]


KEYS = [f"{section}.{key}" for section in SECTIONS for key in field_types(section)]


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.text(max_size=30)), max_size=5))
def test_any_overrides_give_a_config_or_one_user_error(pairs):
    try:
        config = parse_args([f"{key}={value}" for key, value in pairs])
    except UserError as err:
        assert "\n" not in str(err).strip()
        return
    for key, value in pairs[-1:]:
        section, name = key.split(".")
        if field_types(section)[name] is str:  # a string key keeps exactly what was given
            assert getattr(getattr(config, section), name) == value


@SETTINGS
@given(st.text(max_size=200))
def test_any_yaml_file_gives_a_config_or_one_user_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            parse_args(["--config", str(path)])
        except UserError as err:
            assert "\n" not in str(err).strip()


@SETTINGS
@given(st.text(max_size=60), st.sampled_from(["train.run", "data.name", "ensemble.name"]))
def test_an_accepted_name_stays_inside_its_output_folder(name, key):
    try:
        config = parse_args([f"{key}={name}"])
    except UserError:
        return
    if not name and key != "ensemble.name":
        return  # empty: the default (the data name, the config file's name)
    section, field = key.split(".")
    base = resolve_path(getattr(getattr(config, section), "output_dir"))
    target = (base / getattr(getattr(config, section), field)).resolve()
    assert target.parent == base.resolve() and target.name == name


# ---------------------------------------------------------------------------- the features of later rounds
# (windows: tests/test_windows.py holds their properties)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FIELD_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=120)
TEMPLATE = "Title: {title}\nAbstract: {abstract}\nIs it about the heart? answer:"


@pytest.fixture(scope="module")
def backends(premodels):
    from textclf.tokenization import TextTokenizer

    from textclf.premodels import load_tokenizer

    class Backends(dict):
        def __repr__(self):  # hypothesis prints its arguments: not whole vocabularies
            return "backends(bert, llama)"

    return Backends({family: TextTokenizer.from_hf(load_tokenizer(premodels(family)), 64).backend
                     for family in ("bert", "llama")})


@SETTINGS
@given(title=FIELD_TEXT, abstract=FIELD_TEXT, room=st.integers(0, 40), family=st.sampled_from(["bert", "llama"]),
       how=st.sampled_from([("head", 0, None), ("tail", 0, None), ("head_tail", 4, None), ("head", 0, "title")]))
def test_a_template_row_fits_its_budget_and_keeps_the_template_text(backends, title, abstract, room, family, how):
    """Templates (and decoders' prompts): whatever the fields hold, a row fits any budget that
    holds the template's own text (data_process refuses the others), and its question and closing
    words stay."""
    from textclf.prompts import Cut, fit_rows, fixed_tokens

    from textclf.text_rules import fill_template

    backend = backends[family]
    budget = fixed_tokens(backend, TEMPLATE) + room
    row = {"title": clean_text(title), "abstract": clean_text(abstract)}  # as the readers give them
    (ids,), (lost,) = fit_rows(backend, TEMPLATE, [row], budget, Cut(*how))
    whole = backend.encode(fill_template(TEMPLATE, row, ["title", "abstract"]), add_special_tokens=False).ids
    assert len(ids) <= budget and lost == max(len(whole) - len(ids), 0)
    if len(whole) <= budget:
        assert ids == whole  # a row that fits is tokenized exactly as its filled template
    tail = backend.decode(ids[-12:]).replace(" ", "")
    assert tail.endswith("answer:") and "heart?" in tail


@SETTINGS
@given(labels=st.lists(st.integers(0, 2), min_size=4, max_size=40), data=st.data(),
       n_folds=st.sampled_from([0, 2, 3, 5]), valid_size=st.floats(0.05, 0.6), seed=st.integers(0, 2 ** 16))
def test_group_folds_never_split_a_group(labels, data, n_folds, valid_size, seed):
    """Group folds (user groups): no group in two folds; K folds all present, or one holdout fold."""
    from textclf.data import group_folds

    groups = data.draw(st.lists(st.integers(0, 8), min_size=len(labels), max_size=len(labels)))
    try:
        folds, n_groups = group_folds(np.asarray(labels), np.asarray(groups), n_folds, valid_size, seed)
    except UserError as err:
        assert "\n" not in str(err) and len(set(groups)) < max(n_folds, 2)
        return
    assert n_groups == len(set(groups))
    for g in set(groups):
        assert len(set(folds[np.asarray(groups) == g].tolist())) == 1
    if n_folds >= 2:
        assert set(folds.tolist()) == set(range(n_folds))
    else:
        assert set(folds.tolist()) == {0, -1}


@SETTINGS
@given(st.lists(st.integers(-3, 6), min_size=1, max_size=30))
def test_given_folds_are_folds_or_one_user_error(values):
    """User folds (data.fold_column): accepted only as 0..K-1 with every fold present (-1: never held out)."""
    from types import SimpleNamespace

    from textclf.data import given_folds

    folds = np.asarray(values, dtype=np.int16)
    try:
        n = given_folds(folds, SimpleNamespace(fold_column="fold", n_folds=0, valid_size=0.2), "t.csv")
    except UserError as err:
        assert "\n" not in str(err)
        return
    held = sorted(set(values) - {-1})
    assert held == list(range(n)) and n >= 1 and len(held) < len(values) + 1


@SETTINGS
@given(st.lists(st.floats(-1e30, 1e30, allow_nan=False) | st.sampled_from([1e8, 1e8 + 1, 1e8 + 3, 0.1, 1e-46]),
                min_size=2, max_size=30))
def test_regression_targets_are_refused_only_when_float32_holds_one_value(values):
    """Regression: numbers that float32 (labels.npy) cannot tell apart are refused when all of them
    collapse, warned about when some do, and pass silently otherwise."""
    import contextlib
    from types import SimpleNamespace

    from textclf.data import check_targets_vary

    column = np.asarray(values, dtype=np.float64)[:, None]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            check_targets_vary(SimpleNamespace(raw=SimpleNamespace(path=Path("t.csv"))), ["y"], column)
    except UserError as err:
        assert "\n" not in str(err) and len(np.unique(column.astype(np.float32))) == 1
        return
    stored, exact = len(np.unique(column.astype(np.float32))), len(np.unique(column))
    assert stored > 1 and ("warning" in out.getvalue()) == (stored < exact)


NAMES = st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8).map(str.strip)
                 .filter(bool), min_size=2, max_size=5, unique=True)


@SETTINGS
@given(names=NAMES, data=st.data(), delimiter=st.sampled_from([None, " ", ";", "|"]))
def test_multi_label_submissions_read_back_as_predicted(names, data, delimiter):
    """Multi-label submissions: the labels joined in one column split back, by the data's
    delimiter, into exactly the predicted classes; or the plan refuses names that hold it."""
    from textclf import submission
    from textclf.problem import problem_type

    problem = problem_type("multi_label")
    n = data.draw(st.integers(1, 6))
    predicted = np.asarray(data.draw(st.lists(st.lists(st.integers(0, 1), min_size=len(names), max_size=len(names)),
                                              min_size=n, max_size=n)))
    try:
        layout, _ = submission.plan(None, names, problem, output="labels", delimiter=delimiter)
    except UserError as err:
        assert "\n" not in str(err) and any((delimiter or " ") in name for name in names)
        return
    rows = submission.rows(layout, None, [f"id{i}" for i in range(n)], predicted.astype(float), predicted, names)
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    back = list(csv.reader(io.StringIO(buf.getvalue())))[1:]
    for (_, value), want in zip(back, predicted):
        got = [v for v in value.split(layout.delimiter) if v] if value else []
        assert sorted(got) == sorted(names[j] for j in np.flatnonzero(want))


@SETTINGS
@given(data=st.data(), classes=st.integers(2, 4), columns=st.booleans())
def test_probability_submissions_are_probabilities_in_the_samples_column_order(data, classes, columns):
    from textclf import submission
    from textclf.problem import problem_type

    names = [f"c{k}" for k in range(classes)]
    n = data.draw(st.integers(1, 6))
    raw = np.asarray(data.draw(st.lists(st.lists(st.floats(0, 1), min_size=classes, max_size=classes),
                                        min_size=n, max_size=n))) + 1e-9
    probs = raw / raw.sum(axis=1, keepdims=True)
    order = data.draw(st.permutations(names))
    header = ["id", *order] if columns or classes > 2 else ["id", "target"]
    sample = submission.Sample(Path("s.csv"), header, [[f"id{i}", *["0.5"] * (len(header) - 1)] for i in range(n)])
    problem = problem_type("single_label")
    layout, metric = submission.plan(sample, names, problem, metric="log_loss" if columns else "roc_auc")
    written = submission.written_probs(layout, probs, problem)
    rows = submission.rows(layout, sample, [f"id{i}" for i in range(n)], written, probs.argmax(1), names)
    assert rows[0] == header
    values = np.asarray([[float(v) for v in row[1:]] for row in rows[1:]])
    assert ((values >= 0) & (values <= 1)).all()
    if header[1:] == ["target"]:
        np.testing.assert_allclose(values[:, 0], written[:, 1], atol=1e-6)
    else:
        np.testing.assert_allclose(values, written[:, [names.index(c) for c in order]], atol=1e-6)
        if metric == "log_loss":
            assert (values > 0).all() and (values < 1).all()  # clipped: one confident miss never costs infinity


@SETTINGS
@given(data=st.data(), members=st.integers(1, 3), classes=st.integers(2, 3),
       method=st.sampled_from(["mean", "weighted", "geometric"]))
def test_any_blend_of_probabilities_is_probabilities(data, members, classes, method):
    """Blends: any non-negative weights (not all 0) give rows of probabilities."""
    from textclf.predsets import blend, normalise
    from textclf.problem import problem_type

    n = data.draw(st.integers(1, 5))
    raw = np.asarray(data.draw(st.lists(st.floats(0.001, 1), min_size=members * n * classes,
                                        max_size=members * n * classes))).reshape(members, n, classes)
    probs = raw / raw.sum(axis=2, keepdims=True)
    weights = data.draw(st.lists(st.floats(0, 10), min_size=members, max_size=members).filter(lambda w: sum(w) > 0))
    out = normalise(blend(probs, weights, method), problem_type("single_label"))
    assert np.isfinite(out).all() and np.allclose(out.sum(axis=1), 1) and (out >= 0).all()


@SETTINGS
@given(data=st.data(), threshold=st.floats(0, 1), top_k=st.integers(0, 3), multi=st.booleans())
def test_pseudo_labels_keep_only_rows_at_or_above_the_threshold(data, threshold, top_k, multi):
    from textclf.problem import problem_type
    from textclf.pseudo import select

    n = data.draw(st.integers(1, 12))
    raw = np.asarray(data.draw(st.lists(st.floats(0.001, 1), min_size=3 * n, max_size=3 * n))).reshape(n, 3)
    problem = problem_type("multi_label" if multi else "single_label")
    probs = raw if multi else raw / raw.sum(axis=1, keepdims=True)
    top_k = 0 if multi else top_k  # pseudo.top_k is per class: refused for multi-label before select
    rows, labels, confidence = select(probs, problem, threshold, top_k)
    assert (confidence >= threshold).all() and list(rows) == sorted(rows)
    assert (labels == problem.decide(probs)[rows]).all()
    if top_k and not multi:
        assert all(np.sum(labels == c) <= top_k for c in range(3))


@SETTINGS
@given(steps=st.lists(st.tuples(st.floats(-3, 3), st.booleans()), min_size=1, max_size=10),
       decay=st.floats(0.5, 0.999))
def test_ema_follows_every_step_that_moved_the_weights(steps, decay):
    """EMA: the average is the hand-computed recursion over the steps that updated the weights;
    a step skipped as non-finite leaves it as it was."""
    import torch

    from textclf.averaging import after_step, make_average
    from textclf.checkpoint import TrainState

    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average = make_average(model, type("T", (), {"ema_decay": decay, "swa_last": 0})(), 10, 10)
    want = 1.0  # the weights it starts from, until the first step that moves them, which it takes whole
    moved = False
    for value, skipped in steps:
        state = TrainState(fold=0, nonfinite_in_row=1 if skipped else 0)
        if not skipped:
            with torch.no_grad():
                model.weight.fill_(value)
            want = decay * want + (1 - decay) * value if moved else value
            moved = True
        after_step(average, state)
    assert float(average.model.module.weight.detach()) == pytest.approx(want, rel=1e-5, abs=1e-6)


LORA_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 70), st.floats(allow_nan=True), TEXT,
                        st.lists(TEXT, max_size=2))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["r", "alpha", "dropout", "target_modules", "quantize", "rank"]), LORA_VALUES,
                       max_size=4))
def test_any_lora_settings_are_settings_or_one_user_error(raw):
    from textclf.config import lora_settings

    try:
        out = lora_settings(raw)
    except UserError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(out["r"], int) and out["r"] >= 1 and out["alpha"] > 0 and 0 <= out["dropout"] < 1


@settings(max_examples=40, deadline=None, derandomize=not EXPLORE)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1, max_size=30),
       st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1, max_size=30))
def test_two_writers_of_one_run_never_both_hold_it(first, second):
    """Concurrent runs of the same name: a second lock on a held output is refused, a lock on
    another output is not, and no lock file is written beside the outputs."""
    from textclf.fileio import OutputLock

    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / first, Path(tmp) / second
        with OutputLock() as one:
            one.take(a, "run", "resume it")
            other = OutputLock()
            try:
                other.take(b, "run", "resume it")
            except UserError as err:
                assert a.name == b.name and "two writers of one run" in str(err)
            else:
                assert a.name != b.name
            finally:
                other.release()
        with OutputLock() as again:  # released: the next writer takes it
            again.take(a, "run", "resume it")
        assert list(Path(tmp).iterdir()) == []


@settings(max_examples=20, deadline=None, derandomize=not EXPLORE)
@given(kind=st.sampled_from(["fgm", "awp"]), eps=st.floats(1e-4, 10), adv_lr=st.floats(0.01, 2),
       seed=st.integers(0, 2 ** 16), weight=st.sampled_from([1.0, 0.5]))
def test_an_adversarial_pass_restores_every_weight_exactly(premodels, kind, eps, adv_lr, seed, weight):
    """Adversarial training: after the clean and the perturbed pass every weight is bit-for-bit
    what it was, and the gradient is the clean one plus a finite adversarial one."""
    import contextlib
    from types import SimpleNamespace

    import torch

    from textclf.adversarial import backward, make_adversary
    from textclf.model import HeadConfig, build_classifier

    torch.manual_seed(seed)
    model = build_classifier(premodels("bert"), HeadConfig(n_outputs=2))
    model.eval()  # no dropout: the clean pass can be replayed
    batch = {"input_ids": torch.randint(5, 200, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long),
             "token_type_ids": torch.zeros(3, 7, dtype=torch.long), "labels": torch.tensor([0, 1, 1])}
    loss_fn = torch.nn.functional.cross_entropy
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    accelerator = SimpleNamespace(no_sync=lambda m: contextlib.nullcontext(), backward=lambda loss: loss.backward())
    adversary = make_adversary(model, SimpleNamespace(adversarial=kind, adv_eps=eps, adv_lr=adv_lr))
    backward(adversary, accelerator, model, lambda logits, b: loss_fn(logits, b["labels"]), batch, weight)
    total = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model.zero_grad()
    (loss_fn(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), batch["labels"])
     * weight).backward()
    clean = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert set(total) == set(clean) and all(torch.isfinite(total[k] - clean[k]).all() for k in total)


def test_a_run_named_another_way_meets_the_same_lock(tmp_path, monkeypatch):
    """a/../b, a symbolic link to the run, or another TMPDIR: the same folder, the same lock."""
    from textclf.fileio import OutputLock

    run = tmp_path / "ck" / "run"
    (run / "fold0").mkdir(parents=True)
    os.symlink(run, tmp_path / "ck" / "alias")
    with OutputLock() as held:
        held.take(run, "run", "resume it")
        monkeypatch.setenv("TMPDIR", str(tmp_path))
        for other in (run / "fold0" / "..", tmp_path / "ck" / "alias", tmp_path / "ck" / ".." / "ck" / "run"):
            with pytest.raises(UserError, match="two writers of one run"):
                OutputLock().take(other, "run", "resume it")
