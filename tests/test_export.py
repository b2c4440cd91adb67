"""Models that leave textclf: best/ and exported Hugging Face folders, ONNX graphs and the
torch-free ONNX Runtime predictor, all checked against textclf's own probabilities."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ROOT, run_stage, write
from test_train import toy_rows
from textclf import export
from textclf.premodels import load_tokenizer
from textclf.errors import UserError, run_cli
from textclf.model import HeadConfig, Labels, ModelSpec, Provenance, Tokenization, build_classifier, save_classifier
from textclf.predict import Predictor

TEXTS = ["good great film", "awful bad dull", "a plot", "great " * 30 + "bad", "cancer tumor cell cell"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, premodels):
    """A two-fold run (mean head) and a one-fold run (pooler head), both on BERT."""
    tmp = tmp_path_factory.mktemp("export_run")
    rows = toy_rows(48)
    write(tmp / "train.csv", "id,text,label\n" + "".join(f"r{i},{t},{'neg pos'.split()[l]}\n"
                                                       for i, (t, l) in enumerate(rows)))
    common = [f"model.name={premodels('bert')}", f"data.output_dir={tmp / 'data'}", "data.name=toy",
              f"train.output_dir={tmp / 'ck'}", "train.precision=no"]
    assert run_stage("data_process", *common, f"data.train_file={tmp / 'train.csv'}", "data.id_column=id",
                     "data.max_len=24", "data.n_folds=2").code == 0
    for run, head in (("two", "mean"), ("pool", "pooler")):
        folds = "all" if run == "two" else "[0]"
        result = run_stage("train", *common, f"train.run={run}", f"model.head={head}", "train.epochs=2",
                           "train.batch_size=8", "train.lr=2e-3", f"train.folds={folds}")
        assert result.code == 0, result
    return tmp


def predictor(run_dir, folds="all"):
    return Predictor.from_run(run_dir, folds=folds, device="cpu", precision="no")


def test_best_folder_refuses_plain_transformers_and_loads_exactly_with_remote_code(toy_run, monkeypatch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    monkeypatch.setattr("builtins.input", lambda *a: "n")  # transformers asks on a terminal; the answer is no
    best = toy_run / "ck" / "two" / "fold0" / "best"
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForSequenceClassification.from_pretrained(best)
    model = AutoModelForSequenceClassification.from_pretrained(best, trust_remote_code=True).eval()
    assert model.config.id2label == {0: "neg", 1: "pos"}
    tokenizer = AutoTokenizer.from_pretrained(best, trust_remote_code=True)
    enc = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1).numpy()
    want = predictor(toy_run / "ck" / "two", folds=[0]).predict(TEXTS[:3])["probs"]
    np.testing.assert_allclose(probs, want, atol=1e-5)


@pytest.mark.parametrize("fold", ["mean", "0"])
def test_hf_export_equals_predictor_through_pipeline(toy_run, fold):
    from transformers import pipeline

    out = toy_run / f"hf-{fold}"
    export.export(toy_run / "ck" / "two", "hf", out, fold=fold)
    report = json.loads((out / "export.json").read_text())
    assert report["folders"][0]["max_difference"] <= 1e-5
    config = json.loads((out / "config.json").read_text())
    assert config["members"] == (2 if fold == "mean" else 1)  # the fold mean is one exact model
    assert config["problem_type"] == "single_label_classification" and config["label2id"] == {"neg": 0, "pos": 1}
    want = predictor(toy_run / "ck" / "two", folds="all" if fold == "mean" else [0]).predict(TEXTS)
    pipe = pipeline("text-classification", model=str(out), trust_remote_code=True, top_k=None)
    got = pipe(TEXTS, truncation=True)
    probs = np.array([[next(s["score"] for s in row if s["label"] == name) for name in ("neg", "pos")] for row in got])
    np.testing.assert_allclose(probs, want["probs"], atol=1e-5)
    assert [max(row, key=lambda s: s["score"])["label"] for row in got] == want["labels"]


def test_pooler_head_on_bert_exports_as_the_native_class(toy_run):
    from transformers import AutoModelForSequenceClassification, pipeline

    out = toy_run / "hf-native"
    export.export(toy_run / "ck" / "pool", "hf", out)
    assert not (out / "modeling_textclf.py").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out)  # no remote code
    assert type(model).__name__ == "BertForSequenceClassification"
    pipe = pipeline("text-classification", model=str(out), top_k=None)
    got = pipe(TEXTS, truncation=True)
    probs = np.array([[next(s["score"] for s in row if s["label"] == name) for name in ("neg", "pos")] for row in got])
    np.testing.assert_allclose(probs, predictor(toy_run / "ck" / "pool").predict(TEXTS)["probs"], atol=1e-5)


def test_each_fold_gets_its_own_folder(toy_run):
    out = toy_run / "hf-each"
    report = export.export(toy_run / "ck" / "two", "hf", out, fold="each")
    assert [e["folder"] for e in report["folders"]] == ["fold0", "fold1"]
    assert all((out / f"fold{k}" / "model.safetensors").is_file() for k in (0, 1))


def test_onnx_export_and_torch_free_predictor_equal_predictor(toy_run):
    from textclf.onnx_predict import OnnxPredictor

    out = toy_run / "onnx"
    report = export.export(toy_run / "ck" / "two", "onnx", out, int8=True)
    entry = report["folders"][0]
    assert entry["max_difference"] <= 1e-4
    assert entry["int8"]["rows"] == 48 and 0 <= entry["int8"]["accuracy_int8"] <= 1
    want = predictor(toy_run / "ck" / "two").predict(TEXTS)
    got = OnnxPredictor.from_export(out).predict(TEXTS)
    np.testing.assert_allclose(got["probs"], want["probs"], atol=1e-4)
    assert got["labels"] == want["labels"]
    # the int8 graph is made from the fused one (onnx_fusion.py): each fold's attention, LayerNorm and GELU
    layers = len(predictor(toy_run / "ck" / "two").models[0].backbone.encoder.layer)
    fused = entry["int8_graph"]["fused"]
    assert fused, entry["int8_graph"]
    assert fused["Attention"] == 2 * layers and fused["SkipLayerNormalization"] == 2 * 2 * layers, entry
    recorded = json.loads((out / "textclf_onnx.json").read_text())["int8"]
    assert recorded["fused"] == fused
    assert recorded["weights"] == export.WEIGHTS
    int8 = OnnxPredictor.from_export(out, int8=True).predict(TEXTS)["probs"]
    assert int8.shape == (len(TEXTS), 2) and np.abs(int8 - want["probs"]).max() < 0.05, int8 - want["probs"]
    # The same predictions in a process where torch and transformers cannot be imported.
    code = ("import sys, json\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'transformers'):\n"
            "            raise ImportError(f'{name} is blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from textclf.onnx_predict import OnnxPredictor\n"
            f"out = OnnxPredictor.from_export({str(out)!r}).predict(json.loads(sys.argv[1]))\n"
            "assert 'torch' not in sys.modules\n"
            "print(json.dumps(out['probs'].tolist()))\n")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(TEXTS)], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.array(json.loads(result.stdout)), want["probs"], atol=1e-4)


def test_export_refuses_before_writing(toy_run, capsys):
    with pytest.raises(UserError, match="--int8"):
        export.export(toy_run / "ck" / "two", "hf", toy_run / "x", int8=True)
    with pytest.raises(UserError, match="fold number"):
        export.export(toy_run / "ck" / "two", "hf", toy_run / "x", fold="last")
    with pytest.raises(UserError, match="does not train"):
        export.export(toy_run / "ck" / "two", "hf", toy_run / "x", fold="7")
    with pytest.raises(UserError, match="inside the run"):
        export.export(toy_run / "ck" / "two", "hf", toy_run / "ck" / "two" / "exported")
    foreign = toy_run / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        export.export(toy_run / "ck" / "two", "hf", foreign, overwrite=True)
    assert (foreign / "keep.txt").read_text() == "mine"
    assert not (toy_run / "x").exists()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(export.main, ["--run", str(toy_run / "ck" / "two"), "--format", "hf", "--out", str(foreign)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "already exists" in err


def test_every_export_carries_a_model_card(toy_run):
    """README.md in every exported folder: hub metadata, the labels, the run's own metrics, the data's
    fingerprint, the training config and the precision, each read back from the run's records."""
    import yaml

    run = toy_run / "ck" / "two"
    summary = json.loads((run / "summary.json").read_text())
    run_json = json.loads((run / "run.json").read_text())
    meta = json.loads((toy_run / "data" / "toy" / "meta.json").read_text())
    for fmt, fold, folders in (("hf", "mean", ["."]), ("onnx", "each", ["fold0", "fold1"])):
        out = toy_run / f"card-{fmt}"
        export.export(run, fmt, out, fold=fold)
        for folder in folders:
            text = (out / folder / "README.md").read_text()
            front = yaml.safe_load(text.split("---")[1])
            assert front["pipeline_tag"] == "text-classification"
            assert front["library_name"] == ("transformers" if fmt == "hf" else "onnx")
            assert "`neg`, `pos` (2)" in text
            for name, value in summary["oof"].items():
                assert f"| out-of-fold (validation) | {name} | {value:.4f} |" in text
            assert run_json["data_meta_sha256"] in text
            assert meta["splits"]["train"]["source_sha256"][:16] in text
            config = yaml.safe_load(text.split("```yaml")[1].split("```")[0])
            trained = yaml.safe_load((run / "config.yaml").read_text())
            assert config["train"] == {k: v for k, v in trained["train"].items() if k not in ("output_dir", "resume",
                                                                                                "teacher")}
            assert config["model"]["name"] == "random-bert" and str(toy_run) not in text.split("```yaml")[1]
            assert run_json["precision"]["precision"] == "no" and "Trained in fp32 on" in text
            assert "## Intended use" in text
        if fmt == "onnx":
            assert "fold 1: `model.safetensors`" in (out / "fold1" / "README.md").read_text()


