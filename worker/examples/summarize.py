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

This module is the command line and the results; reading the input and the
per-format summaries are in :mod:`worker.examples.formats`, the streaming
accumulators in :mod:`worker.examples.stats`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from worker.examples.formats import (
    DataError,
    detect_format,
    summarize_csv,
    summarize_jsonl,
    summarize_text,
)

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


class _UsageError(Exception):
    """The command line is wrong."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)  # argparse would exit 2; the contract says 64


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
