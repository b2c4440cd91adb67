"""One config mechanism for all four stages.

    python <stage>.py --config configs/x.yaml key=value section.key=value ...

The YAML file is read with `yaml.safe_load`, then the `key=value` overrides are applied in
order. Every value is coerced to the type declared below (PyYAML reads `1e-5` as a string;
here it becomes a float). Unknown keys are an error that names the closest valid ones.
A bare `key=value` is accepted when exactly one section has that key.
"""

import codecs
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import yaml

from .errors import UserError

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


def __getattr__(name):
    # `ROOT` was a constant before the package could be installed; old importers get the root now.
    if name == "ROOT":
        return project_root()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class DataConfig:
    name: str = ""  # output folder models_input_files/<name>; default: the config file's stem
    train_file: str = ""
    valid_file: str | None = None
    test_file: str | None = None
    output_dir: str = "models_input_files"
    overwrite: bool = False  # replace an existing models_input_files/<name>
    format: Literal["auto", "csv", "tsv", "jsonl"] = "auto"  # auto: from the file extension
    delimiter: str | None = None  # override the csv/tsv delimiter
    quoting: Literal["auto", "minimal", "none"] = "auto"  # auto: csv minimal, tsv none
    header: bool = True  # false: headerless csv/tsv, names from `columns`
    columns: list[str] | None = None  # column names for a headerless file
    encoding: str = "utf-8"
    text_columns: list[str] = field(default_factory=lambda: ["text"])  # several are joined
    text_separator: str = " "  # what joins several text columns
    template: str | None = None  # the text from several columns, e.g. "title:{title}, abstract:{abstract}" (replaces text_columns)
    text_pair_column: str | None = None  # second segment (token_type_ids 1)
    label_column: str | None = "label"
    label_columns: list[str] | None = None  # multi-label: one 0/1 column per class
    label_delimiter: str | None = None  # multi-label: a delimited list in label_column
    labels: list[str] | None = None  # fixed label order; default: sorted train labels
    task: Literal["classification", "regression"] = "classification"  # regression: numeric targets in label_column (or label_columns)
    id_column: str | None = None  # default: the row number
    max_len: int = 128
    truncation: Literal["head", "tail", "head_tail"] = "head"
    head_tokens: int | None = None  # head_tail: tokens kept from the start (default: a quarter)
    window_stride: int = 0  # > 0: whole texts as sliding windows of max_len starting every this many tokens
    max_windows: int = 0  # > 0: at most this many windows a text (the first ones and the last)
    window_aggregate: Literal["mean", "max", "first_last"] = "mean"  # windows' probabilities -> one row per text
    n_folds: int = 0  # >= 2: K stratified folds over train instead of a validation split
    fold_column: str | None = None  # train's own fold numbers (0..K-1, -1 = never held out) instead of drawn folds
    group_column: str | None = None  # rows with one value here share a fold (StratifiedGroupKFold), e.g. one author
    valid_size: float = 0.1  # held-out fraction when there is no valid_file and no folds
    seed: int = 42
    drop_empty: bool = False  # drop rows whose text is empty (counted) instead of failing
    chunk_rows: int = 20000  # rows read and tokenized at a time; memory stays flat


@dataclass
class ModelConfig:
    name: str = "all-MiniLM-L6-v2"  # a folder in premodels/, a path, or a hub name
    premodels_dir: str = "premodels"
    trust_remote_code: bool = False
    head: Literal["auto", "cls", "mean", "pooler", "fusion", "last"] = "auto"  # auto: cls for encoders, last for decoders
    dropout: float = 0.1  # before the head
    backbone_dropout: float | None = None  # override the encoder's own dropout (null: keep its config)
    multi_sample_dropout: int = 1  # k dropout masks, logits averaged
    mlp_hidden: int = 0  # > 0: the head is Linear(hidden, mlp_hidden)-ReLU-Dropout-Linear instead of one Linear
    freeze_embeddings: bool = False  # keep the embeddings as loaded
    freeze_layers: int = 0  # keep the embeddings and the first k layers as loaded (backward skips them)
    problem_type: Literal["auto", "single_label", "binary_bce", "multi_label", "regression"] = "auto"  # auto: from the data
    verbalizer: list[str] | None = None  # decoders: one label word per label (label order); the head starts as the LM head's rows for them
    lora: dict | None = None  # LoRA adapters on a frozen base: {r: 8, alpha: 16, dropout: 0.05, target_modules: all-linear, quantize: null | 4bit}


