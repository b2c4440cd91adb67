"""Take a trained run out of textclf: a Hugging Face folder or an ONNX graph.

    python -m textclf.export --run checkpoints/sst2 --format hf --out exported/sst2-hf
    python -m textclf.export --run checkpoints/sst2 --fold 0 --format onnx --out exported/sst2-onnx --int8

hf    A folder for `AutoModelForSequenceClassification.from_pretrained(out)` and
      `pipeline("text-classification", model=out)`: the weights, a config with id2label,
      label2id and problem_type, and the tokenizer with model_max_length = the run's max_len.
      The pooler head on BERT, RoBERTa and DeBERTa-v2 is exactly their native
      *ForSequenceClassification class, so that folder loads with plain transformers; every
      other head (and the fold mean) carries its own modeling file, loaded with
      trust_remote_code=True (and refused without it).
onnx  model.onnx (dynamic batch and length, outputs the probabilities), the tokenizer and
      textclf_onnx.json beside it; `--int8` adds model.int8.onnx (dynamic quantisation of the
      graph with attention, LayerNorm and GELU fused by ONNX Runtime's optimizer where it fuses
      and matches: onnx_fusion.py) and reports its accuracy on the run's held-out rows.
      textclf.onnx_predict.OnnxPredictor predicts from that folder without torch.

--fold k exports fold k; --fold mean (the default for a run of several folds) exports the fold
mean as one model, which is exact: the model averages the folds' probabilities, as evaluate.py
does. --fold each writes one folder per fold (out/fold<k>).

Every export is checked before it is moved into place: its probabilities are compared with
textclf's own on random token rows of every length up to max_len, with padding. Every exported
folder carries a model card (README.md: labels, metrics, intended use, precision, the training
data's fingerprint and config); --push-to-hub REPO uploads the export for users who are online.

Regression runs export the same way: the config says problem_type "regression" with num_labels
= the number of targets, the logits (ONNX: the `predictions` output) are the predictions, and
the check compares them in units of each target's standard deviation.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from . import lora, modelcard, onnx_fusion
from .checkpoint import load_run_json
from .config import resolve_path
from .datadir import fold_rows, load_meta
from .errors import UserError, first_line, run_cli
from .fileio import atomic_dir, atomic_write_text, made_by_textclf, remove_dead_temporaries, write_json, write_marker
from .loader import Windows
from .metrics import compute
from .model import hf_config, read_encoder_config, write_hf_config
from .onnx_predict import OnnxPredictor
from .predict import load_fold_models, recover_best
from .premodels import load_tokenizer
from .tokenization import TextTokenizer, fold_texts

# Heads that are exactly a native Hugging Face class: model_type -> (class, encoder prefix).
NATIVE = {"bert": ("BertForSequenceClassification", "bert"),
          "roberta": ("RobertaForSequenceClassification", "roberta"),
          "deberta-v2": ("DebertaV2ForSequenceClassification", "deberta")}
HF_TOLERANCE = 1e-5
ONNX_TOLERANCE = 1e-4


class FoldMean(torch.nn.Module):
    """The fold models' probabilities as the graph's `outputs` name them: their mean ("probs",
    "predictions": what evaluate.py and Predictor compute) and each fold's, stacked (folds, rows, k)
    ("fold_probs", "fold_predictions"): a reader that aggregates windows by their max takes each
    fold's, and export scores each fold's model on the rows it held out. One output is a tensor,
    several a tuple in that order."""

    def __init__(self, models, problem, outputs=("probs",)):
        super().__init__()
        self.members = torch.nn.ModuleList(models)
        self.problem = problem
        self.pass_token_types = models[0].pass_token_types
        self.outputs = tuple(outputs)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        probs = torch.stack([self.problem.probabilities(m(input_ids, attention_mask, token_type_ids))
                             for m in self.members])
        out = tuple(probs if name.startswith("fold_") else probs.mean(0) for name in self.outputs)
        return out if len(out) > 1 else out[0]


# ---------------------------------------------------------------------------- checks


def check_rows(spec, tokenizer, rows=24, seed=0):
    """Token rows to compare an export with textclf on: every length from the shortest to max_len,
    random ordinary tokens inside the model's special-token template, padded to the longest."""
    rng = np.random.default_rng(seed)
    encoder = TextTokenizer.from_hf(tokenizer, spec.tokenization.max_len, spec.tokenization.truncation,
                                    spec.tokenization.head_tokens)
    pre, post = encoder.single
    special = set(tokenizer.all_special_ids)
    ordinary = np.array([i for i in range(len(tokenizer)) if i not in special])
    budget = spec.tokenization.max_len - len(pre) - len(post)
    lengths = np.unique(np.linspace(1, budget, rows).astype(int))
    ids = np.full((len(lengths), spec.tokenization.max_len), encoder.pad_id, dtype=np.int64)
    for row, n in enumerate(lengths):
        seq = pre + rng.choice(ordinary, n).tolist() + post
        ids[row, :len(seq)] = seq
    total = lengths + len(pre) + len(post)
    mask = (np.arange(ids.shape[1])[None, :] < total[:, None]).astype(np.int64)
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.zeros_like(torch.from_numpy(ids))


