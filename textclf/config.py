"""One config mechanism for all the stages, and the schema every key lives in.

    python <stage>.py --config configs/x.yaml key=value section.key=value ...

The YAML file is read with `yaml.safe_load`, then the `key=value` overrides are applied in
order. Every value is coerced to the type declared below (PyYAML reads `1e-5` as a string;
here it becomes a float). Unknown keys are an error that names the closest valid ones.
A bare `key=value` is accepted when exactly one section has that key.

Each section is a dataclass: its keys, each with a default and a one-line description
(`--help`, and the key reference of the docs site), the facts other stages need about a key as field
metadata (see `key`), and right under the keys the section's own `check()`: what a type alone
does not say. A new key touches one class.
"""

import codecs
import copy
import dataclasses
import difflib
import html
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Union

import yaml

from .errors import UserError
from .problem import BLEND_METRICS, NAMES as PROBLEM_NAMES, TRAIN_METRICS
from .text_rules import plain_number, template_fields, unescape_delimiter

# The folder above the package: a checkout when it holds the stage scripts.
CHECKOUT = Path(__file__).resolve().parent.parent


def project_root():
    """The folder relative config paths resolve against.

    In a checkout (train.py and data_process.py beside textclf/) it is the checkout, so a stage
    gives the same result from any working directory. An installed package (site-packages) has
    no project folder of its own: there it is the current working directory, read at each call.
    """
    if (CHECKOUT / "train.py").is_file() and (CHECKOUT / "data_process.py").is_file():
        return CHECKOUT
    return Path.cwd()


def resolve_path(path):
    """A config path as an absolute Path: relative paths resolve against the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


# ---------------------------------------------------------------------------- the schema


def key(default, help, *, fixed=False, free_on_resume=False, describes_file=False, locates_input=False,
        sticky=False):
    """A config key: its default, a one-line description, and what other stages need to know of it:

    fixed           (data.*) fixed when data_process.py writes the arrays: meta.json records it, and
                    a later stage refuses another value on its command line (datadir.check_data_keys)
    free_on_resume  may change when a run is resumed: it cannot change the run's result
                    (preflight.check_resume); a section whose every key may says FREE_ON_RESUME
    describes_file  (data.*) describes how a raw file is read, not what the arrays hold: evaluate.py
                    reads a new file (eval.input) with its own value
    locates_input   says where a run's inputs are (the data, the models): a resumed run takes it from
                    its record unless the command line gives it (preflight.resume_settings)
    sticky          free on resume, but a resumed run keeps its recorded value unless the command line
                    gives another (what the run keeps on disk: train.keep_state, its saving cadence)
    """
    metadata = {"help": help, "fixed": fixed, "free_on_resume": free_on_resume, "describes_file": describes_file,
                "locates_input": locates_input, "sticky": sticky}
    if isinstance(default, (list, dict)):  # a fresh copy for every config
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def need(ok, key_name, value, expected):
    """A section's rule: refuse `value` of `key_name` with one line saying what was expected."""
    if not ok:
        raise UserError(f"config key {key_name}: {value!r} {expected}")


def finite(x):
    return x is not None and math.isfinite(x)


def distinct(items):
    return len(set(items)) == len(items)


# A name a user gives (data set, run, submission) is one folder or file inside its output folder:
# no path separators, no leading '.' (so never '..', nor textclf's hidden temporary folders).
NAME = re.compile(r"\w[\w.+=@-]{0,127}")
NAME_RULE = "letters, digits and . _ - + = @, starting with a letter, digit or _, at most 128 characters"


def check_name(value, key_name):
    """Refuse a name that would not resolve to a plain entry inside its output folder."""
    if not NAME.fullmatch(value):
        raise UserError(f"config key {key_name}: {value!r} is not a plain name ({NAME_RULE}); it names a folder "
                        f"inside the output folder, never a path")


def check_seed(seed, key_name):
    need(0 <= seed < 2 ** 32, key_name, seed, "must be between 0 and 2**32 - 1")


TRUNCATIONS = ("head", "tail", "head_tail")
FORMATS = ("auto", "csv", "tsv", "jsonl", "parquet", "feather", "datasets", "hub")
WINDOW_AGGREGATES = ("mean", "max", "first_last")
HEADS = ("cls", "mean", "pooler", "fusion", "last")
PRECISIONS = ("auto", "no", "fp16", "bf16")
SUBMISSION_OUTPUTS = ("auto", "labels", "probability", "class_probabilities")
BLEND_METHODS = ("mean", "weighted", "geometric", "rank")


