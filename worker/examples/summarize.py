"""Summarize one input file: the example processing program of ``processor``.

Usage::

    python -m worker.examples.summarize [--format auto|csv|tsv|jsonl|text] INPUT OUTPUT_DIR

It follows the processing command contract (ARCHITECTURE.md §3): it reads
INPUT, writes its results into OUTPUT_DIR (which must exist) and nothing else,
and never writes the reserved ``_manifest.json`` / ``_failed.json``. Results:

``summary.json``
    Machine-readable; ``schema`` names its version. CSV/TSV and JSON Lines give
    ``rows`` and per-column ``type`` (numeric, text or empty), ``count``,
    ``missing``, ``distinct``; numeric columns add min/max/sum/mean/stddev,
    text columns the top 5 values. Text gives lines, words, characters,
    bytes, the longest line and the top 10 words.
``summary.md``
    The same for people, as Markdown tables.

Each is written to a hidden temporary name and renamed, only after the whole
input has been read, so a failed run leaves no file with a final name.

The format comes from ``--format``, else the suffix of ``PROCESSOR_SOURCE_KEY``
(set by the daemon; the input file's own name when absent): ``.csv``, ``.tsv``,
``.jsonl``/``.ndjson``, ``.txt``/``.md``/``.log``. Other names are sniffed:
consistently delimited lines are CSV, a leading JSON object is JSON Lines,
anything else is UTF-8 text. CSV files are taken to start with a header row.

Memory stays bounded whatever the input size: the file is read line by line
(lines over 1 MiB are read in pieces), numeric statistics use Welford's
method, and value/word counts are exact up to a cap, then Misra-Gries
(``distinct_capped`` / ``top_exact`` say which).

Exit codes (sysexits.h): 0 success; 64 usage; 65 the input cannot be decoded
or parsed (one line on stderr with the byte offset and line); 66 the input
cannot be opened; 73 OUTPUT_DIR is not a directory; 74 writing a result
failed. The program never exits 75 (retry): a bad input stays bad.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import io
import itertools
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, NoReturn

EX_OK = 0  #: success
EX_USAGE = 64  #: bad command line
EX_DATAERR = 65  #: the input is not valid UTF-8 / CSV / JSON Lines
EX_NOINPUT = 66  #: the input file cannot be opened
EX_CANTCREAT = 73  #: OUTPUT_DIR is missing or not a directory
EX_IOERR = 74  #: writing a result file failed

SCHEMA = "processor.summarize/1"  #: version tag written into summary.json
JSON_NAME = "summary.json"
MARKDOWN_NAME = "summary.md"
RESERVED_NAMES = frozenset({"_manifest.json", "_failed.json"})  #: owned by the daemon

MAX_LINE_BYTES = 1 << 20  #: longer lines are read in pieces (CSV/JSONL: an error)
SNIFF_BYTES = 64 << 10  #: how much of an unlabelled input is sniffed
MAX_COLUMNS = 1000  #: columns beyond this are ignored (``columns_truncated``)
DISTINCT_CAP = 1000  #: exact distinct values per column before Misra-Gries
WORD_CAP = 10_000  #: exact distinct words before Misra-Gries
MAX_VALUE_CHARS = 200  #: values are counted by this prefix
TOP_VALUES, TOP_WORDS = 5, 10
MISSING_TOKENS = frozenset({"", "na", "n/a", "null", "nan"})  #: case-insensitive

_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                   ".txt": "text", ".md": "text", ".log": "text"}
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")  # letters, any script; inner apostrophes


class DataError(Exception):
    """The input cannot be decoded or parsed; says where."""

    def __init__(self, message: str, *, offset: int | None = None, line: int | None = None):
        where = [f"byte {offset}"] if offset is not None else []
        where += [f"line {line}"] if line else []
        super().__init__(f"{message} at {', '.join(where)}" if where else message)


class _UsageError(Exception):
    """The command line is wrong."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)  # argparse would exit 2; the contract says 64


