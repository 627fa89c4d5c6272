"""A streamed run's documents without their texts: numpy columns, one row per input document.

    table = DocTable.concat(parts)         # parts: per-shard column dicts (prepare_stream.clean_shard)
    table.records(table.kept)              # a sequence of DocRecord(id, domain, chars), made on demand
    table.acted_view(), table.removed_view()   # {id: {step: chars}} and {id: step}, read from columns

The decisions of a streamed run (dedup, mix, split) read only ids, domains and lengths, but they
read them for every document: with 2 million short documents a Python object per document (a dict
of 184 bytes, or a record of 56, plus its id string of 58 and an int of 28) is what fills memory,
not the signatures on disk. Columns cost what their dtype says:

    column      dtype      bytes/doc   what it holds
    ids         S<width>   ~9          the id, UTF-8 ("in0000042"); sorts as Python sorts str
    domain      uint8      1           index into DOMAINS
    chars_in    int32      4           length of the input text
    chars       int32      4           length after cleaning (and line dedup); 0 when dropped
    dropped     uint8      1           index into STEP_NAMES of the step that dropped it; 0 = kept
    split       uint8      1           index into SPLITS of its split; NO_SPLIT until decided
    kept        int64      8 per kept  rows of the documents cleaning kept, in input order
    acted_*     3 arrays   9 per edit  (row, step, characters removed) for each step that changed a row

about 30 bytes per document, against ~190 for the records and dicts they replace (and ~500 at the
decisions' peak). The views give the decisions' readers (data_outcome.step_table, domain_table,
the tests) the dict-like records they read, one at a time, so the tables are computed by the same
code as the in-memory run's.

Interview question it answers: why does "metadata only" still run out of memory? (a Python object
per row costs ~100-200 bytes whatever it holds; 10 million rows of it is 2 GB. Store columns.)
"""

import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from clean import STEPS
from input_documents import DOMAINS

STEP_NAMES = ["", *STEPS, "line_dedup", "exact_dedup", "near_dedup"]  # 0: not dropped
STEP_CODE = {s: i for i, s in enumerate(STEP_NAMES)}
DOMAIN_CODE = {d: i for i, d in enumerate(DOMAINS)}
SPLITS = ["train", "val", "test"]
NO_SPLIT = 255
CHUNK = 1 << 16  # rows turned into Python values at a time when a view is iterated


class DocRecord:
    """A document without its text: what the decisions read of it ("id", "domain", "chars").

    It answers doc["id"], doc["domain"], doc["chars"] and `"chars" in doc` like the dicts of the
    in-memory path. The views below make one per row when asked and hold none."""

    __slots__ = ("id", "domain", "chars")

    def __init__(self, doc_id: str, domain: str, chars: int):
        self.id, self.domain, self.chars = doc_id, domain, chars

    def __getitem__(self, key):
        return getattr(self, key)

    def __contains__(self, key):
        return key in self.__slots__

    def __eq__(self, other):
        return all(self[k] == other[k] for k in self.__slots__)


def encode_ids(ids) -> np.ndarray:
    """Ids as a fixed-width bytes column; UTF-8 bytes compare in code-point order, as str does."""
    return np.array([i.encode("utf-8") for i in ids], dtype=bytes) if len(ids) else np.zeros(0, "S1")


