"""One fold's training, top to bottom: the step, then log / evaluate / save / stop.

    fit(job, fold, state)   the loop; returns "done", "max_time" or "interrupted"

One optimizer step is one block of `fit`: forward, loss and backward on every batch of an
accumulation window, then rescale, clip, step, schedule, zero the gradients. A trick enters
through one named call at a marked point: the adversarial backward (adversarial.backward) in
place of the plain one, weight averaging after a step and after an evaluation (averaging.after_step,
averaging.after_eval), the profiler after a step (profiling). What a fold is built from (data,
model, optimizer) is train.py's; what is written goes through checkpoint.save_state / save_best
and job.log. This module reads train.* keys only.
"""

import dataclasses
import signal
import time
from pathlib import Path

import numpy as np
import torch

from . import adversarial, averaging, distillation, profiling, speedups
from .checkpoint import Log, save_best, save_state
from .console import say
from .errors import UserError
from .loader import LengthGroupedBatches, Windows
from .metrics import compute, is_better, metric_mode
from .model import ModelSpec
from .predict import predict_logits
from .tokenization import per_text


@dataclasses.dataclass
class Job:
    """What every fold of one training run shares."""

    config: object  # config.Config
    accelerator: object
    precision: object  # precision.Choice
    compiled: object  # compiling.Decision (train.compile)
    data_dir: Path
    model_dir: Path
    tokenizer: object
    spec: ModelSpec  # written into every best/ as head.json
    run_dir: Path
    log: Log
    stop: "StopRequest"
    started: float
    profiled: bool = False  # train.profile_steps: the first fold trained in this session is profiled
    teacher: object = None  # train.teacher's probabilities of the train split's rows (preflight, distillation.py)
    on_eval: object = None  # on_eval(fold, step, metric) after each evaluation; True stops the run (tune.py's pruner)


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
    batches_per_epoch: int  # each process's batches
    total_steps: int
    eval_loader: object
    eval_split: str
    eval_rows: np.ndarray  # the held-out texts (rows of ids and labels)
    eval_labels: np.ndarray
    eval_windows: Windows  # the eval split's token rows -> texts
    eval_owner: np.ndarray  # each eval token row's position in eval_rows
    average: object = None  # averaging.Average: the EMA or SWA of the weights, when the run keeps one
    adversary: object = None  # adversarial.FGM / AWP
    teacher: object = None  # train.teacher: its probabilities per training row (distillation.for_rows)


# ---------------------------------------------------------------------------- the loop


def fit(job, fold, state):
    """Train until the step budget or early stopping ("done"), train.max_time ("max_time"), a
    tuning study's pruner ("pruned") or a stop signal ("interrupted"). A resumable state is saved before it returns."""
    train_cfg, accelerator = job.config.train, job.accelerator
    meter, bar = Meter(accelerator), progress_bar(job, fold, state)
    profiler = start_profiler(job)  # train.profile_steps (profiling.py)
    session_start, earlier_seconds = time.time(), state.seconds
    # the training loss of a batch: the labels', and with train.teacher the teacher's too (distillation.py)
    batch_loss = distillation.batch_loss(fold.teacher, fold.loss_fn, train_cfg, job.spec.labels.problem)
    fold.model.train()
    for batch in training_batches(accelerator, fold, state):
        # step: forward and backward on every batch; the optimizer steps once per window
        rows = len(batch["labels"])
        # backward divides by grad_accum; weighting by rows / batch_size makes a window of
        # k full batches of B give exactly the gradient of one batch of B*k.
        weight = rows / train_cfg.batch_size
        adversary = fold.adversary if epochs_done(fold, state) >= train_cfg.adv_start_epoch else None
        with accelerator.accumulate(fold.model):
            if adversary is None:
                logits = fold.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
                loss = batch_loss(logits, batch)
                accelerator.backward(loss * weight)
            else:  # train.adversarial: a second pass on weights pushed along the batch's gradient
                loss = adversarial.backward(adversary, accelerator, fold.model, batch_loss, batch, weight)
        meter.add(loss.detach(), rows)
        end_of_epoch = count_batch(accelerator, state, rows)
        if not accelerator.sync_gradients:
            continue  # mid-window: the next batch adds to the same gradient
        rescale_partial_window(accelerator, fold.model, meter.take_window_rows(), train_cfg)
        # An infinite max norm clips nothing but still returns the norm for the log.
        grad_norm = clip_gradients(accelerator, fold.model,
                                   train_cfg.max_grad_norm if train_cfg.max_grad_norm > 0 else float("inf"))
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
        updated = finite and not accelerator.optimizer_step_was_skipped
        if updated:
            fold.scheduler.step()
        fold.optimizer.zero_grad(set_to_none=True)
        count_step(fold, state, updated, train_cfg.max_nonfinite)
        averaging.after_step(fold.average, state)  # EMA: the average follows the weights

        # after the step: the bar, the wall time, the profiler (profiling.py)
        bar.update(1)
        last = state.step >= fold.total_steps
        state.seconds = earlier_seconds + time.time() - session_start
        profiler = profiler and profiler.after_step(last)
        # evaluate: every eval_every_steps (else at each epoch's end), and the final weights
        scheduled = state.step % train_cfg.eval_every_steps == 0 if train_cfg.eval_every_steps else end_of_epoch
        # log: every log_every_steps, and at every evaluation, so the curves have a point at each one
        if state.step % train_cfg.log_every_steps == 0 or last or scheduled:
            log_progress(job, fold, state, meter, grad_norm, bar)
        if scheduled or last:
            evaluate_and_keep_best(job, fold, state)
        # save: after an evaluation, at each epoch's end, every save_every_steps, and at the end
        saved = scheduled or end_of_epoch or last or state.stopped_early or bool(
            train_cfg.save_every_steps and state.step % train_cfg.save_every_steps == 0)
        if saved:
            save_fold_state(job, fold, state)
        # stop
        if last or state.stopped_early:
            break
        reason = stop_reason(job, state)
        if reason:
            profiler = profiler and profiler.after_step(last=True)
            if not saved:
                save_fold_state(job, fold, state)
            bar.close()
            return reason
    bar.close()
    if profiler:  # the fold stopped early, before the profiler's last step
        profiler.after_step(last=True)
    return "done"


