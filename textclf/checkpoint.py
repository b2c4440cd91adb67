"""What a training run writes, and reads back to resume. Layout of checkpoints/<run>/:

    config.yaml, run.json             the resolved config; what the run was made from (data, model,
                                      labels, folds, precision)
    metrics.jsonl, metrics.csv        every log record; the evaluations as a table
    fold<k>/best/                     the best weights so far (safetensors), backbone config, tokenizer,
                                      head.json (model.ModelSpec), metrics.json: what evaluate.py needs
    fold<k>/last-<step>/              resumable state: weights, optimizer, scheduler, loss scaler, RNG
                                      streams, and state.json (TrainState); train.save_total_limit kept
                                      while the fold trains, dropped when it is done (train.keep_state)
    fold<k>/oof/                      the best model's probabilities on the fold's held-out rows
    fold<k>/done.json                 written when the fold is finished
    oof/                              every fold's held-out probabilities, keyed by row id, and the CV score

Every folder is written under a temporary name and renamed into place (fileio.atomic_dir): a
process killed mid-write leaves the previous state intact.
"""

import contextlib
import dataclasses
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from . import averaging, lora
from .config import resolve_path
from .errors import UserError
from .fileio import atomic_dir, atomic_write_text, folder_bytes, load_json, next_version, versions, write_json
from .metrics import write_metrics
from .model import load_into, save_classifier


@dataclasses.dataclass
class TrainState:
    """Where one fold's training stands: the schema of last-<step>/state.json."""

    fold: int
    epoch: int = 0  # epochs finished
    batch_in_epoch: int = 0  # batches of the current epoch already trained on
    step: int = 0  # optimizer steps taken
    samples: int = 0  # training rows seen, over all processes
    best: float | None = None  # the best value of train.metric so far ...
    best_step: int | None = None  # ... and the step it was reached at
    bad_evals: int = 0  # evaluations in a row without improvement (early stopping)
    nonfinite_in_row: int = 0  # optimizer steps in a row skipped for a non-finite gradient
    nonfinite_total: int = 0
    stopped_early: bool = False
    processes: int = 1  # batch_in_epoch counts each process's batches: a resume needs as many processes
    seconds: float = 0.0  # wall time spent training this fold, over every session

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc, where):
        kinds = {"best": (int, float, type(None)), "best_step": (int, type(None)), "stopped_early": bool,
                 "seconds": (int, float)}
        fields = [f.name for f in dataclasses.fields(cls)]
        wrong = [k for k in doc if k not in fields or not isinstance(doc[k], kinds.get(k, int))
                 or (kinds.get(k, int) is int and isinstance(doc[k], bool))]
        if wrong or "fold" not in doc:
            raise UserError(f"{where} is not a textclf training state ({', '.join(wrong) or 'no fold'}); delete its "
                            f"folder to resume from an earlier state")
        return cls(**doc)


# ---------------------------------------------------------------------------- the run folder


RUN_KEYS = {"data_dir": str, "data_meta_sha256": str, "label_names": list, "problem_type": str, "folds": list}


def load_run_json(run_dir):
    """run.json of a training run, checked."""
    return load_json(run_dir / "run.json", "a textclf run.json", f"{run_dir} is damaged or not a run; train again "
                     f"under another train.run, or pass the right run folder", RUN_KEYS)


def choose_run_dir(train_cfg, data_name, resume):
    """(checkpoints/<run>, resuming). An existing run gets a new version folder (<run>-v2, ...)
    unless it is resumed; train.resume=auto takes the newest version, a path takes that run."""
    base = resolve_path(train_cfg.output_dir)
    if base.exists() and not base.is_dir():
        raise UserError(f"train.output_dir={train_cfg.output_dir} is a file, not a folder; pass the folder that holds "
                        f"the runs (e.g. checkpoints)")
    name = train_cfg.run or data_name
    runs = [p for _, p in versions(base, name) if p.is_dir()]
    if resume == "auto":
        return (runs[-1] if runs else base / name), bool(runs)
    if resume:
        path = resolve_path(resume)
        run = next((p for p in [path, *path.parents] if (p / "run.json").is_file()), None)
        if run is None:
            raise UserError(f"train.resume={resume} is not inside a run folder (no run.json found); "
                            f"pass checkpoints/<run>, one of its last-<step> folders, or train.resume=auto")
        return run, True
    if not runs or train_cfg.overwrite:
        return base / name, False
    return next_version(base, name), False