@dataclass
class DataConfig:
    name: str = key("", "output folder models_input_files/<name>; default: the config file's stem",
                    free_on_resume=True, locates_input=True)
    train_file: str = key("", "the labelled train file (csv, tsv, jsonl, parquet, feather), a datasets "
                          "folder, or hub:NAME[:split]", fixed=True, describes_file=True)
    valid_file: str | None = key(None, "a validation file; without one, a held-out split or K folds of train",
                                 fixed=True, describes_file=True)
    test_file: str | None = key(None, "a test file, labelled or not (a blank label column is unlabelled)",
                                fixed=True, describes_file=True)
    output_dir: str = key("models_input_files", "where data sets are written", free_on_resume=True,
                          locates_input=True)
    overwrite: bool = key(False, "replace an existing models_input_files/<name> that data_process.py made",
                          free_on_resume=True)
    format: Literal[FORMATS] = key("auto", "csv, tsv, jsonl, parquet, feather (Arrow IPC), datasets (a save_to_disk "
                                   "folder) or hub (a hub dataset name); auto: the extension, a folder, or hub:NAME",
                                   fixed=True, describes_file=True)
    delimiter: str | None = key(None, "override the csv/tsv delimiter ('\\t' for a tab)", fixed=True,
                                describes_file=True)
    quoting: Literal["auto", "minimal", "none"] = key("auto", "csv/tsv quoting; auto: csv minimal, tsv none",
                                                      fixed=True, describes_file=True)
    header: bool = key(True, "false: a headerless csv/tsv whose columns data.columns names", fixed=True,
                       describes_file=True)
    columns: list[str] | None = key(None, "column names of a headerless file", fixed=True, describes_file=True)
    encoding: str = key("utf-8", "the files' text encoding (e.g. latin-1)", fixed=True, describes_file=True)
    text_columns: list[str] = key(["text"], "the text column(s); several are joined by data.text_separator",
                                  fixed=True)
    text_separator: str = key(" ", "what joins several text columns", fixed=True)
    template: str | None = key(None, "the text made from several columns, e.g. 'title:{title}, abstract:{abstract}' "
                               "(replaces text_columns); a too-long row is cut inside its fields", fixed=True)
    template_truncate: str | None = key(None, "the template field a too-long row is cut in first; default: the "
                                        "longest", fixed=True)
    text_pair_column: str | None = key(None, "a second segment (token type 1) read with the text", fixed=True)
    label_column: str | None = key("label", "the label column (regression: the target)", fixed=True,
                                   describes_file=True)
    label_columns: list[str] | None = key(None, "multi-label: one 0/1 column per class (regression: one column per "
                                          "target)", fixed=True)
    label_delimiter: str | None = key(None, "multi-label: a delimited list of labels in label_column", fixed=True)
    labels: list[str] | None = key(None, "a fixed label order; default: the train labels sorted", fixed=True)
    task: Literal["classification", "regression"] = key("classification", "regression: numeric targets in "
                                                        "label_column (or label_columns)", fixed=True)
    id_column: str | None = key(None, "the row id column; default: the row number", fixed=True, describes_file=True)
    max_len: int = key(128, "tokens per row, special tokens included", fixed=True)
    truncation: Literal[TRUNCATIONS] = key("head", "how long texts are cut: head, tail or head_tail", fixed=True)
    head_tokens: int | None = key(None, "head_tail: tokens kept from the start (default: a quarter)", fixed=True)
    window_stride: int = key(0, "> 0: whole texts as sliding windows of max_len starting every this many tokens",
                             fixed=True)
    max_windows: int = key(0, "> 0: at most this many windows a text (the first ones and the last)", fixed=True)
    window_aggregate: Literal[WINDOW_AGGREGATES] = key("mean", "windows' probabilities -> one row per text: mean, "
                                                       "max or first_last", fixed=True)
    n_folds: int = key(0, ">= 2: K stratified folds over train instead of a validation split", fixed=True)
    fold_column: str | None = key(None, "train's own fold numbers (0..K-1, -1 = never held out) instead of drawn "
                                  "folds", fixed=True)
    group_column: str | None = key(None, "rows with one value here share a fold (StratifiedGroupKFold), e.g. one "
                                   "author", fixed=True)
    valid_size: float = key(0.1, "held-out fraction when there is no valid_file and no folds", fixed=True)
    seed: int = key(42, "the seed of the held-out split and the folds", fixed=True)
    drop_empty: bool = key(False, "drop rows whose text is empty (counted) instead of refusing the file", fixed=True,
                           describes_file=True)
    chunk_rows: int = key(20000, "rows read and tokenized at a time; memory stays flat", free_on_resume=True)

    def check(self):
        if self.name:
            check_name(self.name, "data.name")
        if self.template is not None:
            fields = template_fields(self.template)  # refuses a template that names no plain column
            need(self.text_pair_column not in fields, "data.text_pair_column", self.text_pair_column,
                 "is a field of data.template; the second segment must be another column")
            answers = [f for f in fields if f in [self.label_column, *(self.label_columns or [])]]
            need(not answers, "data.template", self.template, f"fills in the label column '{(answers or [''])[0]}': the "
                 f"model would read its answer; take that field out of the template")
            need(self.template_truncate is None or self.template_truncate in fields, "data.template_truncate",
                 self.template_truncate, f"is not a field of data.template ({', '.join(fields)})")
        else:
            need(self.template_truncate is None, "data.template_truncate", self.template_truncate,
                 "names a field of data.template, and there is none: drop it")
        if self.delimiter is not None:
            try:
                delimiter = unescape_delimiter(self.delimiter)
            except UnicodeDecodeError:
                delimiter = self.delimiter
            need(len(delimiter) == 1 and delimiter not in "\r\n\"", "data.delimiter", self.delimiter,
                 "must be one character (e.g. ';', '|' or '\\t' for a tab)")
        try:
            if not getattr(codecs.lookup(self.encoding), "_is_text_encoding", True):  # rot13, base64, zlib ...
                raise LookupError(self.encoding)
        except LookupError:
            raise UserError(f"config key data.encoding: {self.encoding!r} is not a known text encoding; use e.g. "
                            f"utf-8, latin-1 or cp1252") from None
        for key_name, items in (("data.text_columns", self.text_columns), ("data.columns", self.columns),
                                ("data.label_columns", self.label_columns), ("data.labels", self.labels)):
            if items is not None:
                need(items and distinct(items) and all(str(i).strip() for i in items), key_name, items,
                     "must list distinct, non-empty names")
        need(self.text_pair_column not in self.text_columns, "data.text_pair_column", self.text_pair_column,
             "is one of data.text_columns; the second segment must be another column")
        need(self.label_delimiter is None or self.label_delimiter != "", "data.label_delimiter", self.label_delimiter,
             "must be at least one character")
        need(not (self.label_columns and self.label_delimiter), "data.label_delimiter", self.label_delimiter,
             "and data.label_columns are both set; a multi-label file uses one of them")
        need(self.task == "regression" or not self.label_columns or len(self.label_columns) >= 2,
             "data.label_columns", self.label_columns, "names one column, but multi-label data has one 0/1 column per "
             "class (two or more); one label column is single-label: use data.label_column="
             f"{(self.label_columns or [''])[0]} instead")
        self.check_tokens()
        self.check_folds()
        need(self.chunk_rows >= 1, "data.chunk_rows", self.chunk_rows, "must be at least 1")
        if self.task == "regression":
            need(self.labels is None, "data.labels", self.labels, "lists class names; data.task=regression reads "
                 "numbers: drop data.labels")
            need(self.label_delimiter is None, "data.label_delimiter", self.label_delimiter, "is for multi-label "
                 "lists; several numeric targets go in data.label_columns=[a,b] with data.task=regression")
            need(self.label_columns or self.label_column, "data.label_column", self.label_column,
                 "must name the target column for data.task=regression")

    def check_tokens(self):
        """max_len, head_tail and sliding windows."""
        need(self.max_len >= 4, "data.max_len", self.max_len, "must be at least 4 (special tokens and some text)")
        need(self.head_tokens is None or self.head_tokens >= 0, "data.head_tokens", self.head_tokens,
             "must be 0 or more")
        need(self.window_stride >= 0, "data.window_stride", self.window_stride,
             "must be 0 (no windows) or a number of tokens")
        need(self.max_windows >= 0, "data.max_windows", self.max_windows, "must be 0 (every window) or more")
        need(self.max_windows == 0 or self.window_stride > 0, "data.max_windows", self.max_windows,
             "limits sliding windows; set data.window_stride too (or drop data.max_windows)")
        if self.window_stride:
            need(not self.template, "data.window_stride", self.window_stride,
                 "cuts a text into windows, which would cut data.template's own words (its question, the "
                 "'answer:' a verbalizer reads) out of all but one: drop one of them (a long templated row is cut "
                 "inside its fields instead)")
            need(self.text_pair_column is None, "data.window_stride", self.window_stride,
                 "cuts single texts into windows; text pairs (data.text_pair_column) are truncated instead: drop one")
            need(self.truncation == "head", "data.truncation", self.truncation,
                 "does not apply with sliding windows (they cover the whole text): drop data.truncation")
            need(not (self.window_aggregate == "max" and self.task == "regression"), "data.window_aggregate",
                 self.window_aggregate, "takes the classwise max of probabilities; a regression uses mean or "
                 "first_last")

    def check_folds(self):
        """The held-out split or the folds, and where they come from."""
        need(self.n_folds == 0 or self.n_folds >= 2, "data.n_folds", self.n_folds,
             "must be 0 (a validation split) or >= 2 (K folds)")
        need(not (self.n_folds >= 2 and self.valid_file), "data.n_folds", self.n_folds,
             "and data.valid_file are both set; use folds over train or a valid file, not both")
        need(not (self.fold_column and self.group_column), "data.group_column", self.group_column,
             "and data.fold_column are both set; given folds already decide where each row goes: use one of them")
        for key_name in ("fold_column", "group_column"):
            need(not (getattr(self, key_name) and self.valid_file), f"data.{key_name}", getattr(self, key_name),
                 "and data.valid_file are both set; folds over train or a valid file, not both")
        label_columns = set(self.label_columns) if self.label_columns else {self.label_column}
        for key_name in ("fold_column", "group_column"):
            need(getattr(self, key_name) not in label_columns, f"data.{key_name}", getattr(self, key_name),
                 "is a label column; folds taken from the label hold out whole classes, never seen in training: name "
                 "another column, or drop it for folds stratified by label")
        need(finite(self.valid_size) and 0 < self.valid_size < 1, "data.valid_size", self.valid_size,
             "must be between 0 and 1")
        check_seed(self.seed, "data.seed")


