"""textclf/head_rows.py: a cls / pooler head's last layer computes one row, and the head gets the same numbers."""

import contextlib
import copy
import pickle

import pytest
import torch

from textclf import head_rows
from textclf.model import HeadConfig, build_classifier


def _batch(padded=True):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 90, (4, 11), generator=generator)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 6:] = 0
        mask[3, 2:] = 0
    return ids, mask


def _applied(model):
    return head_rows.describe(model) == ["last layer: the head's row only"]


# the last layer's feed-forward output projection, in each family
LAST_FFN = {"bert": "encoder.layer.1.output.dense", "distilbert": "transformer.layer.1.ffn.lin2"}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family,head", [("bert", "cls"), ("bert", "pooler"), ("roberta", "cls"),
                                         ("electra", "pooler"), ("distilbert", "cls")])
def test_the_head_gets_the_full_layers_numbers_and_gradients(premodels, family, head, attention):
    torch.manual_seed(0)
    model = build_classifier(premodels(family), HeadConfig(n_outputs=3, head=head))
    model.backbone.set_attn_implementation(attention)
    assert _applied(model)
    model.eval()  # dropout off: both forwards see the same numbers
    for padded in (True, False):  # without padding SDPA's mask is None
        grads = _same_logits_and_gradients(model, *_batch(padded))
        # the last layer's output and feed-forward blocks get gradient from one row only: not all zero
        assert grads[f"backbone.{LAST_FFN.get(family, LAST_FFN['bert'])}.weight"].abs().sum() > 0


def _same_logits_and_gradients(model, ids, mask):
    results = []
    for full in (False, True):
        model.zero_grad()
        # backward inside too: gradient checkpointing runs the layers' forward again there
        with head_rows.every_row(model) if full else contextlib.nullcontext():
            out = model.backbone(input_ids=ids, attention_mask=mask)
            logits = model(ids, mask)
            logits.pow(2).sum().backward()
        assert out.last_hidden_state.shape[1] == (11 if full else 1)
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (fast, fast_grads), (slow, slow_grads) = results
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert fast_grads.keys() == slow_grads.keys()
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    return fast_grads


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_gradient_checkpointing_keeps_the_head_row_and_its_gradients(premodels, family):
    torch.manual_seed(0)
    model = build_classifier(premodels(family), HeadConfig(n_outputs=2, head="cls", dropout=0.0))
    for module in model.modules():  # training mode (checkpointing works only there) without dropout
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.backbone.activation_checkpointing_enable({"use_reentrant": False})  # as train.py does
    assert _applied(model)
    model.train()
    _same_logits_and_gradients(model, *_batch())


def test_lora_adapters_on_a_cls_head(premodels):
    torch.manual_seed(0)
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"]}
    model = build_classifier(premodels("bert"), HeadConfig(n_outputs=2, head="cls", lora=lora))
    assert _applied(model)
    model.eval()
    for module in model.modules():  # adapters that move the output, so a wrong path would show
        if hasattr(module, "lora_B"):
            for weight in module.lora_B.values():
                torch.nn.init.normal_(weight.weight, std=0.5)
    _same_logits_and_gradients(model, *_batch())


def test_applied_once_nested_every_row_and_a_further_subclass(premodels):
    model = build_classifier(premodels("bert"), HeadConfig(n_outputs=2, head="cls"))
    layer = model.backbone.encoder.layer[-1]
    first = type(layer)
    assert head_rows.apply(model) == head_rows.describe(model) and type(layer) is first  # not wrapped twice
    layer.__class__ = type("Wrapped", (first,), {})  # as FSDP2 subclasses a layer: the full path must not recurse
    ids, mask = _batch()
    model.eval()
    with torch.no_grad():
        with head_rows.every_row(model):
            with head_rows.every_row(model):
                pass
            assert model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state.shape[1] == 11
        assert model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state.shape[1] == 1


@pytest.mark.parametrize("family,head", [("bert", "mean"), ("bert", "fusion"), ("distilbert", "mean"),
                                         ("deberta-v2", "cls")])
def test_other_heads_and_layers_keep_their_own_forward(premodels, family, head):
    model = build_classifier(premodels(family), HeadConfig(n_outputs=2, head=head))
    assert not head_rows.describe(model)


def test_weights_names_copies_and_pickles_are_unchanged(premodels):
    torch.manual_seed(0)
    plain = build_classifier(premodels("bert"), HeadConfig(n_outputs=2, head="mean"))
    torch.manual_seed(0)
    model = build_classifier(premodels("bert"), HeadConfig(n_outputs=2, head="cls"))
    assert _applied(model)
    assert list(model.state_dict()) == [k for k in plain.state_dict()]
    ids, mask = _batch()
    model.eval()
    with torch.no_grad():
        want = model(ids, mask)
        for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert _applied(other)
            torch.testing.assert_close(other(ids, mask), want, rtol=0, atol=0)


def test_training_mode_uses_the_last_layers_dropout(premodels):
    torch.manual_seed(0)
    model = build_classifier(premodels("bert"), HeadConfig(n_outputs=2, head="cls", dropout=0.0))
    for module in model.modules():  # every dropout off but the last layer's attention dropout
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.backbone.encoder.layer[-1].attention.self.dropout.p = 0.5
    model.train()
    ids, mask = _batch()
    assert not torch.equal(model(ids, mask), model(ids, mask))
    model.backbone.encoder.layer[-1].attention.self.dropout.p = 0.0
    assert torch.equal(model(ids, mask), model(ids, mask))
