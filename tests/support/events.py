"""Canonical S3 event payloads, stored as JSON under tests/fixtures/events/.

The payloads follow the documented S3 event message structure (eventVersion
2.1), with keys URL-encoded the way S3 encodes them, so tests exercise the
real decoding path rather than pre-decoded keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Where the payloads live; one file per scenario, named <name>.json.
EVENTS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "events"


#: A key full of shell metacharacters (fixtures put_shell_metachar_key*).
SHELL_KEY = "uploads/$(touch /tmp/pwned);rm -rf ~`id`|&<>'\"\\*?.csv"
#: A key with control characters, which a terminal would interpret.
CONTROL_KEY = "inbox/tab\there\nnew line\rcr\x1b[2J\x7fdel.csv"
#: The ETag of the single-part PUT fixtures.
PUT_ETAG = "0f343b0931126a20f133d67c2b018a3b"

#: fixture -> the exact Parameters the command must carry (decoded keys).
EXPECTED_PARAMETERS: dict[str, dict[str, list[str]]] = {
    "put_plain": {"Key": ["incoming/report-2024-05.csv"], "ETag": [PUT_ETAG]},
    "put_key_with_spaces": {"Key": ["reports/Q1 summary 2024.csv"], "ETag": [PUT_ETAG]},
    "put_key_with_plus": {"Key": ["math/1+1=2 (draft).txt"], "ETag": [PUT_ETAG]},
    "put_unicode_key": {"Key": ["inbox/r\u00e9sum\u00e9 \u65e5\u672c.csv"], "ETag": [PUT_ETAG]},
    "put_shell_metachar_key": {"Key": [SHELL_KEY], "ETag": [PUT_ETAG]},
    "put_shell_metachar_key_slash_encoded": {"Key": [SHELL_KEY], "ETag": [PUT_ETAG]},
    "put_versioned": {"Key": ["incoming/versioned.csv"], "ETag": [PUT_ETAG],
                      "VersionId": ["096fKKXTRTtl3on89fVO.nfljtsv6qko"]},
    "multipart_complete": {"Key": ["incoming/large-video.mp4"],
                           "ETag": ["e4c2b2f6e0d1c0b7a6f5e4d3c2b1a098-13"],
                           "VersionId": ["3HL4kqtJlcpXroDTDmjVBH40Nrjfkd"]},
}


def load_event(name: str) -> dict[str, Any]:
    """A fresh copy of the payload ``name`` (with or without ``.json``); tests may mutate it."""
    path = EVENTS_DIR / (name if name.endswith(".json") else f"{name}.json")
    event = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(event, dict):
        raise TypeError(f"{path}: an event fixture must be a JSON object")
    return event


def event_names() -> list[str]:
    """Every fixture name, sorted; lets tests check that none is left untested."""
    return sorted(path.stem for path in EVENTS_DIR.glob("*.json"))
