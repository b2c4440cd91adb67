"""The training stage: one fold at a time, a loop that reads top to bottom.

Accelerate owns devices, processes, precision and gradient accumulation; only the main
process prints, logs and writes. Layout of checkpoints/<run>/:

    config.yaml, run.json             the resolved config; what the run was made from
    metrics.jsonl, metrics.csv        training log lines and evaluation results
    fold<k>/best/                     weights (safetensors), backbone config, tokenizer, head.json,
                                      metrics.json: everything evaluate.py needs
    fold<k>/last-<step>/              resumable state: weights, optimizer, scheduler, scaler, RNG,
                                      epoch, step and position in the epoch (save_total_limit kept)
    fold<k>/oof/                      the best model's probabilities on the fold's held-out rows
    fold<k>/done.json                 written when the fold is finished
    oof/                              all folds' held-out probabilities, keyed by row id
"""

import datetime
import json
import math
import random
import shutil
import signal
import time

import numpy as np
import torch

from .config import resolve_path
from .data import load_meta, load_tokenizer, vocab_hash
from .errors import UserError
from .fileio import (atomic_dir, atomic_write_text, next_version, read_json, recover_dir, sha256_file, versions,
                     write_json)
from .loader import LengthGroupedBatches, SortedBatches, SplitArrays, make_loader
from .metrics import available as available_metrics, compute, is_better, metric_mode, report
from .model import (auto_class_weights, build_classifier, check_freeze_layers, freeze, layer_index, make_loss,
                    num_layers, num_outputs, probabilities, resolve_problem_type, save_classifier)
from .precision import resolve_shared
from .premodels import resolve_model_dir
from .speedups import apply as apply_speedups


# ---------------------------------------------------------------------------- setup helpers


