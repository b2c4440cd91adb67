"""The last layer computes only the row the head reads (model.head cls or pooler; BERT-like and
DistilBERT encoders).

A cls or pooler head reads the encoder's last layer at the first position only. Every other row of
that layer (its queries, attention, output projection, both LayerNorms and the feed-forward block)
is computed and thrown away; of them only the keys and values matter, because the first row
attends to them. `apply` gives the last layer a forward that computes keys and values for every
row and all the rest for the first row alone. The head computes the same function (the same
numbers up to the order of a matmul's sums; in training the last layer's dropout draws fewer
random numbers, so a seed's later draws differ from a run without this), on every device. For
MiniLM-L6 and DistilBERT that is a seventh of the model's matmul work (five sixths of one layer
in six).

Taken where the last layer is BERT's (BERT, RoBERTa, ELECTRA, MiniLM, XLM-R, ...: bidirectional
self-attention with query, key and value projections, its output block, the feed-forward block,
no cross-attention) or DistilBERT's (q_lin / k_lin / v_lin / out_lin, sa_layer_norm, ffn,
output_layer_norm), and gives the first row its own forward gives, checked once on random rows
with and without a mask. At run time anything else (a mask that is not a 4-D tensor, a cache,
cross-attention, positional arguments that are not None) goes to the layer's own forward, and so
does every call inside `every_row(model)` (predict.hidden_of reads all the rows). Otherwise the
encoder's last_hidden_state has one row, its output_hidden_states' last entry too, and
output_attentions has nothing for the last layer: the classifier reads none of them. Weights,
parameter names and saved models are unchanged (the layer's class becomes a subclass with this
forward).
"""

import contextlib
import sys
from typing import Callable, NamedTuple

import torch

HEADS = ("cls", "pooler")
_SUBCLASSES = {}  # a layer class -> its first-row subclass
_BASES = {}  # the first-row subclass -> the layer class it extends


def apply(model):
    """Give model.backbone's last layer the first-row forward when the head reads only that row and
    the layer is one of the FAMILIES'; returns what changed (one line, or nothing)."""
    if getattr(model, "head", None) not in HEADS or (getattr(model, "lora", None) or {}).get("quantize"):
        return []
    for family in FAMILIES:
        layers = family.layers(model.backbone)
        if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
            continue
        layer = layers[-1]
        if isinstance(layer, tuple(_BASES)):  # applied already
            return describe(model)
        attention = family.attention(layer)
        if sum(other is layer for other in layers) > 1 or not family.like(layer, attention) \
                or not _gives_the_same_first_row(layer, attention, family.first_row):
            return []
        layer.__class__ = _subclass(type(layer), family)
        return describe(model)
    return []


def describe(model):
    """[what apply changed in `model`], or []."""
    return ["last layer: the head's row only"] if _swapped(model) else []


def _swapped(model):
    bases = tuple(_BASES)
    return [m for m in model.modules() if isinstance(m, bases)]


@contextlib.contextmanager
def every_row(model):
    """Inside: the last layer computes every row (for callers that read the whole last_hidden_state).
    Nested or concurrent uses count: the first to leave does not end another's."""
    layers = _swapped(model)
    for layer in layers:
        layer.every_row += 1
    try:
        yield
    finally:
        for layer in layers:
            layer.every_row -= 1


def _bert_like(layer, attention):
    return (_attention_like(attention, ("query", "key", "value"))
            and hasattr(layer.attention, "output") and hasattr(layer, "feed_forward_chunk")
            and not getattr(layer, "add_cross_attention", False) and not getattr(layer, "is_decoder", False)
            and getattr(attention, "position_embedding_type", "absolute") == "absolute"
            and _plain_parameters(layer))


def _distilbert_like(layer, attention):
    return (_attention_like(attention, ("q_lin", "k_lin", "v_lin", "out_lin"))
            and all(hasattr(layer, name) for name in ("sa_layer_norm", "ffn", "output_layer_norm"))
            and _plain_parameters(layer))


def _attention_like(attention, projections):
    """Self-attention through transformers' attention functions, with these projections, not causal."""
    module = sys.modules.get(type(attention).__module__)
    return (all(hasattr(attention, name) for name in (*projections, "attention_head_size", "scaling", "config",
                                                      "dropout"))
            and hasattr(module, "eager_attention_forward") and hasattr(module, "ALL_ATTENTION_FUNCTIONS")
            and not getattr(attention, "is_causal", False))


def _plain_parameters(layer):
    return all(p.device.type != "meta" and p.is_floating_point() for p in layer.parameters())


