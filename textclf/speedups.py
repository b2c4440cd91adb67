"""CPU training speed-ups that keep the model's maths (`train.cpu_speedups`, on by default).

On a CPU, a step of a small encoder at short lengths spends as long outside the matmuls as in them.
`apply` removes four costs that are not the model's own:

fast_dropout       torch's CPU dropout draws one 32-bit random number per element (~5 ns each): at
                   32 x 14 tokens, MiniLM's 13 dropout layers cost as much as its feed-forward matmuls.
                   This draws the same Bernoulli(1 - p) keep-mask 16 bits at a time from 64-bit words
                   (p rounded to 1/65536) and scales by 1 / (1 - p), like nn.Dropout.
attention          with dropout on, SDPA on a CPU runs its math path, whose dropout is the slow one;
                   this is the same maths (eager attention: softmax(q k^T * scale + mask), dropout, @ v)
                   with fast_dropout, and a backward of its own that keeps the softmax output and the
                   keep-mask but not the dropped probabilities as well: on long texts in fp32 the
                   largest activations, a third of them fewer (IMDB, 16 x 512 tokens: 201 MB a layer).
                   Decoders keep their causal mask and grouped key/value heads. Without dropout
                   (evaluation, or p = 0) it calls SDPA itself.
FastEmbedding      the word-embedding backward builds a dense vocabulary-sized gradient every step
                   (30k x 384: a 47 MB fill, more than a layer's matmuls at short lengths). Here the
                   backward adds the rows used into a gradient buffer that lives across steps and is
                   cleared row by row: the same .grad, summed in another order. Clipping reads and
                   scales the rows written only (written_rows). One process only (DDP must see the
                   gradient arrive through autograd).
keep_freed_memory  glibc gives blocks over 32 MB back to the OS when they are freed, so every step
                   page-faults its activations and the dense word-embedding gradient (47 MB for a
                   30k x 384 table) in again; this keeps freed memory in the process for reuse.
huge_pages         with freed memory kept, a run over long texts of many widths fragments the heap: on
                   IMDB (MiniLM-L6, 16 rows of up to 512 tokens, fp32) peak RSS was 6.3-7.7 GB against
                   HF Trainer's 6.2. torch's allocator asked for page-aligned transparent huge pages on
                   blocks of 2 MB and more (THP_MEM_ALLOC_ENABLE, read at its first allocation, so set
                   before the model loads) brings it to 5.2 GB at the same step time; over 8 steps it
                   is 6.6-7.1 GB against Trainer's 6.3 (less fragmented, not unfragmented; giving the
                   memory back instead costs 15-20% of the step: bench/README.md).

On a GPU nothing here is used: CUDA's dropout and attention kernels are already fused.
(Clipping without a no-op rescale, on every device, is train.clip_gradients.)
"""

import ctypes
import os
import sys

import torch
from torch import nn

ATTENTION = "textclf_cpu"


def _keep_mask(x, p):
    """A keep-mask of x's shape: uint8, 1 with probability 1 - p (p rounded to 1/65536). uint8, not
    bool: on a CPU a comparison writing bool and a multiply reading it take 3-5x as long as the same
    ops on uint8 (bool is not vectorised; 32 x 26 x 384 in fp32 on AVX2: 148 vs 32 us to compare,
    277 vs 82 us for x * keep * scale). One byte an element either way."""
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2 ** 63), None)
    # Each 64-bit word gives four uniform 16-bit integers in [-32768, 32767].
    keep = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    return torch.ge(words.view(torch.int16)[:n].view(x.shape), round(p * 65536) - 32768, out=keep)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p):
        keep = _keep_mask(x, p)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return x.mul(keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None


def fast_dropout(x, p, training=True):
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0 or x.numel() == 0:
        return nn.functional.dropout(x, p, training)
    return _Dropout.apply(x, p)


class FastDropout(nn.Dropout):
    """nn.Dropout with fast_dropout's sampler; keeps `.p`, which attention modules read."""

    def forward(self, x):
        return fast_dropout(x, self.p, self.training)


class _EmbeddingLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, weight, owner):
        ctx.save_for_backward(ids)
        ctx.owner = owner
        return nn.functional.embedding(ids, weight, owner.padding_idx)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        ctx.owner.add_grad(ids, grad)
        return None, None, None


