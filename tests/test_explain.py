"""Explanations (explain.py): integrated-gradient attributions add up to the score they explain (a
trained K-fold BERT run, a LoRA decoder), the fold mean is the mean of each fold's, windows are
explained one by one, word pieces merge to words, and explanations.html shows one shaded span per
word, refuses unknown ids before writing, and renders in a real browser."""

import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from browser import is_blank, screenshot
from conftest import run_stage, write
from test_train import toy_rows
from textclf import explain
from textclf.config import EvalConfig
from textclf.errors import UserError
from textclf.model import HeadConfig, Labels, ModelSpec, Provenance, Tokenization, build_classifier
from textclf.predict import Predictor
from textclf.premodels import load_tokenizer
from textclf.tokenization import TextTokenizer


def complete(row, tolerance=explain.TOLERANCE):
    """The attributions sum to score - baseline score, up to the reported delta, which is small."""
    gap = row["score"] - row["baseline_score"]
    assert sum(row["token_attributions"]) == pytest.approx(gap + row["delta"], abs=1e-4)
    assert sum(row["attributions"]) == pytest.approx(sum(row["token_attributions"]), abs=1e-6)
    assert abs(row["delta"]) <= tolerance * max(1.0, abs(gap)), row["delta"]


def spec_for(names=("neg", "pos"), problem="single_label", head="cls", outputs=2, **tokenization):
    return ModelSpec(HeadConfig(head, outputs, 0.0), Labels(list(names), problem),
                     Tokenization(tokenization.pop("max_len", 24), "head", None, ["text"], None, "-", **tokenization),
                     Provenance("toy", "-", "random"))


def random_predictor(premodels, family="bert", spec=None, lora=None, seed=0):
    """A Predictor over one random model, made less linear (a larger embedding table) so the path
    integral has something to miss."""
    spec = spec or spec_for(head="last" if family in ("llama", "gpt2") else "cls")
    torch.manual_seed(seed)
    model = build_classifier(premodels(family), HeadConfig(spec.head.head, spec.head.n_outputs, 0.0, lora=lora)).eval()
    with torch.no_grad():
        explain.embedding_layer(model).weight.mul_(8.0)
        model.fc.weight.normal_(0, 1.0)
    return Predictor([model], spec, load_tokenizer(premodels(family)), precision="no")


