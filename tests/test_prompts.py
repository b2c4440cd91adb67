"""Prompts keep their question: a data.template row too long for max_len is cut inside its fields,
never in the template's own text, alike in data_process, the predictors and the ONNX tokenizer."""

import json

import numpy as np
import pytest

from conftest import ROOT, write
from test_train import FILLER
from textclf.premodels import load_tokenizer
from textclf.prompts import Cut, fit_rows
from textclf.tokenization import TextTokenizer

PAPER = ROOT / "configs" / "paper_llm.yaml"


def long_abstract(words, seed=0):
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(FILLER, words))


def encoded(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def llama(premodels):
    return load_tokenizer(premodels("llama"))


def test_a_long_row_loses_tokens_of_its_longest_field_and_keeps_the_templates_words(llama):
    template = "Judge the paper. title:{title}, abstract:{abstract} answer:"
    backend = TextTokenizer.from_hf(llama, 64).backend
    rows = [{"title": "a short title", "abstract": long_abstract(200)}, {"title": "fits", "abstract": "tiny"}]
    ids, lost = fit_rows(backend, template, rows, 40, Cut("head", 10))
    tail = encoded(llama, " answer:")
    assert len(ids[0]) <= 40 and ids[0][-len(tail):] == tail and lost[0] > 100
    assert ids[0][:len(encoded(llama, "Judge the paper. title:a short title"))] == \
        encoded(llama, "Judge the paper. title:a short title")  # the question and the short field whole
    assert ids[1] == encoded(llama, "Judge the paper. title:fits, abstract:tiny answer:") and lost[1] == 0
    # the field named by data.template_truncate goes first; tail truncation keeps the field's end
    named = {"title": long_abstract(60, seed=1), "abstract": long_abstract(60, seed=2)}
    whole = len(encoded(llama, template.format(**named)))
    budget = whole - 40  # one field's cut is enough
    ids, lost = fit_rows(backend, template, [named], budget, Cut("head", 10, field="title"))
    text = llama.decode(ids[0])
    assert len(ids[0]) <= budget and lost[0] >= 10
    assert text.endswith("abstract:" + named["abstract"] + " answer:")  # the other field whole
    assert not text.startswith("Judge the paper. title:" + named["title"])  # the named one cut
    ids, _ = fit_rows(backend, template, [named], budget, Cut("tail", 10, field="abstract"))
    text = llama.decode(ids[0])
    assert text.startswith("Judge the paper. title:" + named["title"] + ", abstract:")
    assert text.endswith(" " + " ".join(named["abstract"].split()[-5:]) + " answer:")  # the field's end kept


def test_data_process_and_every_predictor_cut_the_same_rows_the_same_way(stage, premodels, tmp_path, llama):
    """configs/paper_llm.yaml on long abstracts: no row loses its answer:, and the arrays equal what
    Predictor's and the ONNX predictor's tokenizer make of the raw rows."""
    rows = [(f"p{i}", f"title {i}", long_abstract(40 + 60 * (i % 3), seed=i), i % 2) for i in range(12)]
    write(tmp_path / "papers.csv", "id,title,abstract,label\n" + "".join(f"{i},{t},{a},{y}\n" for i, t, a, y in rows))
    result = stage("data_process", "--config", PAPER, f"model.name={premodels('llama')}",
                   f"data.output_dir={tmp_path / 'data'}", f"data.train_file={tmp_path / 'papers.csv'}",
                   "data.test_file=null", "data.max_len=128", "data.n_folds=2")
    assert result.code == 0, result
    folder = tmp_path / "data" / "paper_llm"
    meta = json.loads((folder / "meta.json").read_text())
    stats = meta["splits"]["train"]["length_stats"]
    assert stats["truncated_rows"] >= 8 and stats["cut_inside_template_fields"] and stats["cut_tokens"]["max"] > 100
    assert "inside the template's fields" in result.out
    ids, lengths = np.load(folder / "train" / "input_ids.npy"), np.load(folder / "train" / "lengths.npy")
    answer = encoded(llama, " answer:")
    for k in range(12):
        assert ids[k, lengths[k] - len(answer):lengths[k]].tolist() == answer, k  # the verbalizer's position holds
    from textclf.model import ModelSpec

    spec = ModelSpec.for_data(None, meta, "", "llama", "single_label")
    predictor_side = TextTokenizer.for_spec(llama, spec.tokenization)
    onnx_side = TextTokenizer.from_json(llama.backend_tokenizer.to_str(), predictor_side.to_json())
    items = [{"title": t, "abstract": a} for _, t, a, _ in rows]
    for side in (predictor_side, onnx_side):
        got, _, _, got_lengths, _ = side.rows(items)
        assert np.array_equal(got_lengths, lengths)
        assert all(got[k, :lengths[k]].tolist() == ids[k, :lengths[k]].tolist() for k in range(12))
        assert (side.last_cut > 0).sum() == stats["truncated_rows"]


@pytest.mark.parametrize("extra, phrase", [
    (["data.template=q {title} {label}"], "fills in the label column 'label'"),
    (["data.template=" + "a long instruction " * 30 + "{title}"], "no room for its fields"),
    (["data.template={title} {abstract}", "data.template_truncate=body"], "is not a field of data.template"),
])
def test_templates_that_would_read_the_answer_or_leave_no_room_are_refused(stage, premodels, tmp_path, extra, phrase):
    write(tmp_path / "p.csv", "title,abstract,label\n" + "".join(f"t{i},a{i},{i % 2}\n" for i in range(8)))
    result = stage("data_process", f"model.name={premodels('llama')}", f"data.output_dir={tmp_path / 'data'}",
                   "data.name=p", f"data.train_file={tmp_path / 'p.csv'}", "data.max_len=32", *extra)
    assert result.code == 2 and phrase in result.err and not (tmp_path / "data").exists(), result