def training_batches(accelerator, fold, state):
    """The fold's training batches from where `state` stands, epoch after epoch, until the step
    budget or early stopping. The batches of an epoch depend only on (seed, epoch); a resumed run
    skips those of the current epoch it already trained on."""
    while state.step < fold.total_steps and not state.stopped_early:
        fold.sampler.epoch = state.epoch
        batches = fold.train_loader
        if state.batch_in_epoch:  # resumed mid-epoch: the same batches, less those already trained on
            batches = accelerator.skip_first_batches(fold.train_loader, state.batch_in_epoch)
        yield from batches


def epochs_done(fold, state):
    """Epochs trained so far, with the fraction of the current one (for train.adv_start_epoch)."""
    return state.epoch + state.batch_in_epoch / max(fold.batches_per_epoch, 1)


def count_batch(accelerator, state, rows):
    """A batch was trained on; at its epoch's end the state moves to the next epoch (a state saved
    from here on resumes there). Returns whether the epoch ended."""
    state.batch_in_epoch += 1
    state.samples += rows * accelerator.num_processes
    end_of_epoch = accelerator.gradient_state.end_of_dataloader
    if end_of_epoch:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    return end_of_epoch


def count_step(fold, state, updated, max_nonfinite):
    """An optimizer step was taken: `updated` when the weights moved, not when a non-finite gradient
    skipped it. Too many skipped in a row stop the run."""
    if updated:
        state.nonfinite_in_row = 0
    else:
        state.nonfinite_in_row += 1
        state.nonfinite_total += 1
    state.step += 1
    if state.nonfinite_in_row >= max_nonfinite:
        raise UserError(f"fold {fold.index}: the loss was not finite for {state.nonfinite_in_row} steps in a row "
                        f"(step {state.step}); lower train.lr, use train.precision=no, or check the data")


def save_fold_state(job, fold, state):
    """fold<k>/last-<step>/: everything a resume needs (checkpoint.save_state)."""
    save_state(job.accelerator, fold.dir, fold.model, fold.optimizer, fold.scheduler, state,
               job.config.train.save_total_limit, fold.average)


def progress_bar(job, fold, state):
    """The fold's progress bar (on one process per machine), and its start in the log."""
    from tqdm.auto import tqdm

    train_cfg, accelerator = job.config.train, job.accelerator
    job.log.write({"type": "start", "fold": fold.index, "step": state.step, "total_steps": fold.total_steps,
                   "processes": accelerator.num_processes,
                   "total_batch": train_cfg.batch_size * train_cfg.grad_accum * accelerator.num_processes,
                   "precision": job.precision.precision, "precision_reason": job.precision.reason})
    return tqdm(total=fold.total_steps, initial=state.step, desc=f"fold {fold.index}", unit="step",
                disable=not accelerator.is_local_main_process, dynamic_ncols=True, mininterval=1.0)


def start_profiler(job):
    """train.profile_steps: the first fold trained in this session is profiled (profiling.py)."""
    if job.profiled or not job.config.train.profile_steps:
        return None
    job.profiled = True
    return profiling.start(job.config.train.profile_steps, job.run_dir / "profile",
                           f"rank{job.accelerator.process_index}", report=lambda text: say(job.accelerator, text))


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
    # a word embedding's gradient written row by row (speedups.FastEmbedding): its other rows are zero
    sparse = speedups.written_rows(model)
    rows = {p: p.grad.index_select(0, sparse[p]) for p in params if p in sparse}
    norm = torch.nn.utils.get_total_norm([rows.get(p, p.grad) for p in params])
    if torch.isfinite(norm) and norm > max_norm:
        torch.nn.utils.clip_grads_with_norm_([p for p in params if p not in rows], max_norm, norm)
        for p, written in rows.items():  # the same coefficient as clip_grads_with_norm_'s, on the rows written
            p.grad.index_copy_(0, sparse[p], written.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0)))
    return norm