@torch.no_grad()
def reference_probs(models, spec, batch, outputs=("probs",)):
    """textclf's own probabilities on the check rows, for each output: what every export is compared with."""
    out = FoldMean(models, spec.labels.problem, outputs)(*batch)
    return out if isinstance(out, tuple) else (out,)


def output_difference(got, want, spec=None):
    """The largest difference between an export's outputs and textclf's; for regression in units of
    each target's standard deviation, so the tolerance does not depend on the targets' units."""
    error = np.abs(np.asarray(got, dtype=np.float64) - np.asarray(want, dtype=np.float64))
    if spec is not None and spec.labels.problem.regression:
        error = error / np.asarray(spec.head.target_std, dtype=np.float64)
    return float(error.max())


def require_close(got, want, tolerance, what, spec=None):
    """output_difference(got, want, spec), refused above the tolerance."""
    diff = output_difference(got, want, spec)
    if not diff <= tolerance:
        raise UserError(f"the {what} export differs from textclf's outputs by {diff:.2e} (> {tolerance:g}); "
                        f"nothing was written. Please report this with the run's head and model family")
    return diff


# ---------------------------------------------------------------------------- Hugging Face


def native_state(model, spec, config):
    """The weights of `model` under a native *ForSequenceClassification's names, or None where its
    head has no exact native class."""
    kind = NATIVE.get(config.model_type)
    if kind is None or spec.head.head != "pooler" or spec.head.mlp_hidden:
        return None
    prefix = kind[1]
    state = model.state_dict()
    weight, bias = state["fc.weight"], state["fc.bias"]
    if spec.labels.problem.outputs(2) == 1:  # binary_bce's one logit z -> [0, z]: softmax gives [1 - p, p]
        weight = torch.cat([torch.zeros_like(weight), weight])
        bias = torch.cat([torch.zeros_like(bias), bias])
    if spec.head.temperature != 1.0 and not spec.labels.problem.regression:  # calibration: z / T, folded in too
        weight, bias = weight / spec.head.temperature, bias / spec.head.temperature
    if spec.labels.problem.regression:  # textclf's z * std + mean, folded into the output layer
        std = torch.tensor(spec.head.target_std, dtype=weight.dtype)
        weight = weight * std[:, None]
        bias = bias * std + torch.tensor(spec.head.target_mean, dtype=bias.dtype)
    out = {}
    if config.model_type == "bert":
        out = {f"{prefix}.{k[len('backbone.'):]}": v for k, v in state.items() if k.startswith("backbone.")}
        out.update({"classifier.weight": weight, "classifier.bias": bias})
    elif config.model_type == "roberta":
        out = {f"{prefix}.{k[len('backbone.'):]}": v for k, v in state.items()
               if k.startswith("backbone.") and not k.startswith("backbone.pooler.")}
        out.update({"classifier.dense.weight": state["backbone.pooler.dense.weight"],
                    "classifier.dense.bias": state["backbone.pooler.dense.bias"],
                    "classifier.out_proj.weight": weight, "classifier.out_proj.bias": bias})
    else:  # deberta-v2: textclf's own pooler (dense + tanh) is its ContextPooler with tanh
        out = {f"{prefix}.{k[len('backbone.'):]}": v for k, v in state.items() if k.startswith("backbone.")}
        out.update({"pooler.dense.weight": state["pooler.0.weight"], "pooler.dense.bias": state["pooler.0.bias"],
                    "classifier.weight": weight, "classifier.bias": bias})
    return out


