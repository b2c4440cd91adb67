"""Reading raw CSV / TSV / JSONL files (and, through tables.py, Parquet, Feather, datasets folders, hub
datasets and DataFrames) as a stream of rows, with errors people can act on.

Rows come out as (line_number, values) in the order of `RawFile.columns`; nothing is held
in memory beyond one row, so files of any size stream through. `scan_rows` checks every row of
a file (columns, empty texts, labels, duplicate ids) before anything is written: data_process's
first pass, and evaluate.py's check of an eval.input file.
"""

import csv
import hashlib
import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from .config import DataConfig, resolve_path
from .errors import UserError
from .fileio import sha256_file
from .tables import cell_kind, is_hub_name, is_table, open_source
from .text_rules import clean_text, fill_template, plain_number, template_fields, unescape_delimiter

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
               ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet", ".feather": "feather", ".arrow": "feather",
               ".arrows": "feather", ".ipc": "feather"}
COLUMNAR = ("parquet", "feather", "datasets", "hub", "frame")  # read through tables.py, cells typed like JSON's


def detect_format(path, fmt):
    if fmt != "auto":
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise UserError(f"cannot tell the format of {path} from its extension; set data.format=csv, tsv, jsonl, "
                        f"parquet or feather")
    return _EXTENSIONS[suffix]


def locate(path, fmt="auto"):
    """A data file setting as RawFile takes it: a hub name (hub:NAME, or any name with data.format=hub) or
    a table as given, a path resolved."""
    return path if is_hub_name(path) or is_table(path) or fmt == "hub" else resolve_path(path)


