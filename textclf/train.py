"""The training stage: one fold at a time, a loop that reads top to bottom.

    python train.py --config configs/sst2.yaml [train.lr=2e-5 ...]

    run(config)          check everything, pick the run folder, train each fold, merge the OOF rows
    train_fold(job, ..)  one fold: data, model, optimizer and schedule; resume; fit; held-out predictions
    fit(job, fold, ..)   the loop, in sections: step / log / evaluate / save / stop
    optimizer_step(..)   the end of an accumulation window: rescale, clip, skip if not finite, step

One optimizer step is `fit` and `optimizer_step`, read top to bottom. Accelerate owns devices,
processes, precision and gradient accumulation; only the main process prints (console.say) and
writes. What a run writes, and how it resumes, is in checkpoint.py.
"""

import contextlib
import dataclasses
import datetime
import importlib.util
import math
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch

from . import adversarial, averaging
from .checkpoint import (Log, TrainState, check_resume_path, choose_run_dir, load_run_json, load_state, merge_oof,
                         load_weights, named_state, resume_state_dir, save_best, save_state, sharding, write_fold_oof)
from .config import resolve_path
from .console import say
from .data import check_data_keys, load_meta, load_tokenizer, vocab_hash
from .errors import UserError
from .fileio import (atomic_write_text, load_json, made_by_textclf, recover_dir, replace_own_output, sha256_file,
                     write_json, write_marker)
from .loader import LengthGroupedBatches, SortedBatches, SplitArrays, Windows, make_loader
from .metrics import available as available_metrics, compute, default_metric, is_better, metric_mode, report
from .model import (HeadConfig, ModelSpec, auto_class_weights, build_classifier, check_freeze, read_encoder_config,
                    resolve_head, verbalizer_ids, weights_sha256,
                    check_gradient_checkpointing, freeze, make_loss, num_outputs, probabilities, resolve_problem_type)
from .optim import describe as describe_optimizer, make_optimizer, make_scheduler
from .precision import resolve_shared
from .predict import predict_logits
from .premodels import resolve_model_dir
from .speedups import apply as apply_speedups
from .trackers import accelerator_kwargs as tracker_kwargs, check as check_trackers, flat as flat_config


@dataclasses.dataclass
class Job:
    """What every fold of one training run shares."""

    config: object  # config.Config
    accelerator: object
    precision: object  # precision.Choice
    data_dir: Path
    model_dir: Path
    tokenizer: object
    spec: ModelSpec  # written into every best/ as head.json
    run_dir: Path
    log: Log
    stop: "StopRequest"
    started: float
    profiled: bool = False  # train.profile_steps: the first fold trained in this session is profiled


@dataclasses.dataclass
class Fold:
    """One fold's data and its training objects, prepared by Accelerate."""

    index: int
    dir: Path
    model: object
    optimizer: object
    scheduler: object
    loss_fn: object
    sampler: LengthGroupedBatches
    train_loader: object
    eval_loader: object
    eval_split: str
    eval_rows: np.ndarray
    eval_labels: np.ndarray
    total_steps: int
    batches_per_epoch: int  # each process's batches
    average: object = None  # averaging: the EMA or SWA AveragedModel, when the run keeps one
    swa_steps: frozenset = frozenset()  # the evaluation steps SWA averages
    adversary: object = None  # adversarial.FGM / AWP
    eval_windows: object = None  # loader.Windows of the eval split: token rows -> texts
    eval_owner: np.ndarray = None  # each eval token row's position in eval_rows


# ---------------------------------------------------------------------------- the stage


def run(config):
    """Train every requested fold; return the run folder. Everything that can be checked is
    checked before the run folder is made."""
    started = time.time()
    train_cfg = config.train
    data_dir, meta, model_dir, tokenizer, spec, plans = check(config)

    # Every process picks the same folder before the main process creates it.
    run_dir, resuming = choose_run_dir(train_cfg, config.data.name, train_cfg.resume)
    recorded = None  # the precision a resumed run trains in
    if resuming:
        check_resume_path(train_cfg.resume, run_dir, [p[0] for p in plans])
        run_info = check_resume(config, run_dir, spec)
        recorded = run_info.get("precision", {}).get("precision") or saved_precision(run_dir)
    elif run_dir.exists() and not made_by_textclf(run_dir, "run"):
        raise UserError(f"{run_dir} exists and was not made by textclf as a run, so train.overwrite=true will not "
                        f"replace it; choose another train.run, or move it away yourself")
    accelerator, choice = make_accelerator(config, run_dir, recorded)
    check_sharded(train_cfg, sharding(accelerator))
    accelerator.wait_for_everyone()
    if resuming:
        say(accelerator, f"train: resuming run {run_dir}")
        if recorded and choice.precision != recorded:
            say(accelerator, f"train: this run was trained in {recorded} and continues in {choice.precision} "
                             f"(train.precision={train_cfg.precision}): the continuation is not bit-exact")
            if accelerator.is_main_process:  # a later resume continues in the new precision
                write_json(run_dir / "run.json", {**run_info, "precision": choice.record()})
    elif accelerator.is_main_process:
        replace_own_output(run_dir, "run", "train.overwrite")
        run_dir.mkdir(parents=True)
        write_marker(run_dir, "run")
        atomic_write_text(run_dir / "config.yaml", config.to_yaml())
        write_json(run_dir / "run.json", dict(
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            data_dir=str(data_dir), data_meta_sha256=spec.provenance.data_meta_sha256, model_dir=str(model_dir),
            label_names=spec.labels.names, problem_type=spec.labels.problem_type, folds=[p[0] for p in plans],
            fold_mode=meta["folds"]["mode"], precision=choice.record()))
        say(accelerator, f"train: run folder {run_dir}")
    accelerator.wait_for_everyone()
    # Trackers start with the first log record, once every check of the resumed state has passed.
    log = Log(accelerator, run_dir, start_trackers=lambda: accelerator.init_trackers(
        run_dir.name, config=flat_config(config.to_dict())))
    job = Job(config, accelerator, choice, data_dir, model_dir, tokenizer, spec, run_dir, log, StopRequest(), started)
    job.stop.install()

    for plan in plans:
        outcome = train_fold(job, plan)
        if outcome != "done":
            why = "a stop signal" if outcome == "interrupted" else f"train.max_time={train_cfg.max_time:g}s"
            say(accelerator, f"train: stopped by {why}; state saved. Continue with: python train.py --config "
                             f"{config.config_file or '<config>'} train.resume={run_dir}")
            accelerator.end_training()
            if outcome == "interrupted":
                raise SystemExit(128 + int(job.stop.signal or signal.SIGTERM))  # a process the signal missed
            return run_dir
    if accelerator.is_main_process:
        score = merge_oof(run_dir, [p[0] for p in plans], plans[0][2], spec.labels.problem_type)
        say(accelerator, "train: out-of-fold " + " ".join(f"{k} {v:.4f}" for k, v in score.items())
            + f" -> {run_dir / 'oof'}")
        finish_run(job, [p[0] for p in plans], score, meta)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir


