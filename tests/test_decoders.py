"""Decoder backbones (tiny random Llama, Qwen2, GPT-2) and LoRA adapters: last-token pooling under
left and right padding, the head refused where it cannot work, pad tokens, adapters-only
checkpoints that reload to the merged model's outputs, bit-exact resume, and two processes."""

import json

import numpy as np
import pytest
import torch

from conftest import write
from test_distributed import launch
from test_train import records, strip_time, toy_rows
from textclf.premodels import DECODERS


def data(stage, premodels, tmp_path, family, name="toy", extra=(), rows=None):
    rows = rows or toy_rows(48)
    write(tmp_path / f"{name}.csv", "id,text,label\n" + "".join(f"r{i},{t},{y}\n" for i, (t, y) in enumerate(rows)))
    write(tmp_path / "test.csv", "id,text,label\n" + "".join(f"t{i},{t},{y}\n" for i, (t, y) in enumerate(toy_rows(12, 5))))
    base = [f"model.name={premodels(family)}", f"data.output_dir={tmp_path / 'data'}", f"data.name={name}"]
    result = stage("data_process", *base, f"data.train_file={tmp_path / f'{name}.csv'}", "data.id_column=id",
                   f"data.test_file={tmp_path / 'test.csv'}", "data.max_len=24", *extra)
    assert result.code == 0, result
    return base


def train(stage, tmp_path, base, *args, out="ck"):
    result = stage("train", *base, f"train.output_dir={tmp_path / out}", "train.precision=no", "train.batch_size=8",
                   "train.log_every_steps=1", "train.lr=1e-3", *args)
    assert result.code == 0, result
    return result


@pytest.mark.parametrize("family", DECODERS)
def test_last_token_pooling_equals_the_hand_computation_under_left_and_right_padding(premodels, family):
    from transformers import AutoTokenizer

    from textclf.premodels import load_tokenizer
    from textclf.model import HeadConfig, build_classifier

    folder = premodels(family)
    model = build_classifier(folder, HeadConfig("last", 2, 0.0)).eval()
    tokenizer = load_tokenizer(folder)
    assert tokenizer.pad_token is not None  # set from eos / unk when the tokenizer has none
    texts = ["the movie was great fun and more", "bad", "a plot with one actor"]
    with torch.no_grad():
        want = []
        for text in texts:  # each text alone, unpadded: the last position's hidden state
            enc = AutoTokenizer.from_pretrained(str(folder))(text, return_tensors="pt")
            hidden = model.backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            want.append(hidden[0, -1])
        want = torch.stack(want)
        for side in ("right", "left"):
            tokenizer.padding_side = side
            enc = tokenizer(texts, padding=True, return_tensors="pt")
            assert (enc["attention_mask"] == 0).any()
            got, _ = model.features(enc["input_ids"], enc["attention_mask"])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("head", ["cls", "pooler", "fusion"])
def test_heads_that_read_the_first_token_are_refused_on_a_decoder(stage, premodels, tmp_path, head):
    base = data(stage, premodels, tmp_path, "llama")
    result = stage("train", *base, f"train.output_dir={tmp_path / 'ck'}", f"model.head={head}")
    assert result.code == 2 and "that token has seen only itself" in result.err, result
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "ck").exists()


@pytest.mark.parametrize("family", DECODERS)
def test_a_decoder_trains_with_the_last_token_head_by_default(stage, premodels, tmp_path, family):
    base = data(stage, premodels, tmp_path, family)
    meta = json.loads((tmp_path / "data" / "toy" / "meta.json").read_text())
    assert meta["tokenizer"]["pad_token_id"] is not None
    train(stage, tmp_path, base, "train.epochs=3")
    run = tmp_path / "ck" / "toy"
    spec = json.loads((run / "fold0" / "best" / "head.json").read_text())
    assert spec["head"]["head"] == "last" and "head: last" in (run / "config.yaml").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["rows"] == 12