def native_config(config, spec):
    names = list(spec.labels.names)
    native = hf_config(config, spec)  # labels and problem_type as the remote-code config has them
    encoder = config.to_dict()
    encoder.update(id2label=native.id2label, label2id=native.label2id, problem_type=native.problem_type,
                   architectures=[NATIVE[config.model_type][0]])
    if config.model_type == "deberta-v2":
        encoder.update(pooler_hidden_act="tanh", pooler_hidden_size=config.hidden_size)
    from transformers import AutoConfig

    model_type = encoder.pop("model_type")
    out = AutoConfig.for_model(model_type, **encoder)
    out.num_labels = len(names)
    out.id2label, out.label2id = native.id2label, native.label2id
    return out


def save_tokenizer(tokenizer, spec, folder):
    """The tokenizer, truncating as textclf did (head: right, tail: left) to max_len by default."""
    tokenizer.model_max_length = spec.tokenization.max_len
    tokenizer.truncation_side = "left" if spec.tokenization.truncation == "tail" else "right"
    tokenizer.save_pretrained(str(folder))


def write_hf(folder, models, spec, config, tokenizer):
    """Write one model (or the fold mean of several) as a Hugging Face folder; returns
    (kind, max difference from textclf)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification

    native = native_state(models[0], spec, config) if len(models) == 1 else None
    if native is not None:
        model = getattr(__import__("transformers"), NATIVE[config.model_type][0])(native_config(config, spec))
        missing, unexpected = model.load_state_dict(native, strict=False)
        if missing or unexpected:
            raise UserError(f"cannot map the pooler head onto {NATIVE[config.model_type][0]} (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}); export with another head or report this")
        model.save_pretrained(str(folder))
        kind = NATIVE[config.model_type][0]
    else:
        if len(models) == 1:
            state = models[0].state_dict()
        else:
            state = {f"members.{k}.{name}": t for k, m in enumerate(models) for name, t in m.state_dict().items()}
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        write_hf_config(folder, config, spec, members=len(models))
        kind = "TextclfForSequenceClassification (trust_remote_code=True)"
    save_tokenizer(tokenizer, spec, folder)
    loaded = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=native is None).eval()
    batch = check_rows(spec, tokenizer)
    with torch.no_grad():
        logits = loaded(input_ids=batch[0], attention_mask=batch[1], token_type_ids=batch[2]).logits.float()
    problem = spec.labels.problem  # Hugging Face's convention: softmax, sigmoid for multi-label, values for regression
    got = logits if problem.regression else logits.sigmoid() if problem.multi_label else logits.softmax(-1)
    return kind, require_close(got.numpy(), reference_probs(models, spec, batch)[0].numpy(), HF_TOLERANCE,
                               "Hugging Face", spec)


# ---------------------------------------------------------------------------- ONNX


def write_onnx(folder, graph, spec, tokenizer):
    """model.onnx (inputs input_ids, attention_mask and, where the encoder uses them,
    token_type_ids; output probs) of `graph` (graph_parts), the tokenizer; returns the max difference."""
    import onnxruntime as ort

    module, names, outputs, example, batch = graph
    batch_dim, length_dim = torch.export.Dim("batch"), torch.export.Dim("length", max=spec.tokenization.max_len)
    dynamic = {name: {0: batch_dim, 1: length_dim} for name in names}
    path = folder / "model.onnx"
    import contextlib
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), input_names=names, output_names=list(outputs),
                          dynamic_shapes=dynamic, dynamo=True, opset_version=18, external_data=False)
    save_tokenizer(tokenizer, spec, folder)
    encoder = TextTokenizer.for_spec(tokenizer, spec.tokenization)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: t.numpy() for name, t in zip(names, batch)}
    got = session.run(list(outputs), feeds)
    return encoder, max(require_close(g, want.numpy(), ONNX_TOLERANCE, "ONNX", spec)
                        for g, want in zip(got, reference_probs(module.members, spec, batch, outputs)))


def graph_parts(models, spec, tokenizer):
    """What an ONNX export traces and checks: (the FoldMean module, input names, output names, the
    traced example, the check rows)."""
    outputs = onnx_outputs(spec, len(models))
    module = FoldMean(models, spec.labels.problem, outputs).eval()
    batch = check_rows(spec, tokenizer)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if models[0].pass_token_types else [])
    # The example must hold padding: a mask of ones would let the encoder skip its mask code
    # while the graph is traced, and padded rows would then be wrong.
    example = tuple(t[:4] for t in batch[:len(names)])
    return module, names, outputs, example, batch


def onnx_outputs(spec, folds=1):
    """The graph's outputs: the probabilities ("probs"; a regression's "predictions") and, for
    several folds, each fold's too ("fold_probs", (folds, rows, k)), so each fold's model can be
    scored on the rows it held out. Only each fold's where the folds read sliding windows
    aggregated by their max, which does not commute with the fold mean (the reader takes each
    fold's max, then the mean)."""
    name = "predictions" if spec.labels.problem.regression else "probs"
    if folds == 1:
        return [name]
    windowed_max = spec.tokenization.window_stride and spec.tokenization.window_aggregate == "max"
    return [f"fold_{name}"] if windowed_max else [name, f"fold_{name}"]


WEIGHTS = "int8, per output channel, 7-bit range (no saturation on CPUs without VNNI)"


def quantize(folder, graph, spec):
    """model.int8.onnx: the fused graph (onnx_fusion.py) of `graph` (graph_parts) where attention fuses
    and matches textclf, else model.onnx, dynamically quantised. Returns how it was made (for
    textclf_onnx.json)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    module, names, outputs, example, batch = graph
    widths = sorted({batch[0].shape[1], max(2, batch[0].shape[1] // 2)})  # the full rows, and cut to half
    feeds = {w: {name: t[:, :w].numpy() for name, t in zip(names, batch)} for w in widths}
    reference = {w: [r.numpy() for r in reference_probs(module.members, spec, [t[:, :w] for t in batch], outputs)]
                 for w in widths}  # reference_probs runs without autograd

    def differs(got, width):  # the fused graph's largest difference from textclf's outputs on the check rows
        return max(output_difference(g, want, spec) for g, want in zip(got, reference[width]))

    fused, how = onnx_fusion.fuse(module, example, (names, outputs), (feeds, differs), ONNX_TOLERANCE,
                                  folder / "model.fused.tmp.onnx")

    def quantize_from(source):
        # Per-channel scales: on SST-2 dev the per-tensor default lost 1.4 points of accuracy, per channel
        # 0.5 (bench/predict_throughput.py); the speed is the same. Weights in 7 bits (reduce_range): on a
        # CPU without VNNI (AVX2, AVX512 without it) ONNX Runtime's uint8 x int8 products saturate their
        # 16-bit sums, and the graph may run on such a CPU wherever it was made (a toy model's
        # probabilities moved 0.055 from fp32 there with 8-bit weights; with 7, under 0.05). The fused
        # graph's own ops carry no type that shape inference knows: their outputs are float.
        quantize_dynamic(str(source), str(folder / "model.int8.onnx"), weight_type=QuantType.QInt8,
                         per_channel=True, reduce_range=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})

    if fused is not None:
        try:
            quantize_from(fused)
        except Exception as err:  # noqa: BLE001 - the quantiser failed on the fused ops: the plain graph
            how = {"fused": None,
                   "reason": f"quantising the fused graph failed: {type(err).__name__}: {first_line(err, 300)}"}
        finally:
            fused.unlink()
    if how["fused"] is None:  # nothing fused, or its quantising failed (onnx_fusion.fuse: fused is None then too)
        quantize_from(folder / "model.onnx")
    return {**how, "weights": WEIGHTS}


def held_out_rows(run_dir, folds):
    """The run's rows held out by the exported folds: (split folder, rows, labels, the position in
    `folds` of the fold that held each row out), or None where the run's data is gone."""
    data_dir = resolve_path(load_run_json(run_dir)["data_dir"])
    if not (data_dir / "meta.json").is_file():
        return None
    meta = load_meta(data_dir)
    parts = [fold_rows(meta, data_dir, fold)[1:] for fold in folds]
    split = data_dir / parts[0][0]
    rows = np.concatenate([held for _, held in parts])
    member = np.concatenate([np.full(len(held), k) for k, (_, held) in enumerate(parts)])
    order = np.argsort(rows, kind="stable")
    rows, member = rows[order], member[order]
    if not len(rows) or not (split / "labels.npy").is_file():
        return None
    return split, rows, np.load(split / "labels.npy", mmap_mode="r")[rows], member