def finish_run(job, folds, oof_score, meta):
    """The end of a run (main process): the labelled test split and eval.texts predicted by the
    fold mean, the training curves as a PNG, wall times; all of it in summary.json."""
    summary = {"oof": oof_score, "fold_seconds": {}, "test": None, "texts": None}
    for fold in folds:
        done = load_json(job.run_dir / f"fold{fold}" / "done.json", "a fold's done.json", "train the fold again")
        summary["fold_seconds"][str(fold)] = done.get("seconds")
    test = meta["splits"].get("test")
    texts = job.config.eval.texts
    if (test and test["labelled"]) or texts:
        from .predict import Predictor, load_fold_models

        models, spec, checkpoints = load_fold_models(job.run_dir, folds, job.config.model.trust_remote_code)
        device = job.accelerator.device
        predictor = Predictor([m.to(device) for m in models], spec, job.tokenizer, device,
                              job.config.train.eval_batch_size, checkpoints, job.precision.precision)
        if test and test["labelled"]:
            summary["test"] = test_metrics(job, predictor)
        if texts and spec.labels.problem_type == "regression":
            out = predictor.predict(list(texts))
            summary["texts"] = [{"text": t, "prediction": dict(zip(out["label_names"], map(float, p)))}
                                for t, p in zip(texts, out["predictions"])]
            say(job.accelerator, "train: eval.texts predicted by the fold mean")
            for item, p in zip(summary["texts"], out["predictions"]):
                shown = item["text"] if len(item["text"]) <= 70 else item["text"][:67] + "..."
                say(job.accelerator, f"{' '.join(f'{v:.4g}' for v in p):>12}  {shown}")
        elif texts:
            out = predictor.predict(list(texts))
            summary["texts"] = [{"text": t, "label": label, "probs": dict(zip(out["label_names"], map(float, p)))}
                                for t, label, p in zip(texts, out["labels"], out["probs"])]
            say(job.accelerator, "train: eval.texts predicted by the fold mean")
            for item, p in zip(summary["texts"], out["probs"]):
                shown = item["text"] if len(item["text"]) <= 70 else item["text"][:67] + "..."
                say(job.accelerator, f"{item['label']!s:>12}  p={p.max():.3f}  {shown}")
        del models, predictor
    curves = draw_curves(job)
    if curves:
        summary["curves"] = curves.name
    summary["seconds"] = round(time.time() - job.started, 1)
    write_json(job.run_dir / "summary.json", summary)
    say(job.accelerator, "train: wall time " + ", ".join(f"fold {k} {v:.1f} s" for k, v in summary["fold_seconds"].items()
                                                         if v is not None)
        + f"; this session {summary['seconds']:.1f} s -> {job.run_dir / 'summary.json'}")


def test_metrics(job, predictor):
    """The fold mean on the data's labelled test split: metrics and the per-class report."""
    split = job.data_dir / "test"
    arrays = {name: np.load(split / f"{name}.npy", mmap_mode="r") for name in ("input_ids", "attention_mask",
                                                                             "token_type_ids", "lengths")}
    fold_probs = predictor.fold_probs(np.asarray(arrays["input_ids"]), np.asarray(arrays["attention_mask"]),
                                      np.asarray(arrays["token_type_ids"]), np.asarray(arrays["lengths"]))
    labels = np.load(split / "labels.npy")
    problem_type, names = job.spec.labels.problem_type, job.spec.labels.names
    windows = Windows(split, job.spec.tokenization.window_aggregate)  # sliding windows -> one row per text
    owner = windows.owner(len(labels))
    probs = np.mean([windows.to_texts(p, owner, len(labels), problem_type) for p in fold_probs], axis=0)
    results = compute(probs, labels, problem_type)
    text = report(probs, labels, problem_type, names)
    say(job.accelerator, f"train: test split ({len(labels)} rows, fold mean): "
        + " ".join(f"{k} {v:.4f}" for k, v in results.items()))
    say(job.accelerator, text)
    atomic_write_text(job.run_dir / "test_report.txt", text + "\n")
    return {"rows": int(len(labels)), **results}


def draw_curves(job):
    """curves.png: loss, learning rate and the eval metric per fold, from metrics.jsonl."""
    from .checkpoint import read_log

    path = job.run_dir / "curves.png"
    try:
        from .figures import training_curves

        training_curves(read_log(job.run_dir / "metrics.jsonl"), path, job.config.train.metric)
    except ImportError:
        say(job.accelerator, "train: curves.png skipped: install matplotlib to draw it")
        return None
    return path


