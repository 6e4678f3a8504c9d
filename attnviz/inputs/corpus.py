"""Corpus input: stream the texts of a text, JSONL, CSV or Parquet file in batches, never loading it whole.

- ``.txt`` (any other suffix too): one example per line (UTF-8);
- ``.jsonl`` / ``.json`` (JSON lines), ``.csv`` / ``.tsv``, ``.parquet`` / ``.pq``:
  the text column ``column`` (default ``"text"``), read with pyarrow's streaming
  readers (``pyarrow.json.open_json``, ``pyarrow.csv.open_csv``,
  ``pyarrow.parquet.ParquetFile.iter_batches``).

Blank examples (empty or whitespace only) are skipped everywhere (also by the Ray
engine), so ``limit`` counts the same examples whichever engine reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from attnviz.errors import InputError, UsageError

KINDS = ("text", "jsonl", "csv", "parquet")
_SUFFIX = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_READ_ROWS = 1024


@dataclass(frozen=True)
class Corpus:
    """A corpus file: ``path``, its ``kind`` (one of :data:`KINDS`) and the text ``column`` (tabular kinds)."""

    path: Path
    kind: str
    column: str = "text"

    def describe(self) -> str:
        return f"{self.path} ({self.kind}" + (f", column '{self.column}')" if self.kind != "text" else ")")


def open_corpus(path: str | Path, column: str = "text") -> Corpus:
    """Check that ``path`` is a readable corpus file and find its kind from the suffix.

    Raises:
        InputError: missing file, a folder, or (tabular kinds) no ``column`` in it.
    """
    import stat

    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"corpus '{p}' does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read corpus '{p}': {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"corpus '{p}' is a folder; give a .txt, .jsonl, .csv or .parquet file")
    if not stat.S_ISREG(mode):
        raise InputError(f"corpus '{p}' is not a regular file (a pipe or device?); attnviz heads reads files it can "
                         "count and read twice")
    corpus = Corpus(p, _SUFFIX.get(p.suffix.lower(), "text"), column)
    if corpus.kind == "csv":
        names = _csv_header(p)
        if column not in names:
            raise InputError(f"corpus '{p}' has no column '{column}' (columns: {', '.join(names) or 'none'}); "
                             "pick one with --column")
    if corpus.kind == "parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.ParquetFile(p).schema_arrow.names
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise InputError(f"corpus '{p}' is not a Parquet file: {str(exc).splitlines()[0][:200]}") from None
        if column not in names:
            raise InputError(f"corpus '{p}' has no column '{column}' (columns: {', '.join(names)}); pick one with --column")
    return corpus


def _csv_header(path: Path) -> list[str]:
    """The column names of a CSV/TSV file (its first record, read from the first 1 MiB)."""
    import csv
    import io

    with open(path, "rb") as fh:
        head = fh.read(1 << 20).decode("utf-8", "replace")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    row = next(csv.reader(io.StringIO(head), delimiter=delimiter), [])
    return [name.strip() for name in row]


def count_examples(corpus: Corpus) -> int | None:
    """Rows in the file (an upper bound on examples: blank ones are skipped), for the progress bar; None if unknown.

    Parquet: from the footer. Line-based kinds: newlines counted in 1 MiB chunks
    (a CSV's quoted newlines make it an estimate).
    """
    if corpus.kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(corpus.path).metadata.num_rows
    n, last = 0, b"\n"
    with open(corpus.path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    n += last != b"\n"
    return max(0, n - (corpus.kind == "csv"))


def iter_texts(corpus: Corpus, limit: int | None = None, max_chars: int | None = None) -> Iterator[str]:
    """The corpus' non-blank texts in file order, at most ``limit``, streamed.

    ``max_chars``: cut each text to this many characters (the tokenizer would drop the rest anyway); lines
    of a text corpus are then read in pieces of that size, so one huge line costs no more memory than a
    normal one.

    Raises:
        InputError: not UTF-8, malformed JSON/CSV, a missing or non-text column.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, not {limit}")
    n = 0
    for text in _raw_texts(corpus, max_chars):
        if text is None or not str(text).strip():
            continue
        yield str(text) if max_chars is None else str(text)[:max_chars]
        n += 1
        if limit is not None and n >= limit:
            return


def iter_batches(corpus: Corpus, batch_size: int, limit: int | None = None, max_chars: int | None = None) -> Iterator[list[str]]:
    """:func:`iter_texts` in lists of ``batch_size`` (the last may be shorter)."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}")
    batch: list[str] = []
    for text in iter_texts(corpus, limit, max_chars):
        batch.append(text)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _bounded_lines(fh, max_chars: int | None) -> Iterator[str]:
    """The lines of ``fh`` without their end, each cut to ``max_chars`` (the rest of a longer line is read in
    pieces of that size and dropped)."""
    if max_chars is None:
        for line in fh:
            yield line.rstrip("\r\n")
        return
    size = max(1, max_chars) + 2
    while line := fh.readline(size):
        if not line.endswith("\n"):
            while (rest := fh.readline(size)) and not rest.endswith("\n"):
                pass
        yield line.rstrip("\r\n")[:max_chars]


def _raw_texts(corpus: Corpus, max_chars: int | None = None) -> Iterator[str | None]:
    p, column = corpus.path, corpus.column
    try:
        if corpus.kind == "text":
            with open(p, encoding="utf-8") as fh:
                yield from _bounded_lines(fh, max_chars)
            return
        if corpus.kind == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(p).iter_batches(batch_size=_READ_ROWS, columns=[column]):
                yield from _column(batch, column, corpus)
            return
        import pyarrow as pa

        if corpus.kind == "csv":
            import pyarrow.csv as pcsv

            parse = pcsv.ParseOptions(delimiter="\t" if p.suffix.lower() == ".tsv" else ",", newlines_in_values=True)
            reader = pcsv.open_csv(
                p, parse_options=parse,
                convert_options=pcsv.ConvertOptions(include_columns=[column], column_types={column: pa.string()}),
            )
        else:
            import pyarrow.json as pjson

            reader = pjson.open_json(p)
        for batch in reader:
            yield from _column(batch, column, corpus)
    except UnicodeDecodeError:
        raise InputError(f"corpus '{p}' is not UTF-8 text") from None
    except (KeyError, InputError):
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow.lib.ArrowInvalid and friends
        if type(exc).__module__.startswith("pyarrow") or isinstance(exc, (ValueError, json.JSONDecodeError)):
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            if "include_columns" in first or "No match for FieldRef" in first or "not found" in first.lower():
                raise InputError(f"corpus '{p}' has no column '{column}'; pick one with --column") from None
            raise InputError(f"cannot read corpus '{p}' as {corpus.kind}: {first}") from None
        raise


def _column(batch, column: str, corpus: Corpus) -> Iterator[str | None]:
    names = batch.schema.names
    if column not in names:
        raise InputError(f"corpus '{corpus.path}' has no column '{column}' (columns: {', '.join(names)}); pick one with --column")
    values = batch.column(names.index(column))
    import pyarrow as pa

    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type) or pa.types.is_null(values.type)):
        raise InputError(f"column '{column}' of corpus '{corpus.path}' holds {values.type}, not text")
    yield from values.to_pylist()


def ray_dataset(corpus: Corpus, limit: int | None = None):
    """The corpus as a Ray Dataset with one string column ``"text"``, blank texts dropped, at most ``limit`` rows.

    Reads with ``ray.data.read_text`` / ``read_json`` (lines) / ``read_csv`` / ``read_parquet``.
    """
    import ray.data as rd

    p = str(corpus.path)
    if corpus.kind == "text":
        ds = rd.read_text(p, drop_empty_lines=False)
        column = "text"
    elif corpus.kind == "parquet":
        ds = rd.read_parquet(p, columns=[corpus.column])
        column = corpus.column
    elif corpus.kind == "csv":
        import pyarrow as pa
        import pyarrow.csv as pcsv

        delimiter = "\t" if corpus.path.suffix.lower() == ".tsv" else ","
        ds = rd.read_csv(
            p, parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(include_columns=[corpus.column], column_types={corpus.column: pa.string()}),
        )
        column = corpus.column
    else:
        ds = rd.read_json(p, lines=True)
        column = corpus.column
    ds = ds.select_columns([column])
    if column != "text":
        ds = ds.rename_columns({column: "text"})
    import warnings

    with warnings.catch_warnings():  # Ray Data suggests its expression API for a row function; this one is plain Python
        warnings.filterwarnings("ignore", message=".*instead of 'fn'.*", category=UserWarning)
        ds = ds.filter(lambda row: row["text"] is not None and bool(str(row["text"]).strip()))
    if limit is not None:
        ds = ds.limit(limit)
    return ds