def compare_int8(folder, onnx_doc, encoder, held, block=4096):
    """The metric (accuracy; rmse for regression) of model.onnx and model.int8.onnx on the held-out
    rows (texts; their windows, with sliding windows), and their largest difference, predicted as
    OnnxPredictor predicts. A fold mean is scored out of fold: each row by the fold model that held
    it out (the graph's per-fold output), never by folds that trained on it. The token rows are
    read `block` at a time, so memory stays flat."""
    import onnxruntime as ort

    split, rows, labels, member = held
    per_fold = next((name for name in onnx_doc["outputs"] if name.startswith("fold_")), None)
    windows = Windows(split, encoder.windows.aggregate)
    n_texts = len(rows)
    token_rows, owner = windows.rows(rows)
    arrays = {name: np.load(split / f"{name}.npy", mmap_mode="r") for name in ("input_ids", "token_type_ids", "lengths")}
    out = {}
    for name in ("model.onnx", "model.int8.onnx"):
        session = ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        predictor = OnnxPredictor(session, onnx_doc, encoder)
        parts = []
        for start in range(0, len(token_rows), block):
            chunk = token_rows[start:start + block]
            parts.append(predictor.probs(*(np.asarray(arrays[k][chunk]) for k in ("input_ids", "token_type_ids",
                                                                                 "lengths")), output=per_fold))
        probs = np.concatenate(parts, axis=-2)
        if per_fold:  # (folds, texts, k): each text from the fold that held it out
            probs = fold_texts(probs, owner, n_texts, encoder.aggregate, predictor.problem)[member, np.arange(n_texts)]
            out[name] = probs
        else:
            out[name] = predictor.per_text(probs, owner, n_texts)
    fp32, int8 = out["model.onnx"], out["model.int8.onnx"]
    problem = predictor.problem
    metric = "rmse" if problem.regression else "accuracy"
    return {"rows": int(n_texts), "metric": metric, f"{metric}_fp32": compute(fp32, labels, problem)[metric],
            f"{metric}_int8": compute(int8, labels, problem)[metric],
            "max_prob_difference": float(np.abs(fp32 - int8).max()),
            "scored": "out of fold: each row by the fold model that held it out" if per_fold
            else "the rows the exported fold held out"}