def test_lora_trains_adapters_only_and_the_checkpoint_reloads_to_the_merged_outputs(stage, premodels, tmp_path):
    from safetensors.torch import load_file

    from textclf import Predictor, export
    from textclf.model import load_classifier

    base = data(stage, premodels, tmp_path, "llama")
    train(stage, tmp_path, base, "train.epochs=2", "model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj]}")
    best = tmp_path / "ck" / "toy" / "fold0" / "best"
    weights = load_file(str(best / "model.safetensors"))
    assert weights and all("lora_" in k or not k.startswith("backbone.") for k in weights)
    assert any("lora_A" in k for k in weights) and "fc.weight" in weights
    spec = json.loads((best / "head.json").read_text())
    assert spec["head"]["lora"] == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                                    "quantize": None}
    assert len(spec["provenance"]["base_sha256"]) == 64
    # the base stayed as it was: the adapters moved, the base's own weights did not
    model, _ = load_classifier(best)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at 0: training moved it
    texts = ["the movie was great fun", "boring and bad, the worst", "a plot"]
    want = Predictor.from_run(tmp_path / "ck" / "toy", precision="no").predict(texts)["probs"]
    # merged into plain weights and exported, the model gives the same probabilities
    report = export.export(tmp_path / "ck" / "toy", "hf", tmp_path / "hf")
    assert report["folders"][0]["max_difference"] <= 1e-5
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf"), trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    with torch.no_grad():
        got = hf(**tok(texts, padding=True, return_tensors="pt")).logits.softmax(-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # a changed base is refused when the adapters are loaded
    premodel = premodels("llama")
    saved = (premodel / "model.safetensors").read_bytes()
    try:
        (premodel / "model.safetensors").write_bytes(saved[:-8] + b"\0" * 8)
        with pytest.raises(Exception, match="differ from the ones it was trained on"):
            load_classifier(best)
    finally:
        (premodel / "model.safetensors").write_bytes(saved)


def test_lora_on_an_encoder_and_resume_is_bit_exact(stage, premodels, tmp_path):
    base = data(stage, premodels, tmp_path, "bert")
    args = ["train.epochs=2", "model.lora={r: 2, dropout: 0.1}", "model.head=mean", "train.keep_state=true"]
    train(stage, tmp_path, base, *args, out="straight")
    first = stage("train", *base, f"train.output_dir={tmp_path / 'stopped'}", "train.precision=no", "train.batch_size=8",
                  "train.log_every_steps=1", "train.lr=1e-3", *args, "train.max_time=0.000001")
    assert first.code == 0 and "train.resume=" in first.out
    train(stage, tmp_path, base, *args, "train.resume=auto", out="stopped")
    run, straight = tmp_path / "stopped" / "toy", tmp_path / "straight" / "toy"
    assert strip_time(records(run, "eval")) == strip_time(records(straight, "eval"))
    assert (run / "fold0/best/model.safetensors").read_bytes() == (straight / "fold0/best/model.safetensors").read_bytes()
    state = sorted((run / "fold0").glob("last-*"))[-1]
    from safetensors.torch import load_file

    assert all("lora_" in k or not k.startswith("backbone.") for k in load_file(str(state / "model.safetensors")))


@pytest.mark.parametrize("args, expected", [
    (["model.lora={r: 4, quantize: 4bit}"], "needs a CUDA GPU"),
    (["model.lora={r: 0}"], "model.lora.r"),
    (["model.lora={rank: 4}"], "unknown setting 'rank'"),
    (["model.lora={r: 4}", "train.adversarial=fgm"], "use train.adversarial=awp with LoRA"),
    (["model.lora={r: 4, target_modules: [no_such_module]}"], "does not fit"),
])
def test_lora_settings_that_cannot_work_are_refused(stage, premodels, tmp_path, args, expected):
    base = data(stage, premodels, tmp_path, "llama")
    result = stage("train", *base, f"train.output_dir={tmp_path / 'ck'}", "train.precision=no", *args)
    assert result.code == 2 and expected in result.err, result
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "ck").exists()


def test_two_processes_train_lora_like_one(stage, premodels, tmp_path):
    """64 train rows in batches of 4: two processes take the steps one process takes accumulating two."""
    base = data(stage, premodels, tmp_path, "qwen2", rows=toy_rows(72))
    common = [*base, "train.precision=no", "train.epochs=1", "train.batch_size=4", "train.lr=1e-3",
              "train.log_every_steps=1", "train.sampler=random", "model.dropout=0", "model.lora={r: 2}"]
    launch("train.py", *common, f"train.output_dir={tmp_path / 'one'}", "train.grad_accum=2", processes=1)
    launch("train.py", *common, f"train.output_dir={tmp_path / 'two'}")
    one, two = (records(tmp_path / o / "toy", "train") for o in ("one", "two"))
    assert [r["step"] for r in one] == [r["step"] for r in two] and len(one) == 8
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    probs = [np.load(tmp_path / o / "toy" / "oof" / "probs.npy") for o in ("one", "two")]
    np.testing.assert_allclose(*probs, atol=1e-4)


# ---------------------------------------------------------------------------- verbalizer


