"""Predicting with trained models: the one prediction loop, and a Python API over a run.

    from textclf import Predictor
    predictor = Predictor.from_run("checkpoints/sst2")
    out = predictor.predict(["a gripping film", "two hours I will not get back"])
    out["labels"], out["probs"]          # label names, (rows, classes) fold-mean probabilities
    out["predictions"]                   # regression: (rows, targets) fold-mean predictions (also in "probs"),
                                         # and out["labels"] the value per row (a list for several targets)

`predict_logits` is used by training (evaluation, out-of-fold rows), evaluate.py and the
Predictor alike. Raw texts are tokenized exactly as data_process.py tokenized the training data
(same tokenizer, max_len, truncation and head_tokens, read from the checkpoint's head.json).
"""

from pathlib import Path

import numpy as np
import torch

from . import explain, head_rows, quantize
from .calibration import abstain, check_abstain
from .compiling import compile_model, resolve as resolve_compile
from .errors import UserError
from .fileio import recover_dir, sha256_file
from .hf_remote.modeling_textclf import backbone_inputs
from .loader import SortedBatches, SplitArrays, make_loader
from .model import load_classifier
from .precision import autocast, resolve as resolve_precision
from .premodels import load_tokenizer
from .rawdata import table_inputs
from .tables import is_table
from .tokenization import TextTokenizer, aggregate_windows, fold_mean, predict_inputs


def logits_of(model, batch):
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).float()