# ---------------------------------------------------------------------------- the command


def choose_folds(run_dir, fold):
    """The run's folds an export takes: --fold k, or every fold (mean, each)."""
    planned = load_run_json(run_dir)["folds"]
    if fold in ("mean", "each"):
        return planned
    try:
        k = int(fold)
    except ValueError:
        raise UserError(f"--fold {fold!r}: use a fold number ({', '.join(map(str, planned))}), mean or each") from None
    if k not in planned:
        raise UserError(f"--fold {k}: {run_dir} does not train fold {k}; use one of {', '.join(map(str, planned))}, "
                        f"mean or each")
    return [k]


def export(run_dir, fmt, out, fold="mean", int8=False, overwrite=False, trust_remote_code=False, push_to_hub=None):
    """Export a run's fold (or the fold mean, or each fold) to `out`, each folder with its model card
    (README.md); returns the report in export.json. push_to_hub=REPO: then upload `out` to the hub
    (checked to be reachable before anything is written)."""
    run_dir = resolve_path(run_dir)
    out = resolve_path(out)
    if fmt not in ("hf", "onnx"):
        raise UserError(f"--format {fmt!r}: use hf or onnx")
    if int8 and fmt != "onnx":
        raise UserError("--int8 quantises an ONNX graph; add --format onnx")
    if out.exists() and not (overwrite and made_by_textclf(out, "export")):
        raise UserError(f"{out} already exists and was not exported by textclf, so --overwrite will not replace it; "
                        f"choose another --out" if overwrite else
                        f"{out} already exists; choose another --out, or pass --overwrite to replace an earlier "
                        f"export (only a folder textclf exported is replaced)")
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise UserError(f"--out {out} is inside the run {run_dir}; export somewhere else")
    folds = choose_folds(run_dir, fold)
    hub = modelcard.check_push(push_to_hub) if push_to_hub is not None else None
    recover_best(run_dir)
    models, spec, checkpoints = load_fold_models(run_dir, folds, trust_remote_code)
    merged = [lora.merge(m, spec) for m in models]  # LoRA: the adapters merged into the base weights
    models, spec = [m for m, _ in merged], merged[0][1]
    tokenizer = load_tokenizer(checkpoints[0]["path"], trust_remote_code)
    config = read_encoder_config(checkpoints[0]["path"], trust_remote_code)
    groups = [[k] for k in range(len(models))] if fold == "each" else [list(range(len(models)))]
    started = time.time()
    remove_dead_temporaries(out.parent)  # what a killed export left
    with atomic_dir(out, replace=out.exists()) as tmp:
        report = {"run": str(run_dir), "format": fmt, "fold": fold, "folders": []}
        for group in groups:
            folder = tmp if len(groups) == 1 else tmp / f"fold{checkpoints[group[0]]['fold']}"
            folder.mkdir(exist_ok=True)
            members = [models[k] for k in group]
            entry = {"folder": folder.name if folder != tmp else ".",
                     "folds": [checkpoints[k]["fold"] for k in group],
                     "checkpoints": [checkpoints[k] for k in group]}
            if fmt == "hf":
                entry["class"], entry["max_difference"] = write_hf(folder, members, spec, config, tokenizer)
            else:
                entry.update(write_onnx_folder(folder, members, spec, tokenizer, run_dir if int8 else None,
                                               entry["folds"]))
            report["folders"].append(entry)
        report["notes"] = notes(spec)
        records = modelcard.read_records(run_dir)
        for entry in report["folders"]:
            atomic_write_text(tmp / entry["folder"] / "README.md", modelcard.card(records, {**report, **entry}, spec))
        report["seconds"] = round(time.time() - started, 1)
        write_json(tmp / "export.json", report)
        write_marker(tmp, "export")
    if hub is not None:  # after the export is in place: a failed upload leaves it whole
        report["pushed"] = modelcard.upload(hub, out, push_to_hub)
    return report