class _BoundedCounter:
    """Exact counts of up to `capacity` distinct values, then Misra-Gries.

    Past the cap it keeps at most `capacity` candidates: every value seen more
    than n/(capacity+1) times survives, with a count low by at most that much.
    A full decrement pass costs O(capacity) but removes capacity+1 from the
    total, so the amortized cost per value stays O(1).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.counts: dict[str, int] = {}
        self.exact = True

    def add(self, value: str) -> None:
        counts = self.counts
        if value in counts:
            counts[value] += 1
        elif len(counts) < self.capacity:
            counts[value] = 1
        else:
            self.exact = False
            self.counts = {k: c - 1 for k, c in counts.items() if c > 1}

    def distinct(self) -> int:
        return len(self.counts) if self.exact else self.capacity

    def top(self, n: int) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


class _ColumnStats:
    """Streaming statistics of one column; its type is decided at the end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = self.missing = 0
        self.numeric = self.integral = True  # until a value proves otherwise
        self.mean = self.m2 = self.fsum = self.fcomp = 0.0
        self.isum = 0
        self.min: float | int | None = None
        self.max: float | int | None = None
        self.values = _BoundedCounter(DISTINCT_CAP)

    def add_text(self, raw: str, *, parse_numbers: bool = True) -> None:
        value = raw.strip()
        if value.lower() in MISSING_TOKENS:
            self.missing += 1
            return
        self.count += 1
        self.values.add(value[:MAX_VALUE_CHARS])
        if not self.numeric:
            return
        if parse_numbers and len(value) <= 64 and _NUMBER.fullmatch(value):
            number = float(value)
            if math.isfinite(number):
                self._add_number(int(value) if _INTEGER.fullmatch(value) else number)
                return
        self.numeric = False

    def add_number(self, number: float) -> None:
        self.count += 1
        self.values.add(repr(number)[:MAX_VALUE_CHARS])
        try:
            finite = math.isfinite(number)
        except OverflowError:  # an integer too large for a float
            finite = False
        if self.numeric and finite:
            self._add_number(number)
        else:
            self.numeric = False

    def _add_number(self, number: float) -> None:
        x = float(number)
        n = self.count  # already counts this value, and every earlier one was numeric
        delta = x - self.mean  # Welford: numerically stable mean and variance
        self.mean += delta / n
        self.m2 += delta * (x - self.mean)
        total = self.fsum + x  # Neumaier-compensated float sum
        big, small = (self.fsum, x) if abs(self.fsum) >= abs(x) else (x, self.fsum)
        self.fcomp += (big - total) + small
        self.fsum = total
        if isinstance(number, int) and self.integral:
            self.isum += number
        else:
            self.integral = False
        self.min = number if self.min is None or number < self.min else self.min
        self.max = number if self.max is None or number > self.max else self.max

    def to_dict(self) -> dict[str, Any]:
        kind = "empty" if not self.count else "numeric" if self.numeric else "text"
        out: dict[str, Any] = {"name": self.name, "type": kind, "count": self.count,
                               "missing": self.missing, "distinct": self.values.distinct(),
                               "distinct_capped": not self.values.exact}
        if kind == "numeric":
            cast = int if self.integral else float
            out.update(min=cast(self.min), max=cast(self.max),  # type: ignore[arg-type]
                       sum=self.isum if self.integral else self.fsum + self.fcomp,
                       mean=self.mean,
                       stddev=math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else None)
        elif kind == "text":
            out["top"] = [{"value": v, "count": c} for v, c in self.values.top(TOP_VALUES)]
            out["top_exact"] = self.values.exact
        return out


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
    if fmt == "csv" or delimiter and not _starts_with_json_object(sample):
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
        columns = [_ColumnStats(n) for n in names[:MAX_COLUMNS]]
        for row in reader:
            if not row:
                continue  # blank line
            rows += 1
            ragged += len(row) != len(names)
            for column, value in zip(columns, row):
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
    columns: dict[str, _ColumnStats] = {}
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
                column = columns[key] = _ColumnStats(key)
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
    words = _BoundedCounter(WORD_CAP)
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


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}" if 0.01 <= abs(value) < 1e15 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _cell(value: Any) -> str:
    text = _fmt(value).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.split()) if text.strip() else ""