def check_resume_path(resume, run_dir, folds):
    """train.resume names the run, or one fold's last-<step> state: anything else inside the run
    (a fold folder, best/, a file) is refused now, not when training reaches that fold."""
    if not resume or resume == "auto":
        return
    try:
        parts = resolve_path(resume).resolve().relative_to(run_dir.resolve()).parts
    except ValueError:
        return
    if not parts:
        return
    trained = [f"fold{fold}" for fold in folds]
    if len(parts) != 2 or parts[0] not in trained or not parts[1].startswith("last-"):
        raise UserError(f"train.resume={resume}: name the run ({run_dir}) or a state of one of its trained folds "
                        f"({run_dir}/fold<k>/last-<step>, k in {', '.join(str(f) for f in folds)})")
    named_state(run_dir / parts[0], resume)


def named_state(fold_dir, resume):
    """The last-<step> folder of this fold that train.resume names, if it names one."""
    if not resume or resume == "auto":
        return None
    named = resolve_path(resume).resolve()
    if named.parent != fold_dir.resolve() or not named.name.startswith("last-"):
        return None
    if not (named / "state.json").is_file():
        states = sorted(p.name for p in fold_dir.glob("last-*") if (p / "state.json").is_file())
        what = "no such folder" if not named.exists() else "no resumable state there (state.json missing)"
        have = f"{fold_dir.name} has {', '.join(states)}" if states else f"{fold_dir.name} has no saved state"
        raise UserError(f"train.resume={resume}: {what}; {have}: name one of those, or use train.resume="
                        f"{fold_dir.parent}")
    return named


def resume_state_dir(fold_dir, resume):
    """The last-<step> folder to resume a fold from: the one train.resume names, when it names one
    of this fold's, else the newest; None for a fold that never saved one."""
    named = named_state(fold_dir, resume)
    if named is not None:
        return named
    states = sorted(fold_dir.glob("last-*")) if fold_dir.is_dir() else []
    return states[-1] if states else None


# ---------------------------------------------------------------------------- resumable state


def sharding(accelerator):
    """"fsdp" or "deepspeed" where each process holds its own part of the optimizer state, else None."""
    from accelerate.utils import DistributedType

    return {DistributedType.FSDP: "fsdp", DistributedType.DEEPSPEED: "deepspeed"}.get(accelerator.distributed_type)


@contextlib.contextmanager
def shared_atomic_dir(accelerator, final_path):
    """atomic_dir for a folder that every process writes into: the main process makes the temporary
    folder, hands its name to the others, and renames it into place once all of them are done."""
    if accelerator.num_processes == 1:
        with atomic_dir(final_path, replace=True) as tmp:
            yield tmp
        return
    from accelerate.utils import broadcast_object_list

    if accelerator.is_main_process:
        with atomic_dir(final_path, replace=True) as tmp:
            broadcast_object_list([str(tmp)])
            yield tmp
            accelerator.wait_for_everyone()  # every process has written its part
    else:
        box = [None]
        broadcast_object_list(box)
        yield Path(box[0])
        accelerator.wait_for_everyone()