def test_verbalizer_logits_are_the_lm_heads_next_token_logits(premodels):
    from transformers import AutoModelForCausalLM

    from textclf.premodels import load_tokenizer
    from textclf.model import HeadConfig, build_classifier, init_verbalizer, verbalizer_ids
    from textclf.problem import problem_type

    for family in DECODERS:
        folder = premodels(family)
        tokenizer = load_tokenizer(folder)
        head = HeadConfig("last", 2, 0.0)
        ids = verbalizer_ids(["0", "1"], tokenizer, ["0", "1"], problem_type("single_label"),
                             AutoModelForCausalLM.from_pretrained(str(folder)).config, head)
        model = build_classifier(folder, head).eval()
        init_verbalizer(model, folder, ids)
        lm = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
        enc = tokenizer(["the movie was great fun", "bad"], padding=True, return_tensors="pt")
        with torch.no_grad():
            got = model(enc["input_ids"], enc["attention_mask"])
            want = torch.stack([lm(input_ids=enc["input_ids"][i:i + 1, :n], attention_mask=enc["attention_mask"][i:i + 1, :n])
                                .logits[0, -1, ids] for i, n in enumerate(enc["attention_mask"].sum(1).tolist())])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_verbalizer_with_lora_keeps_the_lm_rows_and_trains_the_adapters(stage, premodels, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = data(stage, premodels, tmp_path, "llama")
    train(stage, tmp_path, base, "train.epochs=2", "model.verbalizer=['0','1']", "model.lora={r: 2}")
    best = tmp_path / "ck" / "toy" / "fold0" / "best"
    spec = json.loads((best / "head.json").read_text())["head"]
    tokenizer = AutoTokenizer.from_pretrained(str(premodels("llama")))
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("0", "1")]  # the seed's "output 1 or 0"
    assert spec["verbalizer"] == ["0", "1"] and spec["verbalizer_ids"] == ids
    weights = load_file(str(best / "model.safetensors"))
    lm = AutoModelForCausalLM.from_pretrained(str(premodels("llama")))
    torch.testing.assert_close(weights["fc.weight"], lm.get_output_embeddings().weight[ids].detach())
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # the adapters trained (B starts at 0)


@pytest.mark.parametrize("family, args, expected", [
    ("bert", ["model.verbalizer=['0','1']"], "not a causal language model"),
    ("llama", ["model.verbalizer=['0']"], "1 words for 2 labels"),
    ("llama", ["model.verbalizer=['0',goodbadgreat]"], "must be one token"),
    ("llama", ["model.verbalizer=['0','1']", "model.head=mean"], "use model.head=last"),
])
def test_verbalizer_settings_that_cannot_work_are_refused(stage, premodels, tmp_path, family, args, expected):
    base = data(stage, premodels, tmp_path, family)
    result = stage("train", *base, f"train.output_dir={tmp_path / 'ck'}", "train.precision=no", *args)
    assert result.code == 2 and expected in result.err, result
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "ck").exists()


# ---------------------------------------------------------------------------- data.template

TEMPLATE = "title:{title}, abstract:{abstract}"


def paper_rows(n, seed=0):
    rows = toy_rows(n, seed)
    return [(f"p{i}", " ".join(t.split()[:2]), " ".join(t.split()[2:]) or "x", y) for i, (t, y) in enumerate(rows)]


