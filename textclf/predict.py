"""Predicting with a trained run: a Python API over each fold's best model.

    from textclf import Predictor
    predictor = Predictor.from_run("checkpoints/sst2")
    out = predictor.predict(["a gripping film", "two hours I will not get back"])
    out["labels"], out["probs"]          # label names, (rows, classes) fold-mean probabilities

Raw texts are tokenized exactly as data_process.py tokenized the training data (same
tokenizer, max_len, truncation and head_tokens, read from the checkpoint's head.json).
"""

from pathlib import Path

import numpy as np
import torch

from .data import Encoder, load_tokenizer
from .errors import UserError
from .fileio import recover_dir, sha256_file
from .loader import SortedBatches
from .model import load_classifier, probabilities
from .precision import autocast, resolve as resolve_precision


def run_folds(run_dir, folds="all"):
    """The finished folds of a run: [(fold, best_dir)]."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise UserError(f"{run_dir} is not a training run (no run.json); pass eval.run=checkpoints/<run>")
    for fold_dir in run_dir.glob("fold*"):
        recover_dir(fold_dir / "best")  # a replace cut short by a kill
    found = sorted((int(p.name[4:]), p / "best") for p in run_dir.glob("fold*")
                   if p.name[4:].isdigit() and (p / "best" / "head.json").is_file())
    if folds != "all":
        found = [(f, p) for f, p in found if f in folds]
    if not found:
        raise UserError(f"{run_dir} has no trained fold with a best/ checkpoint; run train.py first "
                        f"(or train.resume=auto to finish it)")
    return found


def load_fold_models(run_dir, folds="all", trust_remote_code=False):
    """Each finished fold's best model (on the CPU, in eval mode), the shared head config, and
    a record of every checkpoint (fold, path, sha256) for manifests."""
    models, head_cfg, checkpoints = [], None, []
    for fold, best in run_folds(run_dir, folds):
        model, cfg = load_classifier(best, trust_remote_code)
        if head_cfg is not None and (cfg["label_names"], cfg["max_len"]) != (head_cfg["label_names"], head_cfg["max_len"]):
            raise UserError(f"fold {fold} of {run_dir} has other labels or max_len than fold "
                            f"{checkpoints[0]['fold']}; the run's folds must come from one config")
        head_cfg = cfg
        models.append(model.eval())
        checkpoints.append({"fold": fold, "path": str(best), "sha256": sha256_file(best / "model.safetensors")})
    return models, head_cfg, checkpoints


class Predictor:
    """Fold-mean predictions of a run's best models on raw texts. `precision` is auto (the fastest
    exact one on the device, as train.precision=auto picks), no, fp16 or bf16."""

    def __init__(self, models, head_cfg, tokenizer, device="cpu", batch_size=64, checkpoints=None, precision="auto"):
        self.models = models
        self.head_cfg = head_cfg
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device, key="precision", training=False)
        self.batch_size = batch_size
        self.label_names = head_cfg["label_names"]
        self.problem_type = head_cfg["problem_type"]
        self.checkpoints = checkpoints or []
        self.encoder = Encoder(tokenizer, head_cfg["max_len"], head_cfg["truncation"], head_cfg.get("head_tokens"))

    @classmethod
    def from_run(cls, run_dir, folds="all", device=None, batch_size=64, trust_remote_code=False, precision="auto"):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        models, head_cfg, checkpoints = load_fold_models(run_dir, folds, trust_remote_code)
        tokenizer = load_tokenizer(checkpoints[0]["path"], trust_remote_code)
        return cls([m.to(device) for m in models], head_cfg, tokenizer, device, batch_size, checkpoints, precision)

    @torch.no_grad()
    def fold_probs(self, input_ids, attention_mask, token_type_ids, lengths):
        """Probabilities of every fold model: (folds, rows, classes), rows in the given order.
        Rows are batched longest-first and each batch is cut to its longest row."""
        n = len(lengths)
        n_classes = len(self.label_names)
        out = np.zeros((len(self.models), n, n_classes), dtype=np.float32)
        for rows in SortedBatches(lengths, self.batch_size):
            rows = np.asarray(rows)
            width = int(np.max(lengths[rows]))
            batch = [torch.as_tensor(np.asarray(a[rows, :width]), dtype=torch.long, device=self.device)
                     for a in (input_ids, attention_mask, token_type_ids)]
            for k, model in enumerate(self.models):
                with autocast(self.precision, self.device.type):
                    logits = model(*batch)
                out[k, rows] = probabilities(logits, self.problem_type).cpu().numpy()
        return out

    def predict(self, texts, pairs=None):
        """Labels and fold-mean probabilities for raw texts (and second segments, if the run used pairs)."""
        if isinstance(texts, str):
            texts = [texts]
        if self.head_cfg.get("text_pair_column") and pairs is None:
            raise UserError("this model was trained on text pairs; pass pairs=[...] with the second segments")
        texts = [str(t).strip() for t in texts]
        ids, types, lengths, _ = self.encoder.encode(texts, None if pairs is None else [str(p).strip() for p in pairs])
        mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.uint8)
        probs = self.fold_probs(ids, mask, types, lengths).mean(axis=0)
        return {"labels": self.decide(probs), "probs": probs, "label_names": list(self.label_names)}

    def decide(self, probs, threshold=0.5):
        if self.problem_type == "multi_label":
            return [[self.label_names[j] for j in np.flatnonzero(row >= threshold)] for row in probs]
        return [self.label_names[j] for j in probs.argmax(axis=1)]