def features_of(model, batch):
    """The pooled vector the head takes (fusion: its two inputs side by side)."""
    main, extra = model.features(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return (main if extra is None else torch.cat([main, extra], -1)).float()


def hidden_of(model, batch):
    """The encoder's last hidden layer, (rows, length, hidden), zero at padding."""
    kwargs = backbone_inputs(model, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    with head_rows.every_row(model):
        hidden = model.backbone(**kwargs).last_hidden_state.float()
    return hidden * batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)


def predict_logits(model, loader, n_rows, accelerator=None, device=None):
    """Logits for every row of the loader's dataset, in row order (see predict_rows)."""
    return predict_rows(model, loader, n_rows, accelerator, device, logits_of)


@torch.no_grad()
def predict_rows(model, loader, n_rows, accelerator=None, device=None, compute=logits_of, width=None):
    """compute(model, batch) for every row of the loader's dataset, in row order, whatever the
    batching: each batch carries the `index` of its rows. With an accelerator, the processes'
    shares are gathered and the padding rows of uneven shards dropped; without one, batches go to
    `device`. Per-token outputs (rows, length, ...) are zero-padded to `width` tokens."""
    training = model.training
    model.eval()
    chunks, indices = [], []
    for batch in loader:
        if device is not None:
            batch = {k: v.to(device) for k, v in batch.items()}
        values = compute(model, batch)
        if width is not None and values.shape[1] < width:
            values = torch.nn.functional.pad(values, (0, 0, 0, width - values.shape[1]))
        index = batch["index"]
        if accelerator is not None:
            values = accelerator.pad_across_processes(values, dim=0)
            index = accelerator.pad_across_processes(index, dim=0, pad_index=-1)
            values, index = accelerator.gather((values, index))
        chunks.append(values.cpu())
        indices.append(index.cpu())
    model.train(training)
    values, index = torch.cat(chunks), torch.cat(indices)
    keep = index >= 0
    out = torch.zeros((n_rows, *values.shape[1:]))
    out[index[keep]] = values[keep]  # rows repeated to even out the shards write identical values
    filled = torch.zeros(n_rows, dtype=torch.bool)
    filled[index[keep]] = True
    if not filled.all():
        raise RuntimeError("some rows got no prediction; this is a bug in batching")
    bad = (~torch.isfinite(out.reshape(n_rows, -1))).any(dim=1)
    if bad.any():
        raise UserError(f"the model's outputs are not finite (NaN or inf) on {int(bad.sum())} of {n_rows} rows: its "
                        f"weights have diverged. In training, lower train.lr (or train.head_lr), or use "
                        f"train.precision=no; a checkpoint that gives these outputs cannot predict")
    return out


def run_folds(run_dir, folds="all"):
    """The folds of a run to predict with: [(fold, best_dir)]. `folds="all"` means every fold the
    run trains, and each must be finished; a list takes those folds only, each finished."""
    from .checkpoint import load_run_json

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise UserError(f"{run_dir} is not a training run (no run.json); pass eval.run=checkpoints/<run>")
    planned = load_run_json(run_dir)["folds"]
    wanted = planned if folds == "all" else list(folds)
    unknown = [f for f in wanted if f not in planned]
    if unknown:
        raise UserError(f"eval.folds names fold {unknown[0]}, which {run_dir} does not train (its folds: "
                        f"{', '.join(map(str, planned))})")
    finished = [f for f in wanted if (run_dir / f"fold{f}" / "done.json").is_file()
                and (run_dir / f"fold{f}" / "best" / "head.json").is_file()]
    if not finished:
        raise UserError(f"{run_dir} has no trained fold with a finished best/ checkpoint; finish it with python "
                        f"train.py train.resume={run_dir}")
    if len(finished) < len(wanted):
        missing = ", ".join(str(f) for f in wanted if f not in finished)
        raise UserError(f"{run_dir}: fold(s) {missing} are not finished; finish them with python train.py "
                        f"train.resume={run_dir}, or predict with the finished ones: eval.folds="
                        f"[{','.join(map(str, finished))}]")
    return [(f, run_dir / f"fold{f}" / "best") for f in finished]


def recover_best(run_dir):
    """Undo a replace of any fold's best/ cut short by a kill (one process: the main one)."""
    for fold_dir in Path(run_dir).glob("fold*"):
        recover_dir(fold_dir / "best")


def load_fold_models(run_dir, folds="all", trust_remote_code=False, calibrated=True):
    """Each finished fold's best model (on the CPU, in eval mode), their shared ModelSpec, and a
    record of every checkpoint (fold, path, sha256) for manifests. calibrated=False: without the
    run's fitted temperature."""
    models, spec, checkpoints = [], None, []
    for fold, best in run_folds(run_dir, folds):
        model, fold_spec = load_classifier(best, trust_remote_code, calibrated)
        if spec is not None and (fold_spec.labels, fold_spec.tokenization) != (spec.labels, spec.tokenization):
            raise UserError(f"fold {fold} of {run_dir} has other labels or tokenization than fold "
                            f"{checkpoints[0]['fold']}; the run's folds must come from one config")
        if calibrated and spec is not None and fold_spec.head.temperature != spec.head.temperature:
            raise UserError(f"fold {fold} of {run_dir} is calibrated with temperature {fold_spec.head.temperature:g} "
                            f"and fold {checkpoints[0]['fold']} with {spec.head.temperature:g} (a fold was trained "
                            f"again after the run was calibrated); finish the run (python train.py train.resume="
                            f"{run_dir}) to calibrate it again, or predict with eval.calibrated=false")
        spec = fold_spec
        models.append(model.eval())
        checkpoints.append({"fold": fold, "path": str(best), "sha256": sha256_file(best / "model.safetensors")})
    return models, spec, checkpoints


class Predictor:
    """Fold-mean predictions of a run's best models on raw texts. `precision` is auto (the fastest
    exact one on the device, as train.precision=auto picks), no, fp16 or bf16, or int8 on the CPU
    (quantize.py: the backbone's matmuls in dynamic int8, the head in fp32; not exact: measured in
    bench/predict_throughput.py). `compile`: True, False or auto (compiling.py: torch.compile, widths
    bucketed; auto where it was measured to pay)."""

    def __init__(self, models, spec, tokenizer, device="cpu", batch_size=64, checkpoints=None, precision="auto",
                 compile="auto"):
        self.int8 = precision == "int8"  # the backbone's matmuls in int8 (quantize.py), activations fp32 around them
        if self.int8:
            quantize.check(device)
            pairs = [quantize.quantize(m, spec) for m in models]
            models, spec = [m for m, _ in pairs], pairs[0][1] if pairs else spec
            precision = "no"
        self.models = models
        # the run's fitted calibration, which the models apply (1.0: none, or loaded with calibrated=False)
        self.temperature = float(getattr(models[0], "temperature", 1.0)) if models else 1.0
        self.spec = spec
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device, key="precision", via_accelerate=False)
        self.compiled = resolve_compile(compile, self.device.type, "compile")
        if self.compiled.on and self.int8:
            raise UserError("precision int8 runs eagerly (dynamic int8 matmuls); pass compile=False with it")
        if self.compiled.on:
            for model in models:
                compile_model(model)
        self.batch_size = batch_size
        self.label_names = spec.labels.names
        self.problem = spec.labels.problem
        self.problem_type = self.problem.name
        self.checkpoints = checkpoints or []
        tokenization = spec.tokenization
        self.tokenizer = TextTokenizer.for_spec(tokenizer, tokenization)

    @classmethod
    def from_run(cls, run_dir, folds="all", device=None, batch_size=64, trust_remote_code=False, precision="auto",
                 calibrated=True, compile="auto"):
        """The best model of each fold of a run (`folds`: all, which must be finished, a fold
        number, or a list of distinct fold numbers). calibrated=False: the probabilities as
        trained, without the temperature the run fitted on its out-of-fold rows."""
        if isinstance(folds, int) and not isinstance(folds, bool):
            folds = [folds]
        if folds != "all" and (not isinstance(folds, (list, tuple)) or not all(
                isinstance(f, int) and not isinstance(f, bool) for f in folds) or len(set(folds)) != len(folds)):
            raise UserError(f"folds={folds!r}: pass all, a fold number, or a list of distinct fold numbers, e.g. [0, 2]")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size={batch_size!r}: pass a positive whole number")
        if precision not in ("auto", "no", "bf16", "fp16", "int8"):
            raise UserError(f"precision={precision!r}: use auto, no, bf16, fp16 or int8 (CPU prediction)")
        device = device or ("cuda" if torch.cuda.is_available() and precision != "int8" else "cpu")
        if precision == "int8":
            quantize.check(device)
        recover_best(run_dir)
        models, spec, checkpoints = load_fold_models(run_dir, folds, trust_remote_code, calibrated)
        tokenizer = load_tokenizer(checkpoints[0]["path"], trust_remote_code)
        return cls([m.to(device) for m in models], spec, tokenizer, device, batch_size, checkpoints, precision, compile)

    def fold_probs(self, input_ids, attention_mask, token_type_ids, lengths):
        """Probabilities of every fold model: (folds, rows, classes), rows in the given order.
        Rows are batched longest-first and each batch is cut to its longest row."""
        dataset = SplitArrays.in_memory({"input_ids": input_ids, "attention_mask": attention_mask,
                                         "token_type_ids": token_type_ids, "lengths": lengths}, self.compiled.on)
        loader = make_loader(dataset, SortedBatches(lengths, self.batch_size))
        out = np.zeros((len(self.models), len(lengths), len(self.label_names)), dtype=np.float32)
        for k, model in enumerate(self.models):
            with autocast(self.precision, self.device.type):
                logits = predict_logits(model, loader, len(lengths), device=self.device)
            out[k] = self.problem.probabilities(logits).numpy()
        return out

    def embed(self, texts, pairs=None, fold=None, hidden_states=False):
        """The pooled vector each text gets from one fold's model (the head's input; `fold` is a
        fold number of the run, default the first one loaded): {"embeddings": (rows, dim),
        "fold": k}, and with hidden_states=True also "hidden_states" (rows, max_len, hidden),
        zero beyond each row's "lengths"."""
        texts, pairs = self.inputs(texts, pairs)
        if not texts:
            raise UserError("embed got no texts; pass at least one")
        folds = [c["fold"] for c in self.checkpoints] or list(range(len(self.models)))
        if fold is not None and fold not in folds:
            raise UserError(f"fold {fold} is not among the loaded folds {folds}")
        model = self.models[folds.index(fold) if fold is not None else 0]
        ids, types, mask, lengths, owner = self.tokenizer.rows(texts, pairs)  # data.template filled, as data_process did
        if self.tokenizer.window_stride:
            if hidden_states:
                raise UserError("hidden_states are one row of token states per text, and this model reads texts as "
                                "sliding windows; call embed without hidden_states (each text's mean window vector)")
            vectors = self.embed_arrays(model, ids, mask, types, lengths)["embeddings"]
            return {"fold": fold if fold is not None else folds[0], "lengths": np.bincount(owner, minlength=len(texts)),
                    "embeddings": aggregate_windows(vectors, owner, len(texts), "mean")}
        out = {"fold": fold if fold is not None else folds[0], "lengths": lengths}
        out.update(self.embed_arrays(model, ids, mask, types, lengths, hidden_states))
        return out

    def embed_arrays(self, model, input_ids, attention_mask, token_type_ids, lengths, hidden_states=False):
        dataset = SplitArrays.in_memory({"input_ids": input_ids, "attention_mask": attention_mask,
                                         "token_type_ids": token_type_ids, "lengths": lengths})
        loader = make_loader(dataset, SortedBatches(lengths, self.batch_size))
        with autocast(self.precision, self.device.type):
            out = {"embeddings": predict_rows(model, loader, len(lengths), device=self.device,
                                              compute=features_of).numpy()}
            if hidden_states:
                out["hidden_states"] = predict_rows(model, loader, len(lengths), device=self.device,
                                                    compute=hidden_of, width=input_ids.shape[1]).numpy()
        return out

    def inputs(self, texts, pairs=None):
        """What predict / embed were given -> (rows, second segments or None). A pandas DataFrame or
        pyarrow Table is read by the run's own columns (text_columns, data.template's fields, the pair
        column), as data_process read its file."""
        if is_table(texts):
            if pairs is not None:
                raise UserError("a table carries its second segments in the run's pair column; drop pairs=")
            texts, pairs = table_inputs(texts, self.spec.tokenization)
        return predict_inputs(texts, pairs, bool(self.spec.tokenization.text_pair_column))

    def predict(self, texts, pairs=None, abstain_below=0.0, abstain_label="abstain"):
        """Labels and fold-mean probabilities for raw texts (and second segments, if the run used pairs),
        or the rows of a pandas DataFrame / pyarrow Table.
        Regression: "predictions" (rows, targets), the same array as "probs", and "labels" the values.
        abstain_below=p: a row whose top probability is below p is answered `abstain_label`
        ("abstained" marks those rows)."""
        check_abstain(abstain_below, self.problem)
        texts, pairs = self.inputs(texts, pairs)
        if not texts:
            return self.problem.result(np.zeros((0, len(self.label_names)), dtype=np.float32), self.label_names)
        # data.template filled and a too-long row cut inside its fields, as data_process.py did
        ids, types, mask, lengths, owner = self.tokenizer.rows(texts, pairs)
        probs = fold_mean(self.fold_probs(ids, mask, types, lengths), owner, len(texts), self.tokenizer.aggregate,
                          self.problem)
        out = {**self.problem.result(probs, self.label_names), "cut_tokens": self.tokenizer.last_cut}
        if abstain_below:
            out["labels"], out["abstained"] = abstain(out["labels"], probs, abstain_below, abstain_label)
        return out

    def decide(self, probs, threshold=0.5):
        """Each row's answer from probabilities (threshold: the multi-label cut)."""
        return self.problem.labels(probs, self.label_names, threshold)

    def explain(self, texts, label=None, pairs=None, steps=64):
        """Which words drove each text's prediction: integrated gradients towards `label`'s score
        (default: the predicted label), averaged over the fold models (explain.py). One dict per
        text, or with sliding windows per window of each text in order: "text" (its index),
        "window" (k, or None), "words" and "attributions" (per word), "tokens" and
        "token_attributions", "label" (explained), "prediction", "probabilities" {label: p} (the
        text's; regression: the predictions), "score" and "baseline_score", and "delta" (the
        completeness error: the attributions sum to score - baseline_score + delta). `texts` may be
        a pandas DataFrame, as for predict."""
        if self.int8:
            raise UserError("explain needs the model's gradients, and int8 layers have none; load the Predictor "
                            "without precision='int8' to explain")
        texts, pairs = self.inputs(texts, pairs)
        return explain.Explainer(self.models, self.spec, self.tokenizer, steps, self.batch_size).texts(texts, pairs,
                                                                                                        label)
