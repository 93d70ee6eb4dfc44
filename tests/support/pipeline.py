"""A Pipeline on a fake store and a real SQLite ledger, and processing commands to run in it."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from tests.support.fakes import FakeDisk, FakeStore
from worker.config.settings import settings_from_mapping
from worker.jobs.identity import Identity
from worker.jobs.job import Job
from worker.runner.pipeline import Pipeline
from worker.state.ledger import Ledger

#: The output bucket of these pipelines.
OUT = "out"


def script(body: str) -> list[str]:
    """A processing command: Python code with argv[1]=input, argv[2]=output dir."""
    return [sys.executable, "-c", body, "{input}", "{output_dir}"]


#: Writes the input upper-cased to upper.txt, and nested/n.txt.
COPY_UPPER = script(
    "import sys, pathlib; o = pathlib.Path(sys.argv[2]);"
    "(o / 'upper.txt').write_bytes(pathlib.Path(sys.argv[1]).read_bytes().upper());"
    "(o / 'nested').mkdir(); (o / 'nested' / 'n.txt').write_text('n')"
)


def make(
    tmp_path: Path, command: list[str], *, disk: FakeDisk | None = None,
    environ: dict[str, str] | None = None, **processing: object,
) -> tuple[Pipeline, Ledger, FakeStore]:
    """A pipeline running ``command``, its ledger and its fake store, all state under ``tmp_path``."""
    settings = settings_from_mapping(
        {
            "s3": {"output_bucket": OUT, "output_prefix": "results/"},
            "processing": {"command": command, "retry_base_s": 10, "timeout_s": 30,
                           "kill_grace_s": 1, **processing},
            "paths": {"state_dir": str(tmp_path / "state"), "socket": str(tmp_path / "s.sock")},
        },
        {},
    )
    clock = Clock()
    ledger = Ledger(settings.paths.ledger, clock=clock)
    store = FakeStore()
    pipeline = Pipeline(settings, store, ledger, clock=clock, environ={} if environ is None else environ,
                        disk_usage=disk or shutil.disk_usage)
    return pipeline, ledger, store


class Clock:
    """Wall time, plus an offset a test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def claim(ledger: Ledger, store: FakeStore, key: str, body: bytes = b"hello") -> Job:
    """Store ``body`` as s3://in/``key``, submit it and claim it: the job the pipeline runs next."""
    etag = store.put("in", key, body)
    ledger.submit(Identity("in", key, None, etag))
    job = ledger.claim_next()
    assert job is not None
    return job
