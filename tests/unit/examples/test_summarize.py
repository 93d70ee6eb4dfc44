"""The example processing program: worker/examples/summarize.py."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from worker.examples import formats, stats, summarize
from worker.examples.summarize import main

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "worker" / "local" / "samples"
CONTRACT_ENV = ("PROCESSOR_JOB_ID", "PROCESSOR_INPUT", "PROCESSOR_OUTPUT_DIR",
                "PROCESSOR_SOURCE_BUCKET", "PROCESSOR_SOURCE_KEY")


@pytest.fixture(autouse=True)
def _no_contract_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CONTRACT_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def run(path: Path, out: Path, *extra: str) -> dict[str, Any]:
    assert main([*extra, str(path), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "summary.md"]
    result: dict[str, Any] = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return result


def column(summary: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in summary["columns"] if c["name"] == name]
    return found


# --- CSV ------------------------------------------------------------------

def test_csv_numeric_statistics_match_hand_computed_values(tmp_path: Path, out: Path) -> None:
    src = tmp_path / "sales.csv"
    src.write_text("region,units,price\nnorth,2,1.5\nsouth,4,2.5\nnorth,6,3.5\nnorth,8,4.5\n")
    summary = run(src, out)
    assert (summary["format"], summary["rows"], summary["delimiter"]) == ("csv", 4, ",")
    units = column(summary, "units")
    assert units["type"] == "numeric"
    assert (units["min"], units["max"], units["sum"], units["mean"]) == (2, 8, 20, 5.0)
    assert isinstance(units["sum"], int)
    # sample standard deviation of 2, 4, 6, 8: sqrt(((-3)² + (-1)² + 1² + 3²) / 3)
    assert units["stddev"] == pytest.approx(math.sqrt(20 / 3))
    price = column(summary, "price")
    assert (price["min"], price["max"]) == (1.5, 4.5)
    assert price["sum"] == pytest.approx(12.0)
    assert price["mean"] == pytest.approx(3.0)
    region = column(summary, "region")
    assert region["type"] == "text"
    assert region["distinct"] == 2
    assert region["top"] == [{"value": "north", "count": 3}, {"value": "south", "count": 1}]
    assert region["top_exact"] is True


def test_csv_missing_cells_are_counted(tmp_path: Path, out: Path) -> None:
    src = tmp_path / "gaps.csv"
    src.write_text("a,b,c\n1,,x\n2,NA,y\n,5\n3,6,z\n\n")
    summary = run(src, out)
    assert summary["rows"] == 4  # the blank line is not a row
    assert summary["ragged_rows"] == 1
    a, b, c = (column(summary, n) for n in "abc")
    assert (a["count"], a["missing"], a["mean"]) == (3, 1, 2.0)
    assert (b["count"], b["missing"], b["min"], b["max"]) == (2, 2, 5, 6)
    assert (c["count"], c["missing"]) == (3, 1)
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert "| b | numeric | 2 | 2 |" in md


def test_csv_mixed_column_is_text_and_all_missing_is_empty(tmp_path: Path, out: Path) -> None:
    src = tmp_path / "mixed.csv"
    src.write_text("code,blank\n1,\n2,\nA7,\n")
    summary = run(src, out)
    assert column(summary, "code")["type"] == "text"
    assert column(summary, "code")["distinct"] == 3
    assert column(summary, "blank")["type"] == "empty"


def test_csv_delimiter_and_format_are_sniffed_without_a_suffix(tmp_path: Path, out: Path) -> None:
    src = tmp_path / "export"
    src.write_text("name;amount\nalpha;10\nbeta;20\ngamma;30\n")
    summary = run(src, out)
    assert (summary["format"], summary["delimiter"]) == ("csv", ";")
    assert column(summary, "amount")["sum"] == 60


def test_source_key_suffix_decides_the_format(
        tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "input"  # the daemon's work file need not keep the key's name
    src.write_text("col\tvalue\nx\t1\ny\t2\n")
    monkeypatch.setenv("PROCESSOR_SOURCE_KEY", "exports/Q3 résumé.tsv")
    summary = run(src, out)
    assert summary["format"] == "csv" and summary["delimiter"] == "\t"
    assert summary["source"]["key"] == "exports/Q3 résumé.tsv"
    assert "# Summary: exports/Q3 résumé.tsv" in (out / "summary.md").read_text(encoding="utf-8")


def test_excel_byte_order_mark_and_quoted_fields(tmp_path: Path, out: Path) -> None:
    src = tmp_path / "excel.csv"
    src.write_bytes('\ufeffname,note\r\nA,"one, two"\r\nB,"multi\r\nline | pipe"\r\n'
                    .encode())
    summary = run(src, out)
    assert [c["name"] for c in summary["columns"]] == ["name", "note"]
    assert summary["rows"] == 2
    assert "line \\| pipe" in (out / "summary.md").read_text(encoding="utf-8")


def test_malformed_csv_is_a_data_error(
        tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.csv"
    src.write_text('a,b\n1,"unterminated\n')
    assert main([str(src), str(out)]) == summarize.EX_DATAERR
    assert "malformed CSV" in capsys.readouterr().err
    assert list(out.iterdir()) == []


# --- text -----------------------------------------------------------------

def test_text_counts(tmp_path: Path, out: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("The cat and the hat.\nThe end,\n\nit's THE END\n")
    summary = run(src, out)
    assert summary["format"] == "text"
    assert (summary["lines"], summary["words"]) == (4, 10)
    assert summary["characters"] == summary["bytes"] == src.stat().st_size
    assert summary["longest_line"] == {"line": 1, "characters": 20}
    assert summary["top_words"][:2] == [{"word": "the", "count": 4},
                                        {"word": "end", "count": 2}]
    assert {"word": "it's", "count": 1} in summary["top_words"]


def test_unicode_text(tmp_path: Path, out: Path) -> None:
    src = tmp_path / "unicode.txt"
    text = "Grüße aus Zürich — naïve CAFÉ café\nΚαλημέρα κόσμε\n日本語 テキスト\nStraße STRASSE"
    src.write_text(text, encoding="utf-8")
    summary = run(src, out)
    assert summary["lines"] == 4  # the last line has no newline
    assert summary["characters"] == len(text)
    assert summary["bytes"] == len(text.encode())
    assert summary["words"] == 12  # the dash is not a word
    counts = {t["word"]: t["count"] for t in summary["top_words"]}
    assert counts["café"] == 2
    assert counts["strasse"] == 2  # casefold: Straße == STRASSE
    assert summary["longest_line"] == {"line": 1, "characters": 34}


def test_long_lines_are_read_in_pieces_without_splitting_words(
        tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "MAX_LINE_BYTES", 7)
    src = tmp_path / "long.txt"
    line = "alpha beta gamma ünïcödé delta"  # pieces of 7 bytes cut words
    src.write_text(line + "\nshort\n", encoding="utf-8")
    summary = run(src, out)
    counts = {t["word"]: t["count"] for t in summary["top_words"]}
    assert counts == {"alpha": 1, "beta": 1, "gamma": 1, "ünïcödé": 1,
                      "delta": 1, "short": 1}
    assert summary["longest_line"] == {"line": 1, "characters": len(line)}
    assert summary["characters"] == len(line) + len("short") + 2


@pytest.mark.parametrize("name", ["empty.txt", "empty.csv", "empty"])
def test_empty_file(tmp_path: Path, out: Path, name: str) -> None:
    src = tmp_path / name
    src.write_bytes(b"")
    summary = run(src, out)
    if summary["format"] == "csv":
        assert (summary["rows"], summary["columns"]) == (0, [])
    else:
        assert (summary["lines"], summary["words"], summary["bytes"]) == (0, 0, 0)


# --- JSON Lines -----------------------------------------------------------

def test_json_lines(tmp_path: Path, out: Path) -> None:
    src = tmp_path / "events.jsonl"
    src.write_text('{"svc": "a", "ms": 10, "ok": true}\n{"svc": "b", "ms": 30}\n\n'
                   '{"svc": "a", "ms": null, "tags": ["x"]}\n')
    summary = run(src, out)
    assert summary["rows"] == 3
    ms = column(summary, "ms")
    assert (ms["type"], ms["count"], ms["missing"], ms["mean"]) == ("numeric", 2, 1, 20.0)
    assert column(summary, "ok")["missing"] == 2
    assert column(summary, "svc")["top"][0] == {"value": "a", "count": 2}


def test_json_lines_are_sniffed_without_a_suffix(tmp_path: Path, out: Path) -> None:
    src = tmp_path / "events"
    src.write_text('{"a": 1, "b": 2}\n{"a": 3, "b": 4}\n{"a": 5, "b": 6}\n')
    summary = run(src, out)
    assert summary["format"] == "jsonl"
    assert column(summary, "b")["sum"] == 12


def test_prose_is_not_mistaken_for_csv(tmp_path: Path, out: Path) -> None:
    src = tmp_path / "README"
    src.write_text("Hello, world.\nThis line, unlike the first, has two commas.\nNone here.\n")
    assert run(src, out)["format"] == "text"


def test_invalid_json_line_names_the_line(
        tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "events.jsonl"
    src.write_text('{"a": 1}\n{"a": \n')
    assert main([str(src), str(out)]) == summarize.EX_DATAERR
    assert "line 2" in capsys.readouterr().err
    assert list(out.iterdir()) == []


# --- failures -------------------------------------------------------------

@pytest.mark.parametrize("name", ["bad.txt", "bad.csv", "bad"])
def test_undecodable_bytes_exit_65_and_leave_no_results(
        tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    src = tmp_path / name
    src.write_bytes(b"a,b\n1,2\n3,\xff\n")
    assert main([str(src), str(out)]) == summarize.EX_DATAERR
    err = capsys.readouterr().err
    assert "invalid UTF-8" in err and "byte 10" in err and "line 3" in err
    assert len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []  # no summary.*, no temporary files either


def test_utf8_sequence_cut_at_end_of_file_is_a_data_error(
        tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "cut.txt"
    src.write_bytes("fine\ncafé".encode()[:-1])
    assert main([str(src), str(out)]) == summarize.EX_DATAERR
    assert "byte 8" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_binary_input_with_nul_bytes_is_a_data_error(tmp_path: Path, out: Path) -> None:
    src = tmp_path / "blob"
    src.write_bytes(b"PK\x03\x04\x00\x00")
    assert main([str(src), str(out)]) == summarize.EX_DATAERR
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("argv", [[], ["only-one"], ["a", "b", "c"], ["--format", "xml", "a", "b"]])
def test_usage_errors_exit_64(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == summarize.EX_USAGE
    assert "usage:" in capsys.readouterr().err


def test_missing_input_and_missing_output_dir(tmp_path: Path, out: Path) -> None:
    assert main([str(tmp_path / "nope.csv"), str(out)]) == summarize.EX_NOINPUT
    src = tmp_path / "x.txt"
    src.write_text("x\n")
    assert main([str(src), str(tmp_path / "no-such-dir")]) == summarize.EX_CANTCREAT


def test_reserved_names_are_refused(tmp_path: Path) -> None:
    for name in summarize.RESERVED_NAMES:
        with pytest.raises(ValueError):
            summarize._write_atomic(tmp_path, name, b"{}")
    assert list(tmp_path.iterdir()) == []


# --- bounded memory -------------------------------------------------------

def test_bounded_counter_is_exact_below_the_cap_then_keeps_heavy_hitters() -> None:
    counter = stats.BoundedCounter(10)
    for value in "aabbbc":
        counter.add(value)
    assert counter.exact and counter.distinct() == 3
    assert counter.top(2) == [("b", 3), ("a", 2)]
    for i in range(10_000):
        counter.add("hot" if i % 3 == 0 else f"cold-{i}")
    assert not counter.exact
    assert len(counter.counts) <= 10
    assert counter.top(1)[0][0] == "hot"


def test_large_csv_streams_in_bounded_memory(tmp_path: Path, out: Path) -> None:
    rows = 200_000
    src = tmp_path / "big.csv"
    with src.open("w", encoding="utf-8") as f:
        f.write("id,region,amount,comment\n")
        for i in range(rows):
            f.write(f"{i},r{i % 7},{i % 1000}.5,row number {i} of the big file\n")
    assert src.stat().st_size > 9 << 20
    tracemalloc.start()
    try:
        summary = run(src, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB"
    assert summary["rows"] == rows
    ids = column(summary, "id")
    assert (ids["min"], ids["max"], ids["sum"]) == (0, rows - 1, rows * (rows - 1) // 2)
    assert ids["stddev"] == pytest.approx(statistics.stdev(range(rows)))
    assert ids["distinct_capped"] is True
    amount = column(summary, "amount")
    assert amount["mean"] == pytest.approx(500.0)
    region = column(summary, "region")
    assert region["distinct"] == 7 and region["top_exact"] is True
    comment = column(summary, "comment")
    assert comment["distinct_capped"] is True and comment["top_exact"] is False


# --- the shipped samples and the module entry point -----------------------

@pytest.mark.parametrize("sample", sorted(SAMPLES.iterdir()), ids=lambda p: p.name)
def test_every_sample_summarizes(
        sample: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sample.stat().st_size < 10_000
    monkeypatch.setenv("PROCESSOR_SOURCE_KEY", f"samples/{sample.name}")
    summary = run(sample, out)
    assert summary["format"] == {".csv": "csv", ".txt": "text", ".jsonl": "jsonl"}[sample.suffix]


def test_sample_with_an_odd_name_exists() -> None:
    odd = [p.name for p in SAMPLES.iterdir() if " " in p.name and not p.name.isascii()]
    assert odd, "one sample's name must exercise spaces and non-ASCII in keys"


def test_module_entry_point_runs_as_a_subprocess(tmp_path: Path, out: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    src = work / "input"
    src.write_text("a,b\n1,x\n3,y\n")
    key = "incoming/Quarterly résumé (final).csv"
    env = {**os.environ, "PROCESSOR_SOURCE_KEY": key, "PROCESSOR_SOURCE_BUCKET": "in",
           "PROCESSOR_JOB_ID": "job-1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "worker.examples.summarize", str(src), str(out)],
        cwd=work, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and "2 rows x 2 columns" in proc.stdout
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["source"] == {"key": key, "bucket": "in", "job_id": "job-1",
                                 "input_name": "input"}
    assert column(summary, "a")["mean"] == 2.0