def test_an_int8_predictor_quantises_the_backbone_and_keeps_the_head(toy_run):
    run = toy_run / "ck" / "two"
    exact = predictor(run).predict(TEXTS)["probs"]
    q8 = Predictor.from_run(run, device="cpu", precision="int8")
    layers = [m for m in q8.models[0].backbone.modules() if "quantized" in type(m).__module__]
    assert layers and not any(type(m) is torch.nn.Linear for m in q8.models[0].backbone.modules())
    assert all(type(m.fc) is torch.nn.Linear for m in q8.models)  # the head stays fp32
    got = q8.predict(TEXTS)["probs"]
    assert 0 < np.abs(got - exact).max() < 0.05, np.abs(got - exact).max()
    assert q8.temperature == predictor(run).temperature  # the run's calibration still applies
    with pytest.raises(UserError, match="int8 layers have none"):
        q8.explain(TEXTS[:1])
    with pytest.raises(UserError, match="runs on the CPU"):
        Predictor.from_run(run, device="cuda", precision="int8")


def test_push_to_hub_offline_is_one_line_and_writes_nothing(toy_run, capsys):
    out = toy_run / "pushed"
    with pytest.raises(UserError, match="HF_HUB_OFFLINE=1"):
        export.export(toy_run / "ck" / "two", "hf", out, push_to_hub="me/toy")
    for bad in ("a/b/c", "", "two words"):
        with pytest.raises(UserError, match="name a hub repository"):
            export.export(toy_run / "ck" / "two", "hf", out, push_to_hub=bad)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(export.main, ["--run", str(toy_run / "ck" / "two"), "--format", "onnx", "--out", str(out),
                              "--push-to-hub", "me/toy"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "upload the folder from a machine" in err
    assert not out.exists() and not list(toy_run.glob(".pushed*"))


# ---------------------------------------------------------------------------- every head and family


@pytest.mark.parametrize("problem_type", ["single_label", "binary_bce", "multi_label"])
def test_every_head_and_family_exports_exactly(premodels, families, tmp_path, problem_type):
    """For each family x head, the exported HF folder gives textclf's probabilities (atol 1e-5),
    and the native class is used exactly where the pooler head has one."""
    from transformers import AutoModelForSequenceClassification

    names = ["neg", "pos"] if problem_type == "binary_bce" else ["a", "b", "c"]
    for family in families:
        model_dir = premodels(family)
        tokenizer = load_tokenizer(model_dir)
        for head in ("cls", "mean", "pooler", "fusion"):
            torch.manual_seed(0)
            head_config = HeadConfig(head=head, n_outputs=1 if problem_type == "binary_bce" else 3)
            model = build_classifier(model_dir, head_config).eval()
            with torch.no_grad():  # tiny random encoders give nearly one output for all rows: spread them
                for param in model.parameters():
                    param.add_(torch.randn_like(param) * 0.2)
            spec = ModelSpec(head_config, Labels(names, problem_type),
                             Tokenization(20, "head", None, ["text"], None, ""), Provenance("toy", "", family))
            folder = tmp_path / f"{family}-{head}"
            folder.mkdir()
            save_classifier(model, folder, spec, tokenizer)
            out = tmp_path / f"{family}-{head}-hf"
            out.mkdir()
            config = export.read_encoder_config(folder)
            kind, diff = export.write_hf(out, [model], spec, config, load_tokenizer(folder))
            assert diff <= 1e-5, (family, head, diff)
            native = head == "pooler" and family in ("bert", "roberta", "deberta-v2")
            assert kind.startswith("Textclf") != native, (family, head, kind)
            loaded = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=not native).eval()
            ids, mask, types = export.check_rows(spec, tokenizer)
            with torch.no_grad():
                logits = loaded(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
                raw = model(ids, mask, types)
            # logits too (probabilities of a random head barely move): [0, z] for binary_bce's one logit z
            want = torch.cat([torch.zeros_like(raw), raw], -1) if problem_type == "binary_bce" else raw
            assert float((logits - want).abs().max()) <= 1e-4, (family, head)
            assert float(raw.std(0).mean()) > 1e-2  # the rows get different outputs: the comparison has teeth


def test_the_fused_graph_reads_the_attention_mask_as_given(toy_run, tmp_path):
    """onnx_fusion's graph answers like textclf for masks the check rows never hold: padding on the
    left and a gap inside a row (ONNX Runtime's default reads a mask as a count of leading ones)."""
    import onnxruntime as ort

    from textclf import onnx_fusion
    from textclf.predict import load_fold_models

    models, spec, checkpoints = load_fold_models(toy_run / "ck" / "two", "all", False, True)
    module, names, outputs, example, batch = export.graph_parts(models, spec, load_tokenizer(checkpoints[0]["path"]))
    feeds = {0: {name: t.numpy() for name, t in zip(names, batch)}}  # the export's own check is not this test's
    path, how = onnx_fusion.fuse(module, example, (names, outputs), (feeds, lambda got, width: 0.0), 1e-4,
                                 tmp_path / "fused.onnx")
    assert how["fused"]["Attention"] == 2 * len(models[0].backbone.encoder.layer), how
    ids, mask, types = (t[:6, :12].clone() for t in batch[:3])
    mask[:] = 1
    mask[0, :4] = 0  # left padding
    mask[1, 5:7] = 0  # a gap
    mask[2, 9:] = 0  # right padding
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        list(outputs), {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()})
    with torch.no_grad():
        want = module(ids, mask, types)
    np.testing.assert_allclose(got[0], (want if len(outputs) == 1 else want[0]).numpy(), atol=1e-5)


def test_int8_check_of_a_fold_mean_scores_each_row_out_of_fold(toy_run, tmp_path):
    """Honest int8 figures: a fold-mean export is scored on each row by the fold model that held it
    out (the graph's per-fold output), so its fp32 accuracy is the run's out-of-fold accuracy, not
    the fold mean's on rows the other folds trained on."""
    report = export.export(toy_run / "ck" / "two", "onnx", tmp_path / "onnx", int8=True)
    doc = json.loads((tmp_path / "onnx" / "textclf_onnx.json").read_text())
    assert doc["outputs"] == ["probs", "fold_probs"] and doc["folds"] == 2
    check = report["folders"][0]["int8"]
    oof = json.loads((toy_run / "ck" / "two" / "oof" / "metrics.json").read_text())["accuracy"]
    assert check["rows"] == 48 and check["scored"].startswith("out of fold")
    assert check["accuracy_fp32"] == pytest.approx(oof, abs=1 / 48 + 1e-9)  # one row may flip at a tie
    # what the fold mean scores on these rows, which one of its folds trained on: another number
    mean = predictor(toy_run / "ck" / "two").predict([t for t, _ in toy_rows(48)])["probs"]
    labels = np.load(toy_run / "ck" / "two" / "oof" / "labels.npy")
    assert abs(float((mean.argmax(1) == labels).mean()) - oof) > 1 / 48


@pytest.fixture(scope="module")
def onnx_export(toy_run):
    out = toy_run / "onnx-any-text"
    export.export(toy_run / "ck" / "two", "onnx", out)
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=os.environ.get("TEXTCLF_EXPLORE") != "1")
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=200), min_size=1, max_size=6))
def test_any_texts_get_the_same_answer_from_the_onnx_export_and_the_predictor(toy_run, onnx_export, texts):
    """Export: whatever the texts (empty, invisible, long enough to be cut, any script), the
    torch-free ONNX predictor gives the Predictor's probabilities, or both refuse them alike."""
    from textclf.onnx_predict import OnnxPredictor

    outcomes = []
    for make in (lambda: predictor(toy_run / "ck" / "two"), lambda: OnnxPredictor.from_export(onnx_export)):
        try:
            outcomes.append(make().predict(texts)["probs"])
        except UserError as err:
            outcomes.append(str(err).split(":")[0])
    if isinstance(outcomes[0], str) or isinstance(outcomes[1], str):
        assert isinstance(outcomes[0], str) and isinstance(outcomes[1], str), outcomes
    else:
        np.testing.assert_allclose(outcomes[1], outcomes[0], atol=1e-4)