def write_onnx_folder(folder, members, spec, tokenizer, int8_run=None, folds=()):
    """model.onnx, the tokenizer and textclf_onnx.json in `folder`; with int8_run (the run the folds
    come from) also model.int8.onnx, scored on the folds' held-out rows. Returns the folder's entry
    in export.json: max_difference, and int8."""
    graph = graph_parts(members, spec, tokenizer)  # traced and checked by both graphs
    encoder, difference = write_onnx(folder, graph, spec, tokenizer)
    entry = {"max_difference": difference}
    onnx_doc = {"format": 1, "labels": spec.labels.names, "problem_type": spec.labels.problem_type,
                "inputs": ["input_ids", "attention_mask"] + (["token_type_ids"] if members[0].pass_token_types else []),
                "outputs": onnx_outputs(spec, len(members)), "tokenization": encoder.to_json(),
                "text_pair_column": spec.tokenization.text_pair_column, "folds": len(members),
                "models": {"fp32": "model.onnx"}}
    if int8_run is not None:
        onnx_doc["int8"] = entry["int8_graph"] = quantize(folder, graph, spec)
        onnx_doc["models"]["int8"] = "model.int8.onnx"
        held = held_out_rows(int8_run, folds)
        if held is None:
            entry["int8"] = "not measured: the run's data folder is gone"
        else:
            entry["int8"] = compare_int8(folder, onnx_doc, encoder, held)
    write_json(folder / "textclf_onnx.json", onnx_doc)
    return entry