@dataclass
class TrainConfig:
    run: str = ""  # checkpoints/<run>; default: the data name
    output_dir: str = "checkpoints"
    folds: list[int] | Literal["all"] = "all"
    epochs: float = 3.0
    max_steps: int = 0  # > 0: exactly this many optimizer steps per fold (overrides epochs for the schedule and the stop)
    batch_size: int = 32
    eval_batch_size: int = 128
    grad_accum: int = 1
    lr: float = 1e-4
    head_lr: float | None = None  # default: lr
    layer_lr_decay: float = 1.0  # < 1: each lower encoder layer gets lr * decay^depth
    weight_decay: float = 0.01
    adam_eps: float = 1e-8
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: Literal["linear", "cosine", "constant", "onecycle"] = "linear"
    warmup: float = 0.06  # < 1: a ratio of optimizer steps; >= 1: a number of steps
    max_grad_norm: float = 1.0  # 0: no clipping
    precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: the fastest exact one on this device (textclf/precision.py)
    label_smoothing: float = 0.0
    loss: Literal["auto", "mse", "huber"] = "auto"  # regression: mse (auto) or huber, on standardised targets
    huber_delta: float = 1.0  # loss=huber: where the loss turns linear, in target standard deviations
    class_weights: list[float] | Literal["auto"] | None = None
    sampler: Literal["length_grouped", "random"] = "length_grouped"
    ema_decay: float = 0.0  # > 0: evaluate and keep an EMA of the weights, updated every step (textclf/averaging.py)
    swa_last: int = 0  # > 0: SWA, the mean of the weights at the last k evaluations (one per epoch by default)
    adversarial: Literal["none", "fgm", "awp"] = "none"  # a second pass on perturbed embeddings / weights (textclf/adversarial.py)
    adv_eps: float | None = None  # fgm: the step's norm (1.0); awp: the largest change relative to each weight (0.01)
    adv_lr: float = 1.0  # awp: the step relative to each weight tensor's norm
    adv_start_epoch: float = 0.0  # the adversarial pass starts here (epochs, fractions allowed)
    gradient_checkpointing: bool = False  # recompute the layers' activations in backward: less memory, ~30% slower
    pad_to_multiple: int = 1  # round batch widths up to a multiple (8 measured slower on CPU; try on GPU)
    cpu_speedups: bool = True  # on a CPU: fast dropout and attention, embedding-gradient buffer, freed memory kept (textclf/speedups.py)
    eval_every_steps: int = 0  # 0: evaluate once per epoch
    metric: str = "auto"  # auto (accuracy; rmse for regression) | accuracy | f1_macro | f1_micro | roc_auc | rmse | mae | pearson | spearman | loss
    metric_mode: Literal["max", "min", "auto"] = "auto"
    patience: int = 0  # evaluations without improvement before stopping; 0: never
    min_delta: float = 0.0
    max_nonfinite: int = 20  # non-finite losses in a row before the run stops
    save_total_limit: int = 1  # resumable `last/` states kept per fold
    save_every_steps: int = 0  # also save `last/` every N optimizer steps
    resume: str | None = None  # auto (the newest version of the run) | checkpoints/<run> | .../fold<k>/last-<step>
    max_time: float = 0.0  # seconds; stop gracefully before this wall-clock budget
    num_workers: int = 0
    seed: int = 42
    log_every_steps: int = 20
    report_to: str | list[str] | None = "tensorboard"  # tensorboard | wandb | mlflow | none, or a list of them
    profile_steps: int = 0  # > 0: a torch profiler trace of this many steps of the first fold, in <run>/profile/
    overwrite: bool = False  # false: a run name that exists gets a new version folder


@dataclass
class EvalConfig:
    run: str = ""  # checkpoints/<run> to predict with
    output_dir: str = "model_predictions"
    splits: list[Literal["train", "valid", "test"]] = field(default_factory=lambda: ["valid", "test"])
    folds: list[int] | Literal["all"] = "all"  # the run's folds to predict with; all of them must be finished
    batch_size: int = 128
    precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # as train.precision, for prediction
    texts: list[str] | None = None  # raw texts to classify (train.py also predicts them at its end)
    embeddings: bool = False  # also write each row's pooled vector (the head's input), keyed by id
    hidden_states: bool = False  # with embeddings: also the last hidden layer, (rows, max_len, hidden) with lengths
    input: str | None = None  # a raw csv/tsv/jsonl file to classify