class FastEmbedding(nn.Embedding):
    """nn.Embedding whose training backward writes its weight's .grad in place (see the module doc)."""

    _buffer = None  # the dense gradient buffer, allocated on the first backward
    _touched = None  # rows written into it since it was last cleared

    def forward(self, ids):
        if not (self.training and torch.is_grad_enabled() and self.weight.requires_grad):
            return super().forward(ids)
        return _EmbeddingLookup.apply(ids, self.weight, self)

    def add_grad(self, ids, grad):
        weight = self.weight
        if weight.grad is None:  # set_to_none since the last backward: clear what was written
            if self._buffer is None:
                self._buffer = torch.zeros_like(weight)
            elif self._touched is not None:
                self._buffer.index_fill_(0, self._touched, 0.0)
            self._touched = None
            weight.grad = self._buffer
        ids = ids.reshape(-1)
        grad = grad.reshape(-1, weight.shape[1]).to(weight.dtype)
        if self.padding_idx is not None:  # the padding row gets no gradient, as in nn.Embedding
            used = ids != self.padding_idx
            ids, grad = ids[used], grad[used]
        weight.grad.index_add_(0, ids, grad)
        if weight.grad is self._buffer:
            self._touched = ids if self._touched is None else torch.cat([self._touched, ids])

    def written_rows(self):
        """The rows of weight.grad that backward wrote since the gradients were last set to None
        (every other row is zero), or None when that is not known (a .grad that is not the buffer)."""
        if self._touched is None or self.weight.grad is not self._buffer:
            return None
        return torch.unique(self._touched)


def written_rows(model):
    """{parameter: the rows its gradient may hold}, for the FastEmbedding weights whose gradient is
    zero outside those rows: clipping reads and scales those rows only (loop.clip_gradients), the
    same norm summed over fewer zeros."""
    out = {}
    for module in model.modules():
        if isinstance(module, FastEmbedding):
            rows = module.written_rows()
            if rows is not None:
                out[module.weight] = rows
    return out


def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention function: (batch, heads, length, dim) in, (batch, length, heads, dim) out.
    Training on a CPU with dropout: attention_math. Anything else (evaluation, no dropout, another
    device, a position bias, soft-capping, a cache, attention sinks) goes to transformers' SDPA function."""
    causal = kwargs.get("is_causal")
    causal = causal if causal is not None else getattr(module, "is_causal", True)  # as SDPA's function reads it
    causal = bool(causal) and attention_mask is None and query.shape[2] > 1
    if dropout == 0.0 or not module.training or query.device.type != "cpu" \
            or any(kwargs.get(name) is not None for name in ("position_bias", "softcap", "cache", "s_aux")) \
            or (causal and query.shape[2] != key.shape[2]):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        from transformers.integrations.sdpa_attention import repeat_kv

        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    if causal:  # a decoder without padding gets no mask: a query sees the keys up to its own position
        length = query.shape[2]
        attention_mask = torch.ones(length, length, dtype=torch.bool, device=query.device).tril()[None, None]
    return attention_math(query, key, value, attention_mask, dropout, scaling), None


def attention_math(query, key, value, attention_mask, dropout, scaling=None):
    """softmax(query key^T * scaling, masked) with fast_dropout, @ value; the mask is SDPA's (bool: True
    = attend; else added). Training with dropout, backward keeps the softmax output and the keep-mask
    but not the dropped probabilities as well (_DroppedAttention recomputes them: one multiply)."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    if 0.0 < dropout < 1.0 and query.device.type == "cpu" and torch.is_grad_enabled() \
            and not (attention_mask is not None and attention_mask.requires_grad):  # a learned bias: autograd's
        out = _DroppedAttention.apply(query, key, value, attention_mask, dropout, scaling)
    else:
        probs = fast_dropout(nn.functional.softmax(_masked(torch.matmul(query, key.transpose(2, 3)).mul_(scaling),
                                                           attention_mask), dim=-1), dropout)
        out = torch.matmul(probs, value)
    return out.transpose(1, 2).contiguous()


def _masked(scores, mask):
    """scores with the masked positions at the dtype's minimum. In fp32 and bf16 a bool mask becomes an
    additive one first (0 or the minimum; the same numbers: a finite score plus the minimum rounds to
    the minimum): a masked_fill_ reading bool over every head takes 15x as long as adding a float
    mask. fp16's minimum (-65504) is too near its scores for that, so fp16 fills."""
    if mask is None:
        return scores
    if mask.dtype != torch.bool:
        return scores + mask  # out of place: an fp32 mask makes the softmax fp32, as SDPA's math path does
    lowest = torch.finfo(scores.dtype).min
    if scores.dtype == torch.float16:
        return scores.masked_fill_(mask.logical_not(), lowest)
    additive = torch.zeros(mask.shape, dtype=scores.dtype, device=mask.device)
    return scores.add_(additive.masked_fill_(mask.logical_not(), lowest))


