"""Explanations: which words drove a prediction, by integrated gradients on the input embeddings.

    rows = Explainer(models, spec, text_tokenizer).texts(texts)          Predictor.explain
    rows = Explainer(models, spec, text_tokenizer).arrays(TokenRows(ids, mask, types, owner))   as read
    html = page(sections, title, steps)                                  explanations.html

Integrated gradients (Sundararajan et al. 2017) through captum's LayerIntegratedGradients on the
backbone's input embedding layer (a LoRA model's base layer), in fp32, towards one label's score:
its logit (after the run's calibration temperature); for binary_bce the one logit for the second
label and its negative for the first (each label's log-odds); for regression the target's
prediction. The default label is the predicted one (multi-label: the most probable label;
regression: the first target).

The baseline is the same row with every text token replaced by the pad token, the special tokens
and the attention mask kept: the model sees the row's shape and nothing of its words (RoBERTa and
its kin number positions past pad tokens, so there an unused special token, <unk>, replaces the
text instead: a pad baseline would move every position). A special
token's embedding is then the same in both, so its attribution is exactly 0. Completeness: the
attributions of a row sum to score(row) - score(baseline); captum's convergence delta, the sum less
that difference (the path integral's error), is reported per row and stays within
TOLERANCE * max(1, |score(row) - score(baseline)|) at 64 steps on the models tested (more steps:
smaller). K folds: every fold model's attributions towards the same label, averaged, so
completeness holds for the fold-mean score. Sliding windows: each window is explained on its own,
towards its text's label (the windows aggregated as predictions are).

Words: where the text is at hand (plain texts), the tokenizer's own words (word ids and character
offsets); from token rows alone, WordPiece pieces joined at their "##" and BPE / SentencePiece
pieces at their word-start markers ("Ġ", "▁"). A word's attribution is the sum of its pieces'.
Special tokens and padding are not words.
"""

import dataclasses
import html
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .tokenization import fold_mean, predict_inputs
from .text_rules import encodable

TOLERANCE = 0.02  # |delta| <= TOLERANCE * max(1, |score - baseline score|) at 64 steps on the models tested
WORD_STARTS = ("Ġ", "▁", "Ċ")  # byte-level BPE (space, newline) and SentencePiece pieces that begin a word


