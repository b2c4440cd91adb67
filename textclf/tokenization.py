"""Texts to token rows, exactly as data_process.py made the training arrays.

Needs only numpy and the `tokenizers` library (no torch, no transformers), so the ONNX Runtime
predictor can use it; a transformers tokenizer is needed only to read the special-token
templates once (TextTokenizer.from_hf), which then travel as JSON (to_json / from_json).
"""

import dataclasses

import numpy as np

from . import prompts
from .errors import UserError
from .text_rules import encodable, fill_template, template_fields, template_values


def predict_inputs(texts, pairs, needs_pairs):
    """What Predictor.predict / OnnxPredictor.predict were given -> (a list of rows, a list of
    second segments or None): one text or row, or any sequence, iterable or array of them (read
    once); pairs, when the model reads text pairs, one string per text."""
    if texts is None:
        texts = []
    elif isinstance(texts, (str, dict)):
        texts = [texts]
    texts = list(texts)
    if pairs is not None:
        if not needs_pairs:
            raise UserError("this model reads single texts (it was not trained on text pairs); drop pairs=")
        pairs = [pairs] if isinstance(pairs, str) else list(pairs)
        if len(pairs) != len(texts):
            raise UserError(f"{len(texts)} text(s) but {len(pairs)} pair(s); give one second segment per text")
        bad = next((p for p in pairs if not isinstance(p, str)), None)
        if bad is not None or any(p is None for p in pairs):
            raise UserError(f"a second segment is a {type(bad).__name__}; pairs must be strings, one per text")
        pairs = [p.strip() for p in pairs]
    elif needs_pairs and texts:
        raise UserError("this model was trained on text pairs; pass pairs=[...] with one second segment per text")
    return texts, pairs


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """A tokenizer's special tokens around text, as TextTokenizer._templates reads them off it."""

    pad_id: int
    single: tuple  # (before, after) one text
    pair: tuple  # (before, between, after) two segments, and the second segment's token type


@dataclasses.dataclass(frozen=True)
class WindowRule:
    """data.window_stride / max_windows / window_aggregate: texts read as sliding windows (stride > 0)."""

    stride: int = 0
    max_windows: int = 0
    aggregate: str = "mean"


