"""The training stage: a run, fold after fold, in the order things happen.

    python train.py --config configs/sst2.yaml [train.lr=2e-5 ...]

    run(config)            check, pick the run folder, train each fold, merge the out-of-fold rows, finish
    train_fold(job, plan)  one fold: its data, model, optimizer and schedule; resume; loop.fit; its held-out rows
    finish_run(...)        the labelled test split and eval.texts by the fold mean, the curves, wall times

Three rooms: what training refuses before it writes is in preflight.py; one fold's loop (one
optimizer step in one block, each trick one named call) in loop.py; this stage builds what they
need and writes the run. Accelerate owns devices, processes, precision and gradient
accumulation; only the main process prints (console.say) and writes. What a run writes, and how
it resumes, is in checkpoint.py.
"""

import contextlib
import datetime
import math
import os
import random
import shutil
import signal
import time

import numpy as np
import torch

from . import adversarial, averaging, calibration, distillation, head_rows, preflight
from .compiling import compile_model, graphs_compiled, resolve as resolve_compile
from .checkpoint import (Log, TrainState, check_resume_path, choose_run_dir, drop_states, footprint, load_state,
                         load_weights, merge_oof, named_state, read_log, resume_state_dir, set_temperature, sharding,
                         write_fold_oof)
from .console import close_processes, say, shown
from .errors import UserError
from .fileio import (OutputLock, atomic_write_text, load_json, made_by_textclf, recover_dir, replace_own_output,
                     write_json, write_marker)
from .loader import LengthGroupedBatches, SortedBatches, SplitArrays, Windows, make_loader
from .loop import Fold, Job, StopRequest, fit, score
from .metrics import compute, report
from .model import build_classifier, freeze, init_verbalizer
from .optim import describe as describe_optimizer, make_optimizer, make_scheduler
from .precision import resolve_shared
from .predict import Predictor, load_fold_models
from .speedups import apply as apply_speedups, huge_pages
from .tokenization import fold_mean
from .trackers import accelerator_kwargs as tracker_kwargs, flat as flat_config


# ---------------------------------------------------------------------------- the run


def run(config, on_eval=None):
    """Train every requested fold; return the run folder. Everything that can be checked is
    checked before the run folder is made, and the run is locked (fileio.OutputLock) for as long
    as this process trains it. `on_eval(fold, step, metric)` is called after each evaluation; when
    it returns True the run stops as a stop signal stops it, resumable (tune.py's pruner)."""
    with OutputLock() as lock:
        return _run(config, lock, on_eval)