LORA_DEFAULTS = {"r": 8, "alpha": None, "dropout": 0.0, "target_modules": "all-linear", "quantize": None}


@dataclass
class ModelConfig:
    name: str = key("all-MiniLM-L6-v2", "a folder in premodels/, a path, or a hub name (fetched with "
                    "python -m textclf.premodels fetch)")
    premodels_dir: str = key("premodels", "where model folders are found", free_on_resume=True, locates_input=True)
    trust_remote_code: bool = key(False, "run a model folder's own Python code (only for models you trust)",
                                  free_on_resume=True)
    head: Literal[("auto",) + HEADS] = key("auto", "what the classifier reads: cls, mean, pooler, fusion or last; "
                                           "auto: cls for encoders, last for decoders")
    dropout: float = key(0.1, "dropout before the head")
    backbone_dropout: float | None = key(None, "override the encoder's own dropout (null: keep its config)")
    multi_sample_dropout: int = key(1, "k dropout masks on the pooled features, logits averaged")
    mlp_hidden: int = key(0, "> 0: the head is Linear(hidden, mlp_hidden)-ReLU-Dropout-Linear instead of one Linear")
    freeze_embeddings: bool = key(False, "keep the embeddings as loaded")
    freeze_layers: int = key(0, "keep the embeddings and the first k layers as loaded (backward skips them)")
    problem_type: Literal[("auto",) + PROBLEM_NAMES] = key("auto", "single_label, binary_bce, multi_label or "
                                                           "regression; auto: from the data")
    verbalizer: list[str] | None = key(None, "decoders: one label word per label (label order); the head starts as "
                                       "the LM head's rows for them")
    lora: dict | None = key(None, "LoRA adapters on a frozen base: {r: 8, alpha: 16, dropout: 0.05, target_modules: "
                            "all-linear, quantize: null | 4bit}")

    def check(self):
        self.lora = lora_settings(self.lora)
        need(self.name.strip() != "", "model.name", self.name, "must name a model")
        for key_name, p in (("model.dropout", self.dropout), ("model.backbone_dropout", self.backbone_dropout)):
            need(p is None or (finite(p) and 0 <= p < 1), key_name, p, "must be at least 0 and below 1")
        need(1 <= self.multi_sample_dropout <= 64, "model.multi_sample_dropout", self.multi_sample_dropout,
             "must be between 1 and 64")
        need(self.freeze_layers >= 0, "model.freeze_layers", self.freeze_layers, "must be 0 or more")
        need(0 <= self.mlp_hidden <= 65536, "model.mlp_hidden", self.mlp_hidden,
             "must be 0 (a linear head) or a layer width up to 65536")
        need(not (self.mlp_hidden and self.head == "fusion"), "model.mlp_hidden", self.mlp_hidden,
             "goes with heads cls, mean and pooler; fusion has two linear layers of its own")


