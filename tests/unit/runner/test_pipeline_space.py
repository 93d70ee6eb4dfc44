"""A state volume too small for an input: never fits (fail), fits later (wait), runs out (wait).

The disk is a FakeDisk (``shutil.disk_usage`` as the test sets it); the
store a FakeStore; the ledger a real SQLite file.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from processor_shared.layout import FAILED_NAME
from tests.support.fakes import FakeDisk
from tests.support.pipeline import COPY_UPPER, OUT, claim, make, script
from worker.errors import InsufficientSpace
from worker.jobs.outcome import SPACE_RETRY_MAX_S
from worker.jobs.states import JobState
from worker.runner.space import DiskSpace

MIB = 1024 * 1024
#: paths.min_free_mb's default, in bytes.
RESERVE = 64 * MIB
#: Liveness bound of the threaded test: no step may stall longer than this.
STALL_S = 30


def test_an_input_larger_than_the_whole_volume_fails_naming_the_volume_and_both_sizes(
    tmp_path: Path,
) -> None:
    disk = FakeDisk(total=100 * MIB, free=100 * MIB)
    pipeline, ledger, store = make(tmp_path, COPY_UPPER, disk=disk, max_attempts=5)
    job = claim(ledger, store, "huge")
    store.size_override = 40 * MIB  # + 64 MiB reserve > 100 MiB: can never fit
    done = pipeline.run(job)
    assert done.state is JobState.FAILED, done.error
    error = done.error or ""
    assert "can never fit" in error and str(tmp_path / "state" / "work") in error
    assert f"{104 * MIB:,} bytes" in error and f"{100 * MIB:,} bytes total" in error
    assert ("download", "in", "huge") not in store.calls
    assert store.json(OUT, "results/huge/" + FAILED_NAME)["error"] == error


def test_an_input_that_fits_later_waits_without_spending_attempts_then_runs(tmp_path: Path) -> None:
    disk = FakeDisk(total=1024 * MIB, free=RESERVE + 3)  # the 5-byte input does not fit yet
    pipeline, ledger, store = make(tmp_path, COPY_UPPER, disk=disk, max_attempts=1)
    job = claim(ledger, store, "later.txt")
    delays = []
    for attempt in range(1, 7):
        before = pipeline.clock()
        waiting = pipeline.run(job)
        assert waiting.state is JobState.QUEUED and waiting.counted_attempts == 0, waiting.error
        assert waiting.attempts == attempt
        error = waiting.error or ""
        assert error.startswith("waiting for disk space") and str(tmp_path / "state" / "work") in error
        assert f"needs {RESERVE + 5:,} bytes" in error and f"has {RESERVE + 3:,} bytes free" in error
        delays.append(waiting.next_attempt_at - before)
        assert ledger.claim_next() is None  # not due at once: no hot loop
        pipeline.clock.offset += SPACE_RETRY_MAX_S + 1  # type: ignore[attr-defined]
        job = ledger.claim_next()  # type: ignore[assignment]
        assert job is not None
    # Soon at first (retry_base_s is 10 here, the space wait starts at 5 s), never above the cap.
    assert 2.5 <= delays[0] <= 5.01 and all(d <= SPACE_RETRY_MAX_S + 0.01 for d in delays)
    assert ("download", "in", "later.txt") not in store.calls
    disk.free = RESERVE + 5  # another job's work dir went away
    done = pipeline.run(job)
    assert done.state is JobState.SUCCEEDED and done.counted_attempts == 0
    assert store.objects[(OUT, "results/later.txt/upper.txt")] == b"HELLO"


def test_a_space_wait_is_never_a_hot_loop_even_with_a_zero_retry_base(tmp_path: Path) -> None:
    disk = FakeDisk(total=1024 * MIB, free=0)
    pipeline, ledger, store = make(tmp_path, COPY_UPPER, disk=disk, retry_base_s=0, retry_max_s=0)
    before = pipeline.clock()
    waiting = pipeline.run(claim(ledger, store, "k"))
    assert waiting.state is JobState.QUEUED and waiting.next_attempt_at - before >= 0.5


def test_running_out_of_space_mid_download_waits_naming_the_disk(tmp_path: Path) -> None:
    disk = FakeDisk(total=1024 * MIB, free=512 * MIB)
    pipeline, ledger, store = make(tmp_path, COPY_UPPER, disk=disk, max_attempts=1)
    job = claim(ledger, store, "k")
    real_download = store.download

    def no_space(bucket: str, key: str, dest: Path, **kw: object) -> None:
        dest.write_bytes(b"partial")
        disk.free = 1234  # something else filled the volume meanwhile
        raise OSError(28, "No space left on device")

    store.download = no_space  # type: ignore[method-assign]
    done = pipeline.run(job)
    assert done.state is JobState.QUEUED and done.counted_attempts == 0, done.error
    error = done.error or ""
    assert error.startswith("waiting for disk space: the download ran out of space")
    assert str(tmp_path / "state" / "work") in error and "1,234 bytes free" in error
    assert "No space left on device" in error
    assert not (tmp_path / "state" / "work" / job.id).exists()
    assert pipeline.space.free() == 1234 and not pipeline.space._reserved  # released
    store.download = real_download  # type: ignore[method-assign]
    disk.free = 512 * MIB
    pipeline.clock.offset += SPACE_RETRY_MAX_S + 1  # type: ignore[attr-defined]
    again = ledger.claim_next()
    assert again is not None and pipeline.run(again).state is JobState.SUCCEEDED


def test_a_command_failing_on_a_nearly_full_volume_says_how_full_it_was(tmp_path: Path) -> None:
    disk = FakeDisk(total=1024 * MIB, free=512 * MIB)
    fills = script("import sys; sys.stderr.write('write failed\\n'); sys.exit(1)")
    pipeline, ledger, store = make(tmp_path, fills, disk=disk)
    job = claim(ledger, store, "k")
    real_download = store.download

    def then_fill(bucket: str, key: str, dest: Path, **kw: object) -> None:
        real_download(bucket, key, dest, **kw)  # type: ignore[arg-type]
        disk.free = 4096  # the command is about to fill the volume

    store.download = then_fill  # type: ignore[method-assign]
    done = pipeline.run(job)
    assert done.state is JobState.FAILED and done.exit_code == 1
    assert done.error == (f"command exited with status 1; the state volume at {tmp_path / 'state' / 'work'} "
                          "had 4,096 bytes free when the command exited (a full disk?)")
    # With room to spare, a failure is only the exit status.
    disk.free = 512 * MIB
    store.download = real_download  # type: ignore[method-assign]
    other = pipeline.run(claim(ledger, store, "k2"))
    assert other.error == "command exited with status 1"


def test_two_downloads_at_once_cannot_both_take_the_same_free_space(tmp_path: Path) -> None:
    """Room for one 10 MiB input (plus the reserve), not two: while the first downloads,
    the second waits (the first's size is reserved), and runs once the first is done."""
    disk = FakeDisk(total=1024 * MIB, free=RESERVE + 15 * MIB)
    pipeline, ledger, store = make(tmp_path, COPY_UPPER, disk=disk)
    first = claim(ledger, store, "first", b"1" * (10 * MIB))
    second = claim(ledger, store, "second", b"2" * (10 * MIB))
    real_download = store.download
    downloading, release = threading.Event(), threading.Event()

    def slow(bucket: str, key: str, dest: Path, **kw: object) -> None:
        if key == "first":
            downloading.set()
            assert release.wait(STALL_S), "the test never released the first download"
        real_download(bucket, key, dest, **kw)  # type: ignore[arg-type]

    store.download = slow  # type: ignore[method-assign]
    results: dict[str, object] = {}
    worker = threading.Thread(target=lambda: results.update(first=pipeline.run(first)), daemon=True)
    worker.start()
    try:
        assert downloading.wait(STALL_S), "the first download never started"
        waiting = pipeline.run(second)
        assert waiting.state is JobState.QUEUED and waiting.counted_attempts == 0
        assert f"{10 * MIB:,} bytes of them held for other jobs' downloads" in (waiting.error or "")
    finally:
        release.set()
        worker.join(STALL_S)
    assert not worker.is_alive()
    assert results["first"].state is JobState.SUCCEEDED  # type: ignore[attr-defined]
    pipeline.clock.offset += SPACE_RETRY_MAX_S + 1  # type: ignore[attr-defined]
    again = ledger.claim_next()
    assert again is not None and again.id == second.id
    assert pipeline.run(again).state is JobState.SUCCEEDED


def test_reservations_make_concurrent_checks_exclusive() -> None:
    """Eight threads check at once for room that holds three inputs: exactly three get it."""
    disk = FakeDisk(total=1000, free=350)
    space = DiskSpace(Path("/state/work"), reserve_bytes=50, usage=disk)
    start = threading.Barrier(8)
    granted: list[str] = []
    refused: list[InsufficientSpace] = []

    def check(n: int) -> None:
        start.wait(STALL_S)
        try:
            space.reserve(f"j{n}", 100)
            granted.append(f"j{n}")
        except InsufficientSpace as exc:
            refused.append(exc)

    threads = [threading.Thread(target=check, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(STALL_S)
    # 350 free: 100 + 50 fits with 0, 100 or 200 held; not with 300 held.
    assert len(granted) == 3 and len(refused) == 5
    assert all(exc.retryable and exc.free == 350 for exc in refused)
    space.release(granted[0])
    space.reserve("late", 100)  # the released room is available again
    with pytest.raises(InsufficientSpace) as never:
        space.reserve("huge", 951)
    assert not never.value.retryable and never.value.total == 1000


def test_blocks_reserved_for_root_count_as_never_available() -> None:
    """ext4 keeps 5 % for root: the daemon's user can never use it, so an input that
    needs more than used + free fails instead of waiting for ever."""
    disk = FakeDisk(total=1000, free=100)
    reserved_for_root = 50
    space = DiskSpace(Path("/state/work"), reserve_bytes=0,
                      usage=lambda p: type(disk(p))(1000, 1000 - 100 - reserved_for_root, 100))
    with pytest.raises(InsufficientSpace) as never:
        space.reserve("j", 951)
    assert not never.value.retryable and "950 bytes usable" in str(never.value)
    with pytest.raises(InsufficientSpace) as later:
        space.reserve("j", 950)
    assert later.value.retryable
