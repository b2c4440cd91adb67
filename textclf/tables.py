"""Columnar sources: Parquet and Feather (Arrow IPC) files, `datasets` folders and hub names, and
tables in memory (a pandas DataFrame or a pyarrow Table), read in record batches.

Each source gives its column names, its rows as plain Python values batch by batch (so memory
stays flat however many rows there are) and a fingerprint of its content. rawdata.RawFile reads
them exactly as it reads a JSONL file: the same column checks, ids, templates, labels and refusals;
only the words differ ("row 12 of train.parquet"). Missing cells (null, a float NaN) read as empty,
and a `datasets` ClassLabel column reads as its label names (-1, datasets' "no label", as empty).

pyarrow is needed for files (pip install 'textclf[data]'); `datasets` only for datasets folders and
hub names, pandas only for DataFrames.
"""

import hashlib
import importlib
import json
import math
from pathlib import Path

from .errors import UserError, first_line
from .fileio import sha256_file

BATCH_ROWS = 4096  # rows converted to Python values at a time
HUB_PREFIX = "hub:"
ROLE_SPLITS = {"train": ("train",), "valid": ("validation", "valid", "dev"), "test": ("test",), "input": ("test",)}


def need_module(name, what):
    """The module `name` (a package or one of its modules), or one line saying what to install."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"{what} needs the {name.split('.')[0]} package, which is not installed; pip install "
                        f"'textclf[data]'") from None


def is_table(obj):
    """A pandas DataFrame or a pyarrow Table / RecordBatch, without importing either."""
    module = type(obj).__module__.split(".")[0]
    return (module == "pandas" and type(obj).__name__ == "DataFrame") or (
        module == "pyarrow" and type(obj).__name__ in ("Table", "RecordBatch"))


def is_hub_name(text):
    return isinstance(text, str) and text.startswith(HUB_PREFIX)


def cell_kind(value):
    """A cell's type in the words of the format it came from (JSON's, which Arrow's mostly share)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (bytes, bytearray)):
        return "binary"
    return {dict: "object", list: "array", int: "number", float: "number"}.get(type(value), type(value).__name__)


class Source:
    """What RawFile needs from a columnar source."""

    kind = "table"
    shown = ""  # how messages name it

    def __init__(self, role):
        self.role = role
        self.label_names = {}  # column -> names of a ClassLabel column

    def columns(self):
        raise NotImplementedError

    def batches(self):
        """Yield pyarrow RecordBatches (or Tables) with every column."""
        raise NotImplementedError

    def fingerprint(self):
        raise NotImplementedError

    def rows(self):
        """Yield (row_number counting from 1, values) in the order of `columns()`."""
        names = self.columns()
        number = 0
        for batch in self._checked(self.batches()):
            cells = [self._values(batch.column(i).to_pylist(), name) for i, name in enumerate(names)]
            for values in zip(*cells):
                number += 1
                yield number, list(values)

    def _values(self, values, name):
        names = self.label_names.get(name)
        out = []
        for v in values:
            if isinstance(v, list):  # a list cell (multi-label): its missing items dropped, names mapped
                v = [self._value(item, names) for item in v]
                v = [item for item in v if item is not None]
            else:
                v = self._value(v, names)
            out.append(v)
        return out

    @staticmethod
    def _value(v, names):
        if isinstance(v, float) and math.isnan(v):
            return None  # a missing cell (pandas writes NaN) reads as empty, as in a CSV
        if names is not None and isinstance(v, int) and not isinstance(v, bool):
            return names[v] if 0 <= v < len(names) else None  # ClassLabel: -1 is "no label"
        return v

    def _checked(self, batches):
        """Arrow's read errors as one line naming the source."""
        pa = need_module("pyarrow", f"reading {self.shown}")
        try:
            yield from batches
        except (pa.ArrowException, OSError) as err:
            raise UserError(f"{self.role} file {self.shown} could not be read as {self.kind} "
                            f"({first_line(err)}); re-save it") from None


class FileSource(Source):
    """A file of one columnar format: its schema read when opened (`read_schema`, a refusal naming the
    format and how to re-save it where that fails), its fingerprint the file's sha256."""

    format_name = resave = ""  # the format's name and how to write it again, for the refusal

    def __init__(self, path, role):
        super().__init__(role)
        self.path, self.shown = Path(path), str(path)
        try:
            self.schema = self.read_schema()
        except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
            raise UserError(f"{role} file {self.path} is not a readable {self.format_name} file ({first_line(err)}); "
                            f"re-save it ({self.resave}) or set data.format") from None

    def columns(self):
        return list(self.schema.names)

    def fingerprint(self):
        return sha256_file(self.path)