def test_template_is_applied_alike_by_data_process_predictor_evaluate_and_onnx(stage, premodels, tmp_path):
    from textclf import Predictor, export
    from textclf.premodels import load_tokenizer
    from textclf.onnx_predict import OnnxPredictor

    rows, test = paper_rows(40), paper_rows(10, seed=3)
    header = "id,title,abstract,label\n"
    write(tmp_path / "train.csv", header + "".join(f"{i},{a},{b},{y}\n" for i, a, b, y in rows))
    write(tmp_path / "test.csv", header + "".join(f"{i},{a},{b},{y}\n" for i, a, b, y in test))
    common = [f"model.name={premodels('llama')}", f"data.output_dir={tmp_path / 'data'}", "data.name=papers",
              f"train.output_dir={tmp_path / 'ck'}", f"eval.output_dir={tmp_path / 'mp'}", "train.precision=no",
              "eval.precision=no"]
    assert stage("data_process", *common, f"data.train_file={tmp_path / 'train.csv'}", f"data.template={TEMPLATE}",
                 f"data.test_file={tmp_path / 'test.csv'}", "data.id_column=id", "data.max_len=32").code == 0
    folder = tmp_path / "data" / "papers"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["template"] == TEMPLATE and meta["text_columns"] == ["title", "abstract"]
    tokenizer = load_tokenizer(premodels("llama"))
    ids, lengths = np.load(folder / "test" / "input_ids.npy"), np.load(folder / "test" / "lengths.npy")
    for k, (_, a, b, _) in enumerate(test):
        assert ids[k, :lengths[k]].tolist() == tokenizer(f"title:{a}, abstract:{b}")["input_ids"]
    assert stage("train", *common, "train.epochs=1", "train.batch_size=8").code == 0
    assert stage("evaluate", *common, f"eval.run={tmp_path / 'ck' / 'papers'}").code == 0
    want = np.load(tmp_path / "mp" / "papers" / "test" / "probs.npy")
    predictor = Predictor.from_run(tmp_path / "ck" / "papers", precision="no")
    got = predictor.predict([{"title": a, "abstract": b} for _, a, b, _ in test])["probs"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(Exception, match="pass each row as a mapping"):
        predictor.predict(["a plain text"])
    # eval.input reads the columns and fills the template the same way
    result = stage("evaluate", *common, f"eval.run={tmp_path / 'ck' / 'papers'}", f"eval.input={tmp_path / 'test.csv'}")
    assert result.code == 0, result
    written = sorted((tmp_path / "mp").glob("papers-texts*/predictions.csv"))[-1].read_text().splitlines()[1:]
    np.testing.assert_allclose([float(line.split(",")[3]) for line in written], want[:, 1], atol=1e-5)
    # and so does the ONNX predictor, from the template stored with the export
    report = export.export(tmp_path / "ck" / "papers", "onnx", tmp_path / "onnx", int8=True)
    # ONNX Runtime's optimizer fuses encoders' attention only: the int8 graph is quantised from model.onnx
    assert report["folders"][0]["int8_graph"]["fused"] is None and "attention" in report["folders"][0]["int8_graph"][
        "reason"], report["folders"][0]["int8_graph"]
    onnx = OnnxPredictor.from_export(tmp_path / "onnx").predict([{"title": a, "abstract": b} for _, a, b, _ in test])
    np.testing.assert_allclose(onnx["probs"], want, atol=1e-4)
    # the template is part of the data: evaluate refuses to change it
    result = stage("evaluate", *common, f"eval.run={tmp_path / 'ck' / 'papers'}", "data.template=x {title}")
    assert result.code == 2 and "data.template" in result.err


@pytest.mark.parametrize("template, expected", [
    ("{title!r}", "is not a plain column name"),
    ("{title:>10}", "is not a plain column name"),
    ("no fields here", "names no column"),
    ("{}", "is not a plain column name"),
    ("{nope} {title}", "has no column 'nope' (data.template)"),
    ("q1: {1} q2: {title}", "is not a plain column name"),  # {1} would be a positional field
])
def test_bad_templates_are_refused(stage, premodels, tmp_path, template, expected):
    write(tmp_path / "train.csv", "title,abstract,label\na b,c d,0\ne f,g h,1\n")
    result = stage("data_process", f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}",
                   "data.name=t", f"data.train_file={tmp_path / 'train.csv'}", f"data.template={template}")
    assert result.code == 2 and expected in result.err, result
    assert not (tmp_path / "data").exists()


def test_a_lora_decoder_run_blends_with_an_encoder_run_and_checkpoints_gradients(stage, premodels, tmp_path):
    """Same raw files tokenized for each model: the two runs' prediction sets share rows and blend."""
    rows = toy_rows(40)
    write(tmp_path / "train.csv", "id,text,label\n" + "".join(f"r{i},{t},{y}\n" for i, (t, y) in enumerate(rows)))
    write(tmp_path / "test.csv", "id,text,label\n" + "".join(f"t{i},{t},{y}\n" for i, (t, y) in enumerate(toy_rows(9, 2))))
    common = [f"data.output_dir={tmp_path / 'data'}", f"train.output_dir={tmp_path / 'ck'}",
              f"eval.output_dir={tmp_path / 'mp'}", "train.precision=no", "eval.precision=no", "data.n_folds=2",
              f"data.train_file={tmp_path / 'train.csv'}", f"data.test_file={tmp_path / 'test.csv'}",
              "data.id_column=id", "data.max_len=24"]
    for family, extra in (("bert", []), ("gpt2", ["model.lora={r: 2}", "train.gradient_checkpointing=true"])):
        args = [*common, f"model.name={premodels(family)}", f"data.name={family}"]
        assert stage("data_process", *args).code == 0
        assert stage("train", *args, "train.epochs=1", "train.batch_size=8", *extra).code == 0
        assert stage("evaluate", *args, f"eval.run={tmp_path / 'ck' / family}").code == 0
    result = stage("ensemble_and_submit", *common, f"model.name={premodels('bert')}", "data.name=bert",
                   f"ensemble.predictions=[{tmp_path / 'mp' / 'bert'},{tmp_path / 'mp' / 'gpt2'}]",
                   f"ensemble.output_dir={tmp_path / 'subs'}")
    assert result.code == 0, result
    summary = json.loads((tmp_path / "subs" / "submission.json").read_text())
    assert summary["tuned_on"] == "oof" and len(summary["weights"]) == 2