def check(config):
    """Everything train.py can check before it writes: the data, the model and tokenizer, the head,
    the settings that depend on them, the folds. Returns what the run is made from."""
    train_cfg = config.train
    if train_cfg.batch_size < 1 or train_cfg.grad_accum < 1 or train_cfg.epochs <= 0:
        raise UserError("train.batch_size, train.grad_accum and train.epochs must be positive")
    if not config.data.name:
        raise UserError("data.name is not set; pass --config configs/<task>.yaml or data.name=<name>")
    check_trackers(train_cfg.report_to)
    data_dir = resolve_path(config.data.output_dir) / config.data.name
    meta = load_meta(data_dir)
    check_end_texts(config.eval.texts, meta)
    check_data_keys(config, meta, data_dir)
    model_dir = resolve_model_dir(config.model.name, config.model.premodels_dir)
    tokenizer = load_tokenizer(model_dir, config.model.trust_remote_code)
    if vocab_hash(tokenizer) != meta["tokenizer"]["vocab_sha256"]:
        raise UserError(f"{data_dir} was tokenized for '{meta['model_name']}', whose vocabulary differs from "
                        f"model '{config.model.name}'; run data_process.py with model.name={config.model.name}")
    label_names = meta["label_names"]
    problem_type = resolve_problem_type(config.model.problem_type, meta["problem_type"], len(label_names))
    check_loss(train_cfg, problem_type)
    target_mean = target_std = None  # regression: the head predicts targets standardised with these
    if problem_type == "regression":
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
    encoder_config = read_encoder_config(model_dir, config.model.trust_remote_code)
    # auto: cls for encoders, last for decoders; resolved here, so the run's config.yaml names the head it used
    config.model.head = resolve_head(config.model.head, encoder_config)
    head = HeadConfig(config.model.head, num_outputs(problem_type, len(label_names)), config.model.dropout,
                      config.model.backbone_dropout, config.model.multi_sample_dropout, config.model.mlp_hidden,
                      target_mean, target_std, config.model.lora)
    if config.model.verbalizer:  # the output layer starts as the LM head's rows for the label words
        ids = verbalizer_ids(config.model.verbalizer, tokenizer, label_names, problem_type, encoder_config, head)
        head = dataclasses.replace(head, verbalizer=list(config.model.verbalizer), verbalizer_ids=ids)
    base = {}
    if config.model.lora:
        check_lora(config, encoder_config)
        base = dict(base_dir=str(Path(model_dir).resolve()), base_sha256=weights_sha256(model_dir))
    spec = ModelSpec.for_data(head, meta, sha256_file(data_dir / "meta.json"), config.model.name, problem_type, **base)
    check_freeze(model_dir, config.model.freeze_embeddings, config.model.freeze_layers, config.model.trust_remote_code)
    if train_cfg.gradient_checkpointing:
        check_gradient_checkpointing(model_dir, config.model.trust_remote_code)
    averaging.check(train_cfg)
    adversarial.check(train_cfg, config.model)
    weights = train_cfg.class_weights
    if isinstance(weights, list) and len(weights) != len(label_names):
        raise UserError(f"train.class_weights has {len(weights)} values for {len(label_names)} labels; "
                        f"give one per label ({', '.join(label_names)}) or use auto")
    if train_cfg.metric == "auto":  # resolved here, so the run's config.yaml names the metric it used
        train_cfg.metric = default_metric(problem_type)
    metrics = available_metrics(problem_type, len(label_names))
    if train_cfg.metric not in metrics:
        raise UserError(f"train.metric={train_cfg.metric} is not computed for this problem; choose from "
                        f"{', '.join(sorted(metrics))}")
    plans = fold_plan(meta, train_cfg, data_dir)
    if train_cfg.metric == "roc_auc":  # undefined on held-out rows of one class
        for fold, _, eval_split, eval_rows in plans:
            labels = np.asarray(np.load(data_dir / eval_split / "labels.npy", mmap_mode="r")[eval_rows])
            classes = len(np.unique(labels)) if labels.ndim == 1 else int(((labels.sum(0) > 0) &
                                                                            (labels.sum(0) < len(labels))).sum())
            if (labels.ndim == 1 and classes < 2) or (labels.ndim == 2 and classes == 0):
                raise UserError(f"train.metric=roc_auc is undefined on fold {fold}'s held-out rows (one class only); "
                                f"choose another train.metric, or give that split rows of both classes")
    return data_dir, meta, model_dir, tokenizer, spec, plans


# Keys a resumed run may change: they cannot change its result (where it runs, logging and saving
# cadence, time budget, other stages' settings). Precision may change to move a run between
# machines; the continuation then says it is not bit-exact.
RESUME_FREE = ("train.max_time", "train.log_every_steps", "train.report_to", "train.profile_steps", "train.num_workers", "train.resume", "train.overwrite",
               "train.save_total_limit", "train.save_every_steps", "train.output_dir", "train.run", "train.precision",
               "model.trust_remote_code", "model.premodels_dir", "data.output_dir", "data.name", "data.overwrite",
               "data.chunk_rows", "eval.", "ensemble.")


def check_lora(config, encoder_config):
    """What LoRA adapters (model.lora) cannot do here."""
    if importlib.util.find_spec("peft") is None:
        raise UserError("model.lora needs peft: pip install 'textclf[peft]' (or pip install peft)")
    if config.model.lora.get("quantize") and not torch.cuda.is_available():
        raise UserError("model.lora.quantize=4bit (QLoRA) keeps the base in 4-bit with bitsandbytes, which needs a "
                        "CUDA GPU; on this machine drop quantize (plain LoRA trains on a CPU)")
    if config.train.adversarial == "fgm":
        raise UserError("train.adversarial=fgm perturbs the word embeddings along their gradient, and LoRA keeps the "
                        "base (embeddings included) frozen; use train.adversarial=awp with LoRA")
    from transformers import AutoModel

    from .model import add_lora

    with torch.device("meta"):  # the target modules must exist: tried on a weightless copy, before anything is written
        backbone = AutoModel.from_config(encoder_config, trust_remote_code=config.model.trust_remote_code)
        add_lora(backbone, dict(config.model.lora, quantize=None))


def check_loss(train_cfg, problem_type):
    """train.loss, class weights and label smoothing against the problem type."""
    if problem_type == "regression":
        if train_cfg.class_weights is not None:
            raise UserError("train.class_weights weights classes; a regression has none: drop train.class_weights")
        if train_cfg.label_smoothing:
            raise UserError("train.label_smoothing smooths class targets; a regression has none: set "
                            "train.label_smoothing=0")
    elif train_cfg.loss != "auto":
        raise UserError(f"train.loss={train_cfg.loss} is a regression loss, and this data is {problem_type}; use "
                        f"train.loss=auto (or data_process.py with data.task=regression for numeric targets)")


def check_sharded(train_cfg, sharded):
    """What FSDP / DeepSpeed (each process holds a shard of the weights) cannot do."""
    if sharded is None:
        return
    averaging.check(train_cfg, sharded)
    if train_cfg.adversarial != "none":
        raise UserError(f"train.adversarial={train_cfg.adversarial} perturbs whole weight tensors, which {sharded} "
                        f"shards across processes; use DDP (accelerate launch --multi_gpu) or train.adversarial=none")