def _run(config, lock, on_eval=None):
    started = time.time()
    train_cfg = config.train
    if train_cfg.cpu_speedups:  # before the first tensor: torch's allocator reads it once (speedups.py)
        huge_pages()
    replaced = []  # keys a resumed run takes from its config.yaml, not from the config file
    if train_cfg.resume:  # a resumed run goes on with its recorded settings, the command line's aside
        run_dir, resuming = choose_run_dir(train_cfg, config.data.name, train_cfg.resume)
        replaced = preflight.resume_settings(config, run_dir) if resuming else []
    plan = preflight.check(config)
    # Every process picks the same folder before the main process creates it.
    run_dir, resuming = choose_run_dir(train_cfg, config.data.name, train_cfg.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # the process that writes the run's files (before the Accelerator)
        lock.take(run_dir, "run", "resume it" if resuming else "run again, or choose another train.run now")
    recorded = None  # the precision a resumed run trains in
    if resuming:
        check_resume_path(train_cfg.resume, run_dir, plan.fold_numbers)
        run_info = preflight.check_resume(config, run_dir, plan.spec)
        recorded = run_info.get("precision", {}).get("precision") or preflight.saved_precision(run_dir)
    elif run_dir.exists() and not made_by_textclf(run_dir, "run"):
        raise UserError(f"{run_dir} exists and was not made by textclf as a run, so train.overwrite=true will not "
                        f"replace it; choose another train.run, or move it away yourself")
    accelerator, choice = make_accelerator(config, run_dir, recorded)
    compiled = resolve_compile(train_cfg.compile, accelerator.device.type)  # train.compile (compiling.py)
    preflight.check_sharded(train_cfg, sharding(accelerator))
    accelerator.wait_for_everyone()
    if resuming:
        say(accelerator, f"train: resuming run {run_dir}")
        if replaced:
            say(accelerator, "train: with its recorded settings, where the config file now says otherwise: "
                + "; ".join(replaced[:4]) + (f" and {len(replaced) - 4} more" if len(replaced) > 4 else ""))
        if recorded and choice.precision != recorded:
            say(accelerator, f"train: this run was trained in {recorded} and continues in {choice.precision} "
                             f"(train.precision={train_cfg.precision}): the continuation is not bit-exact")
            if accelerator.is_main_process:  # a later resume continues in the new precision
                write_json(run_dir / "run.json", {**run_info, "precision": choice.record()})
    made_parent = not run_dir.parent.exists()  # removed again with the run if the run is refused untrained
    if not resuming and accelerator.is_main_process:
        start_run_folder(config, run_dir, plan, choice, compiled)
        say(accelerator, f"train: run folder {run_dir}")
    accelerator.wait_for_everyone()
    # Trackers start with the first log record, once every check of the resumed state has passed.
    log = Log(accelerator, run_dir, start_trackers=lambda: accelerator.init_trackers(
        run_dir.name, config=flat_config(config.to_dict())))
    job = Job(config=config, accelerator=accelerator, precision=choice, compiled=compiled, data_dir=plan.data_dir,
              model_dir=plan.model_dir, tokenizer=plan.tokenizer, spec=plan.spec, run_dir=run_dir, log=log,
              stop=StopRequest(), started=started, teacher=plan.teacher, on_eval=on_eval)
    job.stop.install()

    for fold_plan in plan.folds:
        try:  # a pruner's stop at a fold's last evaluation stops the run before the next fold
            outcome = "pruned" if job.stop.pruned else train_fold(job, fold_plan)
        except UserError:  # refused before this new run trained anything (a model that will not load):
            if not resuming and accelerator.is_main_process and not trained_anything(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing half-made is left behind
                if made_parent:
                    with contextlib.suppress(OSError):
                        run_dir.parent.rmdir()
            raise
        if outcome != "done":
            why = {"interrupted": "a stop signal", "pruned": "the tuning study's pruner"}.get(
                outcome, f"train.max_time={train_cfg.max_time:g}s")
            trust = " model.trust_remote_code=true" if config.model.trust_remote_code else ""
            say(accelerator, f"train: stopped by {why}; state saved. Continue with: {config.program} "
                             f"train.resume={run_dir}{trust}")
            close_processes(accelerator)
            if outcome == "interrupted":
                raise SystemExit(128 + int(job.stop.signal or signal.SIGTERM))  # a process the signal missed
            return run_dir
    if accelerator.is_main_process:
        score_oof = merge_oof(run_dir, plan.fold_numbers, plan.folds[0].eval_split, plan.spec.labels.problem,
                              plan.spec.labels.names)
        say(accelerator, "train: out-of-fold " + " ".join(f"{k} {v:.4f}" for k, v in score_oof.items())
            + f" -> {run_dir / 'oof'}")
        calibrated = calibrate_run(job, plan.fold_numbers)
        finish_run(job, plan.fold_numbers, score_oof, plan.meta, calibrated)
    accelerator.wait_for_everyone()
    close_processes(accelerator)
    return run_dir


def check(config):
    """Everything a run checks before it writes anything (preflight.py), without training: its Plan
    (tune.py checks the base config of a study with it)."""
    return preflight.check(config)


def trained_anything(run_dir):
    """Whether a run folder holds anything a fold trained: best weights or a resumable state."""
    return any(run_dir.glob("fold*/best")) or any(run_dir.glob("fold*/last-*"))


def start_run_folder(config, run_dir, plan, choice, compiled):
    """A new run folder (main process): the marker, the resolved config and run.json, which says
    what the run is made from."""
    replace_own_output(run_dir, "run", "train.overwrite")
    run_dir.mkdir(parents=True)
    write_marker(run_dir, "run")
    atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    spec = plan.spec
    write_json(run_dir / "run.json", dict(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        data_dir=str(plan.data_dir), data_meta_sha256=spec.provenance.data_meta_sha256, model_dir=str(plan.model_dir),
        label_names=spec.labels.names, problem_type=spec.labels.problem_type, folds=plan.fold_numbers,
        fold_mode=plan.meta["folds"]["mode"], precision=choice.record(), compile=compiled.record()))


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


# ---------------------------------------------------------------------------- one fold


def train_fold(job, plan):
    """One fold: build its data, model, optimizer and schedule, resume its state, fit, then let the
    best weights predict its held-out rows (the out-of-fold probabilities)."""
    config, accelerator = job.config, job.accelerator
    train_cfg = config.train
    fold_dir = job.run_dir / f"fold{plan.fold}"
    if (fold_dir / "done.json").is_file():
        if named_state(fold_dir, train_cfg.resume) is None:
            say(accelerator, f"fold {plan.fold}: already finished, skipped")
            if accelerator.is_main_process and not train_cfg.keep_state:  # states a kill left before they went
                drop_states(fold_dir)
            return "done"
        accelerator.wait_for_everyone()  # train.resume names one of its states: the fold is trained again from there
        if accelerator.is_main_process:
            (fold_dir / "done.json").unlink()

    # data: token rows, one per text, or with sliding windows each text's windows (they take its label)
    train_ds = SplitArrays(job.data_dir / "train", Windows(job.data_dir / "train").rows(plan.train_rows)[0],
                           pad_to_multiple=train_cfg.pad_to_multiple, buckets=job.compiled.on)
    teacher = distillation.for_rows(job.teacher, job.data_dir, train_ds.rows)  # train.teacher, row by row
    eval_windows = Windows(job.data_dir / plan.eval_split, job.spec.tokenization.window_aggregate)
    eval_token_rows, eval_owner = eval_windows.rows(plan.eval_rows)
    eval_ds = SplitArrays(job.data_dir / plan.eval_split, eval_token_rows, pad_to_multiple=train_cfg.pad_to_multiple,
                          buckets=job.compiled.on)
    eval_labels = np.asarray(np.load(job.data_dir / plan.eval_split / "labels.npy", mmap_mode="r")[plan.eval_rows])
    loss_fn = make_loss_fn(job, plan.train_rows)
    sampler = LengthGroupedBatches(train_ds.lengths(), train_cfg.batch_size, train_cfg.seed,
                                   grouped=train_cfg.sampler == "length_grouped")
    train_loader = make_loader(train_ds, sampler, train_cfg.num_workers)
    eval_loader = make_loader(eval_ds, SortedBatches(eval_ds.lengths(), train_cfg.eval_batch_size),
                              train_cfg.num_workers)

    # model, optimizer, schedule
    model, frozen, sped_up = build_model(job)
    optimizer = make_optimizer(model, train_cfg)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    # Counted after prepare: each process now sees 1/num_processes of the batches.
    steps_per_epoch = math.ceil(len(train_loader) / train_cfg.grad_accum)
    total_steps = train_cfg.max_steps or max(1, math.ceil(train_cfg.epochs * steps_per_epoch))
    # Not passed to prepare: a prepared scheduler steps once per process per call.
    scheduler = make_scheduler(optimizer, train_cfg, total_steps)
    unwrapped = accelerator.unwrap_model(model)
    fold = Fold(index=plan.fold, dir=fold_dir, model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn,
                sampler=sampler, train_loader=train_loader, batches_per_epoch=len(train_loader),
                total_steps=total_steps, eval_loader=eval_loader, eval_split=plan.eval_split, eval_rows=plan.eval_rows,
                eval_labels=eval_labels, eval_windows=eval_windows, eval_owner=eval_owner,
                average=averaging.make_average(unwrapped, train_cfg, total_steps, steps_per_epoch),
                adversary=adversarial.make_adversary(unwrapped, train_cfg),
                teacher=None if teacher is None else teacher.to(accelerator.device))

    state = resume(job, fold)
    say(accelerator, banner(job, fold, len(train_ds), len(eval_ds), steps_per_epoch, frozen, sped_up))
    outcome = fit(job, fold, state)
    if outcome == "done":
        finish_fold(job, fold, state)
    return outcome


def make_loss_fn(job, train_rows):
    """The fold's loss: the problem type's, with train.class_weights (auto: from the fold's train
    labels), label smoothing, and for regression the targets' scale."""
    train_cfg, labels = job.config.train, job.spec.labels
    weights = train_cfg.class_weights
    if weights == "auto":
        train_labels = np.asarray(np.load(job.data_dir / "train" / "labels.npy", mmap_mode="r")[train_rows])
        weights = labels.problem.auto_class_weights(train_labels, len(labels.names))
    return labels.problem.loss(weights, train_cfg.label_smoothing, job.spec.head.target_std, train_cfg.loss,
                               train_cfg.huber_delta)


def build_model(job):
    """The fold's model, seeded so every fold and rerun starts alike: the backbone and a new head
    (from the LM head's rows with a verbalizer), frozen layers, gradient checkpointing and the CPU
    speed-ups, or compiled (train.compile). Returns (model, parameters frozen, speed-ups applied)."""
    config, train_cfg = job.config, job.config.train
    torch.manual_seed(train_cfg.seed)  # same initial head weights and dropout stream for every fold and rerun
    random.seed(train_cfg.seed)
    model = build_classifier(job.model_dir, job.spec.head, config.model.trust_remote_code)
    if job.spec.head.verbalizer_ids:
        init_verbalizer(model, job.model_dir, job.spec.head.verbalizer_ids, config.model.trust_remote_code)
        if job.spec.head.lora:  # with adapters the LM head's rows stay as they are, like the rest of the base
            model.fc.requires_grad_(False)
    frozen = freeze(model, config.model.freeze_embeddings, config.model.freeze_layers)
    if train_cfg.gradient_checkpointing:  # non-reentrant: works with frozen layers and keeps dropout's RNG
        model.backbone.activation_checkpointing_enable({"use_reentrant": False})
    sped_up = head_rows.describe(model)
    if job.compiled.on:  # inductor fuses dropout and attention itself
        compile_model(model)
    elif train_cfg.cpu_speedups and job.accelerator.device.type == "cpu":
        sped_up += apply_speedups(model, single_process=job.accelerator.num_processes == 1)
    return model, frozen, sped_up


def resume(job, fold):
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
    if state.batch_in_epoch >= fold.batches_per_epoch:  # saved at an epoch's end by an earlier version
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    say(accelerator, f"fold {fold.index}: resuming from {state_dir.name} (epoch {state.epoch}, "
                     f"batch {state.batch_in_epoch}, step {state.step})")
    return state


def best_saved_step(fold_dir):
    """The step of the weights in fold<k>/best/, from its metrics.json (None without one)."""
    path = fold_dir / "best" / "metrics.json"
    if not path.is_file():
        return None
    step = load_json(path, "the metrics of a best/ checkpoint", f"delete {path.parent} and resume").get("step")
    return step if isinstance(step, int) else None


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
    if job.compiled.on or job.compiled.requested != "auto":
        parts.append(f"compiled {job.compiled.describe()}")
    if frozen:
        layers = job.config.model.freeze_layers
        parts.append(f"frozen: embeddings and {layers} layer(s), {frozen / 1e6:.1f}M parameters" if layers
                     else "frozen: embeddings")
    if sped_up:
        parts.append(f"speed-ups: {', '.join(sped_up)}")
    parts += [part for part in (averaging.describe(train_cfg), adversarial.describe(train_cfg),
                                distillation.describe(train_cfg)) if part]
    if train_cfg.gradient_checkpointing:
        parts.append("gradient checkpointing")
    return " | ".join(parts)


def finish_fold(job, fold, state):
    """The best weights predict the fold's held-out rows (fold<k>/oof/); then done.json."""
    from safetensors.torch import load_file

    accelerator = job.accelerator
    if state.step and state.nonfinite_total >= state.step:  # best/ would be the untrained model
        raise UserError(f"fold {fold.index}: every one of its {state.step} optimizer step(s) was skipped for a "
                        f"non-finite loss or gradient, so its weights never trained; lower train.lr"
                        + (", lower train.adv_eps (or train.adversarial=none)"
                           if job.config.train.adversarial != "none" else "")
                        + ", use train.precision=no, or check the data and the model's weights")
    accelerator.wait_for_everyone()
    load_weights(accelerator, fold.model, load_file(str(fold.dir / "best" / "model.safetensors")))
    results, probs = score(job, fold)
    if accelerator.is_main_process:
        ids = np.load(job.data_dir / fold.eval_split / "ids.npy", mmap_mode="r")[fold.eval_rows]
        write_fold_oof(fold.dir, probs, ids, fold.eval_rows, fold.eval_labels)
        say(accelerator, f"fold {fold.index}: best {job.config.train.metric} {state.best:.4f} at step {state.best_step}")
        say(accelerator, report(probs, fold.eval_labels, job.spec.labels.problem, job.spec.labels.names))
        write_json(fold.dir / "done.json", {"fold": fold.index, "split": fold.eval_split, "best": state.best,
                                            "best_step": state.best_step, "metrics": results, "steps": state.step,
                                            "nonfinite_total": state.nonfinite_total,
                                            "stopped_early": state.stopped_early, "seconds": round(state.seconds, 1)})
        say(accelerator, f"fold {fold.index}: trained in {state.seconds:.1f} s"
                         + (f", {graphs_compiled()} graphs compiled in this process" if job.compiled.on else ""))
        if not job.config.train.keep_state:  # done.json is written: the fold never resumes again
            drop_states(fold.dir)
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # drops Accelerate's references to this fold's model and optimizer


# ---------------------------------------------------------------------------- the end of a run


def calibrate_run(job, folds):
    """train.calibrate: one temperature fitted on the run's out-of-fold rows (calibration.py), kept in
    every fold's best/head.json (the models divide their logits by it from now on) and in
    calibration.json, with the reliability diagram before and after. Not for texts read as sliding
    windows: the models' temperature would act on each window before their probabilities are
    aggregated, and the out-of-fold rows are the aggregated texts. Without calibration every fold's
    temperature is 1 (a fold trained again, or calibration turned off on resume, leaves none stale)."""
    oof = job.run_dir / "oof"
    problem = job.spec.labels.problem
    windows = bool(job.spec.tokenization.window_stride)
    fitted = None
    raw, labels = np.load(oof / "probs.npy"), np.load(oof / "labels.npy")
    if job.config.train.calibrate and not windows:
        fitted = calibration.calibrate(raw, labels, problem)  # None for a regression
    if fitted is None:
        set_temperature(job.run_dir, folds, 1.0)
        for name in ("calibration.json", "reliability.png"):
            (job.run_dir / name).unlink(missing_ok=True)
        if job.config.train.calibrate and windows:
            say(job.accelerator, "train: not calibrated: texts are read as sliding windows, whose probabilities are "
                                 "aggregated after the model (a temperature would act before)")
        return None
    temperature, record, calibrated = fitted
    if "not_fitted" in record:
        say(job.accelerator, f"train: not calibrated: {record['not_fitted']} (calibration.MIN_ROWS); the temperature "
                             f"stays 1")
    set_temperature(job.run_dir, folds, temperature)
    diagram = job.run_dir / "reliability.png"
    try:
        from .figures import reliability_diagram

        reliability_diagram((calibration.reliability(raw, labels, problem), record["ece_before"]),
                            (calibration.reliability(calibrated, labels, problem), record["ece_after"]), diagram,
                            f"{job.run_dir.name}: out-of-fold rows, temperature {temperature:.3f}")
        record["diagram"] = diagram.name
    except ImportError:
        pass
    write_json(job.run_dir / "calibration.json", {"fitted_on": "out-of-fold rows", **record})
    say(job.accelerator, f"train: calibrated on the out-of-fold rows: temperature {temperature:.3f}, expected "
                         f"calibration error {record['ece_before']:.4f} -> {record['ece_after']:.4f}, log loss "
                         f"{record['log_loss_before']:.4f} -> {record['log_loss_after']:.4f} -> "
                         f"{job.run_dir / 'calibration.json'}")
    return record


def finish_run(job, folds, oof_score, meta, calibrated=None):
    """The end of a run (main process): the labelled test split and eval.texts predicted by the
    fold mean (calibrated, where the run is), the training curves as a PNG, wall times; all of it
    in summary.json ("oof": the out-of-fold rows as trained; "calibration": what the temperature
    did to them)."""
    summary = {"oof": oof_score, "fold_seconds": {}, "test": None, "texts": None}
    if calibrated:
        summary["calibration"] = {k: calibrated[k] for k in ("temperature", "ece_before", "ece_after",
                                                            "log_loss_before", "log_loss_after") if k in calibrated}
    for fold in folds:
        done = load_json(job.run_dir / f"fold{fold}" / "done.json", "a fold's done.json", "train the fold again")
        summary["fold_seconds"][str(fold)] = done.get("seconds")
    test = meta["splits"].get("test")
    texts = job.config.eval.texts
    if (test and test["labelled"]) or texts:
        models, spec, checkpoints = load_fold_models(job.run_dir, folds, job.config.model.trust_remote_code)
        device = job.accelerator.device
        predictor = Predictor([m.to(device) for m in models], spec, job.tokenizer, device,
                              job.config.train.eval_batch_size, checkpoints, job.precision.precision)
        if test and test["labelled"]:
            summary["test"] = test_metrics(job, predictor)
        if texts:
            summary["texts"] = predict_texts(job, predictor, list(texts))
        del models, predictor
    curves = draw_curves(job)
    if curves:
        summary["curves"] = curves.name
    summary["seconds"] = round(time.time() - job.started, 1)
    summary["disk"] = footprint(job.run_dir)
    write_json(job.run_dir / "summary.json", summary)
    say(job.accelerator, "train: wall time " + ", ".join(f"fold {k} {v:.1f} s" for k, v in summary["fold_seconds"].items()
                                                         if v is not None)
        + f"; this session {summary['seconds']:.1f} s -> {job.run_dir / 'summary.json'}")
    disk = summary["disk"]
    say(job.accelerator, f"train: disk {megabytes(disk['bytes'])} in {job.run_dir} (best weights "
                         f"{megabytes(disk['best_bytes'])}, resumable states {megabytes(disk['state_bytes'])}"
                         + ("" if job.config.train.keep_state else "; finished folds keep no state: "
                            "train.keep_state=true keeps it") + ")")


def predict_texts(job, predictor, texts):
    """eval.texts predicted by the fold mean, printed and returned for summary.json."""
    out = predictor.predict(texts)
    say(job.accelerator, "train: eval.texts predicted by the fold mean")
    if predictor.problem.regression:
        items = [{"text": t, "prediction": dict(zip(out["label_names"], map(float, p)))}
                 for t, p in zip(texts, out["predictions"])]
        answers = [f"{' '.join(f'{v:.4g}' for v in p):>12}" for p in out["predictions"]]
    else:
        items = [{"text": t, "label": label, "probs": dict(zip(out["label_names"], map(float, p)))}
                 for t, label, p in zip(texts, out["labels"], out["probs"])]
        answers = [f"{item['label']!s:>12}  p={p.max():.3f}" for item, p in zip(items, out["probs"])]
    for item, answer in zip(items, answers):
        say(job.accelerator, f"{answer}  {shown(item['text'])}")
    return items


def test_metrics(job, predictor):
    """The fold mean on the data's labelled test split: metrics and the per-class report."""
    split = job.data_dir / "test"
    arrays = {name: np.load(split / f"{name}.npy", mmap_mode="r") for name in ("input_ids", "attention_mask",
                                                                             "token_type_ids", "lengths")}
    fold_probs = predictor.fold_probs(np.asarray(arrays["input_ids"]), np.asarray(arrays["attention_mask"]),
                                      np.asarray(arrays["token_type_ids"]), np.asarray(arrays["lengths"]))
    labels = np.load(split / "labels.npy")
    problem, names = job.spec.labels.problem, job.spec.labels.names
    windows = Windows(split, job.spec.tokenization.window_aggregate)  # sliding windows -> one row per text
    probs = fold_mean(fold_probs, windows.owner(len(labels)), len(labels), windows.aggregate, problem)
    results = compute(probs, labels, problem)
    text = report(probs, labels, problem, names)
    say(job.accelerator, f"train: test split ({len(labels)} rows, fold mean): "
        + " ".join(f"{k} {v:.4f}" for k, v in results.items()))
    say(job.accelerator, text)
    atomic_write_text(job.run_dir / "test_report.txt", text + "\n")
    return {"rows": int(len(labels)), **results}


def draw_curves(job):
    """curves.png: loss, learning rate and the eval metric per fold, from metrics.jsonl."""
    path = job.run_dir / "curves.png"
    try:
        from .figures import training_curves

        training_curves(read_log(job.run_dir / "metrics.jsonl"), path, job.config.train.metric)
    except ImportError:
        say(job.accelerator, "train: curves.png skipped: install matplotlib to draw it")
        return None
    return path


def megabytes(n):
    return f"{n / 1e6:.1f} MB"