# ---------------------------------------------------------------------------- evaluate, keep the best


def score(job, fold, model=None):
    """Metrics and probabilities of the current weights (or `model`'s) on the fold's held-out rows."""
    problem = job.spec.labels.problem
    logits = predict_logits(fold.model if model is None else model, fold.eval_loader, len(fold.eval_owner),
                            job.accelerator)
    # the loss over token rows (windows take their text's label); the metrics over texts
    loss = float(fold.loss_fn(logits, torch.as_tensor(fold.eval_labels[fold.eval_owner])))
    probs = per_text(problem.probabilities(logits).numpy(), fold.eval_owner, len(fold.eval_labels),
                     fold.eval_windows.aggregate, problem)
    results = compute(probs, fold.eval_labels, problem)
    results["loss"] = loss
    return results, probs


def evaluate_and_keep_best(job, fold, state):
    """Score the weights (their EMA, with train.ema_decay); keep them as best/ when train.metric
    improves; log; stop early after train.patience evaluations without improvement. With
    train.swa_last, the weights join the SWA mean at its evaluations, and after the last one the
    mean is scored as a candidate for best/ too."""
    train_cfg = job.config.train
    model, weights = averaging.scored(fold.average, fold.model)
    results, _ = score(job, fold, model)
    improved = keep_if_better(job, fold, state, model, results, weights)
    state.bad_evals = 0 if improved else state.bad_evals + 1
    job.log.write({"type": "eval", "fold": fold.index, "step": state.step, "epoch": state.epoch,
                   **{k: round(v, 6) for k, v in results.items()}, "best": state.best})
    say(job.accelerator, f"fold {fold.index} step {state.step}: "
        + " ".join(f"{k} {v:.4f}" for k, v in results.items()) + (" *" if improved else ""))
    if train_cfg.patience and state.bad_evals >= train_cfg.patience:
        state.stopped_early = True
    if job.on_eval is not None and job.on_eval(fold.index, state.step, results[train_cfg.metric]):
        job.stop.pruned = True  # the run stops at this step as a stop signal stops it (stop_reason)
    # weight averaging after an evaluation: SWA takes these weights in; after its last, its mean competes
    swa = averaging.after_eval(fold.average, state.step, fold.total_steps)
    if swa is not None:
        score_swa(job, fold, state, swa)


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


def score_swa(job, fold, state, model):
    """The SWA mean of the last train.swa_last evaluations' weights, scored; best/ when it wins."""
    results, _ = score(job, fold, model)
    averaged = averaging.averaged_count(fold.average)
    improved = keep_if_better(job, fold, state, model, results, f"swa of {averaged}")
    job.log.write({"type": "swa", "fold": fold.index, "step": state.step, "epoch": state.epoch, "averaged": averaged,
                   **{k: round(v, 6) for k, v in results.items()}, "best": state.best})
    say(job.accelerator, f"fold {fold.index} SWA of {averaged} evaluations: "
        + " ".join(f"{k} {v:.4f}" for k, v in results.items()) + (" * (best/)" if improved else ""))


# ---------------------------------------------------------------------------- log


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
    """A train record in metrics.jsonl (and the trackers), and the progress bar's figures."""
    mean_loss, speed = meter.take()
    lr = fold.scheduler.get_last_lr()[0]
    record = {"type": "train", "fold": fold.index, "step": state.step, "epoch": state.epoch,
              "loss": round(mean_loss, 6), "lr": lr, "grad_norm": round(float(grad_norm), 6),
              "samples_per_s": round(speed, 2), "nonfinite_total": state.nonfinite_total}
    if job.accelerator.scaler is not None:
        record["loss_scale"] = float(job.accelerator.scaler.get_scale())
    job.log.write(record)
    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{speed:.1f}")


# ---------------------------------------------------------------------------- stop


class StopRequest:
    """SIGTERM / SIGINT set a flag; the loop saves a resumable state at the next step and exits.
    `pruned`: a tuning study's pruner asked the run to stop (tune.py), the same way."""

    def __init__(self):
        self.signal = None
        self.pruned = False

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum


def stop_reason(job, state):
    """"interrupted" (a signal), "pruned" (tune.py's pruner), "max_time" (the wall-clock budget) or
    None; decided together, so that every process stops at the same step (checked at log steps
    only when there are several)."""
    accelerator, train_cfg = job.accelerator, job.config.train
    if accelerator.num_processes > 1 and state.step % train_cfg.log_every_steps:
        return None
    over_time = train_cfg.max_time > 0 and time.time() - job.started > train_cfg.max_time
    local = 3 if job.stop.signal is not None else 2 if job.stop.pruned else 1 if over_time else 0
    if accelerator.num_processes > 1:  # the strongest reason any process has
        local = int(accelerator.gather(torch.tensor([local], device=accelerator.device)).max().item())
    return {0: None, 1: "max_time", 2: "pruned", 3: "interrupted"}[local]