class Spans(HTMLParser):
    """Per row (div.row) of explanations.html: the words of its span.w elements and their titles."""

    def __init__(self):
        super().__init__()
        self.rows, self.in_word = [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "row":
            self.rows.append([])
        if tag == "span" and attrs.get("class") == "w":
            self.rows[-1].append(["", float(attrs["title"])])
            self.in_word = True

    def handle_endtag(self, tag):
        if tag == "span":
            self.in_word = False

    def handle_data(self, data):
        if self.in_word:
            self.rows[-1][-1][0] += data


def spans(path):
    parser = Spans()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.rows


# ---------------------------------------------------------------------------- a trained K-fold run


@pytest.fixture(scope="module")
def run(tmp_path_factory, premodels):
    tmp = tmp_path_factory.mktemp("explain")
    rows = toy_rows(32, seed=1)
    write(tmp / "train.csv", "id,text,label\n" + "".join(f"r{i},{t},{y}\n" for i, (t, y) in enumerate(rows)))
    write(tmp / "test.csv", "id,text,label\n" + "".join(f"t{i},{t},{y}\n" for i, (t, y) in enumerate(toy_rows(6, 7))))
    common = [f"model.name={premodels('bert')}", f"data.output_dir={tmp / 'data'}", f"train.output_dir={tmp / 'ck'}",
              "train.precision=no", "eval.precision=no", "data.id_column=id", "data.max_len=24",
              "train.batch_size=8", "data.name=toy", "train.run=kf"]
    assert run_stage("data_process", *common, f"data.train_file={tmp / 'train.csv'}", "data.n_folds=2",
                     f"data.test_file={tmp / 'test.csv'}").code == 0
    result = run_stage("train", *common, "model.head=mean", "train.epochs=3", "train.lr=5e-3", "train.calibrate=false")
    assert result.code == 0, result
    return dict(tmp=tmp, common=common, run=tmp / "ck" / "kf", rows=rows)


def test_attributions_of_a_trained_run_add_up_and_the_fold_mean_is_the_mean_of_the_folds(run):
    text = "the movie was great fun but the plot was boring"
    predictor = Predictor.from_run(run["run"], device="cpu", precision="no")
    both = predictor.explain(text, label="1")[0]
    complete(both)
    assert both["words"] == text.split() and both["label"] == "1" and both["window"] is None
    assert abs(both["score"] - both["baseline_score"]) > 0.05  # a trained model: there is something to explain
    folds = [Predictor.from_run(run["run"], folds=k, device="cpu", precision="no").explain(text, label="1")[0]
             for k in (0, 1)]
    for fold in folds:
        complete(fold)
    np.testing.assert_allclose(both["attributions"], np.mean([f["attributions"] for f in folds], axis=0), atol=1e-5)
    assert both["score"] == pytest.approx(np.mean([f["score"] for f in folds]), abs=1e-5)
    assert sum(both["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    # the other label's logit: its own attributions, also complete
    other = predictor.explain(text, label="0")[0]
    complete(other)
    assert other["attributions"] != both["attributions"]


def test_evaluate_writes_one_shaded_span_per_word_and_the_page_renders(run, tmp_path):
    out = tmp_path / "mp"
    result = run_stage("evaluate", *run["common"], f"eval.run={run['run']}", f"eval.output_dir={out}",
                       "eval.explain=true", "eval.explain_rows=3", "eval.explain_steps=16", "eval.splits=[test]")
    assert result.code == 0, result
    page = out / "kf" / "explanations.html"
    found = spans(page)
    texts = [t for t, _ in toy_rows(6, 7)][:3]
    assert [[w for w, _ in row] for row in found] == [t.split() for t in texts]  # from the token arrays
    assert all(any(value != 0 for _, value in row) for row in found)
    doc = page.read_text(encoding="utf-8")
    assert "<script" not in doc and "http" not in doc and "true <b>" in doc
    image = screenshot(page, tmp_path / "page.png")
    assert not is_blank(image)


def test_explained_ids_and_escaped_raw_texts(run, tmp_path):
    out = tmp_path / "mp"
    result = run_stage("evaluate", *run["common"], f"eval.run={run['run']}", f"eval.output_dir={out}",
                       "eval.explain=true", "eval.explain_ids=[t4,r2]", "eval.explain_steps=8",
                       "eval.splits=[train,test]")
    assert result.code == 0, result
    doc = (out / "kf" / "explanations.html").read_text(encoding="utf-8")
    assert doc.count('<div class="row">') == 2 and "<b>t4</b>" in doc and "<b>r2</b>" in doc
    text = "a <b>great</b> & \"fun\" movie"
    result = run_stage("evaluate", *run["common"], f"eval.run={run['run']}", f"eval.output_dir={out}",
                       f"eval.texts={json.dumps([text, 'dull'])}", "eval.explain=true", "eval.explain_steps=8")
    assert result.code == 0, result
    page = out / "kf-texts" / "explanations.html"
    words = [w for w, _ in spans(page)[0]]
    assert words == ["a", "<", "b", ">", "great", "<", "/", "b", ">", "&", '"', "fun", '"', "movie"]
    assert "<b>great</b>" not in page.read_text(encoding="utf-8")  # escaped, not markup


def test_an_unknown_explain_id_is_refused_before_anything_is_written(run, tmp_path):
    out = tmp_path / "mp"
    result = run_stage("evaluate", *run["common"], f"eval.run={run['run']}", f"eval.output_dir={out}",
                       "eval.explain=true", "eval.explain_ids=[t1,nope]", "eval.splits=[test]")
    assert result.code == 2 and "'nope'" in result.err and "eval.explain_ids" in result.err, result
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert not out.exists() or not any(out.iterdir())
    result = run_stage("evaluate", *run["common"], f"eval.run={run['run']}", f"eval.output_dir={out}",
                       "eval.explain=true", "eval.explain_ids=[nope]", 'eval.texts=["a fine film"]')
    assert result.code == 2 and "eval.input's id column" in result.err, result
    assert "p=" not in result.out, "refused before any row is predicted"
    assert not out.exists() or not any(out.iterdir())


def test_bad_arguments_are_refused_with_one_line(run):
    predictor = Predictor.from_run(run["run"], folds=0, device="cpu", precision="no")
    for kwargs, words in ((dict(texts=["fine"], label="maybe"), "not one of this model's labels"),
                          (dict(texts=[]), "no texts"), (dict(texts=["fine"], steps=0), "steps=0")):
        with pytest.raises(UserError, match=words) as err:
            predictor.explain(**kwargs)
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------- random models, no training


def test_a_lora_decoder_adds_up_to_its_last_token_score(premodels):
    lora = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": "all-linear", "quantize": None}
    predictor = random_predictor(premodels, "gpt2", lora=lora)
    rows = predictor.explain(["the movie was great fun", "a boring plot, really bad"])
    for row in rows:
        complete(row)
        assert abs(row["score"] - row["baseline_score"]) > 0.05
    # the score is the model's own logit for the label, as predict computes it
    probs = predictor.predict(["the movie was great fun"])["probs"][0]
    assert rows[0]["label"] == ["neg", "pos"][int(np.argmax(probs))]
    assert rows[0]["probabilities"]["pos"] == pytest.approx(float(probs[1]), abs=1e-5)


def test_a_llama_decoder_and_binary_bce_log_odds(premodels):
    llama = random_predictor(premodels, "llama")
    fine, coarse = (llama.explain("hello world, a good film", steps=steps)[0] for steps in (64, 2))
    complete(fine)
    assert abs(coarse["delta"]) > 100 * abs(fine["delta"])  # the delta is the path integral's real error
    bce = random_predictor(premodels, "bert", spec_for(problem="binary_bce", outputs=1))
    first, second = (bce.explain("a great film", label=name)[0] for name in ("neg", "pos"))
    complete(first)
    np.testing.assert_allclose(first["token_attributions"], -np.asarray(second["token_attributions"]), atol=1e-6)


@pytest.mark.parametrize("problem, names, outputs", [("multi_label", ("a", "b", "c"), 3),
                                                     ("regression", ("score",), 1)])
def test_multi_label_and_regression_explain_one_output(premodels, problem, names, outputs):
    predictor = random_predictor(premodels, "bert", spec_for(names, problem, outputs=outputs))
    row = predictor.explain("the plot was good")[0]
    complete(row)
    assert row["label"] in names
    if problem == "regression":  # the score is the prediction itself
        assert row["score"] == pytest.approx(row["probabilities"]["score"], abs=1e-5)


def test_windows_are_explained_one_by_one(premodels):
    spec = spec_for(max_len=8, window_stride=3)  # 6 text tokens a window
    predictor = random_predictor(premodels, "bert", spec)
    long = "the quick brown fox jumps over the lazy dog"
    rows = predictor.explain([long, "bad film"], steps=16)
    ids, _, mask, _, owner = predictor.tokenizer.rows([long, "bad film"])
    assert [r["text"] for r in rows] == owner.tolist() and owner.tolist().count(0) > 1
    assert [r["window"] for r in rows] == [list(owner[:i]).count(o) for i, o in enumerate(owner)]
    for r, row in enumerate(rows):
        complete(row)
        assert row["tokens"] == [predictor.tokenizer.backend.id_to_token(int(i)) for i in ids[r][mask[r] > 0]]
        assert " ".join(row["words"]) in (long if row["text"] == 0 else "bad film")
    assert rows[0]["probabilities"] == rows[1]["probabilities"]  # the text's answer, on every window
    assert rows[0]["window_probabilities"] != rows[1]["window_probabilities"]


def test_windows_from_the_processed_arrays_as_evaluate_reads_them(premodels, tmp_path):
    long = "the quick brown fox jumps over the lazy dog and the movie"
    write(tmp_path / "t.csv", f"id,text,label\na,{long},1\nb,bad film,0\nc,good,1\n")
    assert run_stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path}", "data.name=w",
                     f"data.train_file={tmp_path / 't.csv'}", "data.id_column=id", "data.max_len=8",
                     "data.window_stride=3").code == 0
    predictor = random_predictor(premodels, "bert", spec_for(("0", "1"), max_len=8, window_stride=3))
    cfg = EvalConfig(explain=True, explain_ids=["a", "c"], explain_steps=8, batch_size=8)
    chosen = explain.split_rows(cfg, tmp_path / "w", ["train"])
    html = explain.split_page(cfg, predictor.models, predictor.spec, predictor.tokenizer, tmp_path / "w", chosen, "t")
    page = tmp_path / "page.html"
    page.write_text(html, encoding="utf-8")
    found = spans(page)
    windows = [row for row in found if " ".join(w for w, _ in row) in long]
    assert len(windows) > 1 and len(found) == len(windows) + 1  # a's windows, then c
    assert html.count("window ") >= len(windows) and [w for w, _ in found[-1]] == ["good"]


def test_word_pieces_merge_to_words_with_the_sum_of_their_attributions(premodels):
    for family, word in (("bert", "moviegoers"), ("roberta", "wonderful"), ("gpt2", "wonderful"),
                         ("deberta-v2", "moviegoers")):
        predictor = random_predictor(premodels, family)
        backend = predictor.tokenizer.backend
        text = f"Hello, {word} movie"
        ids, _, mask, _, owner = predictor.tokenizer.rows([text])
        from_text = predictor.explain(text, steps=8)[0]  # the tokenizer's words (offsets)
        from_tokens = explain.Explainer(predictor.models, predictor.spec, predictor.tokenizer, steps=8).arrays(
            explain.TokenRows(ids, mask, np.zeros_like(ids), owner))[0]
        pieces = [backend.id_to_token(i) for i in backend.encode(f" {word}", add_special_tokens=False).ids]
        assert len(pieces) > 1, pieces  # the word comes in several pieces
        for row in (from_text, from_tokens):
            assert row["words"][-2:] == [word, "movie"], (family, row["words"])
            start = next(i for i in range(len(row["tokens"])) if row["tokens"][i:i + len(pieces)] == pieces)
            want = sum(row["token_attributions"][start:start + len(pieces)])
            assert row["attributions"][-2] == pytest.approx(want, abs=1e-6) and want != 0
        np.testing.assert_allclose(from_text["attributions"][-2:], from_tokens["attributions"][-2:], atol=1e-6)


def test_marker_merging_from_token_pieces(premodels):
    bert = TextTokenizer.for_spec(load_tokenizer(premodels("bert")), spec_for().tokenization)
    ids = bert.backend.encode("moviegoers like cafe", add_special_tokens=False).ids
    words = explain.marker_words(bert.backend, np.asarray(ids), np.zeros(len(ids), dtype=bool))
    assert [w for w, _ in words] == ["moviegoers", "like", "cafe"]
    assert len(words[0][1]) == 6 and sum(len(p) for _, p in words) == len(ids)
    gpt2 = TextTokenizer.for_spec(load_tokenizer(premodels("gpt2")), spec_for().tokenization)
    ids = gpt2.backend.encode("wonderful moviegoers café!", add_special_tokens=False).ids
    words = explain.marker_words(gpt2.backend, np.asarray(ids), np.zeros(len(ids), dtype=bool))
    assert [w for w, _ in words] == ["wonderful", "moviegoers", "café!"]
    special = np.zeros(len(ids), dtype=bool)
    special[0] = True  # a special token is no word, and the piece after it starts one
    assert [w for w, _ in explain.marker_words(gpt2.backend, np.asarray(ids), special)][0] == "onderful"