def save_state(accelerator, fold_dir, model, optimizer, scheduler, state, keep, average=None):
    """Write fold<k>/last-<step>/ (atomically; every process takes part) and keep the newest `keep`.
    Under FSDP the optimizer state is gathered from every process's shard (Accelerate's FSDP state
    API); under DeepSpeed each process writes its own shard (the engine's checkpoint API)."""
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
    sharded = sharding(accelerator)
    with shared_atomic_dir(accelerator, fold_dir / f"last-{state.step:08d}") as tmp:
        if sharded == "fsdp":
            from accelerate.utils import save_fsdp_optimizer

            save_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(tmp))
        elif sharded == "deepspeed":
            model.save_checkpoint(str(tmp / "deepspeed"))
        if accelerator.is_main_process:
            # LoRA: the adapters and head; the frozen base is reloaded from its folder
            full_state = lora.saved_state(accelerator.unwrap_model(model), full_state)
            weights = {k: v.detach().cpu().contiguous() for k, v in full_state.items()}
            save_file(weights, str(tmp / "model.safetensors"))
            if sharded is None:
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if accelerator.scaler is not None:
                torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
            torch.save(all_rng, tmp / "rng.pt")
            if average is not None:  # train.ema_decay / swa_last: the weight average so far
                averaging.save(average, tmp)
            write_json(tmp / "state.json", state.to_json())
    if accelerator.is_main_process:
        for old in sorted(fold_dir.glob("last-*"))[:-max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_pt(path):
    """torch.load with weights_only=True: plain tensors and containers, never pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types; the message says which
        raise UserError(f"{path} cannot be loaded safely ({type(err).__name__}); it is corrupted or holds "
                        f"more than plain tensors; delete this state folder to resume from an earlier one") from None


def load_state(accelerator, state_dir, model, optimizer, scheduler, average=None):
    """Restore a last-<step>/ folder into the prepared objects (and the weight average, when the
    run keeps one); returns its TrainState."""
    from safetensors.torch import load_file

    try:
        weights = load_file(str(state_dir / "model.safetensors"))
    except Exception as err:
        raise UserError(f"{state_dir / 'model.safetensors'} is corrupted ({err}); delete {state_dir} to resume "
                        f"from an earlier state") from None
    doc = load_json(state_dir / "state.json", "a training state", f"delete {state_dir} to resume from an earlier state")
    state = TrainState.from_json(doc, state_dir / "state.json")
    if state.processes != accelerator.num_processes:
        raise UserError(f"{state_dir} was saved by {state.processes} process(es) and this run has "
                        f"{accelerator.num_processes}; resume with as many (accelerate launch --num_processes "
                        f"{state.processes}), or start a new run")
    sharded = sharding(accelerator)
    try:
        if sharded == "deepspeed":  # the engine reads its own weight and optimizer shards (see save_state)
            model.load_checkpoint(str(state_dir / "deepspeed"), load_optimizer_states=True,
                                  load_lr_scheduler_states=False)
        else:
            load_weights(accelerator, model, weights)
        if sharded == "fsdp":
            from accelerate.utils import load_fsdp_optimizer

            load_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(state_dir))
        elif sharded is None:
            optimizer.load_state_dict(load_pt(state_dir / "optimizer.pt"))
        scheduler.load_state_dict(load_pt(state_dir / "scheduler.pt"))
    except (RuntimeError, ValueError, KeyError) as err:
        raise UserError(f"{state_dir} does not fit this model or optimizer ({str(err).splitlines()[0][:120]}); "
                        f"resume with the settings the run was started with, or start a new run") from None
    if average is not None:
        averaging.load(average, state_dir)
    if accelerator.scaler is not None and (state_dir / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(load_pt(state_dir / "scaler.pt"))
    all_rng = load_pt(state_dir / "rng.pt")
    rng = all_rng[accelerator.process_index % len(all_rng)]
    torch.set_rng_state(rng["torch"])
    random.setstate((rng["python_version"], tuple(rng["python"]), rng["python_gauss"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state


def load_weights(accelerator, model, weights):
    """Load a full state dict (every tensor whole) into the prepared model, on every process. FSDP
    shards the parameters, so the load goes through FSDP's full-state-dict API there."""
    if sharding(accelerator) != "fsdp":
        unwrapped = accelerator.unwrap_model(model)
        if getattr(unwrapped, "lora", None):  # the adapters and head; the base weights are in place
            load_into(unwrapped, weights, "the checkpoint")
        else:
            unwrapped.load_state_dict(weights)
        return
    if accelerator.state.fsdp_plugin.fsdp_version == 2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
        return
    from torch.distributed.fsdp import FullyShardedDataParallel, StateDictType

    with FullyShardedDataParallel.state_dict_type(model, StateDictType.FULL_STATE_DICT):
        model.load_state_dict(weights)


def save_best(accelerator, fold_dir, model, spec, tokenizer, metrics, config_yaml):
    """fold<k>/best/: the weights of this evaluation, replacing the previous best atomically."""
    state_dict = accelerator.get_state_dict(model)  # every process: FSDP/ZeRO-3 gather here
    if accelerator.is_main_process:
        with atomic_dir(fold_dir / "best", replace=True) as tmp:
            save_classifier(accelerator.unwrap_model(model), tmp, spec, tokenizer, state_dict)
            write_json(tmp / "metrics.json", metrics)
            atomic_write_text(tmp / "config.yaml", config_yaml)
    accelerator.wait_for_everyone()


def set_temperature(run_dir, folds, temperature):
    """Each fold's best/head.json takes the run's fitted temperature (calibration.py): the model
    divides its logits by it from then on, wherever it is loaded or exported (its config.json, which
    Hugging Face loads with remote code, too)."""
    for fold in folds:
        best = run_dir / f"fold{fold}" / "best"
        doc = load_json(best / "head.json", "a textclf head.json", "train the fold again")
        if doc.get("head", {}).get("temperature", 1.0) == temperature:
            continue
        doc["head"]["temperature"] = temperature
        write_json(best / "head.json", doc)
        if (best / "config.json").is_file():
            hf = load_json(best / "config.json", "a best/ folder's config.json", "train the fold again")
            if hf.get("model_type") == "textclf":
                hf["calibration_temperature"] = temperature
                write_json(best / "config.json", hf)


def drop_states(fold_dir):
    """A finished fold's resumable states (last-<step>/, and temporaries a kill left): removed, since
    best/, oof/ and done.json are all a finished fold needs. Returns the bytes freed."""
    freed = 0
    for path in [*fold_dir.glob("last-*"), *fold_dir.glob(".last-*.tmp-*")]:
        freed += folder_bytes(path)
        shutil.rmtree(path, ignore_errors=True)
    return freed


def footprint(run_dir):
    """A run folder's disk use: {"bytes": all of it, "best_bytes": the folds' best/ folders,
    "state_bytes": resumable states}."""
    best = sum(folder_bytes(p) for p in run_dir.glob("fold*/best"))
    states = sum(folder_bytes(p) for p in run_dir.glob("fold*/last-*"))
    return {"bytes": folder_bytes(run_dir), "best_bytes": best, "state_bytes": states}


# ---------------------------------------------------------------------------- out-of-fold rows


def write_fold_oof(fold_dir, probs, ids, rows, labels):
    with atomic_dir(fold_dir / "oof", replace=True) as tmp:
        np.save(tmp / "probs.npy", probs.astype(np.float32))
        np.save(tmp / "ids.npy", np.asarray(ids))
        np.save(tmp / "rows.npy", np.asarray(rows))
        np.save(tmp / "labels.npy", labels)


def merge_oof(run_dir, folds, eval_split, problem, label_names):
    """Every fold's held-out probabilities in one place (oof/), in row order, the CV score, and the
    per-class report and confusion figures of the out-of-fold rows."""
    parts = {name: [] for name in ("probs", "ids", "rows", "labels")}
    fold_of = []
    for fold in folds:
        for name in parts:
            parts[name].append(np.load(run_dir / f"fold{fold}" / "oof" / f"{name}.npy"))
        fold_of.append(np.full(len(parts["ids"][-1]), fold, dtype=np.int16))
    probs, ids, rows, labels = (np.concatenate(parts[name]) for name in ("probs", "ids", "rows", "labels"))
    order = np.argsort(rows, kind="stable")
    with atomic_dir(run_dir / "oof", replace=True) as tmp:
        np.save(tmp / "probs.npy", probs[order])
        np.save(tmp / "ids.npy", ids[order])
        np.save(tmp / "labels.npy", labels[order])
        np.save(tmp / "folds.npy", np.concatenate(fold_of)[order])
        score = write_metrics(tmp, probs[order], labels[order], problem, label_names, "out-of-fold", quiet=True,
                              extra={"split": eval_split, "folds": list(folds)})
    return score


# ---------------------------------------------------------------------------- the metrics log


def read_log(path, repair=False):
    """The records of a metrics.jsonl. A process killed while appending leaves a torn last line:
    it is skipped, and with repair=True cut off, so that the next record starts on a line of its own."""
    data = path.read_bytes()
    if repair and data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(cut)
        data = data[:cut]
    records = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn line
        if isinstance(record, dict):
            records.append(record)
    return records


class Log:
    """metrics.jsonl (every record) and metrics.csv (evaluations), written by the main process;
    scalars also go to the tracker (TensorBoard) when one is set up."""

    def __init__(self, accelerator, run_dir, start_trackers=None):
        self.accelerator = accelerator
        self.start_trackers = start_trackers  # called before the first record reaches the trackers
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        self.eval_rows = []  # a resumed run continues the table it wrote before
        if accelerator.is_main_process and self.jsonl.is_file():
            self.eval_rows = [r for r in read_log(self.jsonl, repair=True) if r.get("type") == "eval"]

    def write(self, record):
        if not self.accelerator.is_main_process:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.jsonl, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if record.get("type") == "eval":
            self.eval_rows.append(record)
            keys = list(dict.fromkeys(k for r in self.eval_rows for k in r))
            lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in self.eval_rows]
            atomic_write_text(self.csv, "\n".join(lines) + "\n")
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("time", "step", "fold")}
        if self.start_trackers is not None and self.accelerator.log_with:
            self.start_trackers()
            self.start_trackers = None
        if self.accelerator.trackers:
            self.accelerator.log({f"fold{record.get('fold', 0)}/{record.get('type', 'train')}/{k}": v
                                  for k, v in scalars.items()}, step=record.get("step"))