def _first_bad_line(path, encoding):
    """The 1-based line number of the first line that does not decode."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                raw.decode(encoding)
            except UnicodeError:  # a decode error, or a codec's own (punycode)
                return number
    return None


class RawFile:
    """One raw data file. `columns` are its column names; `rows()` streams its records."""

    def __init__(self, path, cfg, role):
        """`path`: a file (csv, tsv, jsonl, parquet, feather), a datasets folder, a hub name (hub:NAME) or
        a pandas DataFrame / pyarrow Table."""
        self.cfg = cfg
        self.role = role  # train | valid | test | input
        self.source = None  # the columnar formats' reader (tables.py)
        key = "eval.input" if role == "input" else f"data.{role}_file"
        if is_table(path):
            self.format, self.source = "frame", open_source("frame", path, role)
            self.path = Path(self.source.shown)
        elif is_hub_name(path) or cfg.format == "hub":
            self.format, self.source = "hub", open_source("hub", str(path), role)
            self.path = Path(self.source.shown)
        else:
            self.path = Path(path)
            if self.path.is_dir():
                if cfg.format not in ("auto", "datasets"):
                    raise UserError(f"{role} file {self.path} is a folder, not a {cfg.format} file; check {key}")
                self.format = "datasets"
            elif not self.path.is_file():
                raise UserError(f"{role} file {self.path} not found; check {key}")
            elif self.path.stat().st_size == 0:
                raise UserError(f"{role} file {self.path} is empty; point {key} at a file with rows")
            elif cfg.format == "datasets":
                raise UserError(f"{role} file {self.path} is a file, and data.format=datasets reads a folder that "
                                f"datasets' save_to_disk wrote; check {key} or data.format")
            else:
                self.format = detect_format(self.path, cfg.format)
            if self.format in COLUMNAR:
                self.source = open_source(self.format, self.path, role)
        self.encoding = "utf-8-sig" if cfg.encoding.lower().replace("_", "-") in ("utf-8", "utf8") else cfg.encoding
        self.columns = self._read_columns()

    def where(self, number):
        """Where a row is, in the words of its format: a line of a text file, a row of a table."""
        return f"{'row' if self.source else 'line'} {number} of {self.path}"

    def describe(self, value):
        """A cell's type for a message: 'a JSON array', 'a Parquet binary'."""
        return f"{'an' if self.source and self.source.kind[0] in 'AE' else 'a'} " \
               f"{self.source.kind if self.source else 'JSON'} {cell_kind(value)}"

    def sha256(self):
        """The fingerprint of the content read: a file's sha256, a folder's or a table's."""
        return self.source.fingerprint() if self.source else sha256_file(self.path)

    # -- csv / tsv
    def _dialect(self):
        delimiter = unescape_delimiter(self.cfg.delimiter) if self.cfg.delimiter else (
            "," if self.format == "csv" else "\t")
        quoting = self.cfg.quoting
        if quoting == "auto":
            quoting = "minimal" if self.format == "csv" else "none"
        if quoting == "none":
            return dict(delimiter=delimiter, quoting=csv.QUOTE_NONE)
        return dict(delimiter=delimiter, quoting=csv.QUOTE_MINIMAL, doublequote=True)

    def _open_text(self):
        return open(self.path, encoding=self.encoding, newline="")

    def _decode_error(self):
        with open(self.path, "rb") as fh:
            magic = fh.read(6)
        for start, fmt in ((b"PAR1", "parquet"), (b"ARROW1", "feather")):
            if magic.startswith(start):
                return UserError(f"{self.role} file {self.path} is a {fmt} file read as {self.format}; set "
                                 f"data.format={fmt} (or auto, with a .{fmt} name)")
        line = _first_bad_line(self.path, self.encoding.replace("-sig", ""))
        where = f" at line {line}" if line else ""
        return UserError(
            f"{self.role} file {self.path} has bytes that are not {self.cfg.encoding}{where}; "
            f"re-save it as UTF-8 or set data.encoding (e.g. latin-1)"
        )

    def _read_columns(self):
        if self.source is not None:
            return self._table_columns()
        try:
            if self.format == "jsonl":
                return self._jsonl_columns()
            if not self.cfg.header:
                if not self.cfg.columns:
                    raise UserError(
                        f"{self.role} file {self.path} is read without a header (data.header=false) but "
                        f"data.columns is not set; name the columns, e.g. data.columns=[text,label]"
                    )
                columns = list(self.cfg.columns)
                if self.role in ("test", "input"):
                    # an unlabelled headerless file (NeMo's test `text` files) has the leading columns only
                    with self._open_text() as fh:
                        first = next(csv.reader(fh, **self._dialect()), None)
                    if first and len(first) < len(columns):
                        columns = columns[:len(first)]
                return columns
            with self._open_text() as fh:
                header = next(csv.reader(fh, **self._dialect()), None)
        except UnicodeError:  # a decode error, or a codec's own (punycode)
            raise self._decode_error() from None
        if not header or not any(h.strip() for h in header):
            raise UserError(f"{self.role} file {self.path} has no header line; add one or set data.header=false")
        header = [h.strip() for h in header]
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:
            raise UserError(f"{self.role} file {self.path} has the column '{repeated[0]}' more than once in its header; "
                            f"give every column its own name")
        if len(header) == 1:
            found = header[0]
            for name, sep in (("tab", "\t"), ("comma", ","), ("semicolon", ";"), ("pipe", "|")):
                if sep in found:
                    written = "\\t" if sep == "\t" else sep
                    # data.delimiter, when given, wins over data.format: then the advice names it
                    hint = {"\t": "data.format=tsv", ",": "data.format=csv"}.get(sep, f"data.delimiter='{sep}'")
                    if self.cfg.delimiter is not None:
                        hint = f"data.delimiter='{written}'"
                    raise UserError(
                        f"{self.role} file {self.path} has one column '{found[:60]}' with this delimiter; "
                        f"it looks {name}-separated: set {hint}"
                    )
        return header

    def _table_columns(self):
        columns = [str(c).strip() for c in self.source.columns()]
        if not columns:
            raise UserError(f"{self.role} file {self.path} has no columns; it needs at least a text column")
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise UserError(f"{self.role} file {self.path} has the column '{repeated[0]}' more than once; give every "
                            f"column its own name")
        return columns

    def _jsonl_columns(self):
        with self._open_text() as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    record = self._parse_json(line, number)
                    return list(record)
        raise UserError(f"{self.role} file {self.path} has no records; it holds only blank lines")

    def _parse_json(self, line, number):
        def unique_keys(pairs):
            keys = [k for k, _ in pairs]
            repeated = sorted({k for k in keys if keys.count(k) > 1})
            if repeated:
                raise UserError(f"line {number} of {self.path} has the key '{repeated[0]}' more than once; give every "
                                f"key once")
            return dict(pairs)

        try:
            record = json.loads(line, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as err:
            raise UserError(f"line {number} of {self.path} is not valid JSON ({err.msg}); fix that line") from None
        if not isinstance(record, dict):
            raise UserError(f"line {number} of {self.path} is not a JSON object; each line must be {{\"text\": ...}}")
        return record

    def rows(self):
        """Yield (line_number, values) with values ordered like `self.columns`."""
        if self.source is not None:
            yield from self.source.rows()
            return
        try:
            if self.format == "jsonl":
                yield from self._jsonl_rows()
            else:
                yield from self._csv_rows()
        except UnicodeError:  # a decode error, or a codec's own (punycode)
            raise self._decode_error() from None

    def _csv_rows(self):
        width = len(self.columns)
        with self._open_text() as fh:
            reader = csv.reader(fh, **self._dialect())
            if self.cfg.header:
                next(reader, None)
            for values in reader:
                if not values:  # blank line
                    continue
                if len(values) != width:
                    if len(values) == 1 and not values[0].strip():
                        continue
                    raise UserError(
                        f"line {reader.line_num} of {self.path} has {len(values)} fields where the "
                        f"{'header' if self.cfg.header else 'data.columns list'} has {width}; fix the row "
                        f"(quote fields that contain the delimiter)"
                    )
                yield reader.line_num, values

    def _jsonl_rows(self):
        with self._open_text() as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                record = self._parse_json(line, number)
                missing = [c for c in self.columns if c not in record]
                if missing:
                    raise UserError(
                        f"line {number} of {self.path} lacks key '{missing[0]}' that the first record has; "
                        f"give every record the same keys"
                    )
                yield number, [record[c] for c in self.columns]


def same_number_labels(names):
    """Pairs of distinct label texts that are one number ('1' and '1.0', '01' and '1')."""
    seen, clashes = {}, []
    for name in names:
        try:
            number = float(name)
        except ValueError:
            continue
        if not math.isfinite(number):
            continue
        if number in seen and seen[number] != name:
            clashes.append((seen[number], name))
        seen.setdefault(number, name)
    return clashes


def as_text(value):
    """A cell as text: CSV cells are text already; JSON (and Arrow) numbers and booleans as JSON writes them."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


class RowReader:
    """Pulls text, text pair, label(s) and id out of the rows of one RawFile."""

    def __init__(self, raw, cfg, need_labels, read_labels=True):
        self.raw = raw
        self.cfg = cfg
        cols = {name: i for i, name in enumerate(raw.columns)}

        def index(name, key):
            if name not in cols:
                if raw.role == "input" and key in ("data.template", "data.text_columns", "data.text_pair_column"):
                    fix = f"name the file's column '{name}', as the run's data had it"  # the run's model reads it
                elif key == "data.template":
                    fix = "the template names columns: rename them, or the file's"
                else:
                    fix = f"set {key} to one of them"
                raise UserError(f"{raw.role} file {raw.path} has no column '{name}' ({key}); columns found: "
                                f"{', '.join(raw.columns)}; {fix}")
            return cols[name]

        self.template_fields = None
        if getattr(cfg, "template", None):  # data.template: the text is the template filled from its columns
            self.template_fields = template_fields(cfg.template)
            self.text_idx = [index(c, "data.template") for c in self.template_fields]
        else:
            self.text_idx = [index(c, "data.text_columns") for c in cfg.text_columns]
        self.pair_idx = index(cfg.text_pair_column, "data.text_pair_column") if cfg.text_pair_column else None
        self.id_idx = index(cfg.id_column, "data.id_column") if cfg.id_column else None
        self.multi_columns = None
        self.label_idx = None
        if not read_labels:  # eval.input: whatever label columns the file has are never read
            pass
        elif cfg.label_columns:
            present = [c for c in cfg.label_columns if c in cols]
            if present or need_labels:
                self.multi_columns = [index(c, "data.label_columns") for c in cfg.label_columns]
        elif cfg.label_column:
            if cfg.label_column in cols:
                self.label_idx = cols[cfg.label_column]
            elif need_labels:
                index(cfg.label_column, "data.label_column")
        self.labelled = self.multi_columns is not None or self.label_idx is not None
        # the train file's own folds, or the groups that must share a fold (valid and test files need neither)
        train = raw.role == "train"
        self.fold_idx = index(cfg.fold_column, "data.fold_column") if cfg.fold_column and train else None
        self.group_idx = index(cfg.group_column, "data.group_column") if cfg.group_column and train else None

    def where(self, line):
        return self.raw.where(line)

    def label_cells_blank(self, values):
        """Whether every label (or target) cell of a row is empty."""
        cells = self.multi_columns if self.multi_columns is not None else [self.label_idx]
        return all(as_text(values[i]).strip() == "" for i in cells)

    def _text_cell(self, values, index, line, key):
        value = values[index]
        if value is not None and not isinstance(value, str):
            raise UserError(f"{self.where(line)}: {key} '{self.raw.columns[index]}' is {self.raw.describe(value)}, "
                            f"not a string; write the text as a {'' if self.raw.source else 'JSON '}string")
        return clean_text(value or "")

    def fields(self, values, line=None):
        """data.template's columns of a row: {column: text}."""
        out = {}
        for name, i in zip(self.template_fields, self.text_idx):
            value = values[i]
            if isinstance(value, (list, dict, bytes)):
                raise UserError(f"{self.where(line)}: column '{name}' (data.template) is {self.raw.describe(value)}; "
                                f"template fields take strings or numbers")
            out[name] = clean_text(as_text(value))
        return out

    def text(self, values, line=None):
        if self.template_fields is not None:
            fields = self.fields(values, line)
            if not any(fields.values()):  # a template around empty columns is an empty text
                return ""
            return fill_template(self.cfg.template, fields, self.template_fields)
        if len(self.text_idx) == 1:
            return self._text_cell(values, self.text_idx[0], line, "the text column")
        parts = (self._text_cell(values, i, line, "the text column") for i in self.text_idx)
        return self.cfg.text_separator.join(p for p in parts if p)

    def pair(self, values, line=None):
        return self._text_cell(values, self.pair_idx, line, "the text pair column")

    def row_id(self, values, row_number):
        if self.id_idx is None:
            return str(row_number)
        value = values[self.id_idx]
        if isinstance(value, (bytes, bytearray, list, dict)):
            raise UserError(f"row {row_number + 1} of {self.raw.path}: the id "
                            f"('{self.cfg.id_column}') is {self.raw.describe(value)}; ids are strings or numbers")
        return as_text(value).strip()

    def labels(self, values, line):
        """The row's label names: one for single-label, a list for multi-label."""
        if self.multi_columns is not None:
            out = []
            for name, i in zip(self.cfg.label_columns, self.multi_columns):
                flag = as_text(values[i]).strip().lower()
                if flag in ("1", "1.0", "true"):
                    out.append(name)
                elif flag not in ("0", "0.0", "false"):
                    raise UserError(f"{self.where(line)}: column '{name}' is {flag!r}; multi-label columns hold 0 or 1")
            return out
        value = values[self.label_idx]
        if isinstance(value, (bytes, bytearray)) or isinstance(value, list) and any(
                isinstance(v, (bytes, bytearray)) for v in value):
            raise UserError(f"{self.where(line)}: the label ('{self.cfg.label_column}') is {self.raw.describe(value)}; "
                            f"a label is a string or a number: decode the column first")
        if isinstance(value, list) and self.cfg.label_delimiter is None:
            raise UserError(f"{self.where(line)}: the label ('{self.cfg.label_column}') is "
                            f"{self.raw.describe(value)}, a list of labels: for multi-label set data.label_delimiter "
                            f"(any one, e.g. '|'; a list cell is read as its items), else give one label a row")
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (list, dict)) for v in value)):
            kind = self.raw.describe(value) + ("" if isinstance(value, dict) else " holding arrays or objects")
            raise UserError(f"{self.where(line)}: the label ('{self.cfg.label_column}') is {kind}; a label is "
                            f"a string, a number, or (multi-label) an array of them")
        if self.cfg.label_delimiter is not None or isinstance(value, list):
            items = value if isinstance(value, list) else as_text(value).split(self.cfg.label_delimiter)
            return sorted({as_text(v).strip() for v in items if as_text(v).strip()})
        name = as_text(value).strip()
        if not name:
            raise UserError(
                f"{self.where(line)}: the label ('{self.cfg.label_column}') is empty; fill it in or remove the row"
            )
        return name

    def fold(self, values, line):
        """The row's given fold number (data.fold_column): an integer 0..32767, or -1 for never held out."""
        value = values[self.fold_idx]
        text = "" if isinstance(value, (bool, list, dict)) else as_text(value).strip()
        number = plain_number(text)
        if number is None or not number.is_integer() or not -1 <= number <= 32767:
            shown = cell_kind(value) if isinstance(value, (bool, list, dict)) else repr(text[:40])
            raise UserError(f"{self.where(line)}: the fold ('{self.cfg.fold_column}') is {shown}; data.fold_column "
                            f"holds fold numbers 0, 1, ... (or -1 for a row that is never held out)")
        return int(number)

    def group(self, values, line):
        """The row's group (data.group_column) as text; rows of one group always share a fold."""
        value = values[self.group_idx]
        if isinstance(value, (list, dict, bytes)):
            raise UserError(f"{self.where(line)}: the group ('{self.cfg.group_column}') is {self.raw.describe(value)}; "
                            f"a group is a string or a number")
        text = as_text(value).strip()
        if not text:
            raise UserError(f"{self.where(line)}: the group ('{self.cfg.group_column}') is empty; give every row a "
                            f"group (a row alone can have its own id as its group)")
        return text

    def targets(self, values, line):
        """The row's numeric targets (data.task=regression), in the order of data.label_columns (or the
        one data.label_column): finite numbers that fit in float32, else one line naming the cell."""
        if self.multi_columns is not None:
            cells = zip(self.cfg.label_columns, self.multi_columns)
        else:
            cells = [(self.cfg.label_column, self.label_idx)]
        out = []
        for name, i in cells:
            value = values[i]
            if isinstance(value, (bool, list, dict)):
                raise UserError(f"{self.where(line)}: target '{name}' is {self.raw.describe(value)}; data.task="
                                f"regression needs a number in every target cell")
            text = as_text(value).strip()
            if not text:
                raise UserError(f"{self.where(line)}: target '{name}' is empty; fill in a number or remove the row")
            number = plain_number(text)
            if number is None:
                raise UserError(f"{self.where(line)}: target '{name}' is {text[:40]!r}, not a number; data.task="
                                f"regression needs numbers (fix the cell, or use data.task=classification for "
                                f"class labels)")
            if not math.isfinite(number) or abs(number) > TARGET_MAX:
                raise UserError(f"{self.where(line)}: target '{name}' is {text[:40]!r}; targets must be finite numbers "
                                f"within +-1e30 (labels.npy holds float32, whose range of +-3.4e38 must also hold "
                                f"predictions and errors around them): fix the cell, or rescale the column (a log, a "
                                f"unit) and predict that")
            out.append(number)
        return out


