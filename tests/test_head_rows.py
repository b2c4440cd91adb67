"""textclf/head_rows.py: a cls / pooler head's last layer computes one row, and the head gets the same numbers."""

import contextlib
import copy
import pickle

import pytest
import torch

from textclf import head_rows
from textclf.model import HeadConfig, build_classifier


def _batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 90, (4, 11), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[3, 2:] = 0
    return ids, mask


def _applied(model):
    return type(model.backbone.encoder.layer[-1]).__name__.endswith("HeadRow")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family,head", [("bert", "cls"), ("bert", "pooler"), ("roberta", "cls"),
                                         ("electra", "pooler")])
def test_the_head_gets_the_full_layers_numbers_and_gradients(premodels, family, head, attention):
    torch.manual_seed(0)
    model = build_classifier(premodels(family), HeadConfig(n_outputs=3, head=head))
    model.backbone.set_attn_implementation(attention)
    assert _applied(model)
    model.eval()  # dropout off: both forwards see the same numbers
    ids, mask = _batch()
    results = []
    for full in (False, True):
        model.zero_grad()
        with head_rows.every_row(model) if full else contextlib.nullcontext():
            out = model.backbone(input_ids=ids, attention_mask=mask)
            logits = model(ids, mask)
        assert out.last_hidden_state.shape[1] == (11 if full else 1)
        logits.pow(2).sum().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (fast, fast_grads), (slow, slow_grads) = results
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert fast_grads.keys() == slow_grads.keys()
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # the last layer's queries, output and feed-forward blocks get gradient from one row only: not all zero
    assert fast_grads["backbone.encoder.layer.1.output.dense.weight"].abs().sum() > 0


@pytest.mark.parametrize("family,head", [("bert", "mean"), ("bert", "fusion"), ("distilbert", "cls"),
                                         ("deberta-v2", "cls")])
def test_other_heads_and_layers_keep_their_own_forward(premodels, family, head):
    model = build_classifier(premodels(family), HeadConfig(n_outputs=2, head=head))
    assert not any(type(m).__name__.endswith("HeadRow") for m in model.modules())


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


def test_training_mode_uses_the_layers_dropout(premodels):
    torch.manual_seed(0)
    model = build_classifier(premodels("bert"), HeadConfig(n_outputs=2, head="cls", dropout=0.0))
    model.train()
    ids, mask = _batch()
    assert not torch.equal(model(ids, mask), model(ids, mask))  # the backbone's own dropout still draws
    model.eval()
    assert torch.equal(model(ids, mask), model(ids, mask))