def lora_settings(raw):
    """model.lora checked, with its defaults filled in (alpha: 2 r), or None when off. Raises a
    UserError naming the bad key."""
    if raw is None:
        return None
    unknown = sorted(set(raw) - set(LORA_DEFAULTS))
    if unknown:
        raise UserError(f"config key model.lora: unknown setting '{unknown[0]}'; model.lora takes "
                        f"{', '.join(LORA_DEFAULTS)}, e.g. model.lora='{{r: 8, alpha: 16, dropout: 0.05}}'")
    out = {**LORA_DEFAULTS, **raw}
    out["r"] = coerce(out["r"], int, "model.lora.r")
    out["alpha"] = None if _is_null(out["alpha"]) else coerce(out["alpha"], float, "model.lora.alpha")
    out["dropout"] = coerce(out["dropout"], float, "model.lora.dropout")
    out["quantize"] = None if _is_null(out["quantize"]) else str(out["quantize"]).strip()
    if isinstance(out["target_modules"], str) and out["target_modules"].strip() != "all-linear":
        out["target_modules"] = [out["target_modules"].strip()]
    r, alpha, dropout, targets = out["r"], out["alpha"], out["dropout"], out["target_modules"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise UserError(f"config key model.lora.r: {r!r} must be a whole number of at least 1 (the adapters' rank)")
    out["alpha"] = alpha = 2 * r if alpha is None else alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (alpha > 0 and math.isfinite(alpha)):
        raise UserError(f"config key model.lora.alpha: {alpha!r} must be a positive number (scaling alpha / r)")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise UserError(f"config key model.lora.dropout: {dropout!r} must be in [0, 1)")
    if not (targets == "all-linear" or (isinstance(targets, list) and targets
                                        and all(isinstance(t, str) and t for t in targets))):
        raise UserError(f"config key model.lora.target_modules: {targets!r} must be all-linear or a list of module "
                        f"names, e.g. [q_proj, v_proj] (Llama) or [query, value] (BERT)")
    if out["quantize"] not in (None, "4bit"):
        raise UserError(f"config key model.lora.quantize: {out['quantize']!r} must be null or 4bit (QLoRA)")
    return out


@dataclass
class TrainConfig:
    run: str = key("", "the run folder checkpoints/<run>; default: the data name", free_on_resume=True)
    output_dir: str = key("checkpoints", "where runs are written", free_on_resume=True)
    folds: list[int] | Literal["all"] = key("all", "the folds to train: all, or a list of fold numbers")
    epochs: float = key(3.0, "passes over the train rows (fractions allowed)")
    max_steps: int = key(0, "> 0: exactly this many optimizer steps per fold (overrides epochs)")
    batch_size: int = key(32, "rows per batch on each process")
    eval_batch_size: int = key(128, "rows per batch when scoring held-out rows")
    grad_accum: int = key(1, "batches summed into one optimizer step")
    lr: float = key(1e-4, "the encoder's peak learning rate (AdamW)")
    head_lr: float | None = key(None, "the head's learning rate; default: lr")
    layer_lr_decay: float = key(1.0, "< 1: each lower encoder layer gets lr * decay^depth")
    weight_decay: float = key(0.01, "AdamW weight decay (never on biases and norms)")
    adam_eps: float = key(1e-8, "AdamW epsilon")
    betas: list[float] = key([0.9, 0.999], "AdamW betas")
    scheduler: Literal["linear", "cosine", "constant", "onecycle"] = key("linear", "the learning-rate schedule after "
                                                                         "warmup")
    warmup: float = key(0.06, "< 1: a ratio of the optimizer steps; >= 1: a number of steps")
    max_grad_norm: float = key(1.0, "clip the gradient norm to this; 0: no clipping")
    precision: Literal[PRECISIONS] = key("auto", "auto: the fastest exact one on this device (textclf/precision.py); "
                                         "no, fp16 or bf16", free_on_resume=True)
    label_smoothing: float = key(0.0, "smooth class targets by this much")
    loss: Literal["auto", "mse", "huber"] = key("auto", "regression: mse (auto) or huber, on standardised targets")
    huber_delta: float = key(1.0, "loss=huber: where the loss turns linear, in target standard deviations")
    class_weights: list[float] | Literal["auto"] | None = key(None, "weight each class in the loss: one number per "
                                                              "label, or auto (inverse frequency)")
    sampler: Literal["length_grouped", "random"] = key("length_grouped", "batches of similar length (little padding), "
                                                       "or plain random batches")
    ema_decay: float = key(0.0, "> 0: evaluate and keep an EMA of the weights, updated every step "
                           "(textclf/averaging.py)")
    swa_last: int = key(0, "> 0: SWA, the mean of the weights at the last k evaluations (one per epoch by default)")
    adversarial: Literal["none", "fgm", "awp"] = key("none", "a second pass on perturbed embeddings / weights "
                                                     "(textclf/adversarial.py)")
    adv_eps: float | None = key(None, "fgm: the step's norm (1.0); awp: the largest change relative to each weight "
                                "(0.01)")
    adv_lr: float = key(1.0, "awp: the step relative to each weight tensor's norm")
    adv_start_epoch: float = key(0.0, "the adversarial pass starts here (epochs, fractions allowed)")
    gradient_checkpointing: bool = key(False, "recompute the layers' activations in backward: less memory, ~30% "
                                       "slower")
    pad_to_multiple: int = key(1, "round batch widths up to a multiple (8 measured slower on CPU; try on GPU)")
    cpu_speedups: bool = key(True, "on a CPU: fast dropout and attention, embedding-gradient buffer, freed memory kept "
                             "(textclf/speedups.py)")
    compile: bool | Literal["auto"] = key("auto", "torch.compile the model, batch widths bucketed; auto: where it was "
                                          "measured to pay (textclf/compiling.py)", free_on_resume=True,
                                          sticky=True)
    eval_every_steps: int = key(0, "evaluate every this many optimizer steps; 0: once per epoch")
    metric: str = key("auto", "what best/ is chosen by: auto (accuracy; rmse for regression), "
                      + ", ".join(TRAIN_METRICS))
    metric_mode: Literal["max", "min", "auto"] = key("auto", "whether the metric is better higher or lower; auto: "
                                                     "as the metric is")
    patience: int = key(0, "evaluations without improvement before the fold stops; 0: never")
    min_delta: float = key(0.0, "the least change that counts as an improvement")
    teacher: list[str] = key([], "distillation: prediction set(s) (their mean) or one submissions/<name>.json whose "
                             "out-of-fold probabilities the run also learns from (textclf/distillation.py)")
    distill_alpha: float = key(0.5, "the teacher's share of the loss; 1 - alpha goes to the labels")
    distill_temperature: float = key(2.0, "the softening of both distributions in the teacher's loss")
    calibrate: bool = key(True, "fit a temperature on the out-of-fold rows at the end of the run; evaluate, the "
                          "predictors and exports divide the logits by it (textclf/calibration.py)",
                          free_on_resume=True, sticky=True)
    max_nonfinite: int = key(20, "non-finite losses in a row before the run stops")
    save_total_limit: int = key(1, "resumable last-<step>/ states kept per fold while it trains", free_on_resume=True,
                                sticky=True)
    keep_state: bool = key(False, "keep a finished fold's resumable states (weights, optimizer: ~3x the model); "
                           "false: best/, oof/ and the logs are all a finished fold keeps", free_on_resume=True,
                           sticky=True)
    save_every_steps: int = key(0, "also save a resumable state every this many optimizer steps",
                                free_on_resume=True, sticky=True)
    resume: str | None = key(None, "auto (the newest version of the run), checkpoints/<run>, or "
                             ".../fold<k>/last-<step>", free_on_resume=True)
    max_time: float = key(0.0, "seconds; stop gracefully (state saved) before this wall-clock budget",
                          free_on_resume=True)
    num_workers: int = key(0, "DataLoader worker processes", free_on_resume=True)
    seed: int = key(42, "the seed of the head's initial weights, the batches and dropout")
    log_every_steps: int = key(20, "a log record every this many optimizer steps", free_on_resume=True)
    report_to: str | list[str] | None = key("tensorboard", "tensorboard, wandb, mlflow or none, or a list of them",
                                            free_on_resume=True)
    profile_steps: int = key(0, "> 0: a torch profiler trace of this many steps of the first fold, in "
                             "<run>/profile/", free_on_resume=True)
    overwrite: bool = key(False, "replace a run textclf made under this name; false: a new version folder "
                          "(<run>-v2)", free_on_resume=True)

    def check(self):
        if self.run:
            check_name(self.run, "train.run")
        check_seed(self.seed, "train.seed")
        need(self.folds == "all" or (self.folds and distinct(self.folds) and min(self.folds) >= 0), "train.folds",
             self.folds, "must be all or a list of distinct fold numbers, e.g. [0,1]")
        need(finite(self.epochs) and 0 < self.epochs <= 100_000, "train.epochs", self.epochs,
             "must be a positive number")
        for name in ("batch_size", "eval_batch_size", "grad_accum", "pad_to_multiple", "max_nonfinite",
                     "save_total_limit", "log_every_steps"):
            check_count(getattr(self, name), f"train.{name}")
        for name in ("eval_every_steps", "patience", "save_every_steps", "num_workers", "max_steps", "profile_steps"):
            need(getattr(self, name) >= 0, f"train.{name}", getattr(self, name), "must be 0 or more")
        self.check_optimizer()
        need(finite(self.ema_decay) and 0 <= self.ema_decay < 1, "train.ema_decay", self.ema_decay,
             "must be 0 (off) or a decay below 1, e.g. 0.999")
        need(self.swa_last >= 0, "train.swa_last", self.swa_last, "must be 0 (off) or a number of evaluations")
        need(self.adv_eps is None or (finite(self.adv_eps) and self.adv_eps > 0), "train.adv_eps", self.adv_eps,
             "must be a positive number")
        need(finite(self.adv_lr) and self.adv_lr > 0, "train.adv_lr", self.adv_lr, "must be a positive number")
        need(finite(self.adv_start_epoch) and self.adv_start_epoch >= 0, "train.adv_start_epoch",
             self.adv_start_epoch, "must be 0 or more")
        need(self.adversarial == "none" or self.max_steps or not finite(self.epochs)
             or self.adv_start_epoch < self.epochs, "train.adv_start_epoch", self.adv_start_epoch,
             f"is not before the end of training (train.epochs={self.epochs:g}), so the adversarial pass would never "
             f"run; start it earlier (e.g. train.adv_start_epoch={self.epochs / 2:g}), or set train.adversarial=none")
        need(finite(self.label_smoothing) and 0 <= self.label_smoothing < 1, "train.label_smoothing",
             self.label_smoothing, "must be at least 0 and below 1")
        if isinstance(self.class_weights, list):
            need(self.class_weights and all(finite(w) and (w == 0 or 1e-9 <= w <= 1e9) for w in self.class_weights)
                 and sum(self.class_weights) > 0, "train.class_weights", self.class_weights,
                 "must be 0 or numbers from 1e-9 to 1e9 (ratios between classes), one per label, not all 0")
        need(finite(self.huber_delta) and self.huber_delta > 0, "train.huber_delta", self.huber_delta,
             "must be a positive number (in target standard deviations)")
        need(distinct(self.teacher), "train.teacher", self.teacher, "lists a prediction set twice")
        need(finite(self.distill_alpha) and 0 <= self.distill_alpha <= 1, "train.distill_alpha", self.distill_alpha,
             "must be from 0 (labels only) to 1 (the teacher only)")
        need(finite(self.distill_temperature) and 0.05 <= self.distill_temperature <= 100, "train.distill_temperature",
             self.distill_temperature, "must be a temperature from 0.05 to 100 (1: as the teacher gave them)")
        metrics = ("auto",) + TRAIN_METRICS
        if self.metric not in metrics:
            close = difflib.get_close_matches(self.metric, metrics, n=1)
            raise UserError(f"train.metric={self.metric} is not a metric textclf computes; choose from "
                            f"{', '.join(metrics)}" + (f" (did you mean {close[0]}?)" if close else ""))

    def check_optimizer(self):
        """The learning rates, AdamW's settings, warmup and clipping."""
        for key_name, x in (("train.lr", self.lr), ("train.head_lr", self.head_lr)):
            need(x is None or (finite(x) and x >= 0), key_name, x,
                 "must be a number, 0 or more (0 leaves the weights as they are)")
            # AdamW moves every weight by about lr a step: above 1 a model only diverges (2e5 for 2e-5, say)
            need(x is None or x <= 1, key_name, x, "is far above any AdamW learning rate (fine-tuning uses about 1e-5 "
                 "to 1e-3; was a minus sign lost, e.g. 2e5 for 2e-5?)")
        need(finite(self.adam_eps) and self.adam_eps > 0, "train.adam_eps", self.adam_eps, "must be a positive number")
        for name in ("weight_decay", "warmup", "max_grad_norm", "min_delta", "max_time"):
            need(finite(getattr(self, name)) and getattr(self, name) >= 0, f"train.{name}", getattr(self, name),
                 "must be a number, 0 or more")
        need(finite(self.layer_lr_decay) and 0 < self.layer_lr_decay <= 1, "train.layer_lr_decay",
             self.layer_lr_decay, "must be above 0 and at most 1")
        need(len(self.betas) == 2 and all(finite(b) and 0 <= b < 1 for b in self.betas), "train.betas", self.betas,
             "must be two numbers in [0, 1), e.g. [0.9, 0.999]")


def check_count(n, key_name):
    """A size or count that must be at least 1, and not absurdly large."""
    need(n >= 1, key_name, n, "must be positive (at least 1)")
    need(n <= 2 ** 24, key_name, n, f"is far beyond any useful value (at most {2 ** 24:,})")


@dataclass
class EvalConfig:
    FREE_ON_RESUME: ClassVar[bool] = True  # another stage's settings: a resumed training run may change them

    run: str = key("", "the run to predict with (checkpoints/<run>); default: the newest run of train.run or "
                   "data.name")
    output_dir: str = key("model_predictions", "where prediction sets are written")
    splits: list[Literal["train", "valid", "test"]] = key(["valid", "test"], "the data's splits to predict")
    folds: list[int] | Literal["all"] = key("all", "the run's folds to predict with; all of them must be finished")
    batch_size: int = key(128, "rows per batch")
    precision: Literal[PRECISIONS] = key("auto", "as train.precision, for prediction")
    compile: bool | Literal["auto"] = key("auto", "as train.compile, for prediction")
    texts: list[str] | None = key(None, "raw texts to classify (train.py also predicts them at its end)")
    embeddings: bool = key(False, "also write each row's pooled vector (the head's input), keyed by id")
    hidden_states: bool = key(False, "also the last hidden layer, (rows, max_len, hidden) with lengths (and the "
                              "embeddings)")
    input: str | None = key(None, "a raw file to classify (and score, where it has the labels), in any format "
                            "data.format reads")
    read_labels: Literal["auto", "always", "never"] = key("auto", "eval.input's labels: auto scores the file where it "
                                                          "has them, always refuses one without, never only predicts")
    data: str = key("", "another processed data set (models_input_files/<name>, tokenized as the run's) to predict "
                    "and score instead of the run's own")
    calibrated: bool = key(True, "apply the temperature the run fitted on its out-of-fold rows (train.calibrate); "
                           "false: the probabilities as trained")
    abstain_below: float = key(0.0, "> 0: answer eval.abstain_label where the top probability is below this "
                               "(single-label); labelled splits report coverage and accuracy on the rows answered")
    abstain_label: str = key("abstain", "the answer of a row that abstains")
    explain: bool = key(False, "write explanations.html: each asked row's words shaded by their attribution "
                        "(integrated gradients) to the predicted label, with the true label and probabilities")
    explain_ids: list[str] | None = key(None, "the row ids to explain; default: the first eval.explain_rows rows of "
                                        "each split predicted")
    explain_rows: int = key(20, "rows explained per split when eval.explain_ids is not set")
    explain_steps: int = key(64, "integrated-gradient steps per row (more: attributions closer to completeness)")

    def check(self):
        need(self.splits and distinct(self.splits), "eval.splits", self.splits,
             "must list distinct splits (train, valid, test)")
        need(self.folds == "all" or (self.folds and distinct(self.folds) and min(self.folds) >= 0), "eval.folds",
             self.folds, "must be all or a list of distinct fold numbers")
        check_count(self.batch_size, "eval.batch_size")
        if self.hidden_states:  # written with the embeddings, which it comes with
            self.embeddings = True
        if self.data:
            check_name(self.data, "eval.data")
        need(finite(self.abstain_below) and 0 <= self.abstain_below <= 1, "eval.abstain_below", self.abstain_below,
             "must be a probability from 0 (never abstain) to 1")
        need(self.abstain_label.strip() != "" and "\n" not in self.abstain_label, "eval.abstain_label",
             self.abstain_label, "must be a non-empty label on one line")
        check_count(self.explain_rows, "eval.explain_rows")
        check_count(self.explain_steps, "eval.explain_steps")
        if self.explain_ids is not None:
            need(self.explain_ids and distinct(self.explain_ids), "eval.explain_ids", self.explain_ids,
                 "must list distinct row ids")


@dataclass
class EnsembleConfig:
    FREE_ON_RESUME: ClassVar[bool] = True

    name: str = key("submission", "the submission's name: submissions/<name>.csv (and <name>.json)")
    predictions: list[str] = key([], "model_predictions/<run> folders to blend")
    method: Literal[BLEND_METHODS] = key("weighted", "how the sets are blended; weighted: weights searched on the "
                                         "out-of-fold rows; rank: for roc_auc only")
    metric: Literal[("auto",) + BLEND_METRICS] = key("auto", "the competition's metric, which the blend is tuned and "
                                                     "scored by; auto: roc_auc / log_loss for probabilities, else "
                                                     "accuracy (rmse for regression)")
    sample_submission: str | None = key(None, "a sample submission: its ids, order and columns are followed")
    output: Literal[SUBMISSION_OUTPUTS] = key("auto", "what the submission holds: labels, probability (of the positive "
                                              "class), class_probabilities; auto: from the sample and the metric")
    label_format: Literal["auto", "name", "index"] = key("auto", "a label column holds label names or class numbers")
    output_dir: str = key("submissions", "where submissions are written")
    tune_thresholds: bool = key(True, "tune the binary threshold (multi-label: one per class) on the out-of-fold "
                                "rows, where labels are written for a label metric")
    calibrate: bool = key(True, "fit a temperature on the blend's out-of-fold rows and apply it to the blend "
                          "(textclf/calibration.py); not for rank blends or regression")
    abstain_below: float = key(0.0, "> 0: write ensemble.abstain_label where the blend's top probability is below "
                               "this; only for a label submission whose sample already holds that label")
    abstain_label: str = key("abstain", "the label a row that abstains gets in the submission")

    def check(self):
        check_name(self.name, "ensemble.name")
        need(distinct(self.predictions), "ensemble.predictions", self.predictions, "lists a prediction set twice")
        need(self.method != "rank" or self.metric == "roc_auc", "ensemble.method", self.method,
             "ranks each class column across rows, which changes argmax and threshold decisions; it suits "
             "ensemble.metric=roc_auc only (two classes or multi-label): use weighted or mean, or set "
             "ensemble.metric=roc_auc")
        need(finite(self.abstain_below) and 0 <= self.abstain_below <= 1, "ensemble.abstain_below",
             self.abstain_below, "must be a probability from 0 (never abstain) to 1")
        need(not self.abstain_below or self.method != "rank", "ensemble.abstain_below", self.abstain_below,
             "needs probabilities, and a rank blend gives ranks; use ensemble.method=weighted or mean")
        need(self.abstain_label.strip() != "" and "\n" not in self.abstain_label, "ensemble.abstain_label",
             self.abstain_label, "must be a non-empty label on one line")


@dataclass
class PseudoConfig:
    FREE_ON_RESUME: ClassVar[bool] = True

    name: str = key("", "the new training input: <data.output_dir>/<name>, made from data.name's folder")
    predictions: list[str] = key([], "model_predictions/<run> folders (their mean) or one submissions/<name>.json "
                                 "(that blend)")
    threshold: float = key(0.0, "keep test rows whose top probability is at least this (multi-label: every class's "
                           "p or 1 - p)")
    top_k: int = key(0, "> 0: keep at most the k most confident rows of each predicted class")
    id_prefix: str = key("pseudo:", "pseudo rows' ids: the prefix + the test row's id")
    per_fold: bool = key(False, "fold k trains only on rows labelled by the sets' fold-k models (K-fold without the "
                         "leak)")
    overwrite: bool = key(False, "replace <name> if textclf made it")

    def check(self):
        if self.name:
            check_name(self.name, "pseudo.name")
        need(finite(self.threshold) and 0 <= self.threshold <= 1, "pseudo.threshold", self.threshold,
             "must be a probability between 0 and 1")
        need(self.top_k >= 0, "pseudo.top_k", self.top_k, "must be 0 (no limit) or more")
        need(distinct(self.predictions), "pseudo.predictions", self.predictions, "lists a prediction set twice")
        need(len(self.id_prefix) > 0 and "\n" not in self.id_prefix, "pseudo.id_prefix", self.id_prefix,
             "must be a non-empty prefix (it keeps pseudo rows' ids apart from the train ids)")


TUNABLE_SECTIONS = ("train", "model")
# keys that say what a run is scored by, where its inputs are, or how fast it goes, not how the model learns
NOT_TUNABLE = ("train.folds", "train.teacher", "train.seed", "train.metric", "train.metric_mode", "train.calibrate",
               "train.eval_batch_size", "train.cpu_speedups", "train.compile", "train.pad_to_multiple",
               "train.max_nonfinite", "model.name", "model.problem_type", "model.trust_remote_code")


@dataclass
class TuneConfig:
    FREE_ON_RESUME: ClassVar[bool] = True

    space: dict = key({}, "what to search, key -> range: {train.lr: {low: 1e-5, high: 3e-4, log: true}, "
                      "train.epochs: {low: 1, high: 4, step: 1}, model.head: {choices: [cls, mean]}}")
    trials: int = key(8, "finished trials (complete or pruned) the study runs up to, counting earlier sessions")
    timeout: float = key(0.0, "> 0: start no new trial after this many seconds of this session")
    study: str = key("", "the study's name: its folder <train.output_dir>/<study>-tune; default: train.run or "
                     "data.name")
    storage: str = key("", "a database URL Optuna takes (sqlite:///..., postgresql://...); default: study.db in the "
                       "study's folder, so a killed study resumes and processes on this machine can share it")
    pruner: Literal["median", "none"] = key("median", "median: stop a trial whose evaluation is below the median of "
                                            "earlier trials' at the same point; none: run every trial whole")
    startup_trials: int = key(3, "trials that run whole and are sampled at random before TPE and the pruner start")
    seed: int = key(0, "the sampler's seed")
    heartbeat: float = key(60.0, "seconds between a running trial's signs of life in the storage; a trial silent for "
                           "twice this is failed and run again (another machine's); 0: off")

    def check(self):
        if self.study:
            check_name(self.study, "tune.study")
        check_count(self.trials, "tune.trials")
        check_count(self.startup_trials, "tune.startup_trials")
        check_seed(self.seed, "tune.seed")
        for name in ("timeout", "heartbeat"):
            need(finite(getattr(self, name)) and getattr(self, name) >= 0, f"tune.{name}", getattr(self, name),
                 "must be 0 (off) or a number of seconds")
        need(not self.heartbeat or self.heartbeat >= 1, "tune.heartbeat", self.heartbeat,
             "must be 0 (off) or at least 1 second")
        self.space = {name: check_range(name, spec) for name, spec in self.space.items()}

    def parameters(self):
        """The space as (section, key, spec) with every spec in its long form ({choices: [...]} for a list)."""
        out = []
        for name, spec in self.space.items():
            section, _, key_name = str(name).partition(".")
            out.append((section, key_name, {"choices": list(spec)} if isinstance(spec, list) else dict(spec)))
        return out


def check_range(name, spec):
    """One entry of tune.space: a known train/model key that data_process did not fix and that
    changes the model, with a range of its type (low < high, log only above 0, an integer step
    for an integer key) or distinct choices of its type. Returns it with its values typed."""
    where = f"tune.space.{name}"
    section, _, key_name = str(name).partition(".")
    if section not in SECTIONS or not key_name:
        raise UserError(f"{where}: name a key as section.key, e.g. train.lr")
    fields = {f.name: f for f in fields_of(section)}
    if key_name not in fields:
        close = difflib.get_close_matches(key_name, list(fields), n=1)
        raise UserError(f"{where}: {section} has no key {key_name}" + (f" (did you mean {section}.{close[0]}?)"
                                                                       if close else ""))
    meta = fields[key_name].metadata
    if section == "data" or meta.get("fixed"):
        raise UserError(f"{where}: {name} is fixed when data_process.py makes the arrays, so a trial cannot change it; "
                        f"make one data set per value and tune on each")
    if (section not in TUNABLE_SECTIONS or meta.get("free_on_resume") or meta.get("locates_input")
            or name in NOT_TUNABLE):
        raise UserError(f"{where}: {name} is not a setting of the model or its training; tune train.* and model.* "
                        f"hyperparameters (train.lr, train.epochs, model.dropout, ...)")
    tp = field_types(section)[key_name]
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise UserError(f"{where}: {spec!r} is not a range; write {{low: a, high: b}} (log: true, step: s) or "
                        f"{{choices: [a, b]}}")
    unknown = sorted(set(spec) - {"low", "high", "log", "step", "choices"})
    if unknown:
        raise UserError(f"{where}: unknown setting '{unknown[0]}'; a range takes low, high, log, step, or choices")
    if "choices" in spec:
        choices = spec["choices"]
        need(isinstance(choices, list) and len(choices) >= 1 and set(spec) == {"choices"}, where, spec,
             "takes choices alone: a list of at least one value")
        values = [coerce(c, tp, f"{name}") for c in choices]
        need(len({repr(v) for v in values}) == len(values), where, choices, "lists a choice twice")
        return {"choices": values}
    need("low" in spec and "high" in spec, where, spec, "needs low and high (or choices)")
    numeric = [t for t in (typing.get_args(tp) or (tp,)) if t in (int, float)]
    if not numeric:
        raise UserError(f"{where}: {name} is not a number ({_type_name(tp)}); give it choices: {{choices: [...]}}")
    kind = int if numeric == [int] else float
    low, high = coerce(spec["low"], kind, where), coerce(spec["high"], kind, where)
    need(finite(low) and finite(high) and low < high, where, spec, "needs low below high")
    log = coerce(spec.get("log", False), bool, f"{where}.log")
    need(not log or low > 0, where, spec, "has log: true, which needs low above 0")
    out = {"low": low, "high": high, "log": log}
    if "step" in spec:
        out["step"] = step = coerce(spec["step"], kind, f"{where}.step")
        need(finite(step) and step > 0 and not log, f"{where}.step", step,
             "must be a positive step, and a range with a step cannot be log")
        steps = (high - low) / step
        need(steps >= 1 - 1e-9 and abs(steps - round(steps)) < 1e-6, f"{where}.step", step,
             f"must divide high - low ({high - low:g}) into whole steps, so that high is a value the trials can draw")
    return out


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    config_file: str | None = None  # where it was read from (set by the parser)
    explicit: set = field(default_factory=set)  # "section.key" set on the command line
    program: str = "python train.py"  # the command that read it, for hints that name a command

    def to_dict(self):
        out = dataclasses.asdict(self)
        for name in ("config_file", "explicit", "program"):
            out.pop(name)
        return out

    def to_yaml(self):
        header = f"# resolved config (from {self.config_file or 'defaults'} and overrides)\n"
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name not in ("config_file", "explicit", "program")}