@dataclass
class EnsembleConfig:
    name: str = "submission"
    predictions: list[str] = field(default_factory=list)  # model_predictions/<run> folders
    method: Literal["mean", "weighted", "geometric", "rank"] = "weighted"  # rank: for roc_auc only
    metric: Literal["auto", "accuracy", "f1_macro", "f1_micro", "roc_auc", "log_loss", "rmse", "mae", "pearson",
                    "spearman"] = "auto"  # auto: accuracy, or rmse for regression
    sample_submission: str | None = None
    label_format: Literal["auto", "name", "index"] = "auto"  # a label column holds label names or class numbers
    output_dir: str = "submissions"
    tune_thresholds: bool = True


@dataclass
class PseudoConfig:
    name: str = ""  # the new training input: <data.output_dir>/<name>, made from data.name's folder
    predictions: list[str] = field(default_factory=list)  # model_predictions/<run> folders (their mean) or one submissions/<name>.json (that blend)
    threshold: float = 0.0  # keep test rows whose top probability is at least this (multi-label: every class's p or 1 - p)
    top_k: int = 0  # > 0: keep at most the k most confident rows of each predicted class
    id_prefix: str = "pseudo:"  # pseudo rows' ids: the prefix + the test row's id
    per_fold: bool = False  # fold k trains only on rows labelled by the sets' fold-k models (K-fold without the leak)
    overwrite: bool = False  # replace <name> if textclf made it


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    config_file: str | None = None  # where it was read from (set by the parser)
    explicit: set = field(default_factory=set)  # "section.key" set on the command line

    def to_dict(self):
        out = dataclasses.asdict(self)
        out.pop("config_file")
        out.pop("explicit")
        return out

    def to_yaml(self):
        header = f"# resolved config (from {self.config_file or 'defaults'} and overrides)\n"
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name not in ("config_file", "explicit")}


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


