"""Adversarial training (train.adversarial): a second forward and backward on each batch with
the weights pushed along the batch's own gradient, then restored exactly.

    fgm   Fast Gradient Method on the word embeddings: r = eps * g / ||g||, g the gradient of the
          batch's loss on the embedding rows the batch uses (train.adv_eps, default 1.0).
    awp   Adversarial Weight Perturbation on every trained weight matrix and norm weight:
          r = adv_lr * g / ||g|| * ||w||, clipped element-wise to adv_eps * |w| (train.adv_lr,
          default 1.0; train.adv_eps, default 0.01), per parameter tensor.

Both start at train.adv_start_epoch. The gradient the step uses is the clean gradient plus the
adversarial one, each weighted as the loop weights a batch (so a window of k batches sums 2k
gradients). The perturbation direction is the batch's own gradient even inside an accumulation
window: what earlier batches of the window left in .grad is remembered before the clean backward
and subtracted. Under fp16 loss scaling the gradients are scaled, and the direction (g / ||g||)
does not depend on the scale; a gradient that is zero or not finite perturbs nothing (the step is
skipped for a non-finite one anyway). With several processes the clean pass runs without gradient
synchronisation, so each process perturbs along its own batch's gradient and the window's
gradients are reduced once, by the adversarial backward at the window's end.

The training loop calls `backward` in place of its plain forward and backward: the protocol
(remember, clean backward, attack, second backward, restore) is written here, once.
"""

import torch

from .errors import UserError

DEFAULT_EPS = {"fgm": 1.0, "awp": 0.01}


class FGM:
    def __init__(self, model, eps):
        self.weight = model.backbone.get_input_embeddings().weight
        self.eps = eps
        self.rows = self.before = self.backup = None

    def remember(self, batch):
        """Before the clean backward: which rows the batch uses, and their gradient so far."""
        self.rows = torch.unique(batch["input_ids"])
        grad = self.weight.grad
        self.before = None if grad is None else grad[self.rows].clone()

    @torch.no_grad()
    def attack(self):
        """After the clean backward: push the used rows along their gradient from this batch."""
        grad = self.weight.grad[self.rows]
        if self.before is not None:
            grad = grad - self.before
        norm = grad.float().norm()
        # no host sync: a zero or non-finite norm gives a zero step
        scale = torch.where(torch.isfinite(norm) & (norm > 0), self.eps / norm.clamp(min=1e-30), 0.0)
        self.backup = self.weight[self.rows].clone()
        self.weight[self.rows] += (grad.float() * scale).to(self.weight.dtype)

    @torch.no_grad()
    def restore(self):
        self.weight[self.rows] = self.backup
        self.rows = self.before = self.backup = None


class AWP:
    def __init__(self, model, lr, eps):
        self.params = [p for name, p in model.named_parameters() if p.requires_grad and name.endswith("weight")]
        self.lr, self.eps = lr, eps
        self.before = self.backup = None

    def remember(self, batch):
        grads = [p.grad for p in self.params]
        self.before = None if all(g is None for g in grads) else [
            torch.zeros_like(p) if g is None else g.clone() for p, g in zip(self.params, grads)]

    @torch.no_grad()
    def attack(self):
        self.backup = [p.detach().clone() for p in self.params]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self.params]
        if self.before is not None:
            grads = torch._foreach_sub(grads, self.before)
        grad_norms = torch._foreach_norm(grads)
        weight_norms = torch._foreach_norm(self.backup)
        for param, grad, g_norm, w_norm in zip(self.params, grads, grad_norms, weight_norms):
            ok = torch.isfinite(g_norm) & (g_norm > 0)
            scale = torch.where(ok, self.lr * (w_norm + 1e-6) / (g_norm + 1e-6), 0.0)
            step = torch.nan_to_num(grad * scale, nan=0.0, posinf=0.0, neginf=0.0)
            bound = self.eps * param.abs()
            param.add_(torch.maximum(torch.minimum(step, bound), -bound))

    @torch.no_grad()
    def restore(self):
        torch._foreach_copy_(self.params, self.backup)
        self.before = self.backup = None


def backward(adversary, accelerator, model, batch_loss, batch, weight):
    """One batch's clean forward and backward, then a second on the weights pushed along its own
    gradient, then the weights restored exactly. Both gradients are added to .grad, weighted as the
    loop weights a batch (`batch_loss(logits, batch)`: the fold's training loss). Returns the clean loss."""
    # the window's gradients are reduced by the adversarial backward, not by this one
    with accelerator.no_sync(model):
        adversary.remember(batch)
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        loss = batch_loss(logits, batch)
        accelerator.backward(loss * weight)
    adversary.attack()  # the same batch again, on weights pushed along its gradient
    adv_logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    accelerator.backward(batch_loss(adv_logits, batch) * weight)
    adversary.restore()
    return loss


def make_adversary(model, train_cfg):
    """FGM or AWP for train.adversarial on the (unwrapped) model, or None."""
    method = train_cfg.adversarial
    if method == "none":
        return None
    eps = train_cfg.adv_eps if train_cfg.adv_eps is not None else DEFAULT_EPS[method]
    if method == "fgm":
        return FGM(model, eps)
    return AWP(model, train_cfg.adv_lr, eps)


def check(train_cfg, model_cfg):
    """What the adversary cannot do with these model settings, refused before anything is written."""
    if train_cfg.adversarial == "fgm" and model_cfg.lora:
        raise UserError("train.adversarial=fgm perturbs the word embeddings along their gradient, and LoRA keeps the "
                        "base (embeddings included) frozen; use train.adversarial=awp with LoRA")
    if train_cfg.adversarial == "fgm" and (model_cfg.freeze_embeddings or model_cfg.freeze_layers):
        raise UserError("train.adversarial=fgm perturbs the word embeddings along their gradient, and "
                        "model.freeze_embeddings / freeze_layers leave them without one; use awp, or train them")


def check_sharded(train_cfg, sharded):
    """The adversary under FSDP / DeepSpeed (each process holds a shard of the weights)."""
    if train_cfg.adversarial != "none" and sharded is not None:
        raise UserError(f"train.adversarial={train_cfg.adversarial} perturbs whole weight tensors, which {sharded} "
                        f"shards across processes; use DDP (accelerate launch --multi_gpu) or train.adversarial=none")


def describe(train_cfg):
    method = train_cfg.adversarial
    if method == "none":
        return None
    eps = train_cfg.adv_eps if train_cfg.adv_eps is not None else DEFAULT_EPS[method]
    what = f"eps {eps:g}" if method == "fgm" else f"lr {train_cfg.adv_lr:g}, eps {eps:g}"
    start = f" from epoch {train_cfg.adv_start_epoch:g}" if train_cfg.adv_start_epoch else ""
    return f"adversarial {method} ({what}){start}"
