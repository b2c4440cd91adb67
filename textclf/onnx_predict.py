"""Predict from an ONNX export with ONNX Runtime: no torch, no transformers.

    from textclf.onnx_predict import OnnxPredictor
    predictor = OnnxPredictor.from_export("exported/sst2-onnx")          # or int8=True
    out = predictor.predict(["a gripping film", "two hours I will not get back"])
    out["labels"], out["probs"]            # regression: out["predictions"] (rows, targets), labels the values

The same interface as textclf.Predictor. Texts are tokenized exactly as data_process.py did
(textclf.tokenization with the run's templates and truncation, from textclf_onnx.json), rows are
batched longest first and each batch is cut to its longest row. Needs numpy, tokenizers and
onnxruntime only.
"""

from pathlib import Path

import numpy as np

from .calibration import abstain, check_abstain
from .errors import UserError
from .problem import NAMES as PROBLEM_NAMES, problem_type
from .tokenization import TextTokenizer, fold_mean, per_text, predict_inputs


class OnnxPredictor:
    def __init__(self, session, doc, tokenizer, batch_size=64):
        self.session = session
        self.label_names = list(doc["labels"])
        self.problem = problem_type(doc["problem_type"])
        self.problem_type = self.problem.name
        self.inputs = list(doc["inputs"])
        self.pairs = bool(doc.get("text_pair_column"))
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.outputs = list(doc["outputs"])  # the first is what predict reads
        self.folds = doc.get("folds", 1)

    @classmethod
    def from_export(cls, folder, int8=False, batch_size=64, threads=None):
        """The model in an export folder written by `python -m textclf.export --format onnx`."""
        import onnxruntime as ort

        from .fileio import load_json

        folder = Path(folder)
        doc_path = folder / "textclf_onnx.json"
        fix = "export again with python -m textclf.export --format onnx"
        if not doc_path.is_file():
            each = sorted(p.name for p in folder.glob("fold*") if (p / "textclf_onnx.json").is_file())
            raise UserError(f"{folder} is not a textclf ONNX export (no textclf_onnx.json)" + (
                f"; it holds one export per fold: pass {folder / each[0]} (or {', '.join(each[1:])})" if each
                else f"; {fix}"))
        doc = load_json(doc_path, "a textclf ONNX export's description", fix,
                        {"models": dict, "labels": list, "problem_type": str, "inputs": list, "outputs": list,
                         "tokenization": dict})
        if doc["problem_type"] not in PROBLEM_NAMES:
            raise UserError(f"{doc_path} names problem type {doc['problem_type']!r}, not one of "
                            f"{', '.join(PROBLEM_NAMES)}; {fix}")
        name = doc["models"].get("int8" if int8 else "fp32")
        if name is None:
            raise UserError(f"{folder} has no {'int8' if int8 else 'fp32'} model; export again" + (
                " with --int8" if int8 else ""))
        if not isinstance(name, str) or not (folder / name).is_file():
            raise UserError(f"{folder} lacks {name}, the model textclf_onnx.json names; {fix}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
        backend = (folder / "tokenizer.json").read_text(encoding="utf-8")
        return cls(session, doc, TextTokenizer.from_json(backend, doc["tokenization"]), batch_size)

    def probs(self, input_ids, token_type_ids, lengths, output=None):
        """Probabilities (rows, classes) in row order, or (folds, rows, classes) from an output that
        is each fold's ("fold_probs"); `output`: which of the graph's outputs (default: the first);
        rows batched longest first."""
        output = output or self.outputs[0]
        order = np.argsort(-lengths, kind="stable")
        shape = (len(lengths), len(self.label_names))
        out = np.zeros((self.folds, *shape) if output.startswith("fold_") else shape, dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = int(lengths[rows].max())
            feeds = {"input_ids": input_ids[rows, :width].astype(np.int64),
                     "attention_mask": (np.arange(width)[None, :] < lengths[rows, None]).astype(np.int64),
                     "token_type_ids": token_type_ids[rows, :width].astype(np.int64)}
            out[..., rows, :] = self.session.run([output], {name: feeds[name] for name in self.inputs})[0]
        return out

    def predict(self, texts, pairs=None, abstain_below=0.0, abstain_label="abstain"):
        """Labels and probabilities for raw texts (and second segments, if the run used pairs);
        regression: "predictions" (rows, targets), the same array as "probs", and "labels" the values.
        The run's calibration is in the graph. abstain_below=p: rows whose top probability is below
        p are answered `abstain_label` ("abstained" marks them), as Predictor.predict does."""
        check_abstain(abstain_below, self.problem)
        texts, pairs = predict_inputs(texts, pairs, self.pairs)
        if not texts:
            return self.problem.result(np.zeros((0, len(self.label_names)), dtype=np.float32), self.label_names)
        # data.template filled (a too-long row cut inside its fields), sliding windows: as data_process.py did
        ids, types, _, lengths, owner = self.tokenizer.rows(texts, pairs)
        probs = self.per_text(self.probs(ids, types, lengths), owner, len(texts))
        out = {**self.problem.result(probs, self.label_names), "cut_tokens": self.tokenizer.last_cut}
        if abstain_below:
            out["labels"], out["abstained"] = abstain(out["labels"], probs, abstain_below, abstain_label)
        return out

    def per_text(self, probs, owner, n_texts):
        """probs' rows -> one row per text: windows aggregated; a per-fold graph's (folds, rows, k)
        aggregated fold by fold, then averaged, as Predictor and evaluate.py do."""
        if probs.ndim == 3:
            return fold_mean(probs, owner, n_texts, self.tokenizer.aggregate, self.problem)
        return per_text(probs, owner, n_texts, self.tokenizer.aggregate, self.problem)

    def decide(self, probs, threshold=0.5):
        """Each row's answer from probabilities (threshold: the multi-label cut)."""
        return self.problem.labels(probs, self.label_names, threshold)