class TextTokenizer:
    """The model's tokenizer, wrapped to turn texts (and optional second segments) into token rows
    of at most max_len, truncated one of three ways.

    Texts are tokenized without special tokens in one batched call; truncation and the
    special-token template (read off the tokenizer itself) are applied here, so `head`,
    `tail` and `head_tail` behave the same for every model family. With data.template, rows are
    mappings of its fields, and a too-long row is cut inside its fields (prompts.py), never in
    the template's own text.
    """

    def __init__(self, backend_json, specials, max_len, truncation="head", head_tokens=None, windows=None,
                 template=None, template_cut=None):
        # The Rust tokenizer directly, on a private copy without the truncation or padding a
        # tokenizer.json may carry: the transformers wrapper costs as much again per row.
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(backend_json)
        self.backend.no_truncation()
        self.backend.no_padding()
        self.max_len = max_len
        self.truncation = truncation
        self.pad_id = specials.pad_id
        self.single = tuple(list(part) for part in specials.single)
        pair = specials.pair
        self.pair = (list(pair[0]), list(pair[1]), list(pair[2]), int(pair[3]))
        n_special = len(self.single[0]) + len(self.single[1])
        if max_len <= len(self.pair[0]) + len(self.pair[1]) + len(self.pair[2]) + 1:
            raise UserError(f"data.max_len={max_len} leaves no room for text after the special tokens; raise it")
        budget = max_len - n_special
        self.text_budget = budget  # text tokens in a row of a single text
        self.windows = windows or WindowRule()
        self.template = template  # data.template: rows (mappings of columns) become texts exactly as in data_process
        self.template_cut = template_cut  # data.template_truncate: the field a too-long row is cut in first
        self.head_tokens = head_tokens if head_tokens is not None else budget // 4
        if truncation == "head_tail" and not 0 <= self.head_tokens <= budget:
            raise UserError(f"data.head_tokens={head_tokens} must be between 0 and {budget} (max_len minus special tokens)")
        self.last_cut = np.zeros(0, dtype=np.int64)  # tokens each text of the last rows() call lost

    @property
    def window_stride(self):
        return self.windows.stride

    @property
    def aggregate(self):
        """How a text's windows become one row (per_text): the window aggregate when texts are
        read as sliding windows, else None (one row per text)."""
        return self.windows.aggregate if self.windows.stride else None

    @classmethod
    def from_hf(cls, tokenizer, max_len, truncation="head", head_tokens=None, windows=None, template=None,
                template_cut=None):
        """From a transformers fast tokenizer, reading its special-token templates off it."""
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        single, pair = cls._templates(tokenizer)
        return cls(tokenizer.backend_tokenizer.to_str(), SpecialTokens(pad_id, single, pair), max_len, truncation,
                   head_tokens, windows, template, template_cut)

    @classmethod
    def for_spec(cls, tokenizer, tokenization):
        """As a run's model.Tokenization says (max_len, truncation, windows, template)."""
        return cls.from_hf(tokenizer, tokenization.max_len, tokenization.truncation, tokenization.head_tokens,
                           WindowRule(tokenization.window_stride, tokenization.max_windows,
                                      tokenization.window_aggregate), tokenization.template,
                           tokenization.template_truncate)

    def to_json(self):
        """Everything but the vocabulary (tokenizer.json) that encoding needs, for from_json."""
        return {"max_len": self.max_len, "truncation": self.truncation, "head_tokens": self.head_tokens,
                "pad_id": self.pad_id, "single": list(self.single), "pair": list(self.pair),
                "window_stride": self.windows.stride, "max_windows": self.windows.max_windows,
                "window_aggregate": self.windows.aggregate, "template": self.template,
                "template_truncate": self.template_cut}

    @classmethod
    def from_json(cls, backend_json, doc):
        windows = WindowRule(doc.get("window_stride", 0), doc.get("max_windows", 0), doc.get("window_aggregate", "mean"))
        return cls(backend_json, SpecialTokens(doc["pad_id"], doc["single"], doc["pair"]), doc["max_len"],
                   doc["truncation"], doc["head_tokens"], windows, doc.get("template"), doc.get("template_truncate"))

    def texts(self, items):
        """Raw rows -> model input texts: with a template, each row (a mapping of its columns, or a
        plain text for a one-field template) filled in; else each text stripped."""
        if self.template:
            fields = template_fields(self.template)
            return [fill_template(self.template, item, fields) for item in items]
        for item in items:
            if not isinstance(item, str):
                raise UserError(f"a text to classify is a {type(item).__name__}; this model reads plain texts (it has "
                                f"no data.template): pass strings")
        return [t.strip() for t in items]

    def fields(self, items):
        """Template rows -> {field: its text}, checked and cleaned as fill_template reads them."""
        fields = template_fields(self.template)
        return [template_values(self.template, item, fields) for item in items]

    def rows(self, items, pairs=None):
        """Token rows for raw rows (texts; with a template, mappings of its columns), as the training
        data was made: (input_ids, token_type_ids, attention_mask, lengths, owner), owner[i] the text
        of row i (one row per text, or with sliding windows several); per_text(values, owner, n,
        self.aggregate, problem) turns per-row probabilities into one row per text. `last_cut`
        then holds the tokens each text lost to max_len."""
        if self.windows.stride:
            ids, types, lengths, owner, self.last_cut = self.sliding_windows(  # what max_windows leaves out
                self.texts(items), self.windows.stride, self.windows.max_windows)
        else:
            rows = self.fields(items) if self.template and pairs is None else self.texts(items)
            ids, types, lengths, self.last_cut = self.encode(rows, pairs)
            owner = np.arange(len(items), dtype=np.int32)
        mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.uint8)
        return ids, types, mask, lengths, owner

    @staticmethod
    def _templates(tokenizer):
        """Special tokens before/between/after segments, and the segment token types."""
        a_txt, b_txt = "hello", "world"
        a = tokenizer(a_txt, add_special_tokens=False)["input_ids"]
        b = tokenizer(b_txt, add_special_tokens=False)["input_ids"]
        one = tokenizer(a_txt)
        two = tokenizer(a_txt, b_txt)

        def find(seq, sub, start=0):
            for i in range(start, len(seq) - len(sub) + 1):
                if seq[i:i + len(sub)] == sub:
                    return i
            raise UserError(f"cannot read the special-token template of tokenizer {type(tokenizer).__name__}")

        ids = one["input_ids"]
        i = find(ids, a)
        single = (ids[:i], ids[i + len(a):])
        ids2 = two["input_ids"]
        i = find(ids2, a)
        j = find(ids2, b, i + len(a))
        types2 = two.get("token_type_ids") or [0] * len(ids2)
        pair = (ids2[:i], ids2[i + len(a):j], ids2[j + len(b):], types2[j] if j < len(types2) else 0)
        # token type of everything from the second segment on (its separator included)
        return single, pair

    def _cut(self, ids, budget):
        if len(ids) <= budget:
            return ids
        if self.truncation == "head":
            return ids[:budget]
        if self.truncation == "tail":
            return ids[len(ids) - budget:] if budget else []
        head = min(self.head_tokens, budget)
        tail = budget - head
        return ids[:head] + (ids[len(ids) - tail:] if tail else [])

    def sliding_windows(self, texts, stride, max_windows=0):
        """Sliding windows over whole texts (data.window_stride): each text's tokens cut into
        windows of the text budget (max_len less the special tokens) starting every `stride`
        tokens, the last one ending at the text's end; with max_windows > 0 the first
        max_windows - 1 and the last are kept. Returns (input_ids[w, max_len] int32,
        token_type_ids[w, max_len] uint8, lengths[w], doc[w] int32: the text each window comes
        from, in text order, dropped[n_texts]: the tokens of each text in no window, which
        max_windows leaves out between the windows it keeps)."""
        pre, post = self.single
        budget = self.max_len - len(pre) - len(post)
        pieces, doc = [], []
        dropped = np.zeros(len(texts), dtype=np.int64)
        for row, encoding in enumerate(self.backend.encode_batch(encodable(texts), add_special_tokens=False)):
            ids = encoding.ids
            starts = window_starts(len(ids), budget, stride, max_windows)
            covered = np.zeros(len(ids), dtype=bool)
            for start in starts:
                covered[start:start + budget] = True
            dropped[row] = len(ids) - int(covered.sum())
            for start in starts:
                pieces.append(pre + ids[start:start + budget] + post)
                doc.append(row)
        input_ids = np.full((len(pieces), self.max_len), self.pad_id, dtype=np.int32)
        lengths = np.zeros(len(pieces), dtype=np.int32)
        for row, seq in enumerate(pieces):
            input_ids[row, :len(seq)] = seq
            lengths[row] = len(seq)
        return input_ids, np.zeros_like(input_ids, dtype=np.uint8), lengths, np.asarray(doc, dtype=np.int32), dropped

    def encode(self, texts, pairs=None):
        """Return (input_ids[n, max_len] int32, token_type_ids[n, max_len] uint8, lengths, tokens each
        row lost to max_len). `texts` are strings, or with a template mappings of its fields, which a
        too-long row is cut inside (prompts.py)."""
        pre, post = self.single
        if self.template and pairs is None and texts and isinstance(texts[0], dict):
            budget = self.max_len - len(pre) - len(post)
            cut = prompts.Cut(self.truncation, self.head_tokens, self.template_cut)
            first, lost = prompts.fit_rows(self.backend, self.template, texts, budget, cut)
            return self._rows(first, pre, post) + (lost,)
        first = [e.ids for e in self.backend.encode_batch(encodable(texts), add_special_tokens=False)]
        second = None
        if pairs is not None:
            second = [e.ids for e in self.backend.encode_batch(encodable(pairs), add_special_tokens=False)]
        n = len(texts)
        input_ids = np.full((n, self.max_len), self.pad_id, dtype=np.int32)
        token_types = np.zeros((n, self.max_len), dtype=np.uint8)
        lengths = np.zeros(n, dtype=np.int32)
        lost = np.zeros(n, dtype=np.int64)
        if second is None:
            budget = self.max_len - len(pre) - len(post)
            lost[:] = [max(len(ids) - budget, 0) for ids in first]
            return self._rows([self._cut(ids, budget) for ids in first], pre, post) + (lost,)
        pre, mid, post, type_b = self.pair
        budget = self.max_len - len(pre) - len(mid) - len(post)
        for row, (ids_a, ids_b) in enumerate(zip(first, second)):
            la, lb = len(ids_a), len(ids_b)
            if la + lb > budget:  # longest first: trim the longer segment, then both evenly
                lost[row] = la + lb - budget
                short = min(la, lb)
                if short * 2 <= budget:
                    keep_a, keep_b = (la, budget - la) if la == short else (budget - lb, lb)
                else:
                    keep_a = keep_b = budget // 2
                    keep_a += budget - keep_a - keep_b
                ids_a, ids_b = self._cut(ids_a, keep_a), self._cut(ids_b, keep_b)
            seq_a = pre + ids_a + mid
            seq = seq_a + ids_b + post
            input_ids[row, :len(seq)] = seq
            token_types[row, len(seq_a):len(seq)] = type_b  # second segment and its closing token
            lengths[row] = len(seq)
        return input_ids, token_types, lengths, lost

    def _rows(self, pieces, pre, post):
        """Single-segment token id lists -> (input_ids, token_type_ids, lengths) with the special tokens."""
        input_ids = np.full((len(pieces), self.max_len), self.pad_id, dtype=np.int32)
        lengths = np.zeros(len(pieces), dtype=np.int32)
        for row, ids in enumerate(pieces):
            seq = pre + ids + post
            input_ids[row, :len(seq)] = seq
            lengths[row] = len(seq)
        return input_ids, np.zeros_like(input_ids, dtype=np.uint8), lengths