def test_calibrated_probabilities_are_the_same_in_every_predictor(toy_run):
    """The run's fitted temperature is applied by evaluate, the Predictor, the ONNX graph and the
    Hugging Face export alike (the tests above compare those to the Predictor, so here it must be
    a temperature that changes the numbers)."""
    from textclf import calibration
    from textclf.onnx_predict import OnnxPredictor
    from textclf.problem import PROBLEMS

    run = toy_run / "ck" / "two"
    temperature = json.loads((run / "calibration.json").read_text())["temperature"]
    assert abs(temperature - 1) > 0.05
    calibrated = predictor(run).predict(TEXTS)
    raw = Predictor.from_run(run, device="cpu", precision="no", calibrated=False).predict(TEXTS)
    assert not np.allclose(calibrated["probs"], raw["probs"], atol=1e-3)
    folds = [Predictor.from_run(run, folds=[k], device="cpu", precision="no", calibrated=False)
             .predict(TEXTS)["probs"] for k in (0, 1)]
    want = np.mean([calibration.apply(p, temperature, PROBLEMS["single_label"]) for p in folds], axis=0)
    np.testing.assert_allclose(calibrated["probs"], want, atol=2e-5)  # each fold's logits / T, then the mean
    out = toy_run / "onnx-cal"
    export.export(run, "onnx", out)
    np.testing.assert_allclose(OnnxPredictor.from_export(out).predict(TEXTS)["probs"], calibrated["probs"], atol=1e-4)
    result = run_stage("evaluate", f"eval.run={run}", f"eval.output_dir={toy_run / 'mp'}", "eval.precision=no",
                       f"eval.texts={json.dumps(TEXTS)}")
    assert result.code == 0, result
    written = sorted((toy_run / "mp").glob("two-texts*"))[-1]
    np.testing.assert_allclose(np.load(written / "probs.npy"), calibrated["probs"], atol=1e-5)
    # abstention: the rows below the threshold get the abstain label, alike in both predictors
    below = float(np.sort(calibrated["probs"].max(1))[2]) + 1e-6
    answered = predictor(run).predict(TEXTS, abstain_below=below, abstain_label="unsure")
    assert answered["labels"].count("unsure") == 3 and answered["abstained"].sum() == 3
    onnx_answered = OnnxPredictor.from_export(out).predict(TEXTS, abstain_below=below, abstain_label="unsure")
    assert onnx_answered["labels"] == answered["labels"]
