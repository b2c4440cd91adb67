"""Batches from the padded arrays written by data_process.

The arrays are memory-mapped, and opened lazily inside each DataLoader worker: pickling an
`np.memmap` (as workers under spawn do) would copy the whole array into RAM. Each batch is
cut to its longest row, so padded storage costs nothing at training time.
"""

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .compiling import bucket
from .errors import UserError

ARRAYS = ("input_ids", "attention_mask", "token_type_ids", "lengths")


class SplitArrays(Dataset):
    """Rows `rows` of one split folder. Indexing by a list of positions returns a whole batch."""

    def __init__(self, split_dir, rows=None, with_labels=True, pad_to_multiple=1, buckets=False):
        self.split_dir = Path(split_dir)
        self.pad_to_multiple = max(1, int(pad_to_multiple))
        self.buckets = buckets  # widths rounded up to compiling.bucket: a compiled model meets a few shapes
        for name in ARRAYS + (("labels",) if with_labels else ()):
            if not (self.split_dir / f"{name}.npy").is_file():
                raise UserError(f"{self.split_dir / (name + '.npy')} is missing; run data_process.py again")
        self.with_labels = with_labels
        n = np.load(self.split_dir / "lengths.npy", mmap_mode="r").shape[0]
        self.rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        self._arrays = None

    @classmethod
    def in_memory(cls, arrays, buckets=False):
        """Rows held in memory (raw texts just tokenized), batched like a split folder's rows."""
        dataset = cls.__new__(cls)
        dataset.split_dir, dataset.pad_to_multiple, dataset.buckets = None, 1, buckets
        dataset.with_labels = "labels" in arrays
        dataset.rows = np.arange(len(arrays["lengths"]))
        dataset._arrays = arrays
        return dataset

    def __getstate__(self):
        state = self.__dict__.copy()
        if self.split_dir is not None:
            state["_arrays"] = None  # reopened in the worker, never pickled
        return state

    @property
    def arrays(self):
        if self._arrays is None:
            names = ARRAYS + (("labels",) if self.with_labels else ())
            self._arrays = {name: np.load(self.split_dir / f"{name}.npy", mmap_mode="r") for name in names}
            if self.with_labels and (self.split_dir / "window_doc.npy").is_file():
                self._arrays["window_doc"] = np.load(self.split_dir / "window_doc.npy", mmap_mode="r")
        return self._arrays

    def lengths(self):
        return np.asarray(self.arrays["lengths"][self.rows])

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, position):
        return self.__getitems__([position])

    def __getitems__(self, positions):
        """One batch: arrays cut to the longest row, plus the positions (to restore row order)."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = self.rows[positions]
        order = np.argsort(rows)  # memmap reads in file order are faster
        sorted_rows = rows[order]
        arrays = self.arrays
        width = int(arrays["lengths"][sorted_rows].max())
        # Rounding widths up makes batch shapes repeat, so the CPU/GPU kernels chosen for a
        # shape are reused instead of being set up again for nearly every batch.
        width = min(-(-width // self.pad_to_multiple) * self.pad_to_multiple, arrays["input_ids"].shape[1])
        if self.buckets:
            width = bucket(width, arrays["input_ids"].shape[1])
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        batch = {
            "input_ids": torch.from_numpy(arrays["input_ids"][sorted_rows, :width][inverse].astype(np.int64)),
            "attention_mask": torch.from_numpy(arrays["attention_mask"][sorted_rows, :width][inverse].astype(np.int64)),
            "token_type_ids": torch.from_numpy(arrays["token_type_ids"][sorted_rows, :width][inverse].astype(np.int64)),
            "index": torch.from_numpy(positions),
        }
        if self.with_labels:
            # windows (data.window_stride) take their text's label
            label_rows = sorted_rows if "window_doc" not in arrays else np.asarray(arrays["window_doc"][sorted_rows])
            labels = np.asarray(arrays["labels"][label_rows][inverse])
            # regression targets stay float32; class numbers and multi-label 0/1 rows become int64
            batch["labels"] = torch.from_numpy(labels.astype(np.float32 if labels.dtype.kind == "f" else np.int64))
        return batch


class Windows:
    """Which token rows belong to which texts in a split folder: one row per text, or with
    sliding windows (window_doc.npy) several. `rows(texts)` gives the token rows of the texts
    `texts` (row numbers of ids and labels) and, for each, the position in `texts` of its text;
    tokenization.per_text(values, that position, len(texts), windows.aggregate, problem) turns
    per-row values into one row per text."""

    def __init__(self, split_dir, aggregate="mean"):
        path = Path(split_dir) / "window_doc.npy"
        self.doc = np.load(path) if path.is_file() else None
        self.aggregate = aggregate if self.doc is not None else None  # None: one row per text, nothing to aggregate

    @property
    def windowed(self):
        return self.doc is not None

    def owner(self, n_texts):
        """Each token row's text, for a whole split of n_texts texts."""
        return self.doc if self.doc is not None else np.arange(n_texts)

    def rows(self, texts):
        texts = np.asarray(texts, dtype=np.int64)
        if self.doc is None:
            return texts, np.arange(len(texts))
        position = np.full(int(self.doc.max()) + 1, -1, dtype=np.int64)
        position[texts] = np.arange(len(texts))
        rows = np.flatnonzero(position[self.doc] >= 0)
        return rows, position[self.doc[rows]]


def collate(batch):
    return batch  # __getitems__ already built the batch


class LengthGroupedBatches:
    """Seeded training batches of similar length, in shuffled order.

    Each epoch: shuffle the rows, cut them into mega-batches of `group` batches, sort every
    mega-batch by length and split it into batches, then shuffle the batch order (the one short
    batch, if any, last). Padding nearly vanishes while the data order stays random. `epoch` is set before each epoch, and
    the order depends only on (seed, epoch): a resumed run sees the same batches.
    """

    def __init__(self, lengths, batch_size, seed, group=50, drop_last=False, grouped=True):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.drop_last = drop_last
        self.grouped = grouped
        self.epoch = 0

    def batches(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        if self.grouped:
            mega = self.batch_size * self.group
            chunks = [order[i:i + mega] for i in range(0, len(order), mega)]
            # stable sort on descending length; ties keep the shuffled order
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        batches = [order[i:i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.grouped:
            batches = [batches[i] for i in rng.permutation(len(batches))]
            # The one short batch goes last, as in any plain loader: Accelerate's sharding over several
            # processes takes a short batch for the epoch's end, and drops a pair of batches otherwise.
            batches.sort(key=lambda batch: len(batch) < self.batch_size)
        return batches

    def __iter__(self):
        return iter(self.batches())

    def __len__(self):
        n = len(self.lengths) // self.batch_size if self.drop_last else math.ceil(len(self.lengths) / self.batch_size)
        return n


class SortedBatches:
    """Evaluation batches over rows sorted by length (longest first); results are put back
    in row order by the `index` each batch carries."""

    def __init__(self, lengths, batch_size):
        order = np.argsort(-np.asarray(lengths), kind="stable")
        self._batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]

    def __iter__(self):
        return iter(self._batches)

    def __len__(self):
        return len(self._batches)


def make_loader(dataset, batch_sampler, num_workers=0):
    # Each new iterator draws a worker base seed; from the global RNG that draw would shift the
    # dropout stream whenever a loader is (re)started, and a resumed run would diverge.
    generator = torch.Generator().manual_seed(0)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate,
                                       num_workers=num_workers, persistent_workers=num_workers > 0,
                                       generator=generator)