TARGET_MAX = 1e30  # |target| at most: float32 (+-3.4e38) must hold predictions and errors too


# ---------------------------------------------------------------------------- every row checked (data_process's first pass)


def scan_rows(reader, cfg, split, known_labels):
    """Validate every row; return counts, label frequencies (regression: each target's lowest and
    highest value) and the longest id."""
    rows = dropped = 0
    targets = []  # regression: each row's targets, float64 as read (checked against float32 in data.py)
    given_folds, groups = [], []  # train with data.fold_column / data.group_column
    counts = Counter()
    id_len = 1
    hashes, pending = [], []
    texts, pending_texts = [], []  # a hash of each row's text, to find rows that repeat the train file's
    # a test (or eval.input) file's label column may be a blank placeholder (every cell empty): unlabelled
    placeholder = split in ("test", "input") and reader.labelled
    blank_lines = []
    for row_number, (line, values) in enumerate(reader.raw.rows()):
        text = reader.text(values, line)
        pair = reader.pair(values, line) if reader.pair_idx is not None else None  # refused here when not text
        if not text:
            if cfg.drop_empty:
                dropped += 1
                continue
            raise UserError(
                f"{reader.where(line)}: the text ({', '.join(cfg.text_columns)}) is empty (or only invisible "
                f"characters); fill it in, remove the row, or set data.drop_empty=true to drop such rows"
            )
        row_id = reader.row_id(values, row_number)
        if not row_id:
            raise UserError(f"{reader.where(line)}: the id ('{cfg.id_column}') is empty; every row needs an id")
        id_len = max(id_len, len(row_id))
        pending.append(hash(row_id))
        pending_texts.append(hash((_same_text(text), _same_text(pair))))
        if len(pending) == 65536:  # Python ints cost ~36 bytes each; numpy blocks 8
            hashes.append(np.asarray(pending, dtype=np.int64))
            texts.append(np.asarray(pending_texts, dtype=np.int64))
            pending, pending_texts = [], []
        if placeholder and reader.label_cells_blank(values):
            blank_lines.append(line)
        elif reader.labelled and cfg.task == "regression":
            targets.append(reader.targets(values, line))  # refused here, in pass 1, when not a finite number
        elif reader.labelled:
            labels = reader.labels(values, line)
            for name in labels if isinstance(labels, list) else [labels]:
                if known_labels is not None and name not in known_labels:
                    raise UserError(unknown_label(reader, cfg, split, line, name, known_labels))
                counts[name] += 1
        if reader.fold_idx is not None:
            given_folds.append(reader.fold(values, line))
        if reader.group_idx is not None:
            groups.append(stable_hash(reader.group(values, line)))
        rows += 1
    if blank_lines and (len(blank_lines) < rows or counts or targets):
        raise UserError(f"{reader.where(blank_lines[0])}: the label is empty while other rows of the {split} file "
                        f"have labels; give every row its label, or leave the whole label column blank (unlabelled)")
    if blank_lines:
        reader.labelled = False  # a blank placeholder column: the test rows are unlabelled
    if rows == 0:
        raise UserError(f"{split} file {reader.raw.path} has {'columns' if reader.raw.source else 'a header'} but no "
                        f"data rows; add rows")
    hashes = np.concatenate(hashes + [np.asarray(pending, dtype=np.int64)])
    _check_duplicate_ids(reader, cfg, hashes)
    return dict(rows=rows, dropped=dropped, counts=counts, id_len=id_len,
                targets=np.asarray(targets, dtype=np.float64) if targets else None,  # (rows, targets) as read
                texts=np.concatenate(texts + [np.asarray(pending_texts, dtype=np.int64)]),
                given_folds=np.asarray(given_folds, dtype=np.int16) if reader.fold_idx is not None else None,
                groups=np.asarray(groups, dtype=np.int64) if reader.group_idx is not None else None)


