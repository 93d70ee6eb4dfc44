"""Outputs are read safely: no link is followed, nothing swapped in after the listing is
uploaded, the manifest hashes the bytes uploaded, and every name gets a defined outcome.

Real processing commands on a fake store and a real ledger (tests/support/pipeline.py).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from processor_shared.layout import MANIFEST_NAME
from tests.support.fakes import FakeStore
from tests.support.pipeline import OUT, claim, make, script
from worker.jobs.states import JobState

SECRET = b"outside the job: must never be uploaded\n"


def test_an_output_dir_replaced_by_a_link_fails_the_job(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    command = script(
        "import os, shutil, sys; out = sys.argv[2]; shutil.rmtree(out);"
        f"os.symlink({str(outside)!r}, out)"
    )
    pipeline, ledger, store = make(tmp_path, command)
    done = pipeline.run(claim(ledger, store, "in.txt"))
    assert done.state is JobState.FAILED
    assert done.error is not None and "output dir" in done.error and "symlink" in done.error
    assert SECRET not in store.objects.values()
    assert done.counted_attempts == 0  # the job's own failure, not an internal error


class _SwappingStore(FakeStore):
    """Like a process left behind by the command: while the first upload runs, every other
    output is replaced by a symlink to a file outside the job (and a directory by a link)."""

    def __init__(self, outside: Path) -> None:
        super().__init__()
        self.outside = outside
        self.swapped = False

    def upload_file(self, src: Path, bucket: str, key: str, **kwargs: Any) -> None:
        if not self.swapped:
            self.swapped = True
            out = Path(os.readlink(src)).parent  # the output dir (src is /proc/self/fd/N)
            for path in sorted(out.rglob("*")):
                if path.is_file() and path.name != "a.txt":
                    path.unlink()
                    path.symlink_to(self.outside / "secret.txt")
        super().upload_file(src, bucket, key, **kwargs)


def test_outputs_swapped_for_links_after_the_listing_are_never_uploaded(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    command = script(
        "import sys, pathlib; o = pathlib.Path(sys.argv[2]);"
        "[(o / f'{n}.txt').write_bytes(n.encode() * 10) for n in 'abcdef']"
    )
    pipeline, ledger, _ = make(tmp_path, command)
    store = _SwappingStore(outside)
    pipeline.store = pipeline.recorder.store = store
    done = pipeline.run(claim(ledger, store, "in.txt"))
    assert store.swapped
    assert done.state is JobState.FAILED
    assert done.error is not None and "b.txt is a symlink" in done.error
    assert SECRET not in store.objects.values()
    assert (OUT, "results/in.txt/" + MANIFEST_NAME) not in store.objects


def test_the_manifest_checksum_is_of_the_bytes_uploaded(tmp_path: Path) -> None:
    command = script(
        "import sys, pathlib; o = pathlib.Path(sys.argv[2]);"
        "(o / 'x.bin').write_bytes(bytes(range(256)) * 64); (o / 'd').mkdir();"
        "(o / 'd' / 'y.txt').write_text('y')"
    )
    pipeline, ledger, store = make(tmp_path, command)
    done = pipeline.run(claim(ledger, store, "k"))
    assert done.state is JobState.SUCCEEDED
    manifest = store.json(OUT, "results/k/" + MANIFEST_NAME)
    for output in manifest["outputs"]:
        body = store.objects[(OUT, output["key"])]
        assert hashlib.sha256(body).hexdigest() == output["sha256"] and len(body) == output["size"]


def test_a_non_utf8_output_name_fails_the_job_naming_the_file(tmp_path: Path) -> None:
    command = script(
        "import os, sys; open(os.path.join(os.fsencode(sys.argv[2]), b'caf\\xe9.txt'), 'wb').write(b'x')"
    )
    pipeline, ledger, store = make(tmp_path, command)
    done = pipeline.run(claim(ledger, store, "k"))
    assert done.state is JobState.FAILED
    assert done.error is not None and "caf\\xe9.txt" in done.error and "not valid UTF-8" in done.error
    assert done.counted_attempts == 0 and "internal error" not in done.error


def test_a_fifo_output_is_refused_without_hanging(tmp_path: Path) -> None:
    command = script("import os, sys; os.mkfifo(os.path.join(sys.argv[2], 'pipe'))")
    pipeline, ledger, store = make(tmp_path, command)
    done = pipeline.run(claim(ledger, store, "k"))
    assert done.state is JobState.FAILED and done.error is not None and "pipe" in done.error