def notes(spec):
    """What a user of the export must know about how the run read its texts."""
    tokenization, out = spec.tokenization, []
    if tokenization.template:
        out.append(f"the run's texts are made by data.template {tokenization.template!r}; fill it before "
                   f"calling a pipeline (OnnxPredictor and Predictor take rows as mappings of its columns). A "
                   f"pipeline's tokenizer cuts a prompt over max_len={tokenization.max_len} tokens from its end, "
                   f"the template's closing words first, where textclf cuts inside the fields: keep prompts within "
                   f"max_len there, or use OnnxPredictor / Predictor")
    if tokenization.window_stride:
        out.append(f"the run reads texts as sliding windows (stride {tokenization.window_stride}, "
                   f"{tokenization.window_aggregate} of the windows' probabilities); a Hugging Face pipeline "
                   f"sees one window (the head of the text), OnnxPredictor and Predictor read every window")
    if tokenization.truncation == "head_tail":
        out.append("the run truncated long texts head_tail; the exported tokenizer keeps the head only, so texts "
                   f"longer than max_len={tokenization.max_len} tokens differ (OnnxPredictor keeps head_tail)")
    if tokenization.text_pair_column:
        out.append("the run used text pairs: pass {'text': ..., 'text_pair': ...} to the pipeline")
    return out


def main(argv):
    parser = argparse.ArgumentParser(prog="python -m textclf.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="checkpoints/<run>")
    parser.add_argument("--format", required=True, choices=["hf", "onnx"])
    parser.add_argument("--out", required=True, help="the folder to write (must not exist)")
    parser.add_argument("--fold", default="mean", help="a fold number, mean (default: the fold mean as one model) "
                        "or each (one folder per fold)")
    parser.add_argument("--int8", action="store_true", help="onnx: also write a dynamically quantised model.int8.onnx")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--push-to-hub", metavar="REPO", help="then upload the export to this hub repository "
                        "(online; checked before anything is written)")
    args = parser.parse_args(argv)
    report = export(args.run, args.format, args.out, args.fold, args.int8, args.overwrite, args.trust_remote_code,
                    args.push_to_hub)
    for entry in report["folders"]:
        where = Path(args.out) / entry["folder"]
        what = entry.get("class", "ONNX graph + tokenizer")
        print(f"exported fold(s) {entry['folds']} -> {where}: {what}; max |p - textclf p| = "
              f"{entry['max_difference']:.1e}", flush=True)
        if isinstance(entry.get("int8"), dict):
            q = entry["int8"]
            name = q["metric"]
            print(f"  int8 on {q['rows']} held-out rows: {name} {q[f'{name}_int8']:.4f} (fp32 {q[f'{name}_fp32']:.4f}),"
                  f" max |p_int8 - p_fp32| = {q['max_prob_difference']:.3f}", flush=True)
        elif entry.get("int8"):
            print(f"  int8: {entry['int8']}", flush=True)
        if entry.get("int8_graph"):
            fused = entry["int8_graph"]["fused"]
            print("  int8 graph: " + (", ".join(f"{n} {op}" for op, n in fused.items()) + " fused" if fused else
                                      f"not fused ({entry['int8_graph']['reason']}); quantised from model.onnx"),
                  flush=True)
    for note in report["notes"]:
        print(f"note: {note}", flush=True)
    if report.get("pushed"):
        print(f"pushed to the hub: {report['pushed']}", flush=True)


if __name__ == "__main__":
    run_cli(main)
