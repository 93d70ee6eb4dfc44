"""Reading one input for ``summarize``: decoding, format detection, one summary per format.

``detect_format`` picks CSV/TSV, JSON Lines or text from the name's suffix,
else by sniffing the content. ``summarize_csv``, ``summarize_jsonl`` and
``summarize_text`` stream the input line by line (lines over
``MAX_LINE_BYTES`` are read in pieces, or refused for CSV/JSON Lines) into the
accumulators of :mod:`worker.examples.stats`, and raise :class:`DataError`,
naming the byte offset and line, for input that cannot be decoded or parsed.
Stdlib only.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any, BinaryIO

from worker.examples.stats import MAX_VALUE_CHARS, BoundedCounter, ColumnStats

MAX_LINE_BYTES = 1 << 20  #: longer lines are read in pieces (CSV/JSONL: an error)
SNIFF_BYTES = 64 << 10  #: how much of an unlabelled input is sniffed
MAX_COLUMNS = 1000  #: columns beyond this are ignored (``columns_truncated``)
WORD_CAP = 10_000  #: exact distinct words before Misra-Gries
TOP_WORDS = 10  #: most common words listed for text

_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                   ".txt": "text", ".md": "text", ".log": "text"}
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")  # letters, any script; inner apostrophes


class DataError(Exception):
    """The input cannot be decoded or parsed; says where."""

    def __init__(self, message: str, *, offset: int | None = None, line: int | None = None):
        where = [f"byte {offset}"] if offset is not None else []
        where += [f"line {line}"] if line else []
        super().__init__(f"{message} at {', '.join(where)}" if where else message)


class _LineReader:
    """Decodes a binary stream to UTF-8 lines, remembering where each began.

    Decoding ourselves, rather than through a text wrapper, is what lets an
    error name the exact byte offset of the bad sequence.
    """

    def __init__(self, stream: BinaryIO, *, split_long_lines: bool) -> None:
        self._stream = stream
        self._split = split_long_lines
        self.line = 0  # 1-based number of the line being read
        self.bytes_read = 0

    def __iter__(self) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        at_line_start = True
        while True:
            raw = self._stream.readline(MAX_LINE_BYTES)
            start, pending = self.bytes_read, len(decoder.getstate()[0])
            if raw and at_line_start:
                self.line += 1
            if (nul := raw.find(b"\0")) >= 0:
                raise DataError("NUL byte: binary input, not text", offset=start + nul,
                                line=self.line)
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                raise DataError(f"invalid UTF-8 ({exc.reason}; binary or compressed input?)",
                                offset=start - pending + exc.start,
                                line=self.line or 1) from exc
            if not raw:
                return
            self.bytes_read += len(raw)
            at_line_start = raw.endswith(b"\n")
            if not at_line_start and len(raw) == MAX_LINE_BYTES and not self._split:
                raise DataError(f"line longer than {MAX_LINE_BYTES} bytes", line=self.line)
            if start == 0 and text.startswith("\ufeff"):
                text = text[1:]  # byte order mark, as Excel writes it
            if text:
                yield text


def _sniff_delimiter(sample: str) -> str | None:
    """The delimiter if `sample` reads as consistent delimited rows, else None."""
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
        rows = [r for r in itertools.islice(csv.reader(io.StringIO(sample), delimiter=delimiter),
                                            20) if r]
    except csv.Error:
        return None
    widths = {len(r) for r in rows}
    return delimiter if len(rows) >= 2 and len(widths) == 1 and widths.pop() >= 2 else None


def detect_format(name: str, stream: BinaryIO) -> tuple[str, str | None]:
    """(format, CSV delimiter) from the name's suffix, else from the content."""
    fmt = _SUFFIX_FORMATS.get(PurePosixPath(name).suffix.lower())
    if fmt == "tsv":
        return "csv", "\t"
    if fmt in ("jsonl", "text"):
        return fmt, None
    head = stream.read(SNIFF_BYTES)
    stream.seek(0)
    sample = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    if len(head) == SNIFF_BYTES:
        sample = sample[: sample.rfind("\n") + 1]  # whole lines only
    delimiter = _sniff_delimiter(sample)
    if fmt == "csv" or (delimiter and not _starts_with_json_object(sample)):
        return "csv", delimiter or ","
    return ("jsonl" if _starts_with_json_object(sample) else "text"), None