def check_end_texts(texts, meta):
    """eval.texts, predicted at the end of the run, checked before it starts (as evaluate.py checks them)."""
    if texts is None:
        return
    from .rawdata import clean_text

    if not texts:
        raise UserError("eval.texts is empty; give at least one text, e.g. eval.texts='[\"some text\"]', or leave it out")
    for number, text in enumerate(texts):
        if not clean_text(text):
            raise UserError(f"eval.texts item {number} is empty (or only invisible characters); give a text")
    if meta.get("text_pair_column"):
        raise UserError("eval.texts: this data has text pairs, and eval.texts gives single texts; predict pairs with "
                        "evaluate.py eval.input=<file with both columns> after training")
    if meta.get("template"):
        from .tokenization import template_fields

        fields = template_fields(meta["template"])
        if len(fields) > 1:
            raise UserError(f"eval.texts gives plain texts, and this data's texts are made by data.template from "
                            f"{', '.join(fields)}; predict such rows with evaluate.py eval.input=<file with those "
                            f"columns> after training")


def saved_precision(run_dir):
    """The precision a run made before run.json recorded it asked for, from its config.yaml (None for auto)."""
    import yaml

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        value = saved["train"]["precision"]
    except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
        return None
    return {False: "no"}.get(value, value) if value in ("no", "fp16", "bf16", False) else None


def check_resume(config, run_dir, spec):
    """Refuse to resume a run with other data or with settings that change its result; returns run.json."""
    import yaml

    run_info = load_run_json(run_dir)
    if run_info["data_meta_sha256"] != spec.provenance.data_meta_sha256:
        raise UserError(f"train.resume: {run_dir} was trained on {run_info['data_dir']}, whose meta.json differs from "
                        f"the data given now; resume with the data it was made from, or start a new run")
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise UserError(f"{run_dir / 'config.yaml'} cannot be read ({type(err).__name__}); the run cannot be checked "
                        f"for resuming: start a new run") from None
    now = config.to_dict()
    changed = []
    for section, values in now.items():
        before = (saved or {}).get(section) if isinstance(saved, dict) else None
        for key, value in values.items():
            name = f"{section}.{key}"
            if any(name == free or (free.endswith(".") and name.startswith(free)) for free in RESUME_FREE):
                continue
            if isinstance(before, dict) and key in before and before[key] != value:
                changed.append(f"{name} ({before[key]!r} then, {value!r} now)")
    if changed:
        raise UserError(f"train.resume: {run_dir} was started with other settings: {'; '.join(changed[:4])}"
                        + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
                        + "; a resumed run keeps what changes its result: drop these overrides, or start a new run")
    return run_info


# ---------------------------------------------------------------------------- one fold


def train_fold(job, plan):
    """One fold: build its data, model, optimizer and schedule, resume its state, fit, then let the
    best weights predict its held-out rows (the out-of-fold probabilities)."""
    config, accelerator = job.config, job.accelerator
    train_cfg = config.train
    index, train_rows, eval_split, eval_rows = plan
    fold_dir = job.run_dir / f"fold{index}"
    if (fold_dir / "done.json").is_file():
        if named_state(fold_dir, train_cfg.resume) is None:
            say(accelerator, f"fold {index}: already finished, skipped")
            return "done"
        accelerator.wait_for_everyone()  # train.resume names one of its states: the fold is trained again from there
        if accelerator.is_main_process:
            (fold_dir / "done.json").unlink()

    # data
    # token rows: one per text, or with sliding windows each text's windows (they take its label)
    aggregate = job.spec.tokenization.window_aggregate
    train_ds = SplitArrays(job.data_dir / "train", Windows(job.data_dir / "train").rows(train_rows)[0],
                           pad_to_multiple=train_cfg.pad_to_multiple)
    eval_windows = Windows(job.data_dir / eval_split, aggregate)
    eval_token_rows, eval_owner = eval_windows.rows(eval_rows)
    eval_ds = SplitArrays(job.data_dir / eval_split, eval_token_rows, pad_to_multiple=train_cfg.pad_to_multiple)
    eval_labels = np.asarray(np.load(job.data_dir / eval_split / "labels.npy", mmap_mode="r")[eval_rows])
    labels = job.spec.labels
    weights = train_cfg.class_weights
    if weights == "auto":
        train_labels = np.asarray(np.load(job.data_dir / "train" / "labels.npy", mmap_mode="r")[train_rows])
        weights = auto_class_weights(train_labels, labels.problem_type, len(labels.names))
    loss_fn = make_loss(labels.problem_type, weights, train_cfg.label_smoothing, job.spec.head.target_std,
                        train_cfg.loss, train_cfg.huber_delta)
    sampler = LengthGroupedBatches(train_ds.lengths(), train_cfg.batch_size, train_cfg.seed,
                                   grouped=train_cfg.sampler == "length_grouped")
    train_loader = make_loader(train_ds, sampler, train_cfg.num_workers)
    eval_loader = make_loader(eval_ds, SortedBatches(eval_ds.lengths(), train_cfg.eval_batch_size),
                              train_cfg.num_workers)

    # model, optimizer, schedule
    torch.manual_seed(train_cfg.seed)  # same initial head weights and dropout stream for every fold and rerun
    random.seed(train_cfg.seed)
    model = build_classifier(job.model_dir, job.spec.head, config.model.trust_remote_code)
    if job.spec.head.verbalizer_ids:
        from .model import init_verbalizer

        init_verbalizer(model, job.model_dir, job.spec.head.verbalizer_ids, config.model.trust_remote_code)
        if job.spec.head.lora:  # with adapters the LM head's rows stay as they are, like the rest of the base
            model.fc.requires_grad_(False)
    frozen = freeze(model, config.model.freeze_embeddings, config.model.freeze_layers)
    if train_cfg.gradient_checkpointing:  # non-reentrant: works with frozen layers and keeps dropout's RNG
        model.backbone.activation_checkpointing_enable({"use_reentrant": False})
    sped_up = []
    if train_cfg.cpu_speedups and accelerator.device.type == "cpu":
        sped_up = apply_speedups(model, single_process=accelerator.num_processes == 1)
    optimizer = make_optimizer(model, train_cfg)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    # Counted after prepare: each process now sees 1/num_processes of the batches.
    steps_per_epoch = math.ceil(len(train_loader) / train_cfg.grad_accum)
    total_steps = train_cfg.max_steps or max(1, math.ceil(train_cfg.epochs * steps_per_epoch))
    # Not passed to prepare: a prepared scheduler steps once per process per call.
    scheduler = make_scheduler(optimizer, train_cfg, total_steps)
    fold = Fold(index, fold_dir, model, optimizer, scheduler, loss_fn, sampler, train_loader, eval_loader,
                eval_split, eval_rows, eval_labels, total_steps, len(train_loader), eval_windows=eval_windows,
                eval_owner=eval_owner)
    unwrapped = accelerator.unwrap_model(model)
    fold.average = averaging.make_average(unwrapped, train_cfg)
    if train_cfg.swa_last:
        fold.swa_steps = frozenset(averaging.swa_steps(train_cfg, total_steps, steps_per_epoch))
    fold.adversary = adversarial.make_adversary(unwrapped, train_cfg)

    state = resume(job, fold, len(train_loader))
    say(accelerator, banner(job, fold, len(train_ds), len(eval_ds), steps_per_epoch, frozen, sped_up))
    outcome = fit(job, fold, state)
    if outcome == "done":
        finish_fold(job, fold, state)
    return outcome


