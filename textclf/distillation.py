"""Distillation: a run that learns from a teacher's probabilities as well as from the labels.

    train.teacher=[model_predictions/big]   (a run's prediction set, several (their mean), or one
                                            submissions/<name>.json: that blend, calibrated as it is)
    train.distill_alpha=0.5                 the share of the teacher's (soft) loss; 1 - alpha is the labels'
    train.distill_temperature=2             both sides' logits are divided by it in the soft loss

The loss of a batch (Hinton et al. 2015), with z the student's logits, q the teacher's
probabilities, T the temperature and q_T = softmax(log q / T):

    (1 - alpha) * hard(z, labels) + alpha * T^2 * mean over rows of KL(q_T || softmax(z / T))

(multi-label: each class a two-way softmax, i.e. the binary KL of sigmoid(logit q / T) against
sigmoid(z / T), averaged over classes; binary_bce: the two-class softmax of [0, z]). The hard loss is
the run's own (class weights, label smoothing).

A training row only ever learns from a teacher that never trained on it: its teacher probability
comes from the prediction set's out-of-fold rows (each predicted by the fold model that held it
out) or from its test rows (predicted by models that never saw them). Rows are matched by id; a
training row with neither is refused, before anything is written. Pseudo-labelled rows
(pseudo.py) are matched by the test id they were made from.
"""

import numpy as np
import torch

from .calibration import apply as apply_temperature
from .errors import UserError
from .predsets import blend, check_sets, load_array, normalise, read_blend


def check(train_cfg, data_dir, meta, spec):
    """train.teacher's probability for every row of the train split, (rows, classes) float32 in
    the split's row order, or None without a teacher. Refuses a teacher of other labels, another
    problem type, or one that has no out-of-fold (or unseen test) probability for some row."""
    if not train_cfg.teacher:
        return None
    problem = spec.labels.problem
    if problem.regression:
        raise UserError("train.teacher: distillation learns from class probabilities, and this run is a regression; "
                        "leave train.teacher empty")
    sets, weights, method, source = read_blend(train_cfg.teacher, "train.teacher")
    names, kind = sets[0][1]["label_names"], sets[0][1]["problem_type"]
    if names != spec.labels.names:
        raise UserError(f"train.teacher {sets[0][0]} has labels {names[:6]}, this run's data has "
                        f"{spec.labels.names[:6]}; a teacher must predict the same labels in the same order")
    if (kind == "multi_label") != problem.multi_label:
        raise UserError(f"train.teacher {sets[0][0]} is {kind} and this run is {problem.name}; a teacher must "
                        f"answer the same kind of question")
    if len(sets) > 1:
        check_sets(sets, "test")  # labels, problem type, and the oof and test rows of every set alike
    table = {}
    for split in ("test", "oof"):  # out-of-fold rows win where an id is in both
        if all(split in manifest["splits"] for _, manifest in sets):
            members = [load_array(folder, manifest, split) for folder, manifest in sets]
            probs = normalise(blend(members, weights, method), problem)
            probs = apply_temperature(probs, source.get("temperature", 1.0), problem)
            ids = load_array(*sets[0], split, "ids.npy")  # the same rows in every set: check_sets compared them
            table.update(zip(map(str, ids), probs))
    return aligned(table, data_dir, meta, sets)


def aligned(table, data_dir, meta, sets):
    """The teacher's row for each train-split id (pseudo rows by the test id they came from)."""
    ids = np.load(data_dir / "train" / "ids.npy", allow_pickle=False)
    prefix = (meta.get("pseudo") or {}).get("id_prefix")
    out, missing = [], []
    for row_id in map(str, ids):
        probs = table.get(row_id)
        if probs is None and prefix and row_id.startswith(prefix):
            original = row_id[len(prefix):]
            probs = table.get(original.split(":", 1)[1] if original.startswith("fold") and ":" in original
                              else original)
        if probs is None:
            missing.append(row_id)
        else:
            out.append(probs)
    if missing:
        seen = [f for f, m in sets if "train" in m["splits"]]
        why = (f"; {seen[0]} has them in its 'train' split, but those were predicted by models that trained on them"
               if seen else "")
        raise UserError(f"train.teacher has no out-of-fold probability for {len(missing)} of {len(ids)} training rows "
                        f"(first id: {missing[0]!r}){why}. A row learns only from a teacher that never trained on it: "
                        f"use a prediction set of a K-fold run of this data (its out-of-fold rows), or predictions "
                        f"of rows the teacher never saw")
    return np.asarray(out, dtype=np.float32)


def for_rows(teacher, data_dir, token_rows):
    """The teacher's probabilities for each row of a fold's training dataset (windows take their
    text's), as a tensor indexed like the dataset; None without a teacher."""
    if teacher is None:
        return None
    path = data_dir / "train" / "window_doc.npy"
    text_rows = np.load(path)[token_rows] if path.is_file() else np.asarray(token_rows)
    return torch.from_numpy(teacher[text_rows])


def soft_loss(logits, teacher_probs, temperature, problem):
    """T^2 times the mean KL divergence of the student's tempered distribution from the teacher's."""
    logits = logits.float()
    q = teacher_probs.float().clamp_min(1e-12)
    if problem.multi_label:  # each class: a two-way distribution
        q = q.clamp(1e-12, 1 - 1e-12)
        q_t = torch.sigmoid((q.log() - (1 - q).log()) / temperature)
        log_p = torch.nn.functional.logsigmoid(logits / temperature)
        log_not_p = torch.nn.functional.logsigmoid(-logits / temperature)
        q_t = q_t.clamp(1e-12, 1 - 1e-12)
        kl = q_t * (q_t.log() - log_p) + (1 - q_t) * ((1 - q_t).log() - log_not_p)
        return temperature ** 2 * kl.mean()
    if logits.shape[-1] == 1:  # binary_bce: one logit z, the classes [0, z]
        logits = torch.cat([torch.zeros_like(logits), logits], dim=-1)
    q_t = torch.softmax(q.log() / temperature, dim=-1)
    log_p = torch.log_softmax(logits / temperature, dim=-1)
    kl = (q_t * (q_t.clamp_min(1e-12).log() - log_p)).sum(-1)
    return temperature ** 2 * kl.mean()


def batch_loss(teacher, loss_fn, train_cfg, problem):
    """The fold's training loss of a batch, loss(logits, batch): the run's loss on the labels, and
    with a teacher (1 - alpha) times that plus alpha times the soft loss on the batch's rows."""
    if teacher is None:
        return lambda logits, batch: loss_fn(logits, batch["labels"])
    alpha, temperature = train_cfg.distill_alpha, train_cfg.distill_temperature

    def loss(logits, batch):
        soft = soft_loss(logits, teacher[batch["index"].to(teacher.device)].to(logits.device), temperature, problem)
        return (1 - alpha) * loss_fn(logits, batch["labels"]) + alpha * soft

    return loss


def describe(train_cfg):
    if not train_cfg.teacher:
        return ""
    return (f"distilled from {', '.join(map(str, train_cfg.teacher))} (alpha {train_cfg.distill_alpha:g}, "
            f"temperature {train_cfg.distill_temperature:g})")