def test_the_paper_llm_config_runs_end_to_end(stage, premodels, tmp_path):
    """configs/paper_llm.yaml (template, decoder, LoRA, verbalizer) on a tiny random Llama."""
    from conftest import ROOT

    rows = paper_rows(30)
    header = "id,title,abstract,label\n"
    write(tmp_path / "train.csv", header + "".join(f"{i},{a},{b},{y}\n" for i, a, b, y in rows))
    write(tmp_path / "test.csv", header + "".join(f"{i},{a},{b},{y}\n" for i, a, b, y in paper_rows(8, 4)))
    common = ["--config", str(ROOT / "configs" / "paper_llm.yaml"), f"model.name={premodels('llama')}",
              f"data.output_dir={tmp_path / 'data'}", f"train.output_dir={tmp_path / 'ck'}",
              f"eval.output_dir={tmp_path / 'mp'}", f"data.train_file={tmp_path / 'train.csv'}",
              f"data.test_file={tmp_path / 'test.csv'}", "data.max_len=96", "data.n_folds=2", "train.epochs=1",
              "train.precision=no", "eval.precision=no", "ensemble.sample_submission=null"]
    for script in ("data_process", "train", "evaluate"):
        result = stage(script, *common)
        assert result.code == 0, (script, result)
    result = stage("ensemble_and_submit", *common, f"ensemble.predictions=[{tmp_path / 'mp' / 'paper_llm'}]",
                   f"ensemble.output_dir={tmp_path / 'subs'}")
    assert result.code == 0, result
    assert len((tmp_path / "subs" / "paper_llm.csv").read_text().splitlines()) == 9


def test_template_cells_and_plain_texts_are_read_alike_everywhere(stage, premodels, tmp_path):
    from textclf.premodels import load_tokenizer
    from textclf.errors import UserError
    from textclf.text_rules import fill_template
    from textclf.tokenization import TextTokenizer

    # JSON true/false/null and invisible-only cells read as data_process reads them
    assert fill_template("{a} | {b} | {c}", {"a": True, "b": None, "c": "\u200b"}) == "true |  |"
    plain = TextTokenizer.from_hf(load_tokenizer(premodels("bert")), 16)
    with pytest.raises(UserError, match="pass strings"):
        plain.texts([{"text": "great film"}])  # no template: a mapping is refused, never read as its repr
    # eval.texts with a template of several fields is refused before training starts
    write(tmp_path / "t.csv", "title,abstract,label\n" + "".join(f"a{i} b,c d,{i % 2}\n" for i in range(20)))
    base = [f"model.name={premodels('bert')}", f"data.output_dir={tmp_path / 'data'}", "data.name=t"]
    assert stage("data_process", *base, f"data.train_file={tmp_path / 't.csv'}", f"data.template={TEMPLATE}").code == 0
    result = stage("train", *base, f"train.output_dir={tmp_path / 'ck'}", "eval.texts=[a great film]")
    assert result.code == 2 and "eval.input" in result.err and not (tmp_path / "ck").exists(), result


@pytest.mark.parametrize("lora", [None, {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": "all-linear",
                                         "quantize": None}])
def test_layer_wise_lr_decay_reaches_every_decoder_layer(premodels, lora):
    """Llama's layers.N (also under peft's wrapper names) get lr * decay^depth, not one LR for all."""
    from textclf.config import TrainConfig
    from textclf.model import HeadConfig, build_classifier
    from textclf.optim import make_optimizer

    model = build_classifier(premodels("llama"), HeadConfig("last", 2, 0.0, lora=lora))
    optimizer = make_optimizer(model, TrainConfig(lr=1e-3, head_lr=5e-3, layer_lr_decay=0.5))
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    by_layer = {}
    for name, param in model.named_parameters():
        if param.requires_grad and name.startswith("backbone.") and ".layers." in name:
            by_layer.setdefault(int(name.split(".layers.")[1].split(".")[0]), set()).add(lr_of[id(param)])
    assert by_layer == {1: {1e-3}, 0: {5e-4}}
    if lora is None:
        assert lr_of[id(dict(model.named_parameters())["backbone.embed_tokens.weight"])] == 2.5e-4