def fit(job, fold, state):
    """Train until the step budget or early stopping ("done"), train.max_time ("max_time") or a
    stop signal ("interrupted"). A resumable state is saved before it returns."""
    from tqdm.auto import tqdm

    train_cfg, accelerator = job.config.train, job.accelerator
    meter = Meter(accelerator)
    bar = tqdm(total=fold.total_steps, initial=state.step, desc=f"fold {fold.index}", unit="step",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True, mininterval=1.0)
    job.log.write({"type": "start", "fold": fold.index, "step": state.step, "total_steps": fold.total_steps,
                   "processes": accelerator.num_processes,
                   "total_batch": train_cfg.batch_size * train_cfg.grad_accum * accelerator.num_processes,
                   "precision": job.precision.precision, "precision_reason": job.precision.reason})
    profiler = start_profiler(job)
    session_start, earlier_seconds = time.time(), state.seconds
    fold.model.train()
    while state.step < fold.total_steps and not state.stopped_early:
        fold.sampler.epoch = state.epoch  # the batches depend only on (seed, epoch)
        batches = fold.train_loader
        if state.batch_in_epoch:  # resumed mid-epoch: the same batches, less those already trained on
            batches = accelerator.skip_first_batches(fold.train_loader, state.batch_in_epoch)
        for batch in batches:
            # step: forward and backward on every batch; the optimizer steps once per window
            adversary = fold.adversary if progress(fold, state) >= train_cfg.adv_start_epoch else None
            rows = len(batch["labels"])
            # backward divides by grad_accum; weighting by rows / batch_size makes a window of
            # k full batches of B give exactly the gradient of one batch of B*k.
            weight = rows / train_cfg.batch_size
            with accelerator.accumulate(fold.model):
                # with an adversary, the window's gradients are reduced by its backward, not this one
                with accelerator.no_sync(fold.model) if adversary else contextlib.nullcontext():
                    if adversary:
                        adversary.remember(batch)
                    logits = fold.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
                    loss = fold.loss_fn(logits, batch["labels"])
                    accelerator.backward(loss * weight)
                if adversary:  # the same batch again, on weights pushed along its gradient
                    adversary.attack()
                    adv_logits = fold.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
                    accelerator.backward(fold.loss_fn(adv_logits, batch["labels"]) * weight)
                    adversary.restore()
            meter.add(loss.detach(), rows)
            state.batch_in_epoch += 1
            state.samples += rows * accelerator.num_processes
            end_of_epoch = accelerator.gradient_state.end_of_dataloader
            if end_of_epoch:  # after the step: a state saved from here on resumes in the next epoch
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            if not accelerator.sync_gradients:
                continue  # mid-window: the next batch adds to the same gradient
            grad_norm = optimizer_step(job, fold, state, meter.take_window_rows())
            if train_cfg.ema_decay and state.nonfinite_in_row == 0:  # the weights moved: so does their EMA
                fold.average.update_parameters(accelerator.unwrap_model(fold.model))
            bar.update(1)
            last = state.step >= fold.total_steps
            state.seconds = earlier_seconds + time.time() - session_start
            if profiler is not None:
                profiler = step_profiler(job, profiler, last)

            # log
            if state.step % train_cfg.log_every_steps == 0 or last:
                log_progress(job, fold, state, meter, grad_norm, bar)
            # evaluate: every eval_every_steps (else at each epoch's end), and the final weights
            scheduled = (state.step % train_cfg.eval_every_steps == 0 if train_cfg.eval_every_steps
                         else end_of_epoch)
            if scheduled or last:
                evaluate(job, fold, state)
            # save: after an evaluation, at each epoch's end, every save_every_steps, and at the end
            saved = scheduled or end_of_epoch or last or state.stopped_early or bool(
                train_cfg.save_every_steps and state.step % train_cfg.save_every_steps == 0)
            if saved:
                save_state(accelerator, fold.dir, fold.model, fold.optimizer, fold.scheduler, state,
                           train_cfg.save_total_limit, fold.average)
            # stop
            if last or state.stopped_early:
                break
            reason = stop_reason(job, state)
            if reason:
                step_profiler(job, profiler, True)
                if not saved:
                    save_state(accelerator, fold.dir, fold.model, fold.optimizer, fold.scheduler, state,
                               train_cfg.save_total_limit, fold.average)
                bar.close()
                return reason
    bar.close()
    step_profiler(job, profiler, True)
    return "done"


def progress(fold, state):
    """Epochs trained so far, with the fraction of the current one (for train.adv_start_epoch)."""
    return state.epoch + state.batch_in_epoch / max(fold.batches_per_epoch, 1)