def check_request(label, steps, label_names, where="explain"):
    """The label index asked for (None: the predicted one), after checking `label` and `steps`."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"{where}: steps={steps!r}; pass a whole number of integration steps, at least 1 (64 gives "
                        f"attributions within {TOLERANCE:g} of completeness)")
    if label is None:
        return None
    if label not in label_names:
        raise UserError(f"{where}: label={label!r} is not one of this model's labels ({', '.join(label_names)}); "
                        f"pass one of them, or leave label out to explain the predicted one")
    return label_names.index(label)


def base_model(model):
    """The backbone itself (with LoRA, peft's base model under the adapters)."""
    backbone = model.backbone
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


def embedding_layer(model):
    """The backbone's input embedding layer: the one integrated gradients interpolates."""
    return base_model(model).get_input_embeddings()


def outputs(model, input_ids, attention_mask, token_type_ids):
    """The model's outputs in fp32, whatever autocast is around the call."""
    with torch.autocast(input_ids.device.type, enabled=False):
        return model(input_ids, attention_mask, token_type_ids).float()


def scores(raw, n_labels):
    """Every label's score (rows, labels) from the model's outputs: binary_bce's one logit z becomes
    the log-odds of each label, [-z, z]; otherwise the outputs themselves."""
    return torch.cat([-raw, raw], dim=-1) if raw.shape[-1] == 1 and n_labels == 2 else raw


def template_ids(text_tokenizer):
    """The special tokens the tokenizer's template puts around texts, and the pad token."""
    special = {text_tokenizer.pad_id}
    for part in (*text_tokenizer.single, *text_tokenizer.pair[:3]):
        special.update(part)
    return special


def special_mask(text_tokenizer, ids):
    """True where a row holds a special token of the tokenizer's template, or padding."""
    return np.isin(ids, sorted(template_ids(text_tokenizer)))


def baseline_token(model, text_tokenizer):
    """The token that replaces the text: the pad token, except where the backbone numbers its
    positions by skipping pad tokens (RoBERTa and its kin): there a baseline of pad tokens would
    move every position, so the first special token of the vocabulary outside the template (<unk>)."""
    if getattr(getattr(base_model(model), "embeddings", None), "padding_idx", None) is None:
        return text_tokenizer.pad_id
    used = template_ids(text_tokenizer)
    spare = sorted(i for i, token in text_tokenizer.backend.get_added_tokens_decoder().items()
                   if token.special and i not in used)
    return spare[0] if spare else text_tokenizer.pad_id


def marker_words(backend, ids, special):
    """[(word, token positions)] from the token pieces' own markers: WordPiece's continuation prefix
    ("##"), else a word-start marker; a piece right after a special token starts a word."""
    prefix = getattr(backend.model, "continuing_subword_prefix", None)  # WordPiece: "##"; BPE: usually None
    groups, after_special = [], True
    for pos, token_id in enumerate(ids):
        if special[pos]:
            after_special = True
            continue
        token = backend.id_to_token(int(token_id)) or ""
        starts = not token.startswith(prefix) if prefix else token.startswith(WORD_STARTS)
        if starts or after_special:
            groups.append([pos])
        else:
            groups[-1].append(pos)
        after_special = False
    return [(backend.decode([int(ids[p]) for p in group], skip_special_tokens=False).strip(), group)
            for group in groups]


def offset_words(backend, text, ids, special):
    """[(word, token positions)] from the tokenizer's word ids and offsets into `text`, or None when
    the row's text tokens are not the text's own encoding cut (head, tail, head_tail or a window)."""
    encoding = backend.encode(encodable([text])[0], add_special_tokens=False)
    inner = np.flatnonzero(~special)
    where = align([int(i) for i in ids[inner]], encoding.ids)
    if where is None or any(w is None for w in encoding.word_ids):
        return None
    groups, last = [], None
    for pos, e in zip(inner, where):
        word = encoding.word_ids[e]
        if groups and word == last and pos == groups[-1][1][-1] + 1:
            groups[-1][1].append(int(pos))
            groups[-1][2] = encoding.offsets[e][1]
        else:
            groups.append([encoding.offsets[e][0], [int(pos)], encoding.offsets[e][1]])
        last = word
    return [(text[start:end].strip(), positions) for start, positions, end in groups]


def align(row, full):
    """Where each token of `row` sits in `full`: one contiguous run (head, tail, a window), or a
    head and a tail (head_tail); None if neither."""
    n, m = len(row), len(full)
    for start in range(m - n + 1):
        if full[start:start + n] == row:
            return list(range(start, start + n))
    for head in range(n + 1):
        if full[:head] == row[:head] and full[m - (n - head):] == row[head:]:
            return list(range(head)) + list(range(m - (n - head), m))
    return None


def join_blank(words):
    """Blank words (a lone space or newline piece) join the word after them (at the end: before)."""
    out, pending = [], []
    for word, positions in words:
        if not word:
            pending += positions
            continue
        out.append((word, sorted(pending + positions)))
        pending = []
    if pending:
        out = out[:-1] + [(out[-1][0], out[-1][1] + pending)] if out else [("", pending)]
    return out


def on_device(model, *arrays):
    """Each array as one row of int64 token values on the model's device."""
    device = next(model.parameters()).device
    return [torch.as_tensor(np.asarray(a), dtype=torch.long, device=device)[None] for a in arrays]


@dataclasses.dataclass
class TokenRows:
    """Token rows as the models read them; owner[i] is the text of row i (0..texts-1). texts: each
    text as the model read it (plain texts), for the tokenizer's own words; None: words come from
    the token pieces."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    owner: np.ndarray
    texts: list | None = None


@dataclasses.dataclass
class Explainer:
    """The fold models of one run and how its texts become tokens; `steps` integration steps a row,
    `batch_size` of them at a time."""

    models: list
    spec: object  # model.ModelSpec
    tokenizer: object  # tokenization.TextTokenizer
    steps: int = 64
    batch_size: int = 64

    def attribute(self, row, baseline, target):
        """Integrated gradients of one row (ids, mask, token types) towards label `target`, the mean over
        the fold models: (per-token attributions, convergence delta, score of the row, of the baseline)."""
        from captum.attr import LayerIntegratedGradients

        n_labels, steps, batch_size = len(self.spec.labels.names), self.steps, self.batch_size

        per_token, deltas, score, base = [], [], [], []
        for model in self.models:
            ids, empty, mask_t, types_t = on_device(model, row[0], baseline, row[1], row[2])

            def forward(input_ids, attention_mask, token_type_ids, model=model):
                return scores(outputs(model, input_ids, attention_mask, token_type_ids), n_labels)

            lig = LayerIntegratedGradients(forward, embedding_layer(model))
            attributions, delta = lig.attribute(ids, baselines=empty, additional_forward_args=(mask_t, types_t),
                                                target=target, n_steps=steps, internal_batch_size=batch_size,
                                                return_convergence_delta=True)
            per_token.append(attributions.sum(-1)[0].detach().double().cpu().numpy())
            deltas.append(float(delta[0]))
            with torch.no_grad():
                score.append(float(forward(ids, mask_t, types_t)[0, target]))
                base.append(float(forward(empty, mask_t, types_t)[0, target]))
        return np.mean(per_token, axis=0), float(np.mean(deltas)), float(np.mean(score)), float(np.mean(base))

    def arrays(self, token_rows, label=None):
        """Attributions for TokenRows: one dict per row (a text, or each window of a text), in row
        order. See Predictor.explain for what each dict holds."""
        models, spec, text_tokenizer = self.models, self.spec, self.tokenizer
        problem, names = spec.labels.problem, list(spec.labels.names)
        target = check_request(label, self.steps, names)
        owner, texts = np.asarray(token_rows.owner, dtype=np.int64), token_rows.texts
        n_texts = int(owner.max()) + 1 if len(owner) else 0
        windowed = bool(spec.tokenization.window_stride)
        # each row cut to its unmasked tokens: padding is not part of what the model read
        rows = [[np.asarray(a[r])[np.asarray(token_rows.attention_mask[r]) > 0]
                 for a in (token_rows.input_ids, token_rows.attention_mask, token_rows.token_type_ids)]
                for r in range(len(owner))]
        with torch.no_grad():  # every fold's probabilities: each text's answer, the label by default
            fold_probs = np.stack([np.concatenate([problem.probabilities(outputs(model, *on_device(model, *row)))
                                                   .numpy()
                                                   for row in rows]) for model in models])
        text_probs = fold_mean(fold_probs, owner, n_texts, spec.tokenization.window_aggregate if windowed else None,
                               problem)
        results, seen = [], {}
        empty = baseline_token(models[0], text_tokenizer)
        for r, row in enumerate(rows):
            ids, text = row[0], int(owner[r])
            chosen = target if target is not None else 0 if problem.regression else int(np.argmax(text_probs[text]))
            special = special_mask(text_tokenizer, ids)
            baseline = np.where(special, ids, empty)
            token_attr, delta, score, base = self.attribute(row, baseline, chosen)
            words = offset_words(text_tokenizer.backend, texts[text], ids, special) if texts is not None else None
            words = join_blank(words or marker_words(text_tokenizer.backend, ids, special))
            window = seen.get(text, 0)
            seen[text] = window + 1
            results.append({
                "text": text, "window": window if windowed else None, "label": names[chosen],
                "prediction": problem.labels(text_probs[text:text + 1], names)[0],
                "probabilities": dict(zip(names, map(float, text_probs[text]))),
                "window_probabilities": dict(zip(names, map(float, fold_probs[:, r].mean(0)))) if windowed else None,
                "words": [w for w, _ in words], "attributions": [float(token_attr[p].sum()) for _, p in words],
                "tokens": [text_tokenizer.backend.id_to_token(int(i)) for i in ids],
                "token_attributions": [float(a) for a in token_attr],
                "score": score, "baseline_score": base, "delta": delta})
        return results


    def texts(self, texts, pairs=None, label=None):
        """Attributions for raw texts, tokenized as the run's data was (Predictor.explain)."""
        spec, text_tokenizer = self.spec, self.tokenizer
        check_request(label, self.steps, list(spec.labels.names))
        texts, pairs = predict_inputs(texts, pairs, bool(spec.tokenization.text_pair_column))
        if not texts:
            raise UserError("explain got no texts; pass at least one text to explain")
        ids, types, mask, lengths, owner = text_tokenizer.rows(texts, pairs)
        plain = text_tokenizer.texts(texts) if not text_tokenizer.template and pairs is None else None
        return self.arrays(TokenRows(ids, mask, types, owner, plain), label)


# ---------------------------------------------------------------------------- evaluate.py's rows


def chosen_rows(eval_cfg, split_ids):
    """{split: row numbers to explain}: the rows of eval.explain_ids (each must be a row of some
    split), else the first eval.explain_rows rows of each split."""
    if eval_cfg.explain_ids is None:
        return {split: list(range(min(eval_cfg.explain_rows, len(ids)))) for split, ids in split_ids.items()}
    wanted = [str(i) for i in eval_cfg.explain_ids]
    rows = {split: [r for r, i in enumerate(ids) if str(i) in wanted] for split, ids in split_ids.items()}
    found = {str(split_ids[s][r]) for s, chosen in rows.items() for r in chosen}
    missing = [i for i in wanted if i not in found]
    if missing:
        first = next((str(ids[0]) for ids in split_ids.values() if len(ids)), "")
        if list(split_ids) == ["input"]:
            raise UserError(f"eval.explain_ids: no row of the texts predicted has id {missing[0]!r}; pass ids of "
                            f"eval.input's id column (data.id_column; without one the row numbers 0, 1, ...), e.g. "
                            f"{first!r}")
        raise UserError(f"eval.explain_ids: no row of the split(s) predicted ({', '.join(split_ids)}) has id "
                        f"{missing[0]!r}; pass ids from their id column (e.g. {first!r}), or predict the split that "
                        f"holds it with eval.splits")
    return rows


def split_rows(eval_cfg, data_dir, splits):
    """{split: row numbers to explain} of the splits predicted (chosen_rows), from their ids.npy."""
    return chosen_rows(eval_cfg, {s: np.load(Path(data_dir) / s / "ids.npy", allow_pickle=False) for s in splits})


def split_page(eval_cfg, models, spec, text_tokenizer, data_dir, chosen, title):
    """explanations.html for the rows `chosen` of each split: the token rows the models read
    (data_process.py's arrays), with the true labels where the split is labelled."""
    from .loader import Windows

    data_dir, sections = Path(data_dir), []
    for split, texts in chosen.items():
        if not texts:
            continue
        ids = np.load(data_dir / split / "ids.npy", allow_pickle=False)
        rows, position = Windows(data_dir / split).rows(texts)
        arrays = [np.asarray(np.load(data_dir / split / f"{name}.npy", mmap_mode="r")[rows])
                  for name in ("input_ids", "attention_mask", "token_type_ids")]
        explained = Explainer(models, spec, text_tokenizer, eval_cfg.explain_steps, eval_cfg.batch_size).arrays(
            TokenRows(*arrays, position))
        truth = true_labels(data_dir / split / "labels.npy", spec, texts)
        sections.append((f"split {split}", [(str(ids[texts[e["text"]]]), e, truth[e["text"]] if truth else None)
                                            for e in explained]))
    return page(sections, title, eval_cfg.explain_steps)


def true_labels(path, spec, texts=None):
    """Each chosen row's true label as shown (a name, names joined by |, or a value), or None."""
    if path is None or not path.is_file():
        return None
    labels = np.load(path)
    return label_texts(labels if texts is None else labels[texts], spec)


def label_texts(labels, spec):
    problem, names = spec.labels.problem, spec.labels.names
    if problem.regression:
        return [" ".join(f"{float(v):g}" for v in np.atleast_1d(row)) for row in labels]
    if problem.multi_label:
        return ["|".join(names[j] for j in np.flatnonzero(row)) for row in labels]
    return [names[int(y)] for y in labels]


def texts_page(eval_cfg, predictor, texts, ids, pairs, labels):
    """explanations.html for eval.texts / eval.input: the rows of eval.explain_ids, else the first
    eval.explain_rows, explained from their raw texts by the Predictor's models."""
    chosen = chosen_rows(eval_cfg, {"input": ids})["input"]
    run = Path(predictor.checkpoints[0]["path"]).parent.parent.name if predictor.checkpoints else "run"
    explainer = Explainer(predictor.models, predictor.spec, predictor.tokenizer, eval_cfg.explain_steps,
                          predictor.batch_size)
    explained = explainer.texts([texts[r] for r in chosen], None if pairs is None else [pairs[r] for r in chosen]
                                ) if chosen else []
    truth = label_texts(np.asarray(labels)[chosen], spec=predictor.spec) if labels is not None and chosen else None
    rows = [(str(ids[chosen[e["text"]]]), e, truth[e["text"]] if truth else None) for e in explained]
    return page([("input", rows)] if rows else [], f"Explanations: {run} (input texts)", eval_cfg.explain_steps)


# ---------------------------------------------------------------------------- the page

STYLE = """
body { font: 15px/1.6 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ccc; margin-top: 2em; }
.row { margin: 1em 0 1.6em; } .meta { color: #555; font-size: 0.9em; } .meta b { color: #111; }
.text { margin: 0.3em 0; } .w { padding: 0.1em 0.15em; border-radius: 3px; }
.key { display: inline-block; width: 1em; height: 1em; vertical-align: middle; border-radius: 2px; }
.off { color: #a00; }
"""


def shade(value, scale):
    """A word's background: green where it pushes towards the label, red where against, its alpha
    |value| / the row's largest |value|."""
    alpha = abs(value) / scale if scale > 0 else 0.0
    colour = "22,160,60" if value >= 0 else "215,40,40"
    return f"background: rgba({colour},{alpha:.3f})"


def row_html(row_id, result, truth):
    esc = html.escape
    probs = ", ".join(f"{esc(name)}: {p:.3f}" for name, p in result["probabilities"].items())
    prediction = result["prediction"]
    values = isinstance(prediction, float) or isinstance(prediction, list) and bool(prediction) and all(
        isinstance(v, float) for v in prediction)  # regression: the predictions, not probabilities
    prediction = "|".join(map(str, prediction)) if isinstance(prediction, list) else str(prediction)
    parts = [f"id <b>{esc(row_id)}</b>", f"predicted <b>{esc(prediction)}</b>"]
    if truth is not None:
        parts.append(f"true <b>{esc(truth)}</b>")
    if result["window"] is not None:
        parts.append(f"window {result['window']}")
    parts += [f"{'values' if values else 'probabilities'}: {probs}",
              f"explained: <b>{esc(result['label'])}</b>",
              f"score {result['score']:.4f} (baseline {result['baseline_score']:.4f})"]
    gap = abs(result["score"] - result["baseline_score"])
    off = abs(result["delta"]) > TOLERANCE * max(1.0, gap)
    parts.append(f"<span class=\"{'off' if off else 'ok'}\">completeness delta {result['delta']:+.2e}</span>")
    scale = max((abs(a) for a in result["attributions"]), default=0.0)
    words = " ".join(f"<span class=\"w\" style=\"{shade(a, scale)}\" title=\"{a:+.4f}\">{esc(w)}</span>"
                     for w, a in zip(result["words"], result["attributions"]))
    return f"<div class=\"row\"><div class=\"meta\">{' · '.join(parts)}</div><p class=\"text\">{words}</p></div>"


def page(sections, title, steps):
    """One self-contained HTML page (inline CSS, no scripts): per section a heading, per row its
    meta line and its words shaded by attribution. sections: [(heading, [(row id, result, true
    label or None)])]."""
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>Integrated gradients ({steps} steps) on the input embeddings, towards the label explained; the "
            f"baseline is each row with its text tokens replaced by the pad token. "
            f"<span class=\"key\" style=\"{shade(1, 1)}\"></span> for the label, "
            f"<span class=\"key\" style=\"{shade(-1, 1)}\"></span> against it; hover a word for its value. A row's "
            f"values sum to its score minus the baseline's, up to the completeness delta.</p>"]
    for heading, rows in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body.extend(row_html(*row) for row in rows)
    if not sections:
        body.append("<p>No rows to explain.</p>")
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