def make_accelerator(config, recorded=None):
    """The Accelerator, in the precision train.precision resolves to on this device (the same on
    every process). A resumed run with precision auto keeps the precision it was started in."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    requested = config.train.precision
    if requested == "auto" and recorded:
        requested = recorded
    choice = resolve_shared(requested)
    log_with = None
    try:
        import tensorboard  # noqa: F401  (optional: logged through Accelerate's tracker when present)
        log_with = "tensorboard"
    except ImportError:
        pass
    try:
        # TensorBoard writes under checkpoints/<run>/ (the tracker is named after the run folder)
        accelerator = Accelerator(mixed_precision=choice.precision, gradient_accumulation_steps=config.train.grad_accum,
                                  log_with=log_with, project_dir=str(resolve_path(config.train.output_dir)),
                                  dataloader_config=DataLoaderConfiguration(even_batches=True))
    except ValueError as err:
        raise UserError(f"cannot set up training: {str(err).splitlines()[0]}; use train.precision=auto or no") from None
    return accelerator, choice


def layer_depth(name, n_layers):
    """How far below the top layer a backbone parameter sits (for layer-wise LR decay): 0 for the
    top layer and what sits above it, n_layers for the embeddings."""
    index = layer_index(name)
    if index is None:
        return 0
    return n_layers if index < 0 else n_layers - 1 - index


def make_optimizer(model, tcfg):
    """AdamW with no weight decay on 1-D parameters (biases, LayerNorm), a head LR and
    optional layer-wise LR decay down the backbone. Frozen parameters are left out."""
    n_layers = num_layers(model)
    head_lr = tcfg.head_lr if tcfg.head_lr is not None else tcfg.lr
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("backbone."):
            lr = tcfg.lr * tcfg.layer_lr_decay ** layer_depth(name, n_layers)
        else:
            lr = head_lr
        decay = 0.0 if param.ndim < 2 else tcfg.weight_decay
        groups.setdefault((lr, decay), []).append(param)
    param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    kwargs = dict(betas=tuple(tcfg.betas), eps=tcfg.adam_eps)
    try:
        return torch.optim.AdamW(param_groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups, foreach=True, **kwargs)


def make_scheduler(optimizer, tcfg, total_steps):
    from transformers import get_constant_schedule_with_warmup, get_scheduler

    warmup = int(round(tcfg.warmup * total_steps)) if tcfg.warmup < 1 else int(tcfg.warmup)
    warmup = min(warmup, max(total_steps - 1, 0))
    if tcfg.scheduler == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    if tcfg.scheduler == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        # OneCycleLR's last phase ends at total_steps - 1 and the loop calls step() total_steps
        # times: one extra step of room lands the final LR on the minimum, not past it.
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total_steps, 1) + 1,
                                                   pct_start=max(warmup, 1) / max(total_steps, 1),
                                                   anneal_strategy="cos", cycle_momentum=False)
    return get_scheduler(tcfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def fold_plan(meta, tcfg, data_dir):
    """[(fold, train_rows, eval_split, eval_rows)] for the folds to train."""
    folds_meta = meta["folds"]
    n_train = meta["splits"]["train"]["rows"]
    if folds_meta["mode"] == "valid_file":
        if tcfg.folds not in ("all", [0]):
            raise UserError("train.folds: this data has a validation file, so there is one fold (0); use train.folds=all")
        n_valid = meta["splits"]["valid"]["rows"]
        return [(0, np.arange(n_train), "valid", np.arange(n_valid))]
    folds = np.load(data_dir / "train" / "folds.npy")
    k = folds_meta["n_folds"]
    chosen = list(range(k)) if tcfg.folds == "all" else list(tcfg.folds)
    for f in chosen:
        if not 0 <= f < k:
            raise UserError(f"train.folds contains {f}, but the data has {k} fold(s) (0..{k - 1}); "
                            f"set data.n_folds in data_process.py or pick folds in range")
    return [(f, np.flatnonzero(folds != f), "train", np.flatnonzero(folds == f)) for f in chosen]


def choose_run_dir(tcfg, data_name, resume):
    """checkpoints/<run>; an existing run gets a new version folder (<run>-v2, ...) unless resumed."""
    base = resolve_path(tcfg.output_dir)
    name = tcfg.run or data_name
    runs = [p for _, p in versions(base, name) if p.is_dir()]
    if resume == "auto":
        return (runs[-1] if runs else base / name), bool(runs)
    if resume:
        path = resolve_path(resume)
        run = next((p for p in [path, *path.parents] if (p / "run.json").is_file()), None)
        if run is None:
            raise UserError(f"train.resume={resume} is not inside a run folder (no run.json found); "
                            f"pass checkpoints/<run> or train.resume=auto")
        return run, True
    if not runs or tcfg.overwrite:
        return base / name, False
    return next_version(base, name), False


def latest_state(fold_dir):
    states = sorted(fold_dir.glob("last-*"), key=lambda p: p.name)
    return states[-1] if states else None


# ---------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_logits(model, loader, accelerator, n_rows):
    """Logits for every row of the loader's dataset, in row order, whatever the batching and
    however many processes share the work (padding rows from uneven shards are dropped)."""
    model.eval()
    chunks, indices = [], []
    for batch in loader:
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).float()
        index = batch["index"]
        logits = accelerator.pad_across_processes(logits, dim=0)
        index = accelerator.pad_across_processes(index, dim=0, pad_index=-1)
        logits, index = accelerator.gather((logits, index))
        chunks.append(logits.cpu())
        indices.append(index.cpu())
    model.train()
    logits = torch.cat(chunks)
    index = torch.cat(indices)
    keep = index >= 0
    out = torch.full((n_rows, logits.shape[1]), float("nan"))
    out[index[keep]] = logits[keep]  # duplicated rows write identical values
    if torch.isnan(out).any():
        raise RuntimeError("some rows got no prediction; this is a bug in batching")
    return out


def evaluate(model, loader, accelerator, labels, loss_fn, problem_type):
    logits = predict_logits(model, loader, accelerator, len(labels))
    target = torch.as_tensor(labels)
    loss = float(loss_fn(logits, target))
    probs = probabilities(logits, problem_type).numpy()
    results = compute(probs, labels, problem_type)
    results["loss"] = loss
    return results, probs


# ---------------------------------------------------------------------------- state files


def save_state(accelerator, fold_dir, model, optimizer, scheduler, progress, limit):
    """Write a resumable state to fold<k>/last-<step>/ (atomically) and prune old ones."""
    from safetensors.torch import save_file

    rng = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
           "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        all_rng = gather_object([rng])  # each process's dropout stream, restored per process
    else:
        all_rng = [rng]
    full_state = accelerator.get_state_dict(model)  # every process takes part in the gather
    if accelerator.is_main_process:
        target = fold_dir / f"last-{progress['step']:08d}"
        with atomic_dir(target, replace=True) as tmp:
            state = {k: v.detach().cpu().contiguous() for k, v in full_state.items()}
            save_file(state, str(tmp / "model.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if accelerator.scaler is not None:
                torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
            torch.save(all_rng, tmp / "rng.pt")
            write_json(tmp / "state.json", progress)
        for old in sorted(fold_dir.glob("last-*"))[:-max(limit, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_pt(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types; the message says which
        raise UserError(f"{path} cannot be loaded safely ({type(err).__name__}); it is corrupted or holds "
                        f"more than plain tensors; delete this state folder to resume from an earlier one") from None


def load_state(accelerator, state_dir, model, optimizer, scheduler):
    from safetensors.torch import load_file

    try:
        weights = load_file(str(state_dir / "model.safetensors"))
    except Exception as err:
        raise UserError(f"{state_dir / 'model.safetensors'} is corrupted ({err}); delete {state_dir} to resume "
                        f"from an earlier state") from None
    accelerator.unwrap_model(model).load_state_dict(weights)
    optimizer.load_state_dict(_load_pt(state_dir / "optimizer.pt"))
    scheduler.load_state_dict(_load_pt(state_dir / "scheduler.pt"))
    if accelerator.scaler is not None and (state_dir / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(_load_pt(state_dir / "scaler.pt"))
    all_rng = _load_pt(state_dir / "rng.pt")
    rng = all_rng[accelerator.process_index % len(all_rng)]
    torch.set_rng_state(rng["torch"])
    random.setstate((rng["python_version"], tuple(rng["python"]), rng["python_gauss"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    with open(state_dir / "state.json", encoding="utf-8") as fh:
        return json.load(fh)


class Log:
    """metrics.jsonl (every record) and metrics.csv (evaluations), written by the main process."""

    def __init__(self, accelerator, run_dir):
        self.accelerator = accelerator
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        self.eval_rows = []  # a resumed run continues the rows it logged before
        if accelerator.is_main_process and self.jsonl.is_file():
            rows = (json.loads(line) for line in self.jsonl.read_text(encoding="utf-8").splitlines())
            self.eval_rows = [r for r in rows if r.get("type") == "eval"]

    def write(self, record):
        if not self.accelerator.is_main_process:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.jsonl, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if record.get("type") == "eval":
            self.eval_rows.append(record)
            rows = self.eval_rows
            keys = list(dict.fromkeys(k for r in rows for k in r))
            lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]
            atomic_write_text(self.csv, "\n".join(lines) + "\n")
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("time", "step", "fold")}
        if self.accelerator.trackers:
            self.accelerator.log({f"fold{record.get('fold', 0)}/{record.get('type', 'train')}/{k}": v
                                  for k, v in scalars.items()}, step=record.get("step"))


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


# ---------------------------------------------------------------------------- one fold


def train_fold(accelerator, config, meta, data_dir, model_dir, tokenizer, run_dir, plan, head_cfg, log, stop, started,
               choice):
    cfg = config.train
    fold, train_rows, eval_split, eval_rows = plan
    fold_dir = run_dir / f"fold{fold}"
    problem_type = head_cfg["problem_type"]
    main = accelerator.is_main_process

    train_ds = SplitArrays(data_dir / "train", train_rows, pad_to_multiple=cfg.pad_to_multiple)
    eval_ds = SplitArrays(data_dir / eval_split, eval_rows, pad_to_multiple=cfg.pad_to_multiple)
    eval_labels = np.asarray(np.load(data_dir / eval_split / "labels.npy", mmap_mode="r")[eval_rows])
    train_labels = np.asarray(np.load(data_dir / "train" / "labels.npy", mmap_mode="r")[train_rows])
    weights = cfg.class_weights
    if weights == "auto":
        weights = auto_class_weights(train_labels, problem_type, len(head_cfg["label_names"]))
    elif weights is not None and len(weights) != len(head_cfg["label_names"]):
        raise UserError(f"train.class_weights has {len(weights)} values for {len(head_cfg['label_names'])} labels; "
                        f"give one per label ({', '.join(head_cfg['label_names'])}) or use auto")
    loss_fn = make_loss(problem_type, weights, cfg.label_smoothing)

    sampler = LengthGroupedBatches(train_ds.lengths(), cfg.batch_size, cfg.seed, grouped=cfg.sampler == "length_grouped")
    train_loader = make_loader(train_ds, sampler, cfg.num_workers)
    eval_loader = make_loader(eval_ds, SortedBatches(eval_ds.lengths(), cfg.eval_batch_size), cfg.num_workers)

    torch.manual_seed(cfg.seed)  # same initial head weights and dropout stream for every fold and rerun
    random.seed(cfg.seed)
    model = build_classifier(model_dir, head_cfg, config.model.trust_remote_code)
    frozen = freeze(model, config.model.freeze_embeddings, config.model.freeze_layers)
    on_cpu = cfg.cpu_speedups and accelerator.device.type == "cpu"
    sped_up = apply_speedups(model, single_process=accelerator.num_processes == 1) if on_cpu else []
    optimizer = make_optimizer(model, cfg)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    # Counted after prepare: each process now sees 1/num_processes of the batches.
    batches_per_epoch = len(train_loader)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    # Not passed to prepare: a prepared scheduler steps once per process per call.
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    mode = metric_mode(cfg.metric, cfg.metric_mode)

    progress = dict(fold=fold, epoch=0, batch_in_epoch=0, step=0, best=None, best_step=None, bad_evals=0,
                    nonfinite_in_row=0, nonfinite_total=0, samples=0, stopped_early=False)
    # A process killed mid-write can leave a half-replaced best/ or temporary folders.
    recover_dir(fold_dir / "best")
    for stale in fold_dir.glob(".last-*.tmp-*") if fold_dir.exists() else []:
        shutil.rmtree(stale, ignore_errors=True)
    resume_from = latest_state(fold_dir) if fold_dir.exists() else None
    if resume_from is not None:
        progress = load_state(accelerator, resume_from, model, optimizer, scheduler)
        if main:
            print(f"fold {fold}: resuming from {resume_from.name} (epoch {progress['epoch']}, "
                  f"batch {progress['batch_in_epoch']}, step {progress['step']})", flush=True)
    elif main:
        fold_dir.mkdir(parents=True, exist_ok=True)

    if main:
        total_batch = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
        print(f"fold {fold}: {len(train_ds)} train rows, {len(eval_ds)} eval rows ({eval_split}) | batch "
              f"{cfg.batch_size} x {cfg.grad_accum} accumulation x {accelerator.num_processes} process(es) = "
              f"{total_batch} | {total_steps} optimizer steps ({steps_per_epoch}/epoch, {cfg.epochs:g} epochs) | "
              f"{accelerator.device}, precision {choice.describe()}"
              + (f" | frozen: embeddings and {config.model.freeze_layers} layer(s), {frozen / 1e6:.1f}M parameters"
                 if config.model.freeze_layers else " | frozen: embeddings" if frozen else "")
              + (f" | cpu speed-ups: {', '.join(sped_up)}" if sped_up else ""), flush=True)

    def run_eval():
        results, _ = evaluate(model, eval_loader, accelerator, eval_labels, loss_fn, problem_type)
        if cfg.metric not in results:
            raise UserError(f"train.metric={cfg.metric} is not computed for this problem; choose from "
                            f"{', '.join(sorted(results))}")
        value = results[cfg.metric]
        improved = is_better(value, progress["best"], mode, cfg.min_delta)
        if improved:
            progress.update(best=value, best_step=progress["step"], bad_evals=0)
            state_dict = accelerator.get_state_dict(model)  # every process: FSDP/ZeRO-3 gather here
            if main:
                with atomic_dir(fold_dir / "best", replace=True) as tmp:
                    save_classifier(accelerator.unwrap_model(model), tmp, head_cfg, tokenizer, state_dict)
                    write_json(tmp / "metrics.json", {**results, "step": progress["step"], "epoch": progress["epoch"]})
                    atomic_write_text(tmp / "config.yaml", config.to_yaml())
            accelerator.wait_for_everyone()
        else:
            progress["bad_evals"] += 1
        log.write({"type": "eval", "fold": fold, "step": progress["step"], "epoch": progress["epoch"],
                   **{k: round(v, 6) for k, v in results.items()}, "best": progress["best"]})
        if main:
            mark = " *" if improved else ""
            print(f"fold {fold} step {progress['step']}: " + " ".join(f"{k} {v:.4f}" for k, v in results.items())
                  + mark, flush=True)
        if cfg.patience and progress["bad_evals"] >= cfg.patience:
            progress["stopped_early"] = True
        return results

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=progress["step"], desc=f"fold {fold}", unit="step",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True, mininterval=1.0)
    model.train()
    running_loss = torch.zeros((), device=accelerator.device)
    running_batches = window_rows = 0
    window_start, window_samples = time.time(), 0
    done = progress["step"] >= total_steps or progress["stopped_early"]
    log.write({"type": "start", "fold": fold, "step": progress["step"], "total_steps": total_steps,
               "processes": accelerator.num_processes, "total_batch": cfg.batch_size * cfg.grad_accum
               * accelerator.num_processes, "precision": choice.precision, "precision_reason": choice.reason})
    while not done:
        sampler.epoch = progress["epoch"]
        loader = train_loader
        if progress["batch_in_epoch"]:
            loader = accelerator.skip_first_batches(train_loader, progress["batch_in_epoch"])
        for batch in loader:
            with accelerator.accumulate(model):
                logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
                loss = loss_fn(logits, batch["labels"])
                rows = len(batch["labels"])
                # backward divides by grad_accum; weighting by rows / batch_size makes a window of
                # k full batches of B give exactly the gradient of one batch of B*k.
                accelerator.backward(loss * (rows / cfg.batch_size))
                window_rows += rows
                progress["batch_in_epoch"] += 1
                progress["samples"] += rows * accelerator.num_processes
                window_samples += rows * accelerator.num_processes
                running_loss += loss.detach()
                running_batches += 1
                if not accelerator.sync_gradients:
                    continue
                rescale_partial_window(accelerator, model, window_rows, cfg)
                window_rows = 0
                # Clip only on sync steps; an infinite max norm still returns the norm for the log.
                max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
                grad_norm = clip_gradients(accelerator, model, max_norm)
                # Host sync point: a non-finite gradient must skip the update on every process
                # (the norm is computed from all-reduced gradients, so all processes agree). Under
                # fp16 the norm is of the unscaled gradients: it is not finite exactly when the loss
                # scaler found an overflow. The step still runs then, because the scaler itself skips
                # the update and lowers its scale (accelerate's optimizer_step_was_skipped cannot tell
                # with a fused optimizer, which takes the overflow flag into its own kernel).
                finite = bool(torch.isfinite(grad_norm))
                if finite or accelerator.scaler is not None:
                    optimizer.step()
                if finite:
                    scheduler.step()
                    progress["nonfinite_in_row"] = 0
                else:
                    progress["nonfinite_in_row"] += 1
                    progress["nonfinite_total"] += 1
                optimizer.zero_grad(set_to_none=True)
                progress["step"] += 1
                bar.update(1)

            if progress["nonfinite_in_row"] >= cfg.max_nonfinite:
                raise UserError(f"fold {fold}: the loss was not finite for {progress['nonfinite_in_row']} steps in a row "
                                f"(step {progress['step']}); lower train.lr, use train.precision=no, or check the data")
            step = progress["step"]
            if step % cfg.log_every_steps == 0 or step == total_steps:
                elapsed = time.time() - window_start
                mean_loss = float(accelerator.reduce(running_loss, "mean")) / max(running_batches, 1)
                lr = scheduler.get_last_lr()[0]
                speed = window_samples / max(elapsed, 1e-9)
                record = {"type": "train", "fold": fold, "step": step, "epoch": progress["epoch"],
                          "loss": round(mean_loss, 6), "lr": lr, "grad_norm": round(float(grad_norm), 6),
                          "samples_per_s": round(speed, 2), "nonfinite_total": progress["nonfinite_total"]}
                if accelerator.scaler is not None:
                    record["loss_scale"] = float(accelerator.scaler.get_scale())
                log.write(record)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{speed:.1f}")
                running_loss.zero_()
                running_batches = 0
                window_start, window_samples = time.time(), 0
            if cfg.eval_every_steps and step % cfg.eval_every_steps == 0:
                run_eval()
                save_state(accelerator, fold_dir, model, optimizer, scheduler, progress, cfg.save_total_limit)
            elif cfg.save_every_steps and step % cfg.save_every_steps == 0:
                save_state(accelerator, fold_dir, model, optimizer, scheduler, progress, cfg.save_total_limit)
            if step >= total_steps or progress["stopped_early"]:
                done = True
                break
            if _should_stop(accelerator, stop, started, cfg, step):
                save_state(accelerator, fold_dir, model, optimizer, scheduler, progress, cfg.save_total_limit)
                bar.close()
                return "interrupted" if stop.signal is not None else "max_time"
        else:  # the epoch ran to its end
            progress["epoch"] += 1
            progress["batch_in_epoch"] = 0
            if not cfg.eval_every_steps:
                run_eval()
            save_state(accelerator, fold_dir, model, optimizer, scheduler, progress, cfg.save_total_limit)
            done = progress["step"] >= total_steps or progress["stopped_early"]
            continue
        # the loop ended mid-epoch (step budget or early stop): evaluate the final weights too
        if not cfg.eval_every_steps or progress["step"] % cfg.eval_every_steps:
            if not progress["stopped_early"]:
                run_eval()
        save_state(accelerator, fold_dir, model, optimizer, scheduler, progress, cfg.save_total_limit)
    bar.close()

    # The best model predicts the fold's held-out rows: the out-of-fold probabilities.
    from safetensors.torch import load_file

    accelerator.wait_for_everyone()
    best = load_file(str(fold_dir / "best" / "model.safetensors"))
    accelerator.unwrap_model(model).load_state_dict(best)
    results, probs = evaluate(model, eval_loader, accelerator, eval_labels, loss_fn, problem_type)
    if main:
        ids = np.load(data_dir / eval_split / "ids.npy", mmap_mode="r")[eval_rows]
        with atomic_dir(fold_dir / "oof", replace=True) as tmp:
            np.save(tmp / "probs.npy", probs.astype(np.float32))
            np.save(tmp / "ids.npy", np.asarray(ids))
            np.save(tmp / "rows.npy", np.asarray(eval_rows))
            np.save(tmp / "labels.npy", eval_labels)
        print(f"fold {fold}: best {cfg.metric} {progress['best']:.4f} at step {progress['best_step']}", flush=True)
        print(report(probs, eval_labels, problem_type, head_cfg["label_names"]), flush=True)
        write_json(fold_dir / "done.json", {"fold": fold, "split": eval_split, "best": progress["best"],
                                            "best_step": progress["best_step"], "metrics": results,
                                            "steps": progress["step"], "nonfinite_total": progress["nonfinite_total"],
                                            "stopped_early": progress["stopped_early"]})
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # drops Accelerate's references to this fold's model and optimizer
    return "done"


def rescale_partial_window(accelerator, model, window_rows, cfg):
    """An epoch's last accumulation window can hold fewer rows than batch_size * grad_accum
    (short last batch, fewer micro-batches): scale its gradient to the mean over the rows it
    holds, as one big batch of those rows would give."""
    full = cfg.batch_size * cfg.grad_accum
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


def _should_stop(accelerator, stop, started, cfg, step):
    """A signal or the wall-clock budget; decided together so that every process stops at the same step."""
    if accelerator.num_processes > 1 and step % cfg.log_every_steps:
        return False
    local = stop.signal is not None or (cfg.max_time > 0 and time.time() - started > cfg.max_time)
    if accelerator.num_processes == 1:
        return local
    flag = accelerator.reduce(torch.tensor([int(local)], device=accelerator.device), "sum")
    return bool(flag.item())


# ---------------------------------------------------------------------------- the stage


def run(config):
    """Train every requested fold; return the run folder."""
    started = time.time()
    cfg = config.train
    if cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.epochs <= 0:
        raise UserError("train.batch_size, train.grad_accum and train.epochs must be positive")
    if not config.data.name:
        raise UserError("data.name is not set; pass --config configs/<task>.yaml or data.name=<name>")
    data_dir = resolve_path(config.data.output_dir) / config.data.name
    meta = load_meta(data_dir)
    model_dir = resolve_model_dir(config.model.name, config.model.premodels_dir)
    tokenizer = load_tokenizer(model_dir, config.model.trust_remote_code)
    if vocab_hash(tokenizer) != meta["tokenizer"]["vocab_sha256"]:
        raise UserError(f"{data_dir} was tokenized for '{meta['model_name']}', whose vocabulary differs from "
                        f"model '{config.model.name}'; run data_process.py with model.name={config.model.name}")
    label_names = meta["label_names"]
    problem_type = resolve_problem_type(config.model.problem_type, meta["problem_type"], len(label_names))
    head_cfg = dict(
        head=config.model.head, dropout=config.model.dropout, backbone_dropout=config.model.backbone_dropout,
        multi_sample_dropout=config.model.multi_sample_dropout,
        n_outputs=num_outputs(problem_type, len(label_names)), problem_type=problem_type, label_names=label_names,
        max_len=meta["max_len"], truncation=meta["truncation"], head_tokens=meta["head_tokens"],
        text_columns=meta["text_columns"], text_pair_column=meta["text_pair_column"],
        vocab_sha256=meta["tokenizer"]["vocab_sha256"], data_name=meta["name"],
        data_meta_sha256=sha256_file(data_dir / "meta.json"), model_name=config.model.name,
    )
    check_freeze_layers(model_dir, config.model.freeze_layers, config.model.trust_remote_code)
    plans = fold_plan(meta, cfg, data_dir)
    metrics = available_metrics(problem_type, len(label_names))
    if cfg.metric not in metrics:
        raise UserError(f"train.metric={cfg.metric} is not computed for this problem; choose from "
                        f"{', '.join(sorted(metrics))}")

    # Every process picks the same folder before the main process creates it.
    run_dir, resuming = choose_run_dir(cfg, config.data.name, cfg.resume)
    recorded = None  # the precision a resumed run was started in
    if resuming and (run_dir / "run.json").is_file():
        recorded = read_json(run_dir / "run.json").get("precision", {}).get("precision")
    accelerator, choice = make_accelerator(config, recorded)
    main = accelerator.is_main_process
    accelerator.wait_for_everyone()
    if main:
        if resuming:
            print(f"train: resuming run {run_dir}", flush=True)
            if recorded and choice.precision != recorded:
                print(f"train: this run was trained in {recorded} and continues in {choice.precision} "
                      f"(train.precision={cfg.precision}): the continuation is not bit-exact", flush=True)
        else:
            if run_dir.exists() and cfg.overwrite:
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            atomic_write_text(run_dir / "config.yaml", config.to_yaml())
            write_json(run_dir / "run.json", dict(
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                data_dir=str(data_dir), data_meta_sha256=head_cfg["data_meta_sha256"], model_dir=str(model_dir),
                label_names=label_names, problem_type=problem_type, folds=[p[0] for p in plans],
                fold_mode=meta["folds"]["mode"], precision=choice.record()))
            print(f"train: run folder {run_dir}", flush=True)
    accelerator.wait_for_everyone()
    if accelerator.log_with:
        accelerator.init_trackers(run_dir.name, config={k: v for k, v in config.train.__dict__.items()
                                                        if isinstance(v, (int, float, str, bool))})
    log = Log(accelerator, run_dir)
    stop = StopRequest()
    stop.install()

    for plan in plans:
        fold_dir = run_dir / f"fold{plan[0]}"
        if (fold_dir / "done.json").is_file():
            if main:
                print(f"fold {plan[0]}: already finished, skipped", flush=True)
            continue
        outcome = train_fold(accelerator, config, meta, data_dir, model_dir, tokenizer, run_dir, plan, head_cfg,
                             log, stop, started, choice)
        if outcome != "done":
            if main:
                why = "a stop signal" if outcome == "interrupted" else f"train.max_time={cfg.max_time:g}s"
                print(f"train: stopped by {why}; state saved. Continue with: python train.py --config "
                      f"{config.config_file or '<config>'} train.resume={run_dir}", flush=True)
            accelerator.end_training()
            if outcome == "interrupted":
                raise SystemExit(128 + int(stop.signal))
            return run_dir
    if main:
        _write_oof(run_dir, plans, meta, problem_type)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir


def _write_oof(run_dir, plans, meta, problem_type):
    """All folds' held-out probabilities in one place, keyed by row id, and the CV score."""
    probs, ids, rows, labels, folds = [], [], [], [], []
    for fold, *_ in plans:
        oof = run_dir / f"fold{fold}" / "oof"
        probs.append(np.load(oof / "probs.npy"))
        ids.append(np.load(oof / "ids.npy"))
        rows.append(np.load(oof / "rows.npy"))
        labels.append(np.load(oof / "labels.npy"))
        folds.append(np.full(len(ids[-1]), fold, dtype=np.int16))
    probs, ids, rows, labels, folds = map(np.concatenate, (probs, ids, rows, labels, folds))
    order = np.argsort(rows, kind="stable")
    with atomic_dir(run_dir / "oof", replace=True) as tmp:
        np.save(tmp / "probs.npy", probs[order])
        np.save(tmp / "ids.npy", ids[order])
        np.save(tmp / "labels.npy", labels[order])
        np.save(tmp / "folds.npy", folds[order])
        score = compute(probs, labels, problem_type)
        write_json(tmp / "metrics.json", {"split": plans[0][2], "folds": [p[0] for p in plans], **score})
    print("train: out-of-fold " + " ".join(f"{k} {v:.4f}" for k, v in score.items()) + f" -> {run_dir / 'oof'}",
          flush=True)
