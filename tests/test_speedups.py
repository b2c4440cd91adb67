"""textclf/speedups.py: the CPU dropout and attention must keep the maths they replace."""

import json

import pytest
import torch
from torch import nn

from textclf import speedups
from textclf.model import HeadConfig, Labels, ModelSpec, Provenance, Tokenization, build_classifier, save_classifier


def test_fast_dropout_keeps_one_minus_p_and_scales_like_nn_dropout():
    torch.manual_seed(0)
    x = torch.ones(1_000_003, requires_grad=True)  # not a multiple of 4: the last word is cut
    y = speedups.fast_dropout(x, 0.1)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.002
    assert torch.equal(y[kept], torch.full_like(y[kept], 1.0) * (1 / 0.9))
    # four draws share a 64-bit word: each of the four positions must be unbiased too
    for lane in range(4):
        assert abs(kept[: 1_000_000].view(-1, 4)[:, lane].float().mean().item() - 0.9) < 0.004
    y.backward(torch.full_like(y, 2.0))
    assert torch.equal(x.grad, kept.float() * 2.0 * (1 / 0.9))
    for p in (0.3, 0.5):
        assert abs((speedups.fast_dropout(torch.ones(400_000), p) != 0).float().mean().item() - (1 - p)) < 0.004


def test_fast_dropout_follows_the_seed_and_is_off_in_eval():
    x = torch.randn(7, 13, dtype=torch.bfloat16)
    torch.manual_seed(3)
    a = speedups.fast_dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(a, speedups.fast_dropout(x, 0.2))
    assert a.dtype == torch.bfloat16
    layer = speedups.FastDropout(0.2)
    layer.eval()
    assert layer(x) is x
    assert speedups.fast_dropout(x, 0.0) is x


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_attention_math_equals_sdpa(mask_kind):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 8) for _ in range(3))
    lengths = torch.tensor([6, 4])
    keep = (torch.arange(6)[None, :] < lengths[:, None])[:, None, None, :].expand(2, 1, 6, 6)
    mask = {"bool": keep, "additive": torch.where(keep, 0.0, torch.finfo(torch.float32).min), "none": None}[mask_kind]
    expected = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    got = speedups.attention_math(q, k, v, mask, dropout=0.0)
    assert got.shape == (2, 6, 3, 8)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _autograd_attention(q, k, v, mask, p, scaling):
    """The same maths as autograd's own graph (what attention_math was before _DroppedAttention)."""
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool else scores + mask
    probs = speedups.fast_dropout(nn.functional.softmax(scores, dim=-1), p)
    return torch.matmul(probs, v).transpose(1, 2).contiguous()


