"""The optimizer and the learning-rate schedule.

AdamW with no weight decay on 1-D parameters (biases, norms), a head LR, and optional layer-wise
LR decay down the backbone: the top layer gets train.lr, each layer below it lr * decay^depth,
the embeddings lr * decay^n_layers. Layers are found by name (model.layer_index), so encoders
(`encoder.layer.N`, `transformer.layer.N`) and decoders (`layers.N`, `h.N`, `blocks.N`) both work.
"""

import torch

from .model import layer_index, num_layers


def layer_depth(name, n_layers):
    """How far below the top layer a backbone parameter sits: 0 for the top layer and what sits
    above it (final norm, pooler), n_layers for the embeddings."""
    index = layer_index(name)
    if index is None:
        return 0
    return n_layers if index < 0 else n_layers - 1 - index


def make_optimizer(model, train_cfg):
    """AdamW over the trainable parameters, one group per (LR, weight decay) pair. Frozen
    parameters are left out. Fused where the device has it."""
    n_layers = num_layers(model)
    head_lr = train_cfg.head_lr if train_cfg.head_lr is not None else train_cfg.lr
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("backbone."):
            lr = train_cfg.lr * train_cfg.layer_lr_decay ** layer_depth(name[len("backbone."):], n_layers)
        else:
            lr = head_lr
        decay = 0.0 if param.ndim < 2 else train_cfg.weight_decay
        groups.setdefault((lr, decay), []).append(param)
    param_groups = [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()]
    kwargs = dict(betas=tuple(train_cfg.betas), eps=train_cfg.adam_eps)
    try:
        return torch.optim.AdamW(param_groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups, foreach=True, **kwargs)


def describe(optimizer):
    """For the run banner: how many LR groups, and the peak LRs they span (a scheduler with warmup
    has already set the current LR to its start, 0)."""
    lrs = sorted({group.get("initial_lr", group["lr"]) for group in optimizer.param_groups})
    span = f"{lrs[0]:.2e}" if len(lrs) == 1 else f"{lrs[0]:.2e}..{lrs[-1]:.2e}"
    return f"{len(optimizer.param_groups)} parameter groups, {len(lrs)} peak LR(s) {span}"


def make_scheduler(optimizer, train_cfg, total_steps):
    """The LR schedule over `total_steps` optimizer steps, warmup first (a ratio below 1, else steps)."""
    from transformers import get_constant_schedule_with_warmup, get_scheduler

    warmup = train_cfg.warmup
    warmup = int(round(warmup * total_steps)) if warmup < 1 else int(warmup)
    warmup = min(warmup, max(total_steps - 1, 0))
    if train_cfg.scheduler == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    if train_cfg.scheduler == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        # OneCycleLR's last phase ends at total_steps - 1 and the loop calls step() total_steps
        # times: one extra step of room lands the final LR on the minimum, not past it.
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total_steps, 1) + 1,
                                                   pct_start=max(warmup, 1) / max(total_steps, 1),
                                                   anneal_strategy="cos", cycle_momentum=False)
    return get_scheduler(train_cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