def start_profiler(job):
    """train.profile_steps=N: a torch profiler over one warm-up step and then N optimizer steps of
    the first fold trained in this session, written as a Chrome trace (open it in Perfetto,
    chrome://tracing, or TensorBoard's profiler plugin) under <run>/profile/."""
    steps = job.config.train.profile_steps
    if not steps or job.profiled:
        return None
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    job.profiled = True
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    folder = job.run_dir / "profile"
    profiler = profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),
                       on_trace_ready=tensorboard_trace_handler(str(folder), worker_name=f"rank{job.accelerator.process_index}"),
                       record_shapes=True, profile_memory=True)
    profiler.start()
    profiler.steps_left = steps + 1
    return profiler


def step_profiler(job, profiler, last):
    """One optimizer step done: the profiler moves on; it stops (writing its trace) after its
    steps or when the fold stops. Returns the profiler, or None once stopped."""
    if profiler is None:
        return None
    profiler.steps_left -= 1
    if profiler.steps_left > 0 and not last:
        profiler.step()
        return profiler
    profiler.step()
    profiler.stop()
    say(job.accelerator, f"train: profiler trace of {job.config.train.profile_steps} step(s) in {job.run_dir / 'profile'}")
    return None


def optimizer_step(job, fold, state, window_rows):
    """The end of an accumulation window: rescale a short window, clip, skip a non-finite gradient,
    step the optimizer and the schedule, zero the gradients. Returns the gradient norm."""
    train_cfg, accelerator = job.config.train, job.accelerator
    rescale_partial_window(accelerator, fold.model, window_rows, train_cfg)
    # An infinite max norm clips nothing but still returns the norm for the log.
    max_norm = train_cfg.max_grad_norm if train_cfg.max_grad_norm > 0 else float("inf")
    grad_norm = clip_gradients(accelerator, fold.model, max_norm)
    # Host sync point: a non-finite gradient must skip the update on every process (the norm is
    # computed from all-reduced gradients, so all processes agree). Under fp16 the norm is of the
    # unscaled gradients: it is not finite exactly when the loss scaler found an overflow. The
    # step still runs then, because the scaler itself skips the update and lowers its scale
    # (accelerate's optimizer_step_was_skipped cannot tell with a fused optimizer, which takes the
    # overflow flag into its own kernel).
    finite = bool(torch.isfinite(torch.as_tensor(grad_norm)))
    if finite or accelerator.scaler is not None:
        fold.optimizer.step()
    # DeepSpeed's fp16 engine steps (or skips) inside backward and reports it here
    if finite and not accelerator.optimizer_step_was_skipped:
        fold.scheduler.step()
        state.nonfinite_in_row = 0
    else:
        state.nonfinite_in_row += 1
        state.nonfinite_total += 1
    fold.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    if state.nonfinite_in_row >= train_cfg.max_nonfinite:
        raise UserError(f"fold {fold.index}: the loss was not finite for {state.nonfinite_in_row} steps in a row "
                        f"(step {state.step}); lower train.lr, use train.precision=no, or check the data")
    return grad_norm


# ---------------------------------------------------------------------------- parts of a fold


def resume(job, fold, batches_per_epoch):
    """The fold's TrainState: from the last-<step> folder train.resume names, else the newest one,
    else a new one."""
    accelerator = job.accelerator
    if accelerator.is_main_process:
        recover_dir(fold.dir / "best")  # a process killed mid-write can leave a half-replaced best/
        for stale in fold.dir.glob(".last-*.tmp-*") if fold.dir.exists() else []:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    state_dir = resume_state_dir(fold.dir, job.config.train.resume)
    if state_dir is None:
        if accelerator.is_main_process:
            fold.dir.mkdir(parents=True, exist_ok=True)
        return TrainState(fold=fold.index, processes=accelerator.num_processes)
    state = load_state(accelerator, state_dir, fold.model, fold.optimizer, fold.scheduler, fold.average)
    later = [p for p in sorted(fold.dir.glob("last-*")) if p.name > state_dir.name]
    if later and accelerator.is_main_process:  # states of the steps being redone: a later resume must not pick them
        for path in later:
            shutil.rmtree(path, ignore_errors=True)
        say(accelerator, f"fold {fold.index}: removed the later states {', '.join(p.name for p in later)}")
    best_step = best_saved_step(fold.dir)
    if best_step is not None and best_step > state.step:  # best/ comes from the steps being redone
        if accelerator.is_main_process:
            shutil.rmtree(fold.dir / "best", ignore_errors=True)
        state.best = state.best_step = None
        say(accelerator, f"fold {fold.index}: best/ held step {best_step}, after {state_dir.name}; removed, the best "
                         f"is chosen again from here")
    accelerator.wait_for_everyone()
    if state.batch_in_epoch >= batches_per_epoch:  # saved at an epoch's end by an earlier version
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    say(accelerator, f"fold {fold.index}: resuming from {state_dir.name} (epoch {state.epoch}, "
                     f"batch {state.batch_in_epoch}, step {state.step})")
    return state


def banner(job, fold, n_train, n_eval, steps_per_epoch, frozen, sped_up):
    """The fold's one-line summary: rows, the total batch, steps, device and precision, LR groups."""
    train_cfg, accelerator = job.config.train, job.accelerator
    total_batch = train_cfg.batch_size * train_cfg.grad_accum * accelerator.num_processes
    parts = [f"fold {fold.index}: {n_train} train rows, {n_eval} eval rows ({fold.eval_split})",
             f"batch {train_cfg.batch_size} x {train_cfg.grad_accum} accumulation x {accelerator.num_processes} "
             f"process(es) = {total_batch}",
             f"{fold.total_steps} optimizer steps ({steps_per_epoch}/epoch, "
             + (f"train.max_steps={train_cfg.max_steps})" if train_cfg.max_steps else f"{train_cfg.epochs:g} epochs)"),
             f"{accelerator.device}, precision {job.precision.describe()}", describe_optimizer(fold.optimizer)]
    if frozen:
        layers = job.config.model.freeze_layers
        parts.append(f"frozen: embeddings and {layers} layer(s), {frozen / 1e6:.1f}M parameters" if layers
                     else "frozen: embeddings")
    if sped_up:
        parts.append(f"cpu speed-ups: {', '.join(sped_up)}")
    parts += [part for part in (averaging.describe(train_cfg), adversarial.describe(train_cfg)) if part]
    if train_cfg.gradient_checkpointing:
        parts.append("gradient checkpointing")
    return " | ".join(parts)