class _DroppedAttention(torch.autograd.Function):
    """Attention with dropout on its probabilities. Autograd's own graph would keep the softmax output,
    the keep-mask and the dropped probabilities for backward; this keeps the first two and recomputes
    the third: on IMDB (16 x 512 tokens, 12 heads) 201 MB less per layer in fp32.

    Query, key, value and the incoming gradient arrive as (batch, heads, length, dim) views of
    (batch, length, heads, dim) tensors, whose batch and head dimensions a batched matmul cannot fold
    into one: every matmul taking such a view copies it first (in fp32 eight copies a layer, five of
    them in backward). Each is made contiguous once here instead (four copies a layer; the views'
    tensors are not kept, so the memory kept is the same)."""

    @staticmethod
    def forward(ctx, query, key, value, mask, p, scaling):
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
        scores = torch.matmul(query, key.transpose(2, 3))
        ctx.scores_dtype = scores.dtype  # the matmuls' dtype: bf16 under autocast
        probs = torch.softmax(_masked(scores.mul_(scaling), mask), dim=-1)
        del scores
        keep = _keep_mask(probs, p)
        out = torch.matmul(probs.mul(keep).mul_(1.0 / (1.0 - p)), value)
        ctx.out_dtype, ctx.p, ctx.scaling = out.dtype, p, scaling
        ctx.in_dtypes = query.dtype, key.dtype, value.dtype
        # kept as the matmuls read them (autocast's bf16 copies of fp32 inputs, as its own graph keeps)
        ctx.save_for_backward(query.to(ctx.scores_dtype), key.to(ctx.scores_dtype), value.to(out.dtype), probs, keep,
                              mask if mask is not None and mask.dtype == torch.bool else None)
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, value, probs, keep, mask = ctx.saved_tensors
        scale, dtype = 1.0 / (1.0 - ctx.p), ctx.out_dtype
        grad = grad.to(dtype).contiguous()
        needs_query, needs_key, needs_value = ctx.needs_input_grad[:3]
        grads = [None, None, None]
        if needs_value:
            grads[2] = torch.matmul(probs.mul(keep).mul_(scale).to(dtype).transpose(2, 3), grad)
        if needs_query or needs_key:
            grad_probs = torch.matmul(grad, value.transpose(2, 3)).to(probs.dtype).mul_(keep).mul_(scale)
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
            del grad_probs
            if mask is not None:
                grad_scores.mul_(mask.view(torch.uint8))  # 0 where masked (uint8: see _keep_mask)
            grad_scores = grad_scores.to(ctx.scores_dtype).mul_(ctx.scaling)  # autograd's order of rounding
            grads[0] = torch.matmul(grad_scores, key) if needs_query else None
            grads[1] = torch.matmul(grad_scores.transpose(2, 3), query) if needs_key else None
        return (*(g if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.in_dtypes)), None, None, None)


def _register_attention():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def apply(model, single_process=True):
    """Swap every dropout layer for FastDropout; for backbones on SDPA that take a pluggable
    attention function (BERT, RoBERTa, DistilBERT, ELECTRA, ...), use `attention`; in a single
    process, make the word embedding a FastEmbedding; keep freed memory (process-wide).
    Returns what changed."""
    swapped = 0
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is nn.Dropout:
                setattr(module, name, FastDropout(child.p, child.inplace))
                swapped += 1
    changed = [f"{swapped} dropout layers"] if swapped else []
    backbone = getattr(model, "backbone", model)
    embedding = backbone.get_input_embeddings() if hasattr(backbone, "get_input_embeddings") else None
    if single_process and type(embedding) is nn.Embedding and embedding.max_norm is None \
            and not embedding.scale_grad_by_freq and not embedding.sparse:
        embedding.__class__ = FastEmbedding  # same module, same Parameter: only forward/backward change
        changed.append("word-embedding gradient")
    if getattr(backbone.config, "_attn_implementation", None) == "sdpa" and \
            getattr(backbone, "_supports_attention_backend", False):
        _register_attention()
        backbone.set_attn_implementation(ATTENTION)
        if backbone.config._attn_implementation == ATTENTION:
            changed.append("attention")
    if keep_freed_memory():
        changed.append("freed memory kept")
    if huge_pages_on():
        changed.append("huge pages")
    return changed


def huge_pages():
    """Ask torch's CPU allocator for transparent huge pages on blocks of 2 MB and more. It reads the
    setting once, at its first allocation: call this before anything is allocated (train.py does,
    before the model loads); later it changes nothing. A user's own THP_MEM_ALLOC_ENABLE wins."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def huge_pages_on():
    """Whether torch's CPU allocator asks for huge pages (it page-aligns its large blocks then, else 64
    bytes) and the kernel may give them (transparent_hugepage not [never])."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as fh:
            if "[never]" in fh.read():
                return False
    except OSError:
        return False
    return all(torch.empty(2 ** 22 + 3 * k, dtype=torch.uint8).data_ptr() % 4096 == 0 for k in range(1, 4))


def keep_freed_memory():
    """glibc only (Linux): serve every allocation from the heap and never trim it. Returns True if set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))
