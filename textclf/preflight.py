"""What training refuses before it writes anything, and the plan of what it will train.

    check(config) -> Plan          the data, the model and tokenizer, the head, the tricks, the folds
    check_resume(config, run_dir, spec) -> run.json   a resumed run keeps what changes its result
    check_sharded(train_cfg, sharded)                  what FSDP / DeepSpeed cannot do

Nothing here writes a file or builds an Accelerator; a model is built only on the meta device
(no weights read: model.check_loaded checks them as they load). Values alone are checked where
the config is read (config.py, each section's check()); here they are checked against the data
and the model they meet.
"""

import dataclasses
import math
from pathlib import Path

import numpy as np

from . import adversarial, averaging, distillation, lora
from .checkpoint import load_run_json
from .config import free_on_resume, resolve_path, take_recorded
from .datadir import check_data_keys, fold_rows, load_meta
from .errors import UserError
from .fileio import sha256_file
from .model import (HeadConfig, ModelSpec, check_freeze, check_gradient_checkpointing, read_encoder_config,
                    resolve_head, verbalizer_ids)
from .premodels import load_tokenizer, resolve_model_dir, vocab_hash
from .problem import resolve as resolve_problem
from .text_rules import check_texts
from .trackers import check as check_trackers


@dataclasses.dataclass(frozen=True)
class FoldPlan:
    """One fold to train: the train rows it learns from, and the rows it is scored on."""

    fold: int
    train_rows: np.ndarray
    eval_split: str  # "train" (K folds, holdout) or "valid" (a validation file)
    eval_rows: np.ndarray


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a training run is made from, every part checked."""

    data_dir: Path
    meta: dict
    model_dir: Path
    tokenizer: object
    spec: ModelSpec  # written into every best/ as head.json
    folds: list  # [FoldPlan] in training order
    teacher: object = None  # train.teacher: (train rows, classes) out-of-fold probabilities (distillation.py)

    @property
    def fold_numbers(self):
        return [plan.fold for plan in self.folds]


def check(config):
    """Everything train.py can check before it writes: the data, the model and tokenizer, the head,
    the settings that depend on them, the folds. Returns the Plan of the run."""
    train_cfg = config.train
    if not config.data.name:
        raise UserError("data.name is not set; pass --config configs/<task>.yaml or data.name=<name>")
    check_trackers(train_cfg.report_to)
    data_dir = resolve_path(config.data.output_dir) / config.data.name
    meta = load_meta(data_dir)
    if config.eval.texts is not None:  # predicted at the end of the run
        check_texts(config.eval.texts, meta.get("text_pair_column"), meta.get("template"))
    check_data_keys(config, meta, data_dir)
    model_dir = resolve_model_dir(config.model.name, config.model.premodels_dir, config.model.trust_remote_code)
    tokenizer = load_tokenizer(model_dir, config.model.trust_remote_code)
    if vocab_hash(tokenizer) != meta["tokenizer"]["vocab_sha256"]:
        raise UserError(f"{data_dir} was tokenized for '{meta['model_name']}', whose vocabulary differs from "
                        f"model '{config.model.name}'; run data_process.py with model.name={config.model.name} "
                        f"and another data.name, and train on that")
    spec = model_spec(config, meta, data_dir, model_dir, tokenizer)
    check_freeze(model_dir, config.model.freeze_embeddings, config.model.freeze_layers, config.model.trust_remote_code)
    if train_cfg.gradient_checkpointing:
        check_gradient_checkpointing(model_dir, config.model.trust_remote_code)
    averaging.check(train_cfg)
    adversarial.check(train_cfg, config.model)
    label_names, problem = spec.labels.names, spec.labels.problem
    weights = train_cfg.class_weights
    if isinstance(weights, list) and len(weights) != len(label_names):
        raise UserError(f"train.class_weights has {len(weights)} values for {len(label_names)} labels; "
                        f"give one per label ({', '.join(label_names)}) or use auto")
    if train_cfg.metric == "auto":  # resolved here, so the run's config.yaml names the metric it used
        train_cfg.metric = problem.default_metric
    metrics = problem.metrics(len(label_names))
    if train_cfg.metric not in metrics:
        raise UserError(f"train.metric={train_cfg.metric} is not computed for this problem; choose from "
                        f"{', '.join(sorted(metrics))}")
    folds = fold_plans(meta, train_cfg, data_dir)
    if train_cfg.metric == "roc_auc":
        check_roc_auc(folds, data_dir)
    teacher = distillation.check(train_cfg, data_dir, meta, spec)
    return Plan(data_dir, meta, Path(model_dir), tokenizer, spec, folds, teacher)


def model_spec(config, meta, data_dir, model_dir, tokenizer):
    """The ModelSpec the run's checkpoints are made and read by: the problem type, the head on this
    backbone, the verbalizer and LoRA where asked, and how the data was tokenized."""
    train_cfg, model_cfg = config.train, config.model
    label_names = meta["label_names"]
    problem = resolve_problem(model_cfg.problem_type, meta["problem_type"], len(label_names))
    check_loss(train_cfg, problem)
    target_mean = target_std = None  # regression: the head predicts targets standardised with these
    if problem.regression:
        target_mean, target_std = target_stats(meta, data_dir)
    encoder_config = read_encoder_config(model_dir, model_cfg.trust_remote_code)
    # auto: cls for encoders, last for decoders; resolved here, so the run's config.yaml names the head it used
    model_cfg.head = resolve_head(model_cfg.head, encoder_config)
    head = HeadConfig(head=model_cfg.head, n_outputs=problem.outputs(len(label_names)), dropout=model_cfg.dropout,
                      backbone_dropout=model_cfg.backbone_dropout, multi_sample_dropout=model_cfg.multi_sample_dropout,
                      mlp_hidden=model_cfg.mlp_hidden, target_mean=target_mean, target_std=target_std,
                      lora=model_cfg.lora)
    if model_cfg.verbalizer:  # the output layer starts as the LM head's rows for the label words
        ids = verbalizer_ids(model_cfg.verbalizer, tokenizer, label_names, problem, encoder_config, head)
        head = dataclasses.replace(head, verbalizer=list(model_cfg.verbalizer), verbalizer_ids=ids)
    base = {}
    if model_cfg.lora:
        lora.check(model_cfg, encoder_config)
        base = lora.base_record(model_dir)
    return ModelSpec.for_data(head, meta, sha256_file(data_dir / "meta.json"), model_cfg.name, problem.name, **base)


def target_stats(meta, data_dir):
    """A regression's train targets' mean and std (the head predicts standardised targets): each
    recorded, and each std positive and finite."""
    label_names = meta["label_names"]
    stats = meta.get("target_stats")
    if not (isinstance(stats, dict) and all(isinstance(stats.get(name), dict) for name in label_names)):
        raise UserError(f"{data_dir / 'meta.json'} has no target statistics (target_stats); run data_process.py "
                        f"again with data.task=regression")
    target_mean = [float(stats[name]["mean"]) for name in label_names]
    target_std = [float(stats[name]["std"]) for name in label_names]
    for name, std in zip(label_names, target_std):
        if not (math.isfinite(std) and std > 0):
            raise UserError(f"{data_dir / 'meta.json'}: target '{name}' has standard deviation {std:g} on the "
                            f"train rows; a regression target must vary: check the data and run data_process.py "
                            f"again")
    return target_mean, target_std


def check_loss(train_cfg, problem):
    """train.loss, class weights and label smoothing against the problem type."""
    if problem.regression:
        if train_cfg.class_weights is not None:
            raise UserError("train.class_weights weights classes; a regression has none: drop train.class_weights")
        if train_cfg.label_smoothing:
            raise UserError("train.label_smoothing smooths class targets; a regression has none: set "
                            "train.label_smoothing=0")
    elif train_cfg.loss != "auto":
        raise UserError(f"train.loss={train_cfg.loss} is a regression loss, and this data is {problem.name}; use "
                        f"train.loss=auto (or data_process.py with data.task=regression for numeric targets)")


def fold_plans(meta, train_cfg, data_dir):
    """The folds to train (train.folds) as FoldPlans, checked against the data's folds."""
    if meta["folds"]["mode"] == "valid_file":
        if train_cfg.folds not in ("all", [0]):
            raise UserError("train.folds: this data has a validation file, so there is one fold (0); use train.folds=all")
        chosen = [0]
    else:
        k = meta["folds"]["n_folds"]
        chosen = list(range(k)) if train_cfg.folds == "all" else list(train_cfg.folds)
        for fold in chosen:
            if not 0 <= fold < k:
                raise UserError(f"train.folds contains {fold}, but the data has {k} fold(s) (0..{k - 1}); "
                                f"set data.n_folds in data_process.py or pick folds in range")
    return [FoldPlan(fold, *fold_rows(meta, data_dir, fold)) for fold in chosen]