class DocTable:
    """The columns of every input document (module docstring), concatenated over the shards."""

    def __init__(self, ids, domain, chars_in, chars, dropped, kept, acted_row, acted_step, acted_chars):
        self.ids, self.domain, self.chars_in, self.chars, self.dropped = ids, domain, chars_in, chars, dropped
        self.kept = kept
        self.acted_row, self.acted_step, self.acted_chars = acted_row, acted_step, acted_chars
        self.split = np.full(len(ids), NO_SPLIT, dtype=np.uint8)
        self._id_order = None

    @classmethod
    def concat(cls, parts):
        """One table from per-shard column dicts in input order (each numbered from its own row 0)."""
        sizes = [len(p["domain"]) for p in parts]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

        def cat(key, dtype, shift=False):
            cols = [p[key] + (starts[s] if shift else 0) for s, p in enumerate(parts)]
            return np.concatenate(cols).astype(dtype, copy=False) if cols else np.zeros(0, dtype)

        ids = np.concatenate([p["ids"] for p in parts]) if parts else np.zeros(0, "S1")
        return cls(
            ids,
            cat("domain", np.uint8),
            cat("chars_in", np.int32),
            cat("chars", np.int32),
            cat("dropped", np.uint8),
            cat("kept", np.int64, shift=True),
            cat("acted_row", np.int64, shift=True),
            cat("acted_step", np.uint8),
            cat("acted_chars", np.int32),
        )

    def __len__(self):
        return len(self.ids)

    def nbytes(self) -> int:
        """Bytes held by the columns (the per-document cost the module docstring tabulates)."""
        cols = (self.ids, self.domain, self.chars_in, self.chars, self.dropped, self.split, self.kept)
        return sum(c.nbytes for c in cols + (self.acted_row, self.acted_step, self.acted_chars))

    def add_acted(self, rows, step: str, chars):
        """Record that `step` removed chars[i] characters from rows[i]."""
        self.acted_row = np.concatenate([self.acted_row, np.asarray(rows, np.int64)])
        self.acted_step = np.concatenate([self.acted_step, np.full(len(rows), STEP_CODE[step], np.uint8)])
        self.acted_chars = np.concatenate([self.acted_chars, np.asarray(chars, np.int32)])

    def row_of(self, doc_id: str) -> int:
        """The row of an id, or -1: a binary search over the ids in sorted order (argsorted once,
        unless they are sorted already, as iter_documents numbers them; the generated ones are not)."""
        if self._id_order is None:
            ordered = len(self.ids) < 2 or bool(np.all(self.ids[1:] > self.ids[:-1]))
            self._id_order = np.arange(0) if ordered else np.argsort(self.ids, kind="stable")
        key = doc_id.encode("utf-8")
        sorter = self._id_order if len(self._id_order) else None
        i = int(np.searchsorted(self.ids, key, sorter=sorter))
        row = -1 if i == len(self.ids) else i if sorter is None else int(sorter[i])
        return row if row >= 0 and self.ids[row] == key else -1

    def outcome_tables(self, unique, mixed, domains=DOMAINS) -> dict:
        """stats.json's "input", "steps", "domains" and "splits" tables from the columns (unique, mixed:
        rows), by bincounts: data_outcome.step_table and domain_table over the records make the same
        tables (a test checks it) but visit every document ~20 times in Python, minutes at millions."""
        n_codes = len(STEP_NAMES)
        count = lambda codes: np.bincount(codes, minlength=n_codes)  # documents per step code
        total = lambda codes, chars: np.bincount(codes, weights=chars, minlength=n_codes)
        by_step = self.dropped[self.acted_row] == self.acted_step  # the edit of the step that dropped it
        changed, dropped = count(self.acted_step[~by_step]), count(self.acted_step[by_step])
        chars = total(self.acted_step, self.acted_chars)
        dedup_codes = self.dropped[self.kept]  # exact and near dedup drop kept documents, whole
        is_dedup = (dedup_codes == STEP_CODE["exact_dedup"]) | (dedup_codes == STEP_CODE["near_dedup"])
        dropped += count(dedup_codes[is_dedup])
        chars += total(dedup_codes[is_dedup], self.chars[self.kept][is_dedup])
        input_chars = int(self.chars_in.sum())
        steps = {
            s: {"changed": int(changed[c]), "dropped": int(dropped[c]), "chars": int(round(chars[c]))}
            for c, s in enumerate(STEP_NAMES)
            if c
        }
        steps["mix"] = {
            "changed": 0,
            "dropped": len(unique) - len(mixed),
            "chars": int(self.chars[unique].sum()) - int(self.chars[mixed].sum()),
        }
        for r in steps.values():
            r["share"] = r["chars"] / max(1, input_chars)
        mixed_chars = max(1, int(self.chars[mixed].sum()))
        table = {}
        for dom in domains:
            here = lambda rows: rows[self.domain[rows] == DOMAIN_CODE[dom]]
            table[dom] = {
                "docs_in": int(np.count_nonzero(self.domain == DOMAIN_CODE[dom])),
                "chars_in": int(self.chars_in[self.domain == DOMAIN_CODE[dom]].sum()),
                "docs_kept": len(here(unique)),
                "chars_kept": int(self.chars[here(unique)].sum()),
                "docs_mixed": len(here(mixed)),
                "chars_mixed": int(self.chars[here(mixed)].sum()),
                "share": int(self.chars[here(mixed)].sum()) / mixed_chars,
            }
        splits = {
            name: {"docs": len(rows), "chars": int(self.chars[rows].sum())}
            for k, name in enumerate(SPLITS)
            for rows in [mixed[self.split[mixed] == k]]
        }
        return {
            "input": {"docs": len(self), "chars": input_chars},
            "steps": steps,
            "domains": table,
            "splits": splits,
        }

    def records(self, rows=None, chars="chars"):
        """The documents at `rows` (None: every row) as a sequence of DocRecord (chars: "chars", the
        length after cleaning, or "chars_in", the input's)."""
        return Records(self, None if rows is None else np.asarray(rows, np.int64), getattr(self, chars))

    def acted_view(self):
        return Acted(self)

    def removed_view(self):
        return Removed(self)