def best_saved_step(fold_dir):
    """The step of the weights in fold<k>/best/, from its metrics.json (None without one)."""
    path = fold_dir / "best" / "metrics.json"
    if not path.is_file():
        return None
    step = load_json(path, "the metrics of a best/ checkpoint", f"delete {path.parent} and resume").get("step")
    return step if isinstance(step, int) else None


def score(job, fold, model=None):
    """Metrics and probabilities of the current weights (or `model`'s) on the fold's held-out rows."""
    problem_type = job.spec.labels.problem_type
    logits = predict_logits(fold.model if model is None else model, fold.eval_loader, len(fold.eval_owner),
                            job.accelerator)
    # the loss over token rows (windows take their text's label); the metrics over texts
    loss = float(fold.loss_fn(logits, torch.as_tensor(fold.eval_labels[fold.eval_owner])))
    probs = fold.eval_windows.to_texts(probabilities(logits, problem_type).numpy(), fold.eval_owner,
                                       len(fold.eval_labels), problem_type)
    results = compute(probs, fold.eval_labels, problem_type)
    results["loss"] = loss
    return results, probs


def evaluate(job, fold, state):
    """Score the current weights (their EMA, with train.ema_decay); keep them as best/ when
    train.metric improves; log; stop early after train.patience evaluations without improvement.
    With train.swa_last, the weights join the SWA mean at its evaluations, and after the last one
    the mean is scored as a candidate for best/ too."""
    train_cfg = job.config.train
    scored = fold.average.module if train_cfg.ema_decay else fold.model
    results, _ = score(job, fold, scored)
    if train_cfg.metric not in results:
        raise UserError(f"train.metric={train_cfg.metric} is not computed for this problem; choose from "
                        f"{', '.join(sorted(results))}")
    weights = "ema" if train_cfg.ema_decay else None
    improved = keep_if_better(job, fold, state, scored, results, weights)
    if improved:
        state.bad_evals = 0
    else:
        state.bad_evals += 1
    job.log.write({"type": "eval", "fold": fold.index, "step": state.step, "epoch": state.epoch,
                   **{k: round(v, 6) for k, v in results.items()}, "best": state.best})
    say(job.accelerator, f"fold {fold.index} step {state.step}: "
        + " ".join(f"{k} {v:.4f}" for k, v in results.items()) + (" *" if improved else ""))
    if train_cfg.patience and state.bad_evals >= train_cfg.patience:
        state.stopped_early = True
    if state.step in fold.swa_steps:
        fold.average.update_parameters(job.accelerator.unwrap_model(fold.model))
        if state.step >= fold.total_steps:
            score_swa(job, fold, state)


def keep_if_better(job, fold, state, model, results, weights):
    """best/ becomes `model`'s weights when train.metric improves on the best so far; its
    metrics.json says which weights they are (`weights`: ema, swa of k) when they are an average."""
    train_cfg = job.config.train
    if not is_better(results[train_cfg.metric], state.best, metric_mode(train_cfg.metric, train_cfg.metric_mode),
                     train_cfg.min_delta):
        return False
    state.best, state.best_step = results[train_cfg.metric], state.step
    save_best(job.accelerator, fold.dir, model, job.spec, job.tokenizer,
              {**results, "step": state.step, "epoch": state.epoch, **({"weights": weights} if weights else {})},
              job.config.to_yaml())
    return True


def score_swa(job, fold, state):
    """The SWA mean of the last train.swa_last evaluations' weights, scored; best/ when it wins."""
    results, _ = score(job, fold, fold.average.module)
    averaged = averaging.averaged_count(fold.average)
    improved = keep_if_better(job, fold, state, fold.average.module, results, f"swa of {averaged}")
    job.log.write({"type": "swa", "fold": fold.index, "step": state.step, "epoch": state.epoch, "averaged": averaged,
                   **{k: round(v, 6) for k, v in results.items()}, "best": state.best})
    say(job.accelerator, f"fold {fold.index} SWA of {averaged} evaluations: "
        + " ".join(f"{k} {v:.4f}" for k, v in results.items()) + (" * (best/)" if improved else ""))


def finish_fold(job, fold, state):
    """The best weights predict the fold's held-out rows (fold<k>/oof/); then done.json."""
    from safetensors.torch import load_file

    accelerator = job.accelerator
    accelerator.wait_for_everyone()
    load_weights(accelerator, fold.model, load_file(str(fold.dir / "best" / "model.safetensors")))
    results, probs = score(job, fold)
    if accelerator.is_main_process:
        ids = np.load(job.data_dir / fold.eval_split / "ids.npy", mmap_mode="r")[fold.eval_rows]
        write_fold_oof(fold.dir, probs, ids, fold.eval_rows, fold.eval_labels)
        say(accelerator, f"fold {fold.index}: best {job.config.train.metric} {state.best:.4f} at step {state.best_step}")
        say(accelerator, report(probs, fold.eval_labels, job.spec.labels.problem_type, job.spec.labels.names))
        write_json(fold.dir / "done.json", {"fold": fold.index, "split": fold.eval_split, "best": state.best,
                                            "best_step": state.best_step, "metrics": results, "steps": state.step,
                                            "nonfinite_total": state.nonfinite_total,
                                            "stopped_early": state.stopped_early, "seconds": round(state.seconds, 1)})
        say(accelerator, f"fold {fold.index}: trained in {state.seconds:.1f} s")
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # drops Accelerate's references to this fold's model and optimizer