def validate(cfg):
    """Every section's own check (ranges, lengths, uniqueness, known encodings, one-character
    delimiters, names that stay inside their folder), before any stage writes anything. No rule
    crosses sections today; one that does goes here."""
    for section in SECTIONS:
        getattr(cfg, section).check()


# ---------------------------------------------------------------------------- facts about keys


def fields_of(section):
    return dataclasses.fields(SECTIONS[section])


def field_types(section):
    return {f.name: f.type for f in fields_of(section)}


def fixed_data_keys():
    """The data.* keys fixed when data_process.py writes the arrays (recorded in meta.json)."""
    return [f.name for f in fields_of("data") if f.metadata["fixed"]]


def file_reading_keys():
    """The data.* keys that say how a raw file is read: a new input file (eval.input) may differ."""
    return [f.name for f in fields_of("data") if f.metadata["describes_file"]]


def free_on_resume(section, name):
    """Whether section.name may change when a run is resumed (it cannot change the result)."""
    cls = SECTIONS[section]
    return getattr(cls, "FREE_ON_RESUME", False) or cls.__dataclass_fields__[name].metadata["free_on_resume"]


def take_recorded(cfg, recorded):
    """The keys a resumed run keeps (every key not free on resume) and the keys that say where its
    inputs are take their value from `recorded` (a resolved config as a run's config.yaml holds it)
    unless the command line gives them: a resumed run goes on with the settings it was started
    with, whatever the config file says now; the keys of this session (time budget, logging, the
    other stages) stay as given. Returns ["section.key (the file's value, recorded value)"] for the
    keys whose value changed."""
    replaced = []
    for section in SECTIONS:
        values = recorded.get(section) if isinstance(recorded, dict) else None
        for f in fields_of(section) if isinstance(values, dict) else ():
            name = f"{section}.{f.name}"
            kept = not free_on_resume(section, f.name) or f.metadata["locates_input"] or f.metadata["sticky"]
            if not kept or name in cfg.explicit or f.name not in values:
                continue
            value = coerce(values[f.name], f.type, name)
            if value != getattr(getattr(cfg, section), f.name):
                replaced.append(f"{name} ({getattr(getattr(cfg, section), f.name)!r}, recorded {value!r})")
                setattr(getattr(cfg, section), f.name, value)
    return replaced