def check_roc_auc(folds, data_dir):
    """train.metric=roc_auc is undefined on held-out rows of one class."""
    for plan in folds:
        labels = np.asarray(np.load(data_dir / plan.eval_split / "labels.npy", mmap_mode="r")[plan.eval_rows])
        classes = len(np.unique(labels)) if labels.ndim == 1 else int(((labels.sum(0) > 0) &
                                                                        (labels.sum(0) < len(labels))).sum())
        if (labels.ndim == 1 and classes < 2) or (labels.ndim == 2 and classes == 0):
            raise UserError(f"train.metric=roc_auc is undefined on fold {plan.fold}'s held-out rows (one class only); "
                            f"choose another train.metric, or give that split rows of both classes")


# ---------------------------------------------------------------------------- once the run folder is known


def check_sharded(train_cfg, sharded):
    """What FSDP / DeepSpeed (each process holds a shard of the weights) cannot do: `sharded` is
    "fsdp", "deepspeed" or None (checkpoint.sharding of the Accelerator)."""
    if sharded is None:
        return
    averaging.check_sharded(train_cfg, sharded)
    adversarial.check_sharded(train_cfg, sharded)


def saved_precision(run_dir):
    """The precision a run made before run.json recorded it asked for, from its config.yaml (None for auto)."""
    import yaml

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        value = saved["train"]["precision"]
    except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
        return None
    return {False: "no"}.get(value, value) if value in ("no", "fp16", "bf16", False) else None


