"""Prompts keep their question: a data.template row too long for max_len is cut inside its fields,
never in the template's own text, so a prompt's instruction and its closing words (the
"answer:" a verbalizer reads the next token after) always stay.

    fit_rows(backend, template, rows, budget, cut) -> (token ids per row, tokens cut per row)

A row that fits is tokenized as its filled template is, exactly as before. A row that does not
loses tokens from one field at a time: the field data.template_truncate names while it has text,
else the longest; that field keeps its head, its tail or both as data.truncation says. The row is
then tokenized whole again (a cut can move a token at the seams) until it fits. Cuts are made at
token boundaries of the field's own text, by character offsets, so what is kept is the text as
written. Needs the `tokenizers` library only, like tokenization.py (the ONNX predictor uses it).
"""

import dataclasses

import numpy as np

from .text_rules import encodable, fill_template, template_fields

ROUNDS = 32  # re-tokenizations a row may take to fit; each one removes at least a token of a field


@dataclasses.dataclass(frozen=True)
class Cut:
    """How a too-long row is cut: data.truncation and head_tokens applied inside a field, and the
    field to cut first (data.template_truncate; None: the longest)."""

    truncation: str = "head"
    head_tokens: int = 0
    field: str | None = None


def fixed_tokens(backend, template):
    """Tokens of the template's own text: the template filled with empty fields."""
    fields = template_fields(template)
    return len(backend.encode(fill_template(template, {f: "" for f in fields}, fields), add_special_tokens=False).ids)


def fit_rows(backend, template, rows, budget, cut):
    """Each row (a mapping of the template's fields to their cleaned text) as token ids of at most
    `budget`, and how many tokens each row lost. The template's own text is never cut; should it
    alone be over the budget (data_process refuses such a template), the row's end is cut."""
    fields = template_fields(template)
    rows = [dict(zip(row, encodable(list(row.values())))) for row in rows]  # lone surrogates read as U+FFFD
    texts = [fill_template(template, row, fields) for row in rows]
    encoded = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    lost = np.zeros(len(rows), dtype=np.int64)
    for i, ids in enumerate(encoded):
        if len(ids) > budget:
            fitted = fit_row(backend, template, fields, dict(rows[i]), ids, budget, cut)
            lost[i] = len(ids) - len(fitted)
            encoded[i] = fitted
    return encoded, lost


def fit_row(backend, template, fields, values, ids, budget, cut):
    """One row cut inside its fields until its tokens fit the budget."""
    for _ in range(ROUNDS):
        excess = len(ids) - budget
        if excess <= 0:
            return ids
        field = field_to_cut(backend, values, cut.field)
        if field is None:  # every field is empty: the template alone is too long
            break
        text, more = values[field], excess
        while len(text) >= len(values[field]) and text:  # a character of several tokens (byte-level BPE) goes whole
            text, more = cut_text(backend, values[field], more, cut), more + 1
        values[field] = text
        ids = backend.encode(fill_template(template, values, fields), add_special_tokens=False).ids
    return ids[:budget]


def field_to_cut(backend, values, named=None):
    """The field data.template_truncate names while it has text, else the field of most tokens."""
    if named and values.get(named):
        return named
    sizes = {f: len(backend.encode(v, add_special_tokens=False).ids) for f, v in values.items() if v}
    return max(sizes, key=sizes.get) if sizes else None


def cut_text(backend, text, excess, cut):
    """`text` less at least `excess` of its tokens, cut as data.truncation says: its head kept, its
    tail, or both (head_tokens of the head at most); by character offsets, so kept text is as written."""
    encoding = backend.encode(text, add_special_tokens=False)
    offsets, n = encoding.offsets, len(encoding.ids)
    keep = max(n - excess, 0)
    if keep == 0:
        return ""
    if cut.truncation == "head":
        return text[:offsets[keep - 1][1]].strip()
    if cut.truncation == "tail":
        return text[offsets[n - keep][0]:].strip()
    head = min(cut.head_tokens, keep)
    tail = keep - head
    head_end = offsets[head - 1][1] if head else 0
    kept = [text[:head_end].strip()] if head else []
    if tail:  # never again the characters the head kept (a character of several tokens spans both)
        kept.append(text[max(offsets[n - tail][0], head_end):].strip())
    return " ".join(k for k in kept if k)