def _starts_with_json_object(sample: str) -> bool:
    first = sample.lstrip().partition("\n")[0]
    try:
        return first.startswith("{") and isinstance(json.loads(first), dict)
    except (ValueError, RecursionError):
        return False


def summarize_csv(stream: BinaryIO, delimiter: str) -> dict[str, Any]:
    """Rows and per-column statistics of a delimited file with a header row."""
    lines = _LineReader(stream, split_long_lines=False)
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    rows = ragged = 0
    try:
        header = next(reader, [])
        names = [h.strip() or f"column_{i + 1}" for i, h in enumerate(header)]
        columns = [ColumnStats(n) for n in names[:MAX_COLUMNS]]
        for row in reader:
            if not row:
                continue  # blank line
            rows += 1
            ragged += len(row) != len(names)
            for column, value in zip(columns, row, strict=False):
                column.add_text(value)
            for column in columns[len(row):]:
                column.missing += 1
    except csv.Error as exc:
        raise DataError(f"malformed CSV ({exc})", line=reader.line_num) from exc
    return {"format": "csv", "delimiter": delimiter, "rows": rows, "ragged_rows": ragged,
            "columns_truncated": len(names) > MAX_COLUMNS,
            "columns": [c.to_dict() for c in columns]}


def summarize_jsonl(stream: BinaryIO) -> dict[str, Any]:
    """Rows and per-key statistics of JSON Lines whose records are objects."""
    lines = _LineReader(stream, split_long_lines=False)
    columns: dict[str, ColumnStats] = {}
    rows, truncated = 0, False
    for text in lines:
        if not text.strip():
            continue
        try:
            record = json.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg}, column {exc.colno})",
                            line=lines.line) from exc
        except (ValueError, RecursionError) as exc:  # huge integers, absurd nesting
            raise DataError(f"unreadable JSON ({exc})", line=lines.line) from exc
        if not isinstance(record, dict):
            raise DataError("a JSON Lines record is not an object", line=lines.line)
        rows += 1
        for key, value in record.items():
            column = columns.get(key)
            if column is None:
                if len(columns) >= MAX_COLUMNS:
                    truncated = True
                    continue
                column = columns[key] = ColumnStats(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                column.add_number(value)
            elif value is not None:
                text_value = value if isinstance(value, str) else json.dumps(value)
                column.add_text(text_value, parse_numbers=False)
    summaries = []
    for column in columns.values():
        column.missing = rows - column.count  # absent keys and nulls alike
        summaries.append(column.to_dict())
    return {"format": "jsonl", "rows": rows, "columns_truncated": truncated,
            "columns": summaries}


def summarize_text(stream: BinaryIO) -> dict[str, Any]:
    """Lines, words, characters, the longest line and the commonest words."""
    lines = _LineReader(stream, split_long_lines=True)
    words = BoundedCounter(WORD_CAP)
    n_lines = n_words = n_chars = line_len = 0
    longest = (0, 0)  # (line number, characters)
    carry = ""  # a word that may continue into the next piece of a long line

    def count_words(text: str) -> int:
        found = 0
        for match in _WORD.finditer(text):
            words.add(match.group().casefold()[:MAX_VALUE_CHARS])
            found += 1
        return found

    for piece in lines:
        n_chars += len(piece)
        ended = piece.endswith("\n")
        body = piece[:-1] if ended else piece
        line_len += len(body)
        text, carry = carry + body, ""
        if ended:
            n_lines += 1
            length = line_len - body.endswith("\r")
            longest = max(longest, (n_lines, length), key=lambda t: t[1])
            line_len = 0
        elif text and not text[-1].isspace():
            carry = text.rsplit(maxsplit=1)[-1]
            text = text[: len(text) - len(carry)]
            if len(carry) > MAX_LINE_BYTES:  # no whitespace for a megabyte: stop joining
                text, carry = text + carry, ""
        n_words += count_words(text)
    n_words += count_words(carry)
    if line_len:  # last line without a newline
        n_lines += 1
        longest = max(longest, (n_lines, line_len), key=lambda t: t[1])
    return {"format": "text", "lines": n_lines, "words": n_words, "characters": n_chars,
            "bytes": lines.bytes_read,
            "longest_line": {"line": longest[0], "characters": longest[1]},
            "distinct_words": words.distinct(), "distinct_words_capped": not words.exact,
            "top_words": [{"word": w, "count": c} for w, c in words.top(TOP_WORDS)],
            "top_words_exact": words.exact}