def _same_text(text):
    """A text as the train/valid/test overlap check compares it: spacing and case aside."""
    return None if text is None else " ".join(str(text).split()).casefold()


def unknown_label(reader, cfg, split, line, name, known):
    """The refusal of a label that is not one of the labels it must be."""
    if split == "input":  # evaluate.py eval.input: the run's labels
        return (f"{reader.where(line)}: label '{name}' is not one of the run's labels ({', '.join(sorted(known)[:8])}); "
                f"fix the label, or pass eval.read_labels=never to predict without scoring")
    source = "data.labels" if cfg.labels else "the train file"
    return (f"{reader.where(line)}: label '{name}' never occurs in {source}; fix the label"
            + ("" if cfg.labels else " or list every label with data.labels=[...]"))


def label_array(rows, task, label_index, multi_label):
    """Rows' labels (from RowReader.labels / targets) as labels.npy holds them: float32 targets,
    uint8 0/1 rows (multi-label), or int64 class numbers."""
    if task == "regression":
        return np.array(rows, dtype=np.float32)
    if multi_label:
        block = np.zeros((len(rows), len(label_index)), dtype=np.uint8)
        for i, names in enumerate(rows):
            block[i, [label_index[name] for name in names]] = 1
        return block
    return np.array([label_index[name] for name in rows], dtype=np.int64)