def _subclass(cls, family):
    if cls not in _SUBCLASSES:
        name = f"{cls.__name__}HeadRow_{len(_SUBCLASSES)}"  # unique: two classes may share a name

        def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
            # BERT's encoder passes encoder_hidden_states (None) as a third positional argument
            full = (self.every_row or any(a is not None for a in args)
                    or kwargs.get("encoder_hidden_states") is not None
                    or kwargs.get("past_key_values") is not None
                    or (attention_mask is not None and not (isinstance(attention_mask, torch.Tensor)
                                                            and attention_mask.dim() == 4)))
            if full:  # the class it extends, by name: a further subclass (FSDP's) must not recurse here
                return cls.forward(self, hidden_states, attention_mask, *args, **kwargs)
            for unused in ("encoder_hidden_states", "encoder_attention_mask", "past_key_values"):
                kwargs.pop(unused, None)
            return family.first_row(self, hidden_states, attention_mask, **kwargs)

        sub = type(name, (cls,), {"forward": forward, "every_row": 0, "__module__": __name__, "__qualname__": name})
        globals()[name] = sub  # picklable by name (in a process that made it)
        _SUBCLASSES[cls], _BASES[sub] = sub, cls
    return _SUBCLASSES[cls]


def first_row(layer, hidden_states, attention_mask=None, **kwargs):
    """BertLayer.forward at the first position: keys and values from every row, the rest from row 0."""
    attention = layer.attention.self
    first = hidden_states[:, :1]
    out = _attend(attention, attention.query(first), attention.key(hidden_states), attention.value(hidden_states),
                  attention_mask, **kwargs)
    out = layer.attention.output(out, first)
    return layer.feed_forward_chunk(out)


def first_row_distilbert(layer, hidden_states, attention_mask=None, **kwargs):
    """DistilBERT's TransformerBlock.forward at the first position, as first_row is BertLayer's."""
    attention = layer.attention
    first = hidden_states[:, :1]
    out = _attend(attention, attention.q_lin(first), attention.k_lin(hidden_states), attention.v_lin(hidden_states),
                  attention_mask, **kwargs)
    out = layer.sa_layer_norm(attention.out_lin(out) + first)
    return layer.output_layer_norm(layer.ffn.ff_chunk(out) + out)  # ff_chunk: one row needs no chunking


def _attend(attention, query, key, value, attention_mask, **kwargs):
    """The layer's attention function for one query row per text: (batch, 1, hidden)."""
    module = sys.modules[type(attention).__module__]
    batch, length, size = query.shape[0], key.shape[1], attention.attention_head_size
    query = query.view(batch, 1, -1, size).transpose(1, 2)
    key = key.view(batch, length, -1, size).transpose(1, 2)
    value = value.view(batch, length, -1, size).transpose(1, 2)
    attend = module.ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation,
                                                          module.eager_attention_forward)
    out, _ = attend(attention, query, key, value, None if attention_mask is None else attention_mask[:, :, :1],
                    dropout=0.0 if not attention.training else attention.dropout.p, scaling=attention.scaling,
                    **kwargs)
    return out.reshape(batch, 1, -1).contiguous()


class Family(NamedTuple):
    """An encoder family this applies to: where its layers and a layer's self-attention are, whether a
    layer is one, and its first-row forward."""
    layers: Callable  # backbone -> its ModuleList of layers, or None
    attention: Callable  # layer -> its self-attention module, or None
    like: Callable  # (layer, attention) -> bool
    first_row: Callable  # (layer, hidden_states, attention_mask, **kwargs) -> (batch, 1, hidden)


FAMILIES = (
    Family(lambda backbone: getattr(getattr(backbone, "encoder", None), "layer", None),
           lambda layer: getattr(getattr(layer, "attention", None), "self", None), _bert_like, first_row),
    Family(lambda backbone: getattr(getattr(backbone, "transformer", None), "layer", None),
           lambda layer: getattr(layer, "attention", None), _distilbert_like, first_row_distilbert),
)


def _gives_the_same_first_row(layer, attention, first_row):
    """The layer's own forward and its family's first_row agree on row 0, in evaluation mode, on random
    rows: with no mask (SDPA's unpadded batches) and with one row padded, in the mask its attention takes."""
    weight = next(layer.parameters())
    hidden = torch.randn(2, 7, attention.config.hidden_size, generator=torch.Generator().manual_seed(0)).to(
        weight.device, weight.dtype)
    keep = torch.ones(2, 1, 7, 7, dtype=torch.bool, device=weight.device)
    keep[1, :, :, 5:] = False
    implementation = attention.config._attn_implementation
    masks = [None]
    if implementation == "eager":
        masks.append(torch.zeros(keep.shape, dtype=weight.dtype, device=weight.device).masked_fill(
            ~keep, torch.finfo(weight.dtype).min))
    elif implementation == "sdpa":
        masks.append(keep)
    training = layer.training
    layer.eval()
    try:
        with torch.no_grad():
            pairs = [(layer(hidden, mask)[:, :1], first_row(layer, hidden, mask)) for mask in masks]
    except Exception:  # a layer that looks like BERT's and is not: keep its own forward
        return False
    finally:
        layer.train(training)
    return all(got.shape == want.shape and (got - want).abs().max().item() <= 1e-4 * (want.abs().max().item() or 1.0)
               for want, got in pairs)