class ParquetSource(FileSource):
    kind = format_name = "Parquet"
    resave = "pandas: df.to_parquet(path)"

    def read_schema(self):
        with self.open() as file:
            self.rows_in_file = file.metadata.num_rows
            return file.schema_arrow

    def open(self):
        pq = need_module("pyarrow.parquet", "a Parquet file")
        # buffered column chunks: a row group of a million rows is read a page at a time
        return pq.ParquetFile(self.path, buffer_size=1 << 20, pre_buffer=False)

    def batches(self):
        if self.rows_in_file == 0:
            return
        with self.open() as file:  # one pass, and the file closed after it (or when a refusal stops it)
            yield from file.iter_batches(batch_size=BATCH_ROWS, use_threads=False)


class FeatherSource(FileSource):
    """Feather v2 / Arrow IPC, as a file (random access) or a stream; batches read one at a time."""

    kind, format_name, resave = "Arrow", "Feather / Arrow IPC", "pandas: df.to_feather(path)"
    stream = False

    def read_schema(self):
        pa, ipc = need_module("pyarrow", "a Feather / Arrow file"), need_module("pyarrow.ipc", "a Feather / Arrow file")
        try:
            with pa.OSFile(str(self.path)) as fh:
                return ipc.open_file(fh).schema
        except pa.ArrowException:  # not the file format: the stream format, or neither
            self.stream = True
            with pa.OSFile(str(self.path)) as fh:
                return ipc.open_stream(fh).schema

    def batches(self):
        pa, ipc = need_module("pyarrow", "a Feather / Arrow file"), need_module("pyarrow.ipc", "a Feather / Arrow file")
        with pa.OSFile(str(self.path)) as fh:
            reader = ipc.open_stream(fh) if self.stream else ipc.open_file(fh)
            batches = reader if self.stream else (reader.get_batch(i) for i in range(reader.num_record_batches))
            for batch in batches:  # a writer's batch may be large: handed on BATCH_ROWS rows at a time
                yield from (batch.slice(start, BATCH_ROWS) for start in range(0, batch.num_rows, BATCH_ROWS))


