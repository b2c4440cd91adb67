"""What a submission file holds, decided from the sample submission and the competition's metric.

    labels               one column: each row's label (its name, or its class number where the
                         sample writes numbers); multi-label: the labels joined by the data's
                         label delimiter (a space by default), or with one column per class 0/1
    probability          one column: the probability of the positive class (two classes)
    class_probabilities  one column per class, in the sample's column order
    values               regression: one column per target

ensemble.output=auto reads the sample: one column per class means class probabilities; one
column whose placeholders are probabilities (0.5, say) means the positive class's probability;
otherwise labels, unless the metric scores probabilities (roc_auc, log_loss), which gets them.
ensemble.metric=auto follows the output: roc_auc for a probability (and multi-label class
probabilities), log_loss for class probabilities, else accuracy (rmse for regression). A decision
threshold is tuned only where labels are written and scored by a label metric. For log_loss the
probabilities are clipped away from 0 and 1, so one confident miss cannot cost infinity.
"""

import csv
import dataclasses
import re
from pathlib import Path

import numpy as np

from .config import resolve_path
from .errors import UserError
from .fileio import number_text

PROBABILITY_METRICS = ("roc_auc", "log_loss")  # they score probabilities: never a thresholded label
LABEL_METRICS = ("accuracy", "f1_macro", "f1_micro")
CLIP = 1e-6  # log_loss: probabilities kept in [CLIP, 1 - CLIP] (written with 6 decimals)