def key_list():
    """[(section.key, type, default, description)] of every key, in schema order."""
    defaults = Config()
    return [(f"{section}.{f.name}", _type_name(f.type), getattr(getattr(defaults, section), f.name), f.metadata["help"])
            for section in SECTIONS for f in fields_of(section)]


def keys_markdown():
    """The key reference: one table per section (key, type = default, what it does), from the schema.
    The docs site's reference/keys page is this text (docs/hooks.py); `python -m textclf.config` prints it."""
    def cell(text):  # plain text in a table cell: escaped, and neither a column bar nor an attribute list
        return html.escape(text, quote=False).replace("|", "&#124;").replace("{", "&#123;").replace("}", "&#125;")

    keys = key_list()
    lines = [f"{len(keys)} keys in {len(SECTIONS)} sections, made from `textclf/config.py` when this site was built "
             f"(`python -m textclf.config` prints the same list)."]
    for section in SECTIONS:
        lines += ["", f"## {section}", "", "| key | type = default | what it does |", "|---|---|---|"]
        for name, tp, default, text in keys:
            if name.startswith(section + "."):
                lines.append(f'| <code id="{name}">{name}</code> | <code>{cell(f"{tp} = {default!r}")}</code> | '
                             f'{cell(text)} |')
    return "\n".join(lines)


