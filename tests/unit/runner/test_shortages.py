"""Running short of file descriptors is a passing, uncounted condition for a job (issue 19):
a job submitted while every descriptor was taken once failed for good with
``[Errno 17] File exists: …/work/<job>/output`` (the half-made work dir of the try before)."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.pipeline import COPY_UPPER, OUT, Clock, claim, make
from worker.jobs.outcome import Outcome
from worker.jobs.states import JobState


@contextmanager
def no_descriptors_left(spare: int = 0) -> Iterator[None]:
    """Take every file descriptor this process may open (its soft limit lowered meanwhile)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
    hogs: list[int] = []
    try:
        while True:
            try:
                hogs.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        for _ in range(min(spare, len(hogs))):
            os.close(hogs.pop())
        yield
    finally:
        for fd in hogs:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_no_descriptors_left_requeues_the_job_uncounted_and_the_next_try_cleans_up(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)
    job = claim(ledger, store, "k.txt")
    # A half-made work dir, as an earlier try interrupted by the shortage left it.
    half = pipeline.settings.paths.work / job.id / "output" / "deep" / "er"
    half.mkdir(parents=True)
    (half / "partial.bin").write_bytes(b"x")
    with no_descriptors_left():
        attempt = pipeline.attempt(job)
    assert attempt.outcome is Outcome.WAIT_FOR_RESOURCES, attempt
    assert attempt.error is not None and "Too many open files" in attempt.error
    waited = pipeline.record(job, attempt).job
    assert waited.state is JobState.QUEUED and waited.counted_attempts == 0
    # The shortage has passed: the next try starts from a clean work dir and succeeds.
    assert waited.next_attempt_at is not None
    clock = pipeline.clock
    assert isinstance(clock, Clock)
    clock.offset = waited.next_attempt_at - clock() + 1
    again = ledger.claim_next()
    assert again is not None and again.id == job.id
    done = pipeline.run(again)
    assert done.state is JobState.SUCCEEDED, done.error
    assert store.objects[(OUT, "results/k.txt/upper.txt")] == b"HELLO"
    assert (OUT, "results/k.txt/deep/er/partial.bin") not in store.objects