def window_starts(n_tokens, budget, stride, max_windows=0):
    """Where a text's windows start: 0, stride, 2 stride, ... and a last one that ends at the
    text's end (every token is in some window when stride <= budget)."""
    if n_tokens <= budget:
        return [0]
    starts = list(range(0, n_tokens - budget, stride)) + [n_tokens - budget]
    if max_windows and len(starts) > max_windows:  # the first max_windows - 1 and the last (k = 1: the last)
        starts = starts[:max_windows - 1] + [starts[-1]]
    return starts


def aggregate_windows(values, doc, n_docs, how, problem=None):
    """Window probabilities (or regression predictions), (windows, k), to one row per text in
    text order: the mean over a text's windows, the classwise max (renormalised where a row's
    probabilities sum to 1, so it still does), or the mean of its first and last window. `doc` is
    each window's text (0..n_docs-1), windows of one text in their order."""
    values = np.asarray(values, dtype=np.float64)
    doc = np.asarray(doc, dtype=np.int64)
    counts = np.bincount(doc, minlength=n_docs)
    if (counts == 0).any():
        raise ValueError("a text has no window; the window index does not match the texts")
    if how == "mean":
        out = np.zeros((n_docs, values.shape[1]))
        np.add.at(out, doc, values)
        out /= counts[:, None]
    elif how == "max":
        out = np.full((n_docs, values.shape[1]), -np.inf)
        np.maximum.at(out, doc, values)
        if problem is not None and problem.one_class:
            out /= out.sum(axis=1, keepdims=True)
    elif how == "first_last":  # a text's windows come in order: its lowest and highest window row
        index = np.arange(len(doc))
        first, last = np.full(n_docs, len(doc)), np.full(n_docs, -1)
        np.minimum.at(first, doc, index)
        np.maximum.at(last, doc, index)
        out = (values[first] + values[last]) / 2
    else:
        raise ValueError(f"unknown window aggregate {how!r}")
    return out.astype(np.float32)


def per_text(values, owner, n_texts, aggregate, problem=None):
    """Per-token-row values (rows, k) -> one row per text: unchanged where every text is one row
    (aggregate None), else each text's windows aggregated (aggregate_windows)."""
    if aggregate is None:
        return values
    return aggregate_windows(values, owner, n_texts, aggregate, problem)


def fold_texts(fold_values, owner, n_texts, aggregate, problem=None):
    """Each fold's per-row values (folds, rows, k) -> (folds, texts, k), float32: windows are
    aggregated fold by fold, since an aggregate such as the max does not commute with the mean."""
    return np.stack([per_text(values, owner, n_texts, aggregate, problem) for values in fold_values]).astype(np.float32)


def fold_mean(fold_values, owner, n_texts, aggregate, problem=None):
    """The fold mean over texts (texts, k): what evaluate.py, Predictor, OnnxPredictor and export's
    int8 check all report."""
    return fold_texts(fold_values, owner, n_texts, aggregate, problem).mean(axis=0)