def _saved_bytes(fn):
    """Bytes of the distinct tensors autograd keeps for backward while fn runs."""
    saved = {}

    def pack(t):
        saved[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(saved.values())


@pytest.mark.parametrize("layout", ["contiguous", "heads_view"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_dropped_attention_gives_autograds_numbers_and_keeps_less(precision, mask_kind, layout):
    """With dropout, attention_math's own backward gives autograd's numbers (the same seed draws the
    same keep-mask; the same forward bit for bit, gradients up to the order of a sum) and keeps the
    softmax output and the mask only, not the dropped probabilities too. heads_view: query, key and
    value as transformers passes them, (batch, heads, length, dim) views of (batch, length, heads, dim)."""
    torch.manual_seed(0)
    if layout == "contiguous":
        q, k, v = (torch.randn(2, 3, 40, 8, requires_grad=True) for _ in range(3))
    else:
        leaves = [torch.randn(2, 40, 3, 8, requires_grad=True) for _ in range(3)]
        q, k, v = (t.transpose(1, 2) for t in leaves)
    keep = (torch.arange(40)[None, :] < torch.tensor([40, 23])[:, None])[:, None, None, :].expand(2, 1, 40, 40)
    mask = {"bool": keep, "additive": torch.where(keep, 0.0, torch.finfo(torch.float32).min), "none": None}[mask_kind]
    results = []
    for attend in (_autograd_attention, lambda *a: speedups.attention_math(*a)):
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out, kept = _saved_bytes(lambda: attend(q, k, v, mask, 0.3, 0.35))
        assert out.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(out.dtype)
        results.append((out, torch.autograd.grad(out, (q, k, v) if layout == "contiguous" else leaves, grad), kept))
    (out_a, grads_a, kept_a), (out_b, grads_b, kept_b) = results
    assert torch.equal(out_a, out_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    probs_bytes = 2 * 3 * 40 * 40 * (4 if precision == "fp32" else 2)  # as the last matmul reads them
    assert kept_b <= kept_a - probs_bytes * 0.99  # the dropped probabilities are not kept


def test_fp16_attention_fills_the_mask():
    """fp16's minimum is too near its scores to add: a masked score of -40 plus -65504 is -inf, and a
    row with every key masked would be NaN. fp16 fills, as autograd's graph does: a fully masked row
    attends to every key alike, as before."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 8).half() * 4 for _ in range(3))
    keep = (torch.arange(6)[None, :] < torch.tensor([6, 3])[:, None])[:, None, None, :].expand(2, 1, 6, 6).clone()
    keep[1, :, 2] = False  # one query of the second text sees no key
    got = speedups.attention_math(q, k, v, keep, dropout=0.0)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, _autograd_attention(q, k, v, keep, 0.0, 8 ** -0.5), rtol=0, atol=0)
    torch.testing.assert_close(got[1, 2].float(), v[1].float().mean(1), rtol=2e-3, atol=2e-3)


def test_dropped_attention_with_some_inputs_frozen_and_a_learned_bias():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 8)
    v = torch.randn(2, 3, 9, 8, requires_grad=True)
    bias = torch.zeros(1, 3, 9, 9, requires_grad=True)
    grads = []
    for attend in (_autograd_attention, speedups.attention_math):
        torch.manual_seed(5)
        out = attend(q, k, v, None, 0.3, 0.35)
        grads.append(torch.autograd.grad(out.square().sum(), v)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-6)  # only the value's gradient computed
    out = speedups.attention_math(q, k, v, bias, 0.3, 0.35)  # a bias that learns takes autograd's own graph
    assert torch.autograd.grad(out.square().sum(), bias)[0].abs().sum() > 0


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_attention_with_dropout_stays_causal_in_training(premodels, family):
    """A decoder trained on a CPU with attention dropout: without padding transformers passes no mask
    and relies on is_causal; the speed-up's attention must still hide later tokens (Llama's key/value
    heads are shared by two query heads each)."""
    from transformers import AutoModel

    dropout = {"gpt2": "attn_pdrop", "llama": "attention_dropout"}[family]
    backbone = AutoModel.from_pretrained(premodels(family), attn_implementation="sdpa", **{dropout: 0.5})
    assert "attention" in speedups.apply(backbone, single_process=False)
    backbone.train()
    ids = torch.randint(5, 60, (2, 9))
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1 - 5) % 55 + 5
    outs = []
    for x in (ids, changed):
        torch.manual_seed(1)  # the same dropout masks for both
        outs.append(backbone(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state)
    assert not torch.equal(outs[0], outs[1])  # the last position sees the changed token
    torch.testing.assert_close(outs[1][:, :-1], outs[0][:, :-1], rtol=0, atol=0)  # earlier ones never do
    torch.manual_seed(2)
    assert not torch.equal(backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state, outs[0])


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta", "electra", "deberta-v2"])
def test_applied_model_predicts_like_the_stock_one_and_saves_a_stock_config(premodels, tmp_path, family):
    head = HeadConfig(n_outputs=3, head="mean", dropout=0.1, multi_sample_dropout=2)
    torch.manual_seed(0)
    stock = build_classifier(premodels(family), head)
    fast = build_classifier(premodels(family), head)
    fast.load_state_dict(stock.state_dict())
    changed = speedups.apply(fast)
    # DeBERTa's own attention takes no pluggable function: only its dropout layers change
    assert ("attention" in changed) == (family != "deberta-v2") and changed[0].endswith("dropout layers")
    assert not any(type(m) is nn.Dropout for m in fast.modules())
    ids = torch.randint(5, 90, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[3, 2:] = 0
    stock.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(ids, mask), stock(ids, mask))
    # training mode: dropout is on (two passes differ) and gradients reach every parameter
    fast.train()
    a, b = fast(ids, mask), fast(ids, mask)
    assert not torch.equal(a, b)
    (a.sum() + b.sum()).backward()
    assert all(p.grad is not None for p in fast.parameters() if p.requires_grad)
    spec = ModelSpec(head, Labels(["a", "b", "c"], "single_label"), Tokenization(32, "head", None, ["text"], None, ""),
                     Provenance("toy", "", family))
    save_classifier(fast, tmp_path, spec)
    assert speedups.ATTENTION not in json.dumps(json.loads((tmp_path / "config.json").read_text()))


def test_clip_gradients_matches_clip_grad_norm():
    from accelerate import Accelerator

    from textclf.loop import clip_gradients

    accelerator = Accelerator(cpu=True)
    for max_norm in (0.01, 1e6):
        torch.manual_seed(0)
        ours, ref = nn.Linear(5, 3), nn.Linear(5, 3)
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(8, 5)
        ours(x).pow(2).sum().backward()
        ref(x).pow(2).sum().backward()
        norm = clip_gradients(accelerator, ours, max_norm)
        ref_norm = nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
        torch.testing.assert_close(norm, ref_norm)
        for p, r in zip(ours.parameters(), ref.parameters()):
            assert torch.equal(p.grad, r.grad)


def test_clipping_reads_the_rows_a_fast_embedding_wrote_and_matches_clip_grad_norm():
    from accelerate import Accelerator

    from textclf.loop import clip_gradients

    accelerator = Accelerator(cpu=True)
    for max_norm in (0.05, 1e6):  # clipped, and within the norm
        torch.manual_seed(0)
        ours = nn.Sequential(nn.Embedding(40, 6, padding_idx=0), nn.Linear(6, 3))
        ref = nn.Sequential(nn.Embedding(40, 6, padding_idx=0), nn.Linear(6, 3))
        ref.load_state_dict(ours.state_dict())
        ours[0].__class__ = speedups.FastEmbedding
        # two accumulated backwards, then a step whose rows differ: the first step's must not count
        for batches in ([torch.tensor([[3, 7, 7, 0], [9, 0, 0, 0]]), torch.tensor([[5, 3, 0, 0]])],
                        [torch.tensor([[11, 12, 3, 0]])]):
            for ids in batches:
                ours(ids).pow(2).sum().backward()
                ref(ids).pow(2).sum().backward()
            written = {int(i) for ids in batches for i in ids.flatten() if i != 0}
            assert set(speedups.written_rows(ours)[ours[0].weight].tolist()) == written
            norm = clip_gradients(accelerator, ours, max_norm)
            torch.testing.assert_close(norm, nn.utils.clip_grad_norm_(ref.parameters(), max_norm))
            for p, r in zip(ours.parameters(), ref.parameters()):
                torch.testing.assert_close(p.grad, r.grad, rtol=1e-6, atol=0)
            assert not ours[0].weight.grad[[1, 2, 4, 39]].any()
            ours.zero_grad(set_to_none=True)
            ref.zero_grad(set_to_none=True)


def test_fast_embedding_gradient_equals_nn_embedding_across_steps():
    torch.manual_seed(0)
    stock = nn.Embedding(50, 6, padding_idx=0)
    fast = nn.Embedding(50, 6, padding_idx=0)
    fast.load_state_dict(stock.state_dict())
    fast.__class__ = speedups.FastEmbedding
    steps = [[torch.tensor([[3, 7, 7, 0], [9, 0, 0, 0]])],  # repeated rows and padding
             [torch.tensor([[11, 12, 3, 0]]), torch.tensor([[12, 40, 0, 0]])]]  # two accumulated backwards
    for batches in steps:
        for ids in batches:
            weight = torch.randn(*ids.shape, 6)
            (stock(ids) * weight).sum().backward()
            (fast(ids) * weight).sum().backward()
        torch.testing.assert_close(fast.weight.grad, stock.weight.grad)
        assert not fast.weight.grad[0].any()
        stock.zero_grad(set_to_none=True)
        fast.zero_grad(set_to_none=True)  # the next step must not see this step's rows
    fast.eval()
    with torch.no_grad():
        assert torch.equal(fast(torch.tensor([[1, 2]])), stock(torch.tensor([[1, 2]])))


THP = """
import os, sys
import textclf.train
from textclf import speedups
if sys.argv[1] == "call":
    speedups.huge_pages()
import torch
block = torch.empty(2 ** 23 + 5, dtype=torch.uint8)
print(block.data_ptr() % 4096 == 0, speedups.huge_pages_on())
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="transparent huge pages are Linux's")
def test_huge_pages_are_asked_for_before_the_first_tensor_and_a_users_setting_wins():
    import os
    import subprocess
    import sys

    def run(arg, **env):
        environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
        out = subprocess.run([sys.executable, "-c", THP, arg], env={**environ, **env}, capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0] == "True", out[1] == "True"

    thp_kernel = "[never]" not in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    assert run("call") == (True, thp_kernel)  # 8 MB blocks page-aligned: torch madvises them for huge pages
    assert run("call", THP_MEM_ALLOC_ENABLE="0") == (False, False)  # as without the call: 64-byte alignment