@dataclasses.dataclass(frozen=True)
class Sample:
    """A sample submission: its header and rows (the first column holds the ids)."""

    path: Path
    header: list
    body: list

    @property
    def columns(self):
        return self.header[1:]

    def examples(self, column=1):
        """The non-empty placeholder values of a value column."""
        return [r[column].strip() for r in self.body if r[column].strip()]


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a submission writes each row: the kind (see the module's docstring), its header, for
    per-column kinds the label (or target) each column holds, and for labels how a label is written."""

    kind: str
    header: list
    columns: list = dataclasses.field(default_factory=list)  # indices into the label names
    label_format: str = "name"  # labels: name | index
    delimiter: str = " "  # multi-label labels in one column
    clip: bool = False  # log_loss: probabilities clipped


def read_sample(path):
    """A sample submission, read and checked: a header with an id column and value columns, rows of
    as many fields."""
    path = resolve_path(path)
    if not path.is_file():
        raise UserError(f"sample submission {path} not found; set ensemble.sample_submission")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise UserError(f"sample submission {path} is not UTF-8; re-save it as UTF-8") from None
    if len(rows) < 2 or len(rows[0]) < 2:
        raise UserError(f"sample submission {path} needs a header with an id column and a label column, and rows")
    header, body = rows[0], [r for r in rows[1:] if r]
    ids = [i for i, name in enumerate(header) if name.strip().lower() == "id"]
    if ids and ids[0] != 0:  # the id column goes first, as the submission writes it
        raise UserError(f"sample submission {path} has its id column '{header[ids[0]]}' at position {ids[0] + 1}; "
                        f"a submission writes the id first: move that column to the front of the sample")
    if any(len(r) != len(header) for r in body):
        raise UserError(f"sample submission {path} has rows with another number of fields than its header")
    return Sample(path, header, body)


# ---------------------------------------------------------------------------- deciding the layout


def plan(sample, label_names, problem, metric="auto", output="auto", label_format="auto", delimiter=None):
    """(Layout, metric): what the submission holds, and the metric the blend is tuned and scored
    by (ensemble.metric, or for auto the one that scores that output)."""
    if problem.regression:
        if output != "auto":
            raise UserError(f"ensemble.output={output} is for class predictions; a regression writes each target's "
                            f"value: drop ensemble.output")
        return value_layout(sample, label_names), (problem.default_metric if metric == "auto" else metric)
    kind = output if output != "auto" else auto_kind(sample, label_names, problem, metric)
    check_kind(kind, sample, label_names, problem)
    if metric == "auto":
        metric = {"probability": "roc_auc", "class_probabilities": "roc_auc" if problem.multi_label else "log_loss"
                  }.get(kind, problem.default_metric)
    if kind == "labels" and metric in PROBABILITY_METRICS:
        raise UserError(f"ensemble.metric={metric} scores probabilities, and ensemble.output=labels writes labels; "
                        f"use ensemble.output=auto (or probability / class_probabilities), or a label metric such "
                        f"as accuracy")
    clip = metric == "log_loss"
    if kind == "probability":
        header = sample.header if sample else ["id", label_names[1]]
        return Layout(kind, header, [1], clip=clip), metric
    if kind == "class_probabilities" or (kind == "labels" and sample and len(sample.columns) > 1):
        columns = sample.columns if sample else list(label_names)
        return Layout(kind, ["id" if not sample else sample.header[0], *columns],
                      [label_names.index(c) for c in columns], clip=clip), metric
    fmt = label_format if not sample else sample_label_format(sample.examples(), label_names, label_format)
    fmt = "name" if fmt == "auto" else fmt
    delimiter = delimiter or " "
    joined = [n for n in label_names if delimiter in n] if problem.multi_label and fmt == "name" else []
    if joined:  # "a b" joined with " " would read back as two labels
        raise UserError(f"label {joined[0]!r} holds {delimiter!r}, which joins a row's labels in one column, so the "
                        f"submission could not be read back; write one 0/1 column per class (a sample submission "
                        f"with a column per class), or class numbers (ensemble.label_format=index)")
    return Layout("labels", sample.header if sample else ["id", "label"], label_format=fmt,
                  delimiter=delimiter), metric


def auto_kind(sample, label_names, problem, metric):
    """ensemble.output=auto: from the sample's columns and placeholders, and the metric."""
    two_classes = problem.one_class and len(label_names) == 2
    if sample is not None:
        columns = sample.columns
        if sorted(columns) == sorted(label_names) and len(columns) > 1:
            return "class_probabilities"
        if len(columns) == 1 and two_classes and (metric in PROBABILITY_METRICS or
                                                  placeholders_are_probabilities(sample.examples(), label_names)):
            return "probability"
        return "labels"
    if metric in PROBABILITY_METRICS:
        return "probability" if two_classes else "class_probabilities"
    return "labels"


def placeholders_are_probabilities(examples, label_names):
    """A sample's placeholder values read as probabilities: numbers in [0, 1] that are not all whole
    numbers (0.5, 0.25: a label column holds names or class numbers), and not label names."""
    if not examples or any(v in label_names for v in examples):
        return False
    numbers = []
    for value in examples:
        try:
            numbers.append(float(value))
        except ValueError:
            return False
    return all(0 <= x <= 1 for x in numbers) and not all(x.is_integer() for x in numbers)


def check_kind(kind, sample, label_names, problem):
    """ensemble.output (or what auto chose) against the problem and the sample's columns."""
    where = f" (sample {sample.path.name}: columns {sample.columns})" if sample else ""
    if kind == "probability":
        if not (problem.one_class and len(label_names) == 2):
            raise UserError(f"ensemble.output=probability writes the positive class's probability, for two classes; "
                            f"these sets have {len(label_names)} labels ({problem.name}): use class_probabilities")
        if sample and len(sample.columns) != 1:
            raise UserError(f"ensemble.output=probability writes one column{where}; fix ensemble.sample_submission "
                            f"or use ensemble.output=class_probabilities")
    columns = sample.columns if sample else list(label_names)
    per_class = sorted(columns) == sorted(label_names) and len(columns) == len(label_names)
    if kind == "class_probabilities" and not per_class:
        raise UserError(f"ensemble.output=class_probabilities writes one column per label ({', '.join(label_names)})"
                        f"{where}; give a sample with those columns")
    if kind == "labels" and sample and len(sample.columns) > 1 and not (problem.multi_label and per_class):
        if per_class:  # one column per class, and one class per row: the sample asks for probabilities
            raise UserError(f"ensemble.output=labels writes one label per row, and the sample has one column per "
                            f"label{where}, which one-class-per-row data fills with probabilities: use "
                            f"ensemble.output=class_probabilities (or auto)")
        raise UserError(f"the sample submission's columns {sample.columns} are neither one label column nor one "
                        f"column per label ({', '.join(label_names)}); fix ensemble.sample_submission")


def sample_label_format(examples, label_names, requested):
    """How the sample's label column writes a label: "name" or "index" (class number). Labels that are
    themselves integers (AG News' 1..4) against a number that is not one of them (a placeholder 0)
    could mean either: that is refused unless ensemble.label_format says which."""
    if requested != "auto":
        return requested
    if not examples or all(v in label_names for v in examples):
        return "name"
    integer = re.compile(r"-?\d+")
    if all(integer.fullmatch(v) for v in examples):
        if any(integer.fullmatch(name) for name in label_names):
            raise UserError(f"the sample submission writes labels as numbers ({examples[0]!r}) and the labels are "
                            f"themselves numbers ({', '.join(label_names[:5])}): it could mean names or class "
                            f"indices; set ensemble.label_format=name or ensemble.label_format=index")
        return "index"
    return "name"


def value_layout(sample, label_names):
    """Regression: one value column per target; one target may go under any column name."""
    if sample is None:
        return Layout("values", ["id", *label_names], list(range(len(label_names))))
    columns = sample.columns
    if len(columns) == 1 and len(label_names) == 1:
        return Layout("values", sample.header, [0])
    if sorted(columns) == sorted(label_names) and len(columns) == len(label_names):
        return Layout("values", sample.header, [label_names.index(c) for c in columns])
    raise UserError(f"the sample submission's columns {columns} are not the targets ({', '.join(label_names)}); "
                    f"fix ensemble.sample_submission")


# ---------------------------------------------------------------------------- writing


def written_probs(layout, probs, problem):
    """The probabilities as the submission writes them: clipped for log_loss (rows of one class
    per row renormalised), else as blended."""
    if not layout.clip:
        return probs
    probs = np.clip(probs, CLIP, 1 - CLIP)
    return probs / probs.sum(axis=1, keepdims=True) if problem.one_class else probs


def rows(layout, sample, ids, probs, predicted, label_names, abstained=None, abstain_label=None):
    """The submission's rows, header first, in the sample's row order (else the test rows' order);
    a label column holds `abstain_label` where `abstained` marks the row."""
    order, sample_ids = row_order(sample, ids)
    out = [layout.header]
    for sid, k in zip(sample_ids, order):
        if layout.kind == "values":
            out.append([sid, *[number_text(probs[k, j]) for j in layout.columns]])
        elif layout.kind in ("probability", "class_probabilities"):
            out.append([sid, *[f"{probs[k, j]:.6f}" for j in layout.columns]])
        elif layout.columns:  # multi-label, one 0/1 column per class
            out.append([sid, *[str(int(predicted[k, j])) for j in layout.columns]])
        else:
            write = (lambda j: str(int(j))) if layout.label_format == "index" else (lambda j: label_names[int(j)])
            value = (layout.delimiter.join(write(j) for j in np.flatnonzero(predicted[k])) if predicted.ndim == 2
                     else write(predicted[k]))
            out.append([sid, abstain_label if abstained is not None and abstained[k] else value])
    return out


def row_order(sample, ids):
    """(positions of the test rows, their ids) in the sample's order; the sample's ids must be the
    test rows' ids, each once."""
    ids = [str(i) for i in ids]
    if sample is None:
        return list(range(len(ids))), ids
    index = {i: k for k, i in enumerate(ids)}
    sample_ids = [r[0] for r in sample.body]
    seen = set()
    for sid in sample_ids:
        if sid in seen:
            raise UserError(f"the sample submission lists id '{sid}' twice; use the sample that belongs to this test "
                            f"file (ids must be unique)")
        seen.add(sid)
    missing = [i for i in sample_ids if i not in index]
    if missing or len(sample_ids) != len(ids):
        extra = len(ids) - (len(sample_ids) - len(missing))
        raise UserError(f"the sample submission's ids do not match the test rows ({len(missing)} sample ids have no "
                        f"prediction, e.g. '{(missing or ['-'])[0]}'; {extra} predicted rows are not in the sample); "
                        f"use the sample that belongs to this test file")
    return [index[i] for i in sample_ids], sample_ids