class Meter:
    """Running sums between two log lines, and the rows of the accumulation window being built."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.loss = torch.zeros((), device=accelerator.device)
        self.batches = self.samples = self.window_rows = 0
        self.since = time.time()

    def add(self, loss, rows):
        self.loss += loss
        self.batches += 1
        self.samples += rows * self.accelerator.num_processes
        self.window_rows += rows

    def take_window_rows(self):
        rows, self.window_rows = self.window_rows, 0
        return rows

    def take(self):
        """(mean loss over all processes, samples/s) since the last call; every process must call it."""
        mean_loss = float(self.accelerator.reduce(self.loss, "mean")) / max(self.batches, 1)
        speed = self.samples / max(time.time() - self.since, 1e-9)
        self.loss.zero_()
        self.batches = self.samples = 0
        self.since = time.time()
        return mean_loss, speed


def log_progress(job, fold, state, meter, grad_norm, bar):
    mean_loss, speed = meter.take()
    lr = fold.scheduler.get_last_lr()[0]
    record = {"type": "train", "fold": fold.index, "step": state.step, "epoch": state.epoch,
              "loss": round(mean_loss, 6), "lr": lr, "grad_norm": round(float(grad_norm), 6),
              "samples_per_s": round(speed, 2), "nonfinite_total": state.nonfinite_total}
    if job.accelerator.scaler is not None:
        record["loss_scale"] = float(job.accelerator.scaler.get_scale())
    job.log.write(record)
    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{speed:.1f}")


# ---------------------------------------------------------------------------- numerics of a step


def rescale_partial_window(accelerator, model, window_rows, train_cfg):
    """An epoch's last accumulation window can hold fewer rows than batch_size * grad_accum
    (short last batch, fewer micro-batches): scale its gradient to the mean over the rows it
    holds, as one big batch of those rows would give."""
    full = train_cfg.batch_size * train_cfg.grad_accum
    if accelerator.num_processes > 1:
        # decided on end_of_dataloader, which every process reaches at the same batch
        if not accelerator.gradient_state.end_of_dataloader:
            return
        total = accelerator.reduce(torch.tensor([window_rows], device=accelerator.device), "sum").item()
        scale = full * accelerator.num_processes / total
    else:
        if window_rows == full:
            return
        scale = full / window_rows
    if scale != 1.0:
        for param in model.parameters():
            if param.grad is not None:
                param.grad.mul_(scale)


def clip_gradients(accelerator, model, max_norm):
    """The gradient norm, clipped to max_norm. Under fp16 the gradients are unscaled first, so the
    norm and the clipping are of the true gradients. Unlike torch's clip_grad_norm_, a norm that is
    not finite (an fp16 overflow) leaves the gradients as they are instead of multiplying every one
    by NaN: the step is skipped anyway, and the CPU word-embedding gradient buffer relies on rows
    it did not touch staying zero. A norm within max_norm skips the x1 rescaling pass. FSDP and
    DeepSpeed shard the gradients and go through Accelerate."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type not in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
        return torch.zeros(()) if norm is None else norm  # DeepSpeed clips inside its step: no norm
    accelerator.unscale_gradients()  # a no-op without a loss scaler
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if torch.isfinite(norm) and norm > max_norm:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


# ---------------------------------------------------------------------------- setup and stopping


def make_accelerator(config, run_dir, recorded=None):
    """The Accelerator, in the precision train.precision resolves to on this device (the same on
    every process). A resumed run with precision auto keeps the precision it was started in."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    requested = config.train.precision
    if requested == "auto" and recorded:
        try:
            choice = resolve_shared(recorded)
        except UserError as err:
            raise UserError(f"train.resume: this run trained in {recorded}, and {str(err).split('; ')[0]}; to continue "
                            f"in another precision (not bit-exact), pass it, e.g. train.precision=no") from None
    else:
        choice = resolve_shared(requested)
    try:
        # train.report_to: TensorBoard writes under checkpoints/<run>/tensorboard/
        accelerator = Accelerator(mixed_precision=choice.precision, gradient_accumulation_steps=config.train.grad_accum,
                                  dataloader_config=DataLoaderConfiguration(even_batches=True),
                                  **tracker_kwargs(config.train.report_to, run_dir))
    except ValueError as err:
        message = str(err).splitlines()[0]
        hint = "; use train.precision=auto or no" if any(w in message for w in ("precision", "fp16", "bf16")) else ""
        raise UserError(f"cannot set up training: {message}{hint}") from None
    return accelerator, choice


def fold_plan(meta, train_cfg, data_dir):
    """[(fold, train_rows, eval_split, eval_rows)] for the folds to train. Rows that train one fold
    only (train/only_fold.npy: per-fold pseudo rows, k; every other row -1) join that fold's rows."""
    folds_meta = meta["folds"]
    n_train = meta["splits"]["train"]["rows"]
    only = data_dir / "train" / "only_fold.npy"
    only = np.load(only) if only.is_file() else np.full(n_train, -1, dtype=np.int16)

    def trains(fold, rows):
        return rows[(only[rows] == -1) | (only[rows] == fold)]

    if folds_meta["mode"] == "valid_file":
        if train_cfg.folds not in ("all", [0]):
            raise UserError("train.folds: this data has a validation file, so there is one fold (0); use train.folds=all")
        return [(0, trains(0, np.arange(n_train)), "valid", np.arange(meta["splits"]["valid"]["rows"]))]
    folds = np.load(data_dir / "train" / "folds.npy")
    k = folds_meta["n_folds"]
    chosen = list(range(k)) if train_cfg.folds == "all" else list(train_cfg.folds)
    for fold in chosen:
        if not 0 <= fold < k:
            raise UserError(f"train.folds contains {fold}, but the data has {k} fold(s) (0..{k - 1}); "
                            f"set data.n_folds in data_process.py or pick folds in range")
    return [(fold, trains(fold, np.flatnonzero(folds != fold)), "train", np.flatnonzero(folds == fold))
            for fold in chosen]


class StopRequest:
    """SIGTERM / SIGINT set a flag; the loop saves a resumable state at the next step and exits."""

    def __init__(self):
        self.signal = None

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum


def stop_reason(job, state):
    """"interrupted" (a signal), "max_time" (the wall-clock budget) or None; decided together, so
    that every process stops at the same step (checked at log steps only when there are several)."""
    accelerator, train_cfg = job.accelerator, job.config.train
    if accelerator.num_processes > 1 and state.step % train_cfg.log_every_steps:
        return None
    over_time = train_cfg.max_time > 0 and time.time() - job.started > train_cfg.max_time
    local = 2 if job.stop.signal is not None else 1 if over_time else 0
    if accelerator.num_processes > 1:  # the strongest reason any process has
        local = int(accelerator.gather(torch.tensor([local], device=accelerator.device)).max().item())
    return {0: None, 1: "max_time", 2: "interrupted"}[local]