def recorded_config(run_dir):
    """The resolved config a run was started with (its config.yaml), as a dict."""
    import yaml

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise UserError(f"{run_dir / 'config.yaml'} cannot be read ({type(err).__name__}); the run cannot be checked "
                        f"for resuming: start a new run") from None
    return saved if isinstance(saved, dict) else {}


def resume_settings(config, run_dir):
    """A resumed run goes on with the settings it was started with: every key not given on this
    command line comes from its config.yaml (so `train.resume=<run>` alone resumes it). Returns
    the keys whose value the config file (or a default) gave otherwise."""
    return take_recorded(config, recorded_config(run_dir))


def check_resume(config, run_dir, spec):
    """Refuse to resume a run with other data or with settings that change its result (every key
    but those the schema marks free_on_resume); returns run.json."""
    run_info = load_run_json(run_dir)
    if run_info["data_meta_sha256"] != spec.provenance.data_meta_sha256:
        raise UserError(f"train.resume: {run_dir} was trained on {run_info['data_dir']}, whose meta.json differs from "
                        f"the data given now; resume with the data it was made from, or start a new run")
    saved = recorded_config(run_dir)
    changed = []
    for section, values in config.to_dict().items():
        before = (saved or {}).get(section) if isinstance(saved, dict) else None
        for key, value in values.items():
            if free_on_resume(section, key):
                continue
            if isinstance(before, dict) and key in before and before[key] != value:
                changed.append(f"{section}.{key} ({before[key]!r} then, {value!r} now)")
    if changed:
        raise UserError(f"train.resume: {run_dir} was started with other settings: {'; '.join(changed[:4])}"
                        + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
                        + f"; a resumed run keeps what changes its result: resume it with {config.program} "
                          f"train.resume={run_dir} (its recorded settings), or start a new run")
    return run_info