class Records:
    """A read-only sequence of DocRecord over some rows of a DocTable, made CHUNK rows at a time."""

    def __init__(self, table: DocTable, rows, chars: np.ndarray):
        self.table, self.rows, self.chars = table, rows, chars  # rows None: all, without an index array

    def __len__(self):
        return len(self.table) if self.rows is None else len(self.rows)

    def __iter__(self):
        t = self.table
        for lo in range(0, len(self), CHUNK):
            rows = slice(lo, lo + CHUNK) if self.rows is None else self.rows[lo : lo + CHUNK]
            for i, d, c in zip(t.ids[rows].tolist(), t.domain[rows].tolist(), self.chars[rows].tolist()):
                yield DocRecord(i.decode("utf-8"), DOMAINS[d], c)

    def __getitem__(self, k):
        r = range(len(self))[k] if self.rows is None else int(self.rows[k])
        return DocRecord(self.table.ids[r].decode("utf-8"), DOMAINS[self.table.domain[r]], int(self.chars[r]))


class Acted(Mapping):
    """{id: {step: characters removed}} over the table's acted columns, for the rows a step changed."""

    def __init__(self, table: DocTable):
        self.table = table  # nothing is computed until asked: a run's meta holds this view unread

    def __len__(self):
        return len(np.unique(self.table.acted_row))

    def __iter__(self):
        return (i.decode("utf-8") for i in self.table.ids[np.unique(self.table.acted_row)])

    def __getitem__(self, doc_id):
        t, row = self.table, self.table.row_of(doc_id)
        here = np.flatnonzero(t.acted_row == row)
        if row < 0 or not len(here):
            raise KeyError(doc_id)
        return {STEP_NAMES[t.acted_step[k]]: int(t.acted_chars[k]) for k in here}

    def items(self):
        """(id, {step: chars}) per changed row, one pass over the columns in row order."""
        t = self.table
        order = np.argsort(t.acted_row, kind="stable")  # a row's entries side by side
        rows, steps, chars = t.acted_row[order], t.acted_step[order], t.acted_chars[order]
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, int)
        for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(rows)]):
            doc_id = t.ids[rows[a]].decode("utf-8")
            yield doc_id, {STEP_NAMES[s]: c for s, c in zip(steps[a:b].tolist(), chars[a:b].tolist())}


class Removed(Mapping):
    """{id: the step that dropped it} over the table's `dropped` column."""

    def __init__(self, table: DocTable):
        self.table = table

    def __len__(self):
        return int(np.count_nonzero(self.table.dropped))

    def __iter__(self):
        return (i.decode("utf-8") for i in self.table.ids[self.table.dropped > 0])

    def __getitem__(self, doc_id):
        row = self.table.row_of(doc_id)
        if row < 0 or not self.table.dropped[row]:
            raise KeyError(doc_id)
        return STEP_NAMES[self.table.dropped[row]]