class DatasetSource(Source):
    """A `datasets` Dataset: a folder saved with save_to_disk, or a hub dataset loaded by name."""

    kind = "Arrow"  # a datasets folder holds Arrow files; its cells are named as Arrow's

    def __init__(self, dataset, shown, role, fingerprint):
        super().__init__(role)
        self.dataset, self.shown, self._fingerprint = dataset, shown, fingerprint
        datasets = need_module("datasets", "a datasets folder")
        self.label_names = {}
        for name, feature in dataset.features.items():
            inner = getattr(feature, "feature", None)  # Sequence / List of ClassLabel: a multi-label column
            if isinstance(feature, datasets.ClassLabel) or isinstance(inner, datasets.ClassLabel):
                self.label_names[name] = list((feature if inner is None else inner).names)

    @classmethod
    def from_folder(cls, path, role):
        datasets = need_module("datasets", f"the datasets folder {path}")
        path = Path(path)
        if (path / "dataset_dict.json").is_file():
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
            split = next((s for s in ROLE_SPLITS[role] if s in splits), None)
            if split is None:
                raise UserError(f"{role} file {path} is a datasets DatasetDict with the splits {', '.join(splits)} and "
                                f"none named {' or '.join(ROLE_SPLITS[role])}; point at one: {path}/<split>")
            path = path / split
        try:
            dataset = _empty_dataset(datasets, path)  # None unless it has no rows (a Dataset of none is falsy)
            if dataset is None:
                dataset = datasets.load_from_disk(str(path))
        except Exception as err:
            raise UserError(f"{role} file {path} is not a folder that datasets' save_to_disk wrote "
                            f"({first_line(err)}); save it with Dataset.save_to_disk") from None
        parts = [(path / "state.json").read_bytes() if (path / "state.json").is_file() else b""]
        parts += [sha256_file(Path(f["filename"])).encode() for f in dataset.cache_files]
        return cls(dataset, str(path), role, hashlib.sha256(b"".join(parts)).hexdigest())

    @classmethod
    def from_hub(cls, name, role):
        """`hub:NAME` or `hub:NAME:split` (default: the role's split), loaded through datasets."""
        datasets = need_module("datasets", f"the hub dataset {name}")
        spec = name[len(HUB_PREFIX):]
        dataset_name, _, split = spec.partition(":")
        if not dataset_name:
            raise UserError(f"{role} file {name}: name a hub dataset, e.g. hub:stanfordnlp/imdb or "
                            f"hub:stanfordnlp/imdb:test")
        offline = datasets.config.HF_HUB_OFFLINE
        last = None
        for candidate in ([split] if split else ROLE_SPLITS[role]):
            try:
                dataset = datasets.load_dataset(dataset_name, split=candidate)
                return cls(dataset, name if split else f"{name}:{candidate}", role, dataset._fingerprint)
            except ValueError as err:
                if "split" not in str(err).lower():
                    raise UserError(f"{role} file {name}: the hub dataset {dataset_name} could not be loaded "
                                    f"({first_line(err)}); check the name") from None
                last = err  # an unknown split: try the next name
            except Exception as err:
                why = f"{type(err).__name__}: {first_line(err, 160)}"
                if offline:
                    why = f"HF_HUB_OFFLINE=1, so only the local cache is read; {why}"
                raise UserError(f"{role} file {name}: the hub dataset {dataset_name} could not be loaded ({why}); "
                                f"on a machine that is online, save it with datasets' save_to_disk and set the file "
                                f"to that folder") from None
        raise UserError(f"{role} file {name}: the hub dataset {dataset_name} has no split "
                        f"{' or '.join(ROLE_SPLITS[role])} ({first_line(last, 160)}); name one: "
                        f"{name}:<split>")

    def columns(self):
        return list(self.dataset.column_names)

    def batches(self):
        return self.dataset.with_format("arrow").iter(batch_size=BATCH_ROWS)

    def fingerprint(self):
        return self._fingerprint


class TableSource(Source):
    """A pandas DataFrame or pyarrow Table handed over in Python (textclf.process, Predictor.predict)."""

    kind = "table"

    def __init__(self, table, role):
        super().__init__(role)
        pa = need_module("pyarrow", "a DataFrame")
        kind = "DataFrame" if type(table).__module__.startswith("pandas") else "Table"
        self.shown, self.kind = f"<the {role} {kind}>", kind
        if kind == "DataFrame":
            names = [str(c) for c in table.columns]
            repeated = sorted({c for c in names if names.count(c) > 1})
            if repeated:
                raise UserError(f"the {role} DataFrame has the column '{repeated[0]}' more than once; give every "
                                f"column its own name")
            try:
                table = pa.Table.from_pandas(table, preserve_index=False)
            except (pa.ArrowException, TypeError, ValueError) as err:
                raise UserError(f"the {role} DataFrame could not be read as a table "
                                f"({first_line(err)}); give every column one type") from None
            table = table.rename_columns(names)
        elif isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        self.table = table

    def columns(self):
        return list(self.table.schema.names)

    def batches(self):
        return self.table.to_batches(max_chunksize=BATCH_ROWS)

    def fingerprint(self):
        h = hashlib.sha256(self.table.schema.serialize())
        for batch in self.table.to_batches(max_chunksize=BATCH_ROWS):  # one batch's bytes at a time
            h.update(memoryview(batch.serialize()))
        return h.hexdigest()


def _empty_dataset(datasets, path):
    """A saved Dataset of no rows (no data files, which load_from_disk cannot open): its columns only."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        info = json.loads((path / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if state.get("_data_files") != [] or not isinstance(info.get("features"), dict):
        return None
    features = datasets.Features.from_dict(info["features"])
    return datasets.Dataset.from_dict({name: [] for name in features}, features=features)


def open_source(fmt, location, role):
    """The Source of a columnar format; `location` is a path, a hub name or a table."""
    if is_table(location):
        return TableSource(location, role)
    if fmt == "parquet":
        return ParquetSource(location, role)
    if fmt == "feather":
        return FeatherSource(location, role)
    if fmt == "hub":
        name = location if is_hub_name(location) else HUB_PREFIX + str(location)
        return DatasetSource.from_hub(name, role)
    return DatasetSource.from_folder(location, role)
