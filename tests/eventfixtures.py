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
EVENTS_DIR = Path(__file__).parent / "fixtures" / "events"


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