def stable_hash(text):
    """A 64-bit hash of a text that is the same in every process (Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def _check_duplicate_ids(reader, cfg, hashes):
    order = np.sort(hashes)
    dup = order[1:][order[1:] == order[:-1]]
    if not len(dup):
        return
    # a repeated hash: find the rows to name them (and rule out a hash collision)
    target = set(dup.tolist())
    seen = {}
    for row_number, (line, values) in enumerate(reader.raw.rows()):
        if cfg.drop_empty and not reader.text(values, line):
            continue
        row_id = reader.row_id(values, row_number)
        if hash(row_id) in target:
            if row_id in seen:
                raise UserError(
                    f"{reader.raw.role} file {reader.raw.path}: id '{row_id}' ({cfg.id_column}) occurs at "
                    f"{'rows' if reader.raw.source else 'lines'} {seen[row_id]} and {line}; ids must be unique"
                )
            seen[row_id] = line


def table_inputs(table, tokenization):
    """A pandas DataFrame's (or pyarrow Table's) rows as Predictor inputs, read by the run's columns as
    data_process read its files: (texts, or data.template's fields per row; second segments or None)."""
    cfg = DataConfig(text_columns=list(tokenization.text_columns), template=tokenization.template,
                     text_pair_column=tokenization.text_pair_column, label_column=None)
    raw = RawFile(table, cfg, "input")
    reader = RowReader(raw, cfg, need_labels=False, read_labels=False)
    texts, pairs = [], [] if reader.pair_idx is not None else None
    for line, values in raw.rows():
        text = reader.text(values, line)
        if not text:
            raise UserError(f"{reader.where(line)}: the text ({', '.join(reader.template_fields or cfg.text_columns)}) "
                            f"is empty or missing; fill it in or drop the row")
        texts.append(reader.fields(values, line) if cfg.template else text)
        if pairs is not None:
            pairs.append(reader.pair(values, line))
    return texts, pairs