def render_markdown(summary: dict[str, Any]) -> str:
    """A readable Markdown report of `summary`."""
    name = summary["source"].get("key") or summary["source"]["input_name"]
    out = [f"# Summary: {_cell(name)}", ""]
    if summary["format"] == "text":
        longest = summary["longest_line"]
        out += ["| Metric | Value |", "|---|---:|"]
        for label in ("lines", "words", "characters", "bytes"):
            out.append(f"| {label.capitalize()} | {_fmt(summary[label])} |")
        chars = _fmt(longest["characters"])
        out += [f"| Longest line | line {longest['line']}, {chars} characters |",
                "", "## Top words", "", "| Word | Count |", "|---|---:|"]
        out += [f"| {_cell(t['word'])} | {_fmt(t['count'])} |" for t in summary["top_words"]]
        if not summary["top_words_exact"]:
            out += ["", "_Counts are lower bounds: the vocabulary exceeded the exact cap._"]
        return "\n".join(out) + "\n"
    label = {"csv": "CSV", "jsonl": "JSON Lines"}[summary["format"]]
    headings = ["Column", "Type", "Count", "Missing", "Distinct", "Min", "Max", "Mean",
                "Std dev", "Sum", "Top values"]
    out += [f"{label}: {_fmt(summary['rows'])} rows, {len(summary['columns'])} columns.", "",
            "| " + " | ".join(headings) + " |", "|---|---|" + "---:|" * 8 + "---|"]
    for c in summary["columns"]:
        distinct = f"> {_fmt(c['distinct'])}" if c["distinct_capped"] else _fmt(c["distinct"])
        top = ", ".join(f"{_cell(t['value'])} ({t['count']})" for t in c.get("top", []))
        stats = [_cell(c.get(k)) for k in ("min", "max", "mean", "stddev", "sum")]
        out.append("| " + " | ".join([_cell(c["name"]), c["type"], _fmt(c["count"]),
                                       _fmt(c["missing"]), distinct, *stats, top]) + " |")
    return "\n".join(out) + "\n"


def _one_line(summary: dict[str, Any]) -> str:
    name = summary["source"].get("key") or summary["source"]["input_name"]
    if summary["format"] == "text":
        return (f"summarized {name!r}: text, {summary['lines']:,} lines, "
                f"{summary['words']:,} words, {summary['bytes']:,} bytes")
    missing = sum(c["missing"] for c in summary["columns"])
    return (f"summarized {name!r}: {summary['format']}, {summary['rows']:,} rows x "
            f"{len(summary['columns'])} columns, {missing:,} missing cells")


def _write_atomic(directory: Path, name: str, data: bytes) -> None:
    """Write `name` under `directory` so it is either complete or absent."""
    if name in RESERVED_NAMES:
        raise ValueError(f"{name} is reserved for the daemon")
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summarize(stream: BinaryIO, name: str, fmt: str = "auto") -> dict[str, Any]:
    """The summary of `stream`; `name` (a key or file name) hints at its format."""
    delimiter: str | None = "\t" if fmt == "tsv" else ","
    if fmt == "auto":
        fmt, delimiter = detect_format(name, stream)
    if fmt in ("csv", "tsv"):
        return summarize_csv(stream, delimiter or ",")
    return summarize_jsonl(stream) if fmt == "jsonl" else summarize_text(stream)


def main(argv: list[str] | None = None) -> int:
    """Run the program; returns the exit code."""
    parser = _ArgumentParser(prog="python -m worker.examples.summarize",
                             description="Summarize a CSV, JSON Lines or text file.")
    parser.add_argument("--format", choices=["auto", "csv", "tsv", "jsonl", "text"],
                        default="auto", help="input format (default: from the key, else sniffed)")
    parser.add_argument("input", type=Path, help="the file to summarize")
    parser.add_argument("output_dir", type=Path, help="an existing directory for the results")
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"summarize: error: {exc}", file=sys.stderr)
        return EX_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    if not args.output_dir.is_dir():
        print(f"summarize: output directory {str(args.output_dir)!r} does not exist",
              file=sys.stderr)
        return EX_CANTCREAT
    env = os.environ
    source = {"key": env.get("PROCESSOR_SOURCE_KEY"), "bucket": env.get("PROCESSOR_SOURCE_BUCKET"),
              "job_id": env.get("PROCESSOR_JOB_ID"), "input_name": args.input.name}
    try:
        with args.input.open("rb") as stream:
            if not args.input.is_file():
                raise IsADirectoryError(f"{args.input} is not a regular file")
            summary = summarize(stream, source["key"] or args.input.name, args.format)
    except DataError as exc:
        print(f"summarize: {str(args.input)!r}: {exc}", file=sys.stderr)
        return EX_DATAERR
    except OSError as exc:
        print(f"summarize: cannot read input: {exc}", file=sys.stderr)
        return EX_NOINPUT
    summary = {"schema": SCHEMA, "source": source, **summary}
    results = {JSON_NAME: json.dumps(summary, indent=2, ensure_ascii=False).encode() + b"\n",
               MARKDOWN_NAME: render_markdown(summary).encode()}
    try:
        for name, data in results.items():
            _write_atomic(args.output_dir, name, data)
    except OSError as exc:
        for name in results:  # all results or none
            (args.output_dir / name).unlink(missing_ok=True)
        print(f"summarize: cannot write results: {exc}", file=sys.stderr)
        return EX_IOERR
    print(_one_line(summary))
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
