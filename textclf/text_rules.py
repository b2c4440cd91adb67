"""Rules for text that configs, data files and the predictors share: what an empty text is, how a
number and a delimiter are written, how data.template fills its fields, which raw texts
eval.texts may give.

A leaf module (it imports only errors): config, rawdata, tokenization and the stages all read
these rules from here, so a text is empty, a number is a number, and a template is filled in
exactly one way everywhere.
"""

import re
import string
import unicodedata

from .errors import UserError

# Characters that show nothing: a text made only of these (and spaces) is empty.
_INVISIBLE = {"Cc", "Cf", "Zs", "Zl", "Zp"}


def clean_text(text):
    """The text with surrounding whitespace removed; "" when nothing visible is left (zero-width
    spaces, joiners, byte-order marks and control characters alone are not a text)."""
    text = text.strip()
    if text and all(unicodedata.category(ch) in _INVISIBLE for ch in text):
        return ""
    return text


# a number as data files write it: ASCII digits, a point, an exponent, inf / nan (refused later, by name);
# Python's float() would also read '1_000', non-ASCII digits and surrounding junk like '\x0c'
_NUMBER = re.compile(r"[+-]?((\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|inf(inity)?|nan)", re.ASCII | re.IGNORECASE)


def plain_number(text):
    """float(text) for a number written as data files write them, else None."""
    return float(text) if _NUMBER.fullmatch(text) else None


_ESCAPES = {"\\t": "\t", "\\n": "\n", "\\r": "\r", "\\\\": "\\", "\\0": "\0"}


def unescape_delimiter(value):
    """A delimiter as written in a config ('\\t' for a tab, '\\x1f', '\\u00a7') -> the character
    itself; anything else stays as written (and the one-character rule then judges it)."""
    if "\\" not in value or value == "\\":
        return value
    if value in _ESCAPES:
        return _ESCAPES[value]
    code = re.fullmatch(r"\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4}))", value)
    return chr(int(code.group(1) or code.group(2), 16)) if code else value


def encodable(texts):
    """Texts the tokenizer can take: a lone UTF-16 surrogate (a JSON '\\ud800' escape, say) cannot
    be encoded as UTF-8, so it becomes U+FFFD, as a file read with errors="replace" would have it."""
    return [t.encode("utf-8", "surrogatepass").decode("utf-8", "replace") if _SURROGATE.search(t) else t
            for t in texts]


_SURROGATE = re.compile("[\ud800-\udfff]")


# ---------------------------------------------------------------------------- data.template


def template_fields(template):
    """The column names a data.template fills, in order of first use ('{{' and '}}' are braces)."""
    fields = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # an unbalanced brace, an empty conversion ...
        raise UserError(f"config key data.template: {template!r} cannot be read ({exc}); write fields as {{column}} "
                        f"and literal braces as {{{{ }}}}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or spec or conversion or any(c in name for c in ".[]") or name.isdigit():
            raise UserError(f"config key data.template: {{{name}{'!' + conversion if conversion else ''}"
                            f"{':' + spec if spec else ''}}} is not a plain column name; write fields as {{column}} "
                            f"(not a number alone; literal braces as {{{{ }}}})")
        if name not in fields:
            fields.append(name)
    if not fields:
        raise UserError(f"config key data.template: {template!r} names no column; write fields as {{column}}, e.g. "
                        f"'title:{{title}}, abstract:{{abstract}}'")
    return fields


def fill_template(template, item, fields=None):
    """One model input from a data.template: `item` is a mapping of column -> value, or for a
    template of one field a plain text. Values are stripped; a missing column is refused."""
    return template.format_map(template_values(template, item, fields)).strip()


def template_values(template, item, fields=None):
    """{field: its text} of a row for a data.template, checked and cleaned (see fill_template)."""
    fields = fields or template_fields(template)
    if isinstance(item, str):
        if len(fields) != 1:
            raise UserError(f"this model's texts are made by the template {template!r} from the columns "
                            f"{', '.join(fields)}; pass each row as a mapping of those columns, not a plain text")
        item = {fields[0]: item}
    if not isinstance(item, dict):
        raise UserError(f"a row for the template {template!r} must be a mapping of {', '.join(fields)}, "
                        f"got {type(item).__name__}")
    missing = [f for f in fields if f not in item]
    if missing:
        raise UserError(f"a row lacks '{missing[0]}', which the template {template!r} needs; give every row "
                        f"{', '.join(fields)}")
    return {f: cell_text(item[f]) for f in fields}


def cell_text(value):
    """A cell as data_process writes it into a template: text as is, JSON true/false as written,
    null as nothing, numbers as Python prints them; stripped."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return clean_text(str(value))


# ---------------------------------------------------------------------------- eval.texts


def check_texts(texts, pair_column=None, template=None):
    """eval.texts against the data a run reads: at least one text, none empty, and plain texts
    only where the run's rows are plain texts (not pairs, not a template of several columns).
    train.py checks them before it starts (it predicts them at its end), evaluate.py before it
    predicts."""
    if not texts:
        raise UserError("eval.texts is empty; give at least one text, e.g. eval.texts='[\"some text\"]', or leave it out")
    for number, text in enumerate(texts):
        if not clean_text(text):
            raise UserError(f"eval.texts item {number} is empty (or only invisible characters); give a text")
    if pair_column:
        raise UserError(f"eval.texts gives single texts, and this run is trained on text pairs (second segment: "
                        f"'{pair_column}'); predict pairs with evaluate.py eval.input=<file with both columns>")
    if template:
        fields = template_fields(template)
        if len(fields) > 1:
            raise UserError(f"eval.texts gives plain texts, and this run's texts are made by data.template from "
                            f"{', '.join(fields)}; predict such rows with evaluate.py eval.input=<file with those "
                            f"columns>")