def resolve_path(path):
    """A config path as an absolute Path: relative paths resolve against the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


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
        from .rawdata import plain_number  # one rule for numbers, in configs and data cells

        text = value.strip()
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


def _field_types(section):
    return {f.name: f.type for f in dataclasses.fields(SECTIONS[section])}


def _all_keys():
    return [f"{s}.{k}" for s in SECTIONS for k in _field_types(s)]


def _unknown_key_error(key, where):
    close = difflib.get_close_matches(key, _all_keys(), n=3, cutoff=0.6)
    if not close:  # try the bare key against every section's keys
        bare = key.split(".")[-1]
        close = [k for k in _all_keys() if difflib.get_close_matches(bare, [k.split(".")[-1]], n=1, cutoff=0.75)][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else "; run with --help to list the keys"
    return UserError(f"unknown config key '{key}' {where}{hint}")


def _set(cfg, section, key, value, where):
    types_ = _field_types(section)
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
        owners = [s for s in SECTIONS if key in _field_types(s)]
        if not owners:
            raise _unknown_key_error(key, "on the command line")
        if len(owners) > 1:
            options = ", ".join(f"{s}.{key}" for s in owners)
            raise UserError(f"config key '{key}' is ambiguous; write one of {options}")
        section, name = owners[0], key
    types_ = _field_types(section)
    if name not in types_:
        raise _unknown_key_error(f"{section}.{name}", "on the command line")
    _set(cfg, section, name, _override_value(raw, types_[name]), "on the command line")
    cfg.explicit.add(f"{section}.{name}")


def help_text(prog):
    command = f"python {prog}" if prog.endswith(".py") else prog  # a script, or an installed textclf-* command
    lines = [
        f"usage: {command} --config configs/<task>.yaml [section.key=value ...]",
        "",
        "Keys (section.key: type = default):",
    ]
    defaults = Config()
    for section in SECTIONS:
        for f in dataclasses.fields(SECTIONS[section]):
            lines.append(f"  {section}.{f.name}: {_type_name(f.type)} = {getattr(getattr(defaults, section), f.name)!r}")
    return "\n".join(lines)


def parse_args(argv, prog="stage.py"):
    """Parse `--config file.yaml key=value ...` into a Config. `--help` prints the keys."""
    cfg = Config()
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
            owners = [s for s in SECTIONS if name in _field_types(s)]
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


# ---------------------------------------------------------------------------- values


LORA_DEFAULTS = {"r": 8, "alpha": None, "dropout": 0.0, "target_modules": "all-linear", "quantize": None}


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


# A name a user gives (data set, run, submission) is one folder or file inside its output folder:
# no path separators, no leading '.' (so never '..', nor textclf's hidden temporary folders).
NAME = re.compile(r"\w[\w.+=@-]{0,127}")
NAME_RULE = "letters, digits and . _ - + = @, starting with a letter, digit or _, at most 128 characters"


def check_name(value, key):
    """Refuse a name that would not resolve to a plain entry inside its output folder."""
    if not NAME.fullmatch(value):
        raise UserError(f"config key {key}: {value!r} is not a plain name ({NAME_RULE}); it names a folder "
                        f"inside the output folder, never a path")


def unescape_delimiter(value):
    """A delimiter as written in a config ('\\t' for a tab) -> the character itself."""
    return value.encode().decode("unicode_escape") if "\\" in value else value


def validate(cfg):
    """What a type alone does not say: ranges, lengths, uniqueness, known encodings, one-character
    delimiters, names that stay inside their folder. Checked before any stage writes anything."""
    data, model, train, evaluation, ensemble = cfg.data, cfg.model, cfg.train, cfg.eval, cfg.ensemble

    def need(ok, key, value, expected):
        if not ok:
            raise UserError(f"config key {key}: {value!r} {expected}")

    def finite(x):
        return x is not None and math.isfinite(x)

    def unique(items):
        return len(set(items)) == len(items)

    for key, value in (("data.name", data.name), ("train.run", train.run), ("ensemble.name", ensemble.name)):
        if value or key == "ensemble.name":
            check_name(value, key)
    model.lora = lora_settings(model.lora)
    if data.template is not None:
        from .tokenization import template_fields

        fields = template_fields(data.template)  # refuses a template that names no plain column
        need(data.text_pair_column not in fields, "data.text_pair_column", data.text_pair_column,
             "is a field of data.template; the second segment must be another column")
    if cfg.pseudo.name:
        check_name(cfg.pseudo.name, "pseudo.name")
    pseudo = cfg.pseudo
    need(finite(pseudo.threshold) and 0 <= pseudo.threshold <= 1, "pseudo.threshold", pseudo.threshold,
         "must be a probability between 0 and 1")
    need(pseudo.top_k >= 0, "pseudo.top_k", pseudo.top_k, "must be 0 (no limit) or more")
    need(unique(pseudo.predictions), "pseudo.predictions", pseudo.predictions, "lists a prediction set twice")
    need(len(pseudo.id_prefix) > 0 and "\n" not in pseudo.id_prefix, "pseudo.id_prefix", pseudo.id_prefix,
         "must be a non-empty prefix (it keeps pseudo rows' ids apart from the train ids)")
    if data.delimiter is not None:
        try:
            delimiter = unescape_delimiter(data.delimiter)
        except UnicodeDecodeError:
            delimiter = data.delimiter
        need(len(delimiter) == 1 and delimiter not in "\r\n\"", "data.delimiter", data.delimiter,
             "must be one character (e.g. ';', '|' or '\\t' for a tab)")
    try:
        if not getattr(codecs.lookup(data.encoding), "_is_text_encoding", True):  # rot13, base64, zlib ...
            raise LookupError(data.encoding)
    except LookupError:
        raise UserError(f"config key data.encoding: {data.encoding!r} is not a known text encoding; use e.g. "
                        f"utf-8, latin-1 or cp1252") from None
    for key, items in (("data.text_columns", data.text_columns), ("data.columns", data.columns),
                       ("data.label_columns", data.label_columns), ("data.labels", data.labels)):
        if items is not None:
            need(items and unique(items) and all(str(i).strip() for i in items), key, items,
                 "must list distinct, non-empty names")
    need(data.text_pair_column not in data.text_columns, "data.text_pair_column", data.text_pair_column,
         "is one of data.text_columns; the second segment must be another column")
    need(data.label_delimiter is None or data.label_delimiter != "", "data.label_delimiter", data.label_delimiter,
         "must be at least one character")
    need(not (data.label_columns and data.label_delimiter), "data.label_delimiter", data.label_delimiter,
         "and data.label_columns are both set; a multi-label file uses one of them")
    need(data.max_len >= 4, "data.max_len", data.max_len, "must be at least 4 (special tokens and some text)")
    need(data.head_tokens is None or data.head_tokens >= 0, "data.head_tokens", data.head_tokens,
         "must be 0 or more")
    need(data.window_stride >= 0, "data.window_stride", data.window_stride, "must be 0 (no windows) or a number of tokens")
    need(data.max_windows >= 0, "data.max_windows", data.max_windows, "must be 0 (every window) or more")
    need(data.max_windows == 0 or data.window_stride > 0, "data.max_windows", data.max_windows,
         "limits sliding windows; set data.window_stride too (or drop data.max_windows)")
    if data.window_stride:
        need(data.text_pair_column is None, "data.window_stride", data.window_stride,
             "cuts single texts into windows; text pairs (data.text_pair_column) are truncated instead: drop one")
        need(data.truncation == "head", "data.truncation", data.truncation,
             "does not apply with sliding windows (they cover the whole text): drop data.truncation")
        need(not (data.window_aggregate == "max" and data.task == "regression"), "data.window_aggregate",
             data.window_aggregate, "takes the classwise max of probabilities; a regression uses mean or first_last")
    need(data.n_folds == 0 or data.n_folds >= 2, "data.n_folds", data.n_folds,
         "must be 0 (a validation split) or >= 2 (K folds)")
    need(not (data.n_folds >= 2 and data.valid_file), "data.n_folds", data.n_folds,
         "and data.valid_file are both set; use folds over train or a valid file, not both")
    need(not (data.fold_column and data.group_column), "data.group_column", data.group_column,
         "and data.fold_column are both set; given folds already decide where each row goes: use one of them")
    for key in ("fold_column", "group_column"):
        need(not (getattr(data, key) and data.valid_file), f"data.{key}", getattr(data, key),
             "and data.valid_file are both set; folds over train or a valid file, not both")
    need(finite(data.valid_size) and 0 < data.valid_size < 1, "data.valid_size", data.valid_size,
         "must be between 0 and 1")
    need(data.chunk_rows >= 1, "data.chunk_rows", data.chunk_rows, "must be at least 1")
    for key, seed in (("data.seed", data.seed), ("train.seed", train.seed)):
        need(0 <= seed < 2 ** 32, key, seed, "must be between 0 and 2**32 - 1")

    need(model.name.strip() != "", "model.name", model.name, "must name a model")
    for key, p in (("model.dropout", model.dropout), ("model.backbone_dropout", model.backbone_dropout)):
        need(p is None or (finite(p) and 0 <= p < 1), key, p, "must be at least 0 and below 1")
    need(1 <= model.multi_sample_dropout <= 64, "model.multi_sample_dropout", model.multi_sample_dropout,
         "must be between 1 and 64")
    need(model.freeze_layers >= 0, "model.freeze_layers", model.freeze_layers, "must be 0 or more")
    need(0 <= model.mlp_hidden <= 65536, "model.mlp_hidden", model.mlp_hidden,
         "must be 0 (a linear head) or a layer width up to 65536")
    need(not (model.mlp_hidden and model.head == "fusion"), "model.mlp_hidden", model.mlp_hidden,
         "goes with heads cls, mean and pooler; fusion has two linear layers of its own")

    need(train.folds == "all" or (train.folds and unique(train.folds) and min(train.folds) >= 0), "train.folds",
         train.folds, "must be all or a list of distinct fold numbers, e.g. [0,1]")
    need(finite(train.epochs) and 0 < train.epochs <= 100_000, "train.epochs", train.epochs,
         "must be a positive number")
    for key, n in (("train.batch_size", train.batch_size), ("train.eval_batch_size", train.eval_batch_size),
                   ("train.grad_accum", train.grad_accum), ("train.pad_to_multiple", train.pad_to_multiple),
                   ("train.max_nonfinite", train.max_nonfinite), ("train.save_total_limit", train.save_total_limit),
                   ("train.log_every_steps", train.log_every_steps), ("eval.batch_size", evaluation.batch_size)):
        need(n >= 1, key, n, "must be positive (at least 1)")
        need(n <= 2 ** 24, key, n, f"is far beyond any useful value (at most {2 ** 24:,})")
    for key, n in (("train.eval_every_steps", train.eval_every_steps), ("train.patience", train.patience),
                   ("train.save_every_steps", train.save_every_steps), ("train.num_workers", train.num_workers),
                   ("train.max_steps", train.max_steps), ("train.profile_steps", train.profile_steps)):
        need(n >= 0, key, n, "must be 0 or more")
    for key, x in (("train.lr", train.lr), ("train.head_lr", train.head_lr)):
        need(x is None or (finite(x) and x >= 0), key, x, "must be a number, 0 or more (0 leaves the weights as they are)")
        # AdamW moves every weight by about lr a step: above 1 a model only diverges (2e5 for 2e-5, say)
        need(x is None or x <= 1, key, x, "is far above any AdamW learning rate (fine-tuning uses about 1e-5 to 1e-3; "
             "was a minus sign lost, e.g. 2e5 for 2e-5?)")
    need(finite(train.adam_eps) and train.adam_eps > 0, "train.adam_eps", train.adam_eps, "must be a positive number")
    for key, x in (("train.weight_decay", train.weight_decay), ("train.warmup", train.warmup),
                   ("train.max_grad_norm", train.max_grad_norm), ("train.min_delta", train.min_delta),
                   ("train.max_time", train.max_time)):
        need(finite(x) and x >= 0, key, x, "must be a number, 0 or more")
    need(finite(train.layer_lr_decay) and 0 < train.layer_lr_decay <= 1, "train.layer_lr_decay", train.layer_lr_decay,
         "must be above 0 and at most 1")
    need(finite(train.ema_decay) and 0 <= train.ema_decay < 1, "train.ema_decay", train.ema_decay,
         "must be 0 (off) or a decay below 1, e.g. 0.999")
    need(train.swa_last >= 0, "train.swa_last", train.swa_last, "must be 0 (off) or a number of evaluations")
    need(train.adv_eps is None or (finite(train.adv_eps) and train.adv_eps > 0), "train.adv_eps", train.adv_eps,
         "must be a positive number")
    need(finite(train.adv_lr) and train.adv_lr > 0, "train.adv_lr", train.adv_lr, "must be a positive number")
    need(finite(train.adv_start_epoch) and train.adv_start_epoch >= 0, "train.adv_start_epoch",
         train.adv_start_epoch, "must be 0 or more")
    need(len(train.betas) == 2 and all(finite(b) and 0 <= b < 1 for b in train.betas), "train.betas", train.betas,
         "must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    need(finite(train.label_smoothing) and 0 <= train.label_smoothing < 1, "train.label_smoothing",
         train.label_smoothing, "must be at least 0 and below 1")
    if isinstance(train.class_weights, list):
        need(train.class_weights and all(finite(w) and w >= 0 for w in train.class_weights)
             and sum(train.class_weights) > 0, "train.class_weights", train.class_weights,
             "must be non-negative numbers, one per label, not all 0")

    need(finite(train.huber_delta) and train.huber_delta > 0, "train.huber_delta", train.huber_delta,
         "must be a positive number (in target standard deviations)")
    if data.task == "regression":
        need(data.labels is None, "data.labels", data.labels, "lists class names; data.task=regression reads numbers: "
             "drop data.labels")
        need(data.label_delimiter is None, "data.label_delimiter", data.label_delimiter, "is for multi-label lists; "
             "several numeric targets go in data.label_columns=[a,b] with data.task=regression")
        need(data.label_columns or data.label_column, "data.label_column", data.label_column,
             "must name the target column for data.task=regression")
    metrics = ("auto", "accuracy", "f1_macro", "f1_micro", "roc_auc", "rmse", "mae", "pearson", "spearman", "loss")
    if train.metric not in metrics:
        close = difflib.get_close_matches(train.metric, metrics, n=1)
        raise UserError(f"train.metric={train.metric} is not a metric textclf computes; choose from "
                        f"{', '.join(metrics)}" + (f" (did you mean {close[0]}?)" if close else ""))
    need(evaluation.splits and unique(evaluation.splits), "eval.splits", evaluation.splits,
         "must list distinct splits (train, valid, test)")
    need(evaluation.folds == "all" or (evaluation.folds and unique(evaluation.folds) and min(evaluation.folds) >= 0),
         "eval.folds", evaluation.folds, "must be all or a list of distinct fold numbers")
    need(not evaluation.hidden_states or evaluation.embeddings, "eval.hidden_states", evaluation.hidden_states,
         "comes with the embeddings: set eval.embeddings=true too")
    need(unique(ensemble.predictions), "ensemble.predictions", ensemble.predictions, "lists a prediction set twice")
    need(ensemble.method != "rank" or ensemble.metric == "roc_auc", "ensemble.method", ensemble.method,
         "ranks each class column across rows, which changes argmax and threshold decisions; it suits "
         "ensemble.metric=roc_auc only: use weighted or mean, or set ensemble.metric=roc_auc")
