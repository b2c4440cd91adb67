"""The competition toolkit in the training loop: weight averaging (EMA, SWA), adversarial
training (FGM, AWP), the MLP head, gradient checkpointing; each against a hand computation,
and each resumable bit for bit."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_train import make_data, records, strip_time, toy_rows, train
from textclf.adversarial import AWP, FGM
from textclf.model import Classifier, HeadConfig, load_backbone


def states(run, fold=0):
    return sorted((run / f"fold{fold}").glob("last-*"))


def test_ema_weights_equal_a_hand_computed_ema(stage, premodels, tmp_path):
    """Every state keeps the raw weights and their EMA: e_1 = w_1, e_t = d e_(t-1) + (1 - d) w_t;
    evaluations score the EMA, and best/ holds the EMA weights of its step."""
    decay = 0.8
    base = make_data(stage, premodels, tmp_path, toy_rows(40))
    result = train(stage, tmp_path, base, "train.epochs=2", "train.batch_size=8", "train.lr=3e-3",
                   f"train.ema_decay={decay}", "train.save_every_steps=1", "train.save_total_limit=100",
                   "train.keep_state=true")
    assert "EMA of the weights (decay 0.8" in result.out
    run = tmp_path / "ck" / "toy"
    saved = states(run)
    assert [int(p.name[5:]) for p in saved] == list(range(1, 11))  # 36 train rows / 8 = 5 steps an epoch
    ema = None
    for path in saved:
        weights = load_file(str(path / "model.safetensors"))
        average = load_file(str(path / "average.safetensors"))
        ema = dict(weights) if ema is None else {k: decay * ema[k] + (1 - decay) * weights[k] for k in ema}
        assert int(average["n_averaged"]) == int(path.name[5:])
        for name, value in ema.items():
            torch.testing.assert_close(average[f"module.{name}"], value, rtol=0, atol=1e-6)
        assert any(not torch.equal(average[f"module.{k}"], weights[k]) for k in weights if k.startswith("fc.")) \
            or path == saved[0]  # the average is not the raw weights
    best = json.loads((run / "fold0/best/metrics.json").read_text())
    assert best["weights"] == "ema"
    at_best = load_file(str(run / "fold0" / f"last-{best['step']:08d}" / "average.safetensors"))
    for name, value in load_file(str(run / "fold0/best/model.safetensors")).items():
        assert torch.equal(value, at_best[f"module.{name}"])


def test_swa_is_the_mean_of_the_last_evaluations(stage, premodels, tmp_path):
    base = make_data(stage, premodels, tmp_path, toy_rows(40))
    train(stage, tmp_path, base, "train.epochs=4", "train.batch_size=8", "train.lr=3e-3", "train.swa_last=3",
          "train.save_total_limit=100", "train.keep_state=true")
    run = tmp_path / "ck" / "toy"
    by_step = {int(p.name[5:]): p for p in states(run)}
    assert sorted(by_step) == [5, 10, 15, 20]  # saved at each epoch's end, where it evaluates
    averaged = [load_file(str(by_step[s] / "model.safetensors")) for s in (10, 15, 20)]
    final = load_file(str(by_step[20] / "average.safetensors"))
    assert int(final["n_averaged"]) == 3
    assert int(load_file(str(by_step[5] / "average.safetensors"))["n_averaged"]) == 0  # not yet averaging
    for name in averaged[0]:
        torch.testing.assert_close(final[f"module.{name}"], sum(w[name] for w in averaged) / 3, rtol=0, atol=1e-6)
    (swa,) = records(run, "swa")
    evals = records(run, "eval")
    best = json.loads((run / "fold0/best/metrics.json").read_text())
    best_weights = load_file(str(run / "fold0/best/model.safetensors"))
    if swa["accuracy"] > max(e["accuracy"] for e in evals):
        assert best["weights"] == "swa of 3"
        assert all(torch.equal(v, final[f"module.{k}"]) for k, v in best_weights.items())
    else:
        assert "weights" not in best
    assert swa["best"] == max([swa["accuracy"]] + [e["accuracy"] for e in evals])


def tiny_classifier(premodels, **head):
    torch.manual_seed(0)
    backbone = load_backbone(premodels("bert"), backbone_dropout=0.0)
    return Classifier(backbone, HeadConfig(n_outputs=3, dropout=0.0, **head))


def batch(seed, rows=4, length=9, vocab=100):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    ids[0, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.arange(rows) % 3}


def loss_of(model, b):
    return torch.nn.functional.cross_entropy(model(b["input_ids"], b["attention_mask"], b["token_type_ids"]),
                                             b["labels"])


def adversarial_backward(model, adversary, b):
    adversary.remember(b)
    loss_of(model, b).backward()
    adversary.attack()
    moved = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_of(model, b).backward()
    adversary.restore()
    return moved


@pytest.mark.parametrize("method", ["fgm", "awp"])
def test_adversary_restores_the_weights_exactly_and_uses_each_batch_gradient(premodels, method):
    make = (lambda m: FGM(m, 0.5)) if method == "fgm" else (lambda m: AWP(m, 1.0, 0.01))
    model = tiny_classifier(premodels)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    adversary = make(model)
    # two batches accumulated: each batch's perturbation follows its own gradient
    moved = [adversarial_backward(model, adversary, batch(s)) for s in (1, 2)]
    accumulated = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name  # restored bit for bit
    # the perturbation itself: FGM moves the used embedding rows by exactly eps, AWP stays within eps * |w|
    for m in moved:
        delta = {n: m[n] - before[n] for n in before}
        changed = [n for n, d in delta.items() if d.abs().max() > 0]
        if method == "fgm":
            assert changed == ["backbone.embeddings.word_embeddings.weight"]
            assert float(delta[changed[0]].norm()) == pytest.approx(0.5, rel=1e-4)
        else:
            assert "backbone.encoder.layer.0.attention.self.query.weight" in changed and "fc.weight" in changed
            assert not any(n.endswith("bias") for n in changed)
            for n in changed:
                assert bool((delta[n].abs() <= 0.01 * before[n].abs() + 1e-7).all()), n
    # the same two batches, each from zero gradients: the accumulated gradient is their sum
    separate = []
    for s in (1, 2):
        fresh = tiny_classifier(premodels)
        adversarial_backward(fresh, make(fresh), batch(s))
        separate.append({n: p.grad for n, p in fresh.named_parameters() if p.grad is not None})
    for name, grad in accumulated.items():
        torch.testing.assert_close(grad, separate[0][name] + separate[1][name], rtol=1e-5, atol=1e-7)


def test_fgm_changes_the_gradient_and_awp_starts_at_its_epoch(stage, premodels, tmp_path):
    base = make_data(stage, premodels, tmp_path, toy_rows(40))
    common = ["train.epochs=2", "train.batch_size=4", "train.grad_accum=2", "train.lr=1e-3",
              "model.backbone_dropout=0", "model.dropout=0"]  # the adversarial pass draws no dropout masks
    train(stage, tmp_path, base, *common, out="plain")
    fgm = train(stage, tmp_path, base, *common, "train.adversarial=fgm", out="fgm")
    assert "adversarial fgm (eps 1)" in fgm.out
    awp = train(stage, tmp_path, base, *common, "train.adversarial=awp", "train.adv_start_epoch=1", out="awp")
    assert "adversarial awp (lr 1, eps 0.01) from epoch 1" in awp.out
    plain, fgm, awp = (records(tmp_path / o / "toy", "train") for o in ("plain", "fgm", "awp"))
    assert plain[0]["loss"] == fgm[0]["loss"]  # the logged loss is the clean one, before any step
    assert plain[0]["grad_norm"] != fgm[0]["grad_norm"]  # the adversarial gradient is added
    per_epoch = 5  # 36 rows / 4 = 9 batches -> 5 windows of 2 (the last one short)
    assert [r["grad_norm"] for r in awp[:per_epoch]] == [r["grad_norm"] for r in plain[:per_epoch]]
    assert awp[per_epoch]["grad_norm"] != plain[per_epoch]["grad_norm"]


@pytest.mark.parametrize("option", [  # every option, three to a run (each run's kill and resume costs ~5 s)
    ["train.ema_decay=0.9", "train.adversarial=fgm", "train.grad_accum=2", "model.mlp_hidden=16"],
    ["train.swa_last=2", "train.adversarial=awp", "train.gradient_checkpointing=true"],
], ids=["ema-fgm-mlp", "swa-awp-checkpointing"])
def test_resume_is_bit_exact_with_every_option(stage, premodels, tmp_path, option):
    base = make_data(stage, premodels, tmp_path, toy_rows(40))
    args = ["train.epochs=2", "train.batch_size=8", "train.lr=1e-3", *option]
    train(stage, tmp_path, base, *args, out="straight")
    train(stage, tmp_path, base, *args, "train.max_time=0.000001", out="stopped")
    run = tmp_path / "stopped" / "toy"
    assert [p.name for p in states(run)] == ["last-00000001"]
    second = train(stage, tmp_path, base, *args, "train.resume=auto", out="stopped")
    assert "resuming from last-00000001" in second.out
    straight = tmp_path / "straight" / "toy"
    assert strip_time(records(run, "eval")) == strip_time(records(straight, "eval"))
    assert strip_time(records(run, "swa")) == strip_time(records(straight, "swa"))
    assert (run / "fold0/best/model.safetensors").read_bytes() == (straight / "fold0/best/model.safetensors").read_bytes()
    assert np.array_equal(np.load(run / "oof/probs.npy"), np.load(straight / "oof/probs.npy"))


def test_gradient_checkpointing_computes_the_same_steps(stage, premodels, tmp_path):
    base = make_data(stage, premodels, tmp_path, toy_rows(40))
    args = ["train.epochs=1", "train.batch_size=8", "train.lr=1e-3"]
    train(stage, tmp_path, base, *args, out="plain")
    result = train(stage, tmp_path, base, *args, "train.gradient_checkpointing=true", out="ckpt")
    assert "gradient checkpointing" in result.out
    plain, ckpt = (records(tmp_path / o / "toy", "train") for o in ("plain", "ckpt"))
    for a, b in zip(plain, ckpt, strict=True):  # recomputed activations, dropout replayed from its RNG state
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_mlp_head_is_saved_loaded_and_exported(stage, premodels, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from textclf.predict import Predictor

    base = make_data(stage, premodels, tmp_path, toy_rows(40))
    train(stage, tmp_path, base, "train.epochs=1", "train.batch_size=8", "model.mlp_hidden=24", "model.head=mean")
    best = tmp_path / "ck" / "toy" / "fold0" / "best"
    weights = load_file(str(best / "model.safetensors"))
    assert weights["mlp.0.weight"].shape == (24, 32) and weights["fc.weight"].shape == (2, 24)
    predictor = Predictor.from_run(tmp_path / "ck" / "toy", precision="no")  # auto is bf16 on an AMX CPU
    texts = ["the movie was great fun", "boring and bad, the worst"]
    probs = predictor.predict(texts)["probs"]
    hf = AutoModelForSequenceClassification.from_pretrained(str(best), trust_remote_code=True).eval()
    enc = AutoTokenizer.from_pretrained(str(best))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hf_probs = hf(**enc).logits.softmax(-1).numpy()
    np.testing.assert_allclose(hf_probs, probs, atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["train.ema_decay=0.99", "train.swa_last=2"], "average the weights one way"),
    (["train.swa_last=2", "train.patience=2"], "set train.patience=0 with SWA"),
    (["train.adversarial=fgm", "model.freeze_embeddings=true"], "use awp, or train them"),
    (["model.mlp_hidden=8", "model.head=fusion"], "fusion has two linear layers"),
    (["train.ema_decay=1"], "a decay below 1"),
    (["train.adversarial=fgsm"], "did you mean 'fgm'"),
    (["train.adv_eps=0"], "must be a positive number"),
])
def test_toolkit_settings_that_cannot_work_are_refused(stage, premodels, tmp_path, args, message):
    base = make_data(stage, premodels, tmp_path, toy_rows(16))
    result = stage("train", *base, f"train.output_dir={tmp_path / 'ck'}", *args)
    assert result.code == 2 and message in result.err, result
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "ck").exists()


def test_gradient_checkpointing_keeps_fewer_activations(premodels):
    """What train.gradient_checkpointing switches on: the layers' activations are recomputed in
    backward instead of saved (counted through autograd's saved-tensor hooks)."""
    saved = {}
    for on in (False, True):
        model = tiny_classifier(premodels)
        if on:
            model.backbone.activation_checkpointing_enable({"use_reentrant": False})
        model.train()
        count = [0]

        def pack(tensor, count=count):
            count[0] += tensor.numel()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = loss_of(model, batch(3))
        loss.backward()
        saved[on] = count[0]
    assert saved[True] < 0.5 * saved[False], saved