# ---------------------------------------------------------------------------- reading YAML and overrides


class TextLoader(yaml.SafeLoader):
    """YAML with every plain scalar kept as the text it is written as, except null (`null`, `~`, empty).
    Each value is then coerced to its declared type: YAML 1.1 would make `no` a boolean, `010` the
    number 8 and `1.0` a float whose text is lost, in string-typed fields and label lists alike."""


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key, mark):
        super().__init__(f"key '{key}' is given twice")
        self.key, self.problem_mark = key, mark


def _mapping_without_duplicates(loader, node, deep=False):
    """YAML lets a repeated key silently replace the first (a second `data:` section dropping the
    first one's keys); refuse it instead."""
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str) and key in seen:
            raise DuplicateKey(key, key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


TextLoader.construct_mapping = _mapping_without_duplicates
TextLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag == "tag:yaml.org,2002:null"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(text):
    return yaml.load(text, Loader=TextLoader)  # noqa: S506 (a SafeLoader subclass: no object construction)


# ---------------------------------------------------------------------------- coercion


def _type_name(tp):
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


_NULLS = ("null", "none", "~")


def _is_null(value):
    """None, an empty string, or a null word; a string of spaces is a value (a space delimiter)."""
    return value is None or (isinstance(value, str) and (value == "" or value.strip().lower() in _NULLS))


def _integer(value):
    """An int from an int, an integral float or its text ('8', '1e3', '2.0'), else None. Text is
    ASCII digits only: Python's int() would also take '1_000' and non-ASCII digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()  # numbers follow one rule in configs and data cells (text_rules.plain_number)
        if re.fullmatch(r"[+-]?\d+", text, flags=re.ASCII):
            return int(text)  # exact, however long
        number = plain_number(text)
        return int(number) if number is not None and math.isfinite(number) and number.is_integer() else None
    return None


def coerce(value, tp, key):
    """Return `value` as type `tp`, or raise a UserError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if type(None) in args and _is_null(value):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except UserError:
                continue
        raise UserError(f"config key {key}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if isinstance(value, bool):  # a Python caller's False for `no`
            value = {False: "no", True: "yes"}[value]
        if isinstance(value, str):
            value = value.strip()
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"config key {key}: {value!r} is not one of {', '.join(map(repr, args))}{hint}")
    if origin is list:
        (inner,) = args
        if isinstance(value, str):
            parsed = _parse_scalar(value)
            value = parsed if isinstance(parsed, list) else [value]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [coerce(v, inner, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise UserError(f"config key {key}: {value!r} is not true or false")
    if tp is int:
        number = _integer(value)
        if number is None:
            raise UserError(f"config key {key}: {value!r} is not an integer")
        if abs(number) >= 2 ** 53:  # torch and numpy take int64; the settings' own ranges are checked in validate
            raise UserError(f"config key {key}: {value!r} is far too large")
        return number
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"config key {key}: {value!r} is not a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            text = value.strip()
            if text.lower() in (".inf", "+.inf", "-.inf", ".nan"):  # YAML's spellings
                text = text.replace(".", "")
            try:
                return float(text)
            except ValueError:
                pass
        raise UserError(f"config key {key}: {value!r} is not a number")
    if tp is dict:
        if isinstance(value, str):
            value = _parse_scalar(value)
        if not isinstance(value, dict):
            raise UserError(f"config key {key}: {value!r} is not a mapping; write it like '{{r: 8, alpha: 16}}'")
        return dict(value)
    if tp is str:
        if isinstance(value, (list, dict)) or value is None:
            raise UserError(f"config key {key}: expected a string, got {value!r}")
        if isinstance(value, bool):  # a Python caller's True/False
            return "true" if value else "false"
        return str(value)
    raise TypeError(f"unsupported config type {tp} for {key}")


def _parse_scalar(text):
    """YAML-parse an override value ('[0,1]' -> list, 'null' -> None), scalars kept as text;
    fall back to the text itself."""
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


def _override_value(raw, tp):
    """Command-line values are text: strings stay verbatim, everything else is YAML-parsed."""
    if tp is str or typing.get_origin(tp) is Literal:
        return raw.strip() if tp is not str else raw
    if typing.get_origin(tp) in (Union, types.UnionType) and str in typing.get_args(tp):
        if _is_null(raw):
            return None
        if not raw.strip().startswith("["):
            return raw
    return _parse_scalar(raw)


# ---------------------------------------------------------------------------- parsing


def _all_keys():
    return [f"{s}.{k}" for s in SECTIONS for k in field_types(s)]


def _unknown_key_error(key, where):
    close = difflib.get_close_matches(key, _all_keys(), n=3, cutoff=0.6)
    if not close:  # try the bare key against every section's keys
        bare = key.split(".")[-1]
        close = [k for k in _all_keys() if difflib.get_close_matches(bare, [k.split(".")[-1]], n=1, cutoff=0.75)][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else "; run with --help to list the keys"
    return UserError(f"unknown config key '{key}' {where}{hint}")


def _set(cfg, section, key, value, where):
    types_ = field_types(section)
    if key not in types_:
        raise _unknown_key_error(f"{section}.{key}", where)
    setattr(getattr(cfg, section), key, coerce(value, types_[key], f"{section}.{key}"))


def _apply_yaml(cfg, path):
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass --config configs/<task>.yaml (see configs/)")
    try:
        with open(path, encoding="utf-8") as fh:
            doc = load_yaml(fh)
    except DuplicateKey as err:
        raise UserError(f"config file {path}: key '{err.key}' is given twice (again at line {err.problem_mark.line + 1}); "
                        f"keep one, with every setting it needs") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config file {path} is not valid YAML{where}; fix the syntax") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
    if doc is None:
        return
    if not isinstance(doc, dict):
        raise UserError(f"config file {path} must be a mapping of sections (data:, model:, train:, ...)")
    for section, values in doc.items():
        if section not in SECTIONS:
            close = difflib.get_close_matches(str(section), SECTIONS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; sections are {', '.join(SECTIONS)}"
            raise UserError(f"unknown config section '{section}' in {path}{hint}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(f"config section '{section}' in {path} must be a mapping of key: value")
        for key, value in values.items():
            _set(cfg, section, str(key), value, f"in {path}")


def _apply_override(cfg, arg):
    key, sep, raw = arg.partition("=")  # values may contain '=': split at the first one only
    key = key.strip()
    if not sep or not key:
        raise UserError(f"cannot read argument '{arg}'; overrides look like section.key=value, e.g. train.lr=2e-5")
    if "." in key:
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise _unknown_key_error(key, "on the command line")
    else:
        owners = [s for s in SECTIONS if key in field_types(s)]
        if not owners:
            raise _unknown_key_error(key, "on the command line")
        if len(owners) > 1:
            options = ", ".join(f"{s}.{key}" for s in owners)
            raise UserError(f"config key '{key}' is ambiguous; write one of {options}")
        section, name = owners[0], key
    types_ = field_types(section)
    if name not in types_:
        raise _unknown_key_error(f"{section}.{name}", "on the command line")
    _set(cfg, section, name, _override_value(raw, types_[name]), "on the command line")
    cfg.explicit.add(f"{section}.{name}")


def with_overrides(cfg, args):
    """A copy of a Config with `key=value` overrides applied, then validated (the Python API's path)."""
    cfg = copy.deepcopy(cfg)
    for arg in args:
        _apply_override(cfg, arg)
    validate(cfg)
    return cfg


def help_text(prog):
    """--help: the usage line, then every key with its type, default and description (from the schema)."""
    command = f"python {prog}" if prog.endswith(".py") else prog  # a script, or an installed textclf-* command
    lines = [
        f"usage: {command} --config configs/<task>.yaml [section.key=value ...]",
        "",
        "Keys (section.key: type = default, then what it does):",
    ]
    for name, tp, default, text in key_list():
        lines += [f"  {name}: {tp} = {default!r}", f"      {text}"]
    return "\n".join(lines)


def parse_args(argv, prog="stage.py"):
    """Parse `--config file.yaml key=value ...` into a Config. `--help` prints the keys."""
    cfg = Config(program=f"python {prog}" if prog.endswith(".py") else prog)
    config_path = None
    overrides = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(help_text(prog))
            raise SystemExit(0)
        if arg == "--config" or arg.startswith("--config="):
            if config_path is not None:
                raise UserError("--config given twice; pass one file and put changes in key=value overrides")
            if arg == "--config":
                if i + 1 >= len(argv):
                    raise UserError("--config needs a file, e.g. --config configs/sst2.yaml")
                config_path = argv[i + 1]
                i += 2
                continue
            config_path = arg.partition("=")[2]
        elif arg.startswith("-"):
            name = arg.lstrip("-").partition("=")[0].replace("-", "_")
            owners = [s for s in SECTIONS if name in field_types(s)]
            example = f"{owners[0]}.{name}=<value>" if owners else "train.lr=2e-5"
            raise UserError(
                f"unknown option '{arg}'; the only option is --config, everything else is a key=value "
                f"override, e.g. {example}"
            )
        else:
            overrides.append(arg)
        i += 1
    if config_path is not None:
        path = Path(config_path)
        if not path.is_absolute() and not path.exists():
            path = project_root() / path
        _apply_yaml(cfg, path)
        cfg.config_file = str(config_path)
    for arg in overrides:
        _apply_override(cfg, arg)
    if not cfg.data.name and config_path is not None:
        cfg.data.name = Path(config_path).stem
        if not NAME.fullmatch(cfg.data.name):
            raise UserError(f"data.name: the config file's name '{cfg.data.name}' cannot name an output folder; "
                            f"set data.name=<name> ({NAME_RULE})")
    validate(cfg)
    return cfg


if __name__ == "__main__":  # python -m textclf.config: the key reference, made from the schema
    print(keys_markdown())
