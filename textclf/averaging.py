"""Weight averaging: an EMA of the weights, or SWA over the last evaluations (train.ema_decay,
train.swa_last). Both keep a second copy of the model (torch.optim.swa_utils.AveragedModel):

    EMA   after every optimizer step that updates the weights: ema = decay * ema + (1 - decay) * w,
          starting from the weights after the first step. Every evaluation scores the EMA weights,
          and best/ holds them: the raw weights are never evaluated.
    SWA   the plain mean of the weights at the last k evaluations of the fold's planned schedule
          (one per epoch unless train.eval_every_steps is set). After the last evaluation the
          average is scored too, and becomes best/ when it beats the best single evaluation.

Only parameters are averaged; buffers follow the model (transformer encoders have no running
statistics, so there is no batch-norm pass to redo). The average is saved with every resumable
state (last-<step>/average.safetensors), so a resumed run continues it bit for bit.

The training loop calls it at two points, one line each: `after_step` (EMA follows the weights)
and `after_eval` (SWA takes the evaluated weights in; after its last, the mean is scored too);
`scored` says which weights an evaluation scores and best/ keeps.
"""

import dataclasses
import math

import torch

from .errors import UserError

FILE = "average.safetensors"


@dataclasses.dataclass
class Average:
    """A fold's weight average: "ema" or "swa", the torch AveragedModel, the model whose weights it
    follows, and (SWA) the evaluation steps whose weights it averages."""

    kind: str
    model: torch.nn.Module  # torch.optim.swa_utils.AveragedModel
    source: torch.nn.Module  # the trained model, unwrapped from DDP
    swa_steps: frozenset = frozenset()


def make_average(model, train_cfg, total_steps, steps_per_epoch):
    """The Average of `model` (unwrapped) for train.ema_decay / train.swa_last, or None when both are off."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    if train_cfg.ema_decay:
        return Average("ema", AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(train_cfg.ema_decay)), model)
    if train_cfg.swa_last:  # the default multi_avg_fn: a running equal-weight mean
        return Average("swa", AveragedModel(model), model,
                       frozenset(swa_steps(train_cfg, total_steps, steps_per_epoch)))
    return None


def after_step(average, state):
    """After an optimizer step: the EMA follows the weights, when the step moved them (a skipped
    non-finite step did not)."""
    if average is not None and average.kind == "ema" and state.nonfinite_in_row == 0:
        average.model.update_parameters(average.source)


def scored(average, model):
    """The weights an evaluation scores and best/ keeps, and what best/metrics.json calls them: the
    EMA's with train.ema_decay, else the model's own."""
    if average is not None and average.kind == "ema":
        return average.model.module, "ema"
    return model, None


def after_eval(average, step, total_steps):
    """After an evaluation: SWA takes these weights in when the step is one of its evaluations;
    after the last one, returns the mean, to be scored as a candidate for best/ (else None)."""
    if average is None or step not in average.swa_steps:
        return None
    average.model.update_parameters(average.source)
    return average.model.module if step >= total_steps else None


def planned_evaluations(total_steps, steps_per_epoch, eval_every_steps):
    """The steps the fold evaluates at when it runs to the end: every eval_every_steps (else each
    epoch's end), and the last step."""
    every = eval_every_steps or steps_per_epoch
    steps = set(range(every, total_steps + 1, every)) | {total_steps}
    return sorted(steps)


def swa_steps(train_cfg, total_steps, steps_per_epoch):
    """The evaluation steps whose weights SWA averages: the last train.swa_last of the schedule."""
    planned = planned_evaluations(total_steps, steps_per_epoch, train_cfg.eval_every_steps)
    return set(planned[-train_cfg.swa_last:])


def check(train_cfg):
    """Settings that do not go with weight averaging, refused before anything is written."""
    if train_cfg.ema_decay and train_cfg.swa_last:
        raise UserError("train.ema_decay and train.swa_last are both set; average the weights one way: set one to 0")
    if train_cfg.swa_last and train_cfg.patience:
        raise UserError("train.swa_last averages the last evaluations of the planned schedule, which early stopping "
                        "cuts short; set train.patience=0 with SWA")


def check_sharded(train_cfg, distributed_type):
    """Weight averaging under FSDP / DeepSpeed (each process holds a shard of the weights)."""
    if (train_cfg.ema_decay or train_cfg.swa_last) and distributed_type in ("fsdp", "deepspeed"):
        raise UserError(f"train.ema_decay / train.swa_last keep a full copy of the weights, which {distributed_type} "
                        f"shards across processes; train without them, or with DDP (accelerate launch --multi_gpu)")


def save(average, folder):
    """The average beside a resumable state."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in average.model.state_dict().items()}
    save_file(state, str(folder / FILE))


def load(average, folder):
    """Restore the average saved beside a resumable state."""
    from safetensors.torch import load_file

    path = folder / FILE
    if not path.is_file():
        raise UserError(f"{folder} holds no weight average ({FILE}), but this run averages weights; resume from "
                        f"a state saved with train.ema_decay / train.swa_last, or start a new run")
    try:
        average.model.load_state_dict(load_file(str(path)))
    except Exception as err:  # a truncated file, or one of another model
        raise UserError(f"{path} cannot be loaded ({type(err).__name__}); delete {folder} to resume from an "
                        f"earlier state") from None


def describe(train_cfg):
    if train_cfg.ema_decay:
        half_life = math.log(0.5) / math.log(train_cfg.ema_decay) if train_cfg.ema_decay < 1 else math.inf
        return f"EMA of the weights (decay {train_cfg.ema_decay:g}, half-life {half_life:.0f} steps)"
    if train_cfg.swa_last:
        return f"SWA over the last {train_cfg.swa_last} evaluation(s)"
    return None


@torch.no_grad()
def averaged_count(average):
    return int(average.model.n_averaged.item())
