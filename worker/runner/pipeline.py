"""Run one job: download -> run the processing command -> upload -> record.

An attempt ends in a ``worker.jobs.outcome.Attempt`` (``Pipeline.attempt``, which
writes the job's progress and its results but never its state);
``worker.runner.recorder`` turns it into the job's next state through the one outcome
policy, ``worker.jobs.outcome.decide``.

The pipeline sees the object store through the small ``ObjectStore`` protocol
(``worker.storage.s3.S3Store`` in production, an in-memory fake in tests) and never
botocore. Local paths come only from the job id, never from the object key:
the input is ``work/<job>/input`` and the results ``work/<job>/output/``.
"""

from __future__ import annotations

import errno
import functools
import mimetypes
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from processor_shared.layout import MANIFEST_NAME, failure_record_keys, fits
from processor_shared.layout import result_prefix as layout_result_prefix
from worker import __version__
from worker.config.settings import Settings
from worker.errors import (
    InsufficientSpace,
    Interrupted,
    JobNotFound,
    ObjectChanged,
    OutputError,
    StorageError,
)
from worker.jobs.job import Job
from worker.jobs.outcome import Attempt, Outcome, crashed, out_of_attempts
from worker.jobs.states import JobState, Phase
from worker.runner.cgroup import job_cgroups
from worker.runner.command_env import base_environment, job_environment
from worker.runner.joblog import EXPIRE_EVERY_S
from worker.runner.joblog import expire as expire_logs
from worker.runner.outputs import collect_outputs, fd_path, open_output, output_dir, sha256_fd
from worker.runner.process import EX_TEMPFAIL, StopToken, render_argv, run_command
from worker.runner.recorder import Recorded, Recorder, job_logger
from worker.runner.space import DiskSpace, Usage, is_no_space
from worker.state.ledger import Ledger
from worker.storage.base import ObjectInfo, ObjectStore, verify_download

#: How often byte counters are written to the ledger during a transfer.
PROGRESS_INTERVAL_S = 0.5

#: Outputs at least this large are hashed (for the manifest) while they upload.
OVERLAP_HASH_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Downloaded:
    """The verified input of an attempt."""

    info: ObjectInfo
    sha256: str
    verified_by: str


@dataclass
class Pipeline:
    settings: Settings
    store: ObjectStore
    ledger: Ledger
    clock: Callable[[], float] = time.time
    #: The daemon's environment, read once (None: os.environ, at construction); worker.runner.command_env.
    environ: Mapping[str, str] | None = None
    #: How full the state volume is (tests pass a fake instead of filling a disk).
    disk_usage: Callable[[Path], Usage] = shutil.disk_usage

    def __post_init__(self) -> None:
        daemon_env = os.environ if self.environ is None else self.environ
        self._base_env = base_environment(self.settings.processing, daemon_env)
        paths = self.settings.paths
        self.space = DiskSpace(paths.work, paths.min_free_mb * 1024 * 1024, self.disk_usage)
        self.recorder = Recorder(self.settings, self.store, self.ledger, self.clock)
        self._expiry_lock = threading.Lock()
        self._next_expiry = 0.0  # self.clock() of the next look at old job logs
        self.limits, self.cgroups = job_cgroups(self.settings.processing, daemon_env)

    def result_prefix(self, job: Job, outputs: list[str] | None = None) -> str:
        """Where this job's outcome lands: ``<output prefix><source key>/``, or the
        ``_by-id/<job id>/`` fallback when a key under it would not fit (processor_shared.layout)."""
        return layout_result_prefix(self.settings.s3.output_prefix, job.key, job.id, outputs or ())

    def run(self, job: Job, cancel: StopToken | None = None) -> Job:
        """Take a job the ledger has marked RUNNING to its next state, and return it."""
        return self.run_attempt(job, cancel).job

    def run_attempt(self, job: Job, cancel: StopToken | None = None) -> Recorded:
        """As ``run``, answering the move recorded too (the fleet consumer settles its message from it)."""
        log = job_logger(job)
        attempt = self.attempt(job, cancel, log)
        ended = self.recorder.record(job, attempt, log)
        self.expire_job_logs()
        return ended

    def expire_job_logs(self) -> list[str]:
        """Remove the logs of jobs that ended more than logging.job_log_retention_days ago
        (at most once per worker.runner.joblog.EXPIRE_EVERY_S; never a queued or running job's)."""
        days = self.settings.logging.job_log_retention_days
        now = self.clock()
        with self._expiry_lock:
            # (a clock stepped back by more than the interval looks at once)
            if not days or 0.0 < self._next_expiry - now <= EXPIRE_EVERY_S:
                return []
            self._next_expiry = now + EXPIRE_EVERY_S

        def unfinished(job_id: str) -> bool:
            try:
                return self.ledger.get(job_id).state in (JobState.QUEUED, JobState.RUNNING)
            except JobNotFound:
                return False

        removed = expire_logs(self.settings.paths.job_logs, days * 86400, keep=unfinished, now=self.clock)
        if removed:
            structlog.get_logger("processor.pipeline").info(
                "job_logs_expired", count=len(removed), retention_days=days)
        return removed

    def record(self, job: Job, attempt: Attempt) -> Recorded:
        """Record an attempt that ended outside ``run`` (the fleet's manifest check): see the recorder."""
        return self.recorder.record(job, attempt)

    def crash(self, job: Job, exc: Exception) -> Recorded:
        """A runner raised (a bug, not the job's fault alone): log it, record a counted retry.

        The one place both slot paths (the daemon's, the queue consumer's) send a crash.
        """
        log = job_logger(job)
        log.error("job_crashed", exc_info=exc)
        return self._record_escaped(job, crashed(exc), log)

    def stopped(self, job: Job, stop: Interrupted) -> Recorded:
        """A stop request that got past the attempt (``_attempt`` turns it into the outcome):
        recorded as that outcome would be, never as a crash (the slot paths' other catch)."""
        log = job_logger(job)
        log.warning("job_stop_escaped_attempt", reason=stop.reason)
        return self._record_escaped(job, _stopped(stop.reason), log)

    def _record_escaped(self, job: Job, attempt: Attempt, log: Any) -> Recorded:
        """Record what escaped the attempt; if even the ledger write fails, nothing is (the
        move is None, the job as it stands) and start-up recovery requeues it."""
        try:
            return self.recorder.record(job, attempt, log)
        except Exception:
            log.exception("job_not_recorded")
            return Recorded(job, None)

    def attempt(self, job: Job, cancel: StopToken | None = None, log: Any = None) -> Attempt:
        """Run one attempt of a RUNNING job and say how it ended.

        The job's state is not written (``worker.runner.recorder`` does that, from the
        returned Attempt). What is: its progress in the ledger (phase and byte
        counters), and in the output bucket its outputs, then, on success, the
        deletion of an earlier ``_failed.json`` and the manifest.
        """
        log = job_logger(job) if log is None else log
        work = self.settings.paths.work / job.id
        try:
            ended = self._attempt(job, work, cancel, log)
            # Measured here: the ledger's bytes_total is per phase and the work dir is about to go.
            ended = replace(ended, bytes_in=_input_size(work))
        finally:
            # Free the space first: on a full disk the ledger needs it to record the outcome.
            shutil.rmtree(work, ignore_errors=True)
        return ended

    def _attempt(self, job: Job, work: Path, cancel: StopToken | None, log: Any) -> Attempt:
        timings: dict[str, float] = {}
        if out_of_attempts(job, self.settings.processing):
            return Attempt(Outcome.FAILED, f"the daemon died during {job.counted_attempts} attempts "
                           "of this job; not trying again (a poison input?)")
        try:
            # Leftovers of an interrupted attempt; one that cannot be removed now (no
            # descriptors left) fails this try as a shortage, never the job for good.
            _remove_tree(work)
            (work / "output").mkdir(parents=True)
            (work / "tmp").mkdir()
            info = self._download(job, work / "input", timings, cancel, log)
            _check(cancel)
            return self._process(job, work, info, timings, cancel, log)
        except Interrupted as exc:
            return _stopped(exc.reason)
        except ObjectChanged as exc:
            return Attempt(Outcome.CANCELLED, f"superseded: {exc}")
        except StorageError as exc:
            if exc.retryable:
                # A damaged download is the data's problem, not S3 being away: it spends budget.
                damaged = exc.code in ("ChecksumMismatch", "SizeMismatch")
                return Attempt(Outcome.RETRY if damaged else Outcome.WAIT_FOR_STORAGE, str(exc))
            return Attempt(Outcome.FAILED, str(exc))
        except InsufficientSpace as exc:
            return Attempt(Outcome.WAIT_FOR_SPACE if exc.retryable else Outcome.FAILED, str(exc))
        except OutputError as exc:
            return Attempt(Outcome.FAILED, str(exc))
        except MemoryError:
            return Attempt(Outcome.WAIT_FOR_RESOURCES, "the daemon ran out of memory during the attempt")
        except OSError as exc:
            if is_no_space(exc):  # full for now (other jobs' work dirs go): wait
                return Attempt(Outcome.WAIT_FOR_SPACE, str(self.space.exhausted("the attempt", exc)))
            if exc.errno in _SHORTAGES:  # descriptors, processes or memory: passing, uncounted
                return Attempt(Outcome.WAIT_FOR_RESOURCES, f"the host ran short: {exc}")
            # Local trouble: unreadable output, command not found.
            return Attempt(Outcome.FAILED, f"local error: {exc}")

    # -- steps ----------------------------------------------------------------

    def _download(
        self, job: Job, dest: Path, timings: dict[str, float], cancel: StopToken | None, log: Any
    ) -> Downloaded:
        started = self.clock()
        info = self.store.head(job.bucket, job.key, version_id=job.version_id, etag=job.etag)
        # Raises InsufficientSpace: never fits (fail) or not now (wait); see worker.runner.space.
        self.space.reserve(job.id, info.size)
        try:
            self.ledger.set_progress(job.id, phase=Phase.DOWNLOADING, bytes_total=info.size, bytes_done=0)
            progress = _Progress(self._progress_sink(job.id), cancel)
            log.info("download_started", size=info.size)
            self.store.download(
                job.bucket, job.key, dest, version_id=job.version_id or info.version_id,
                size=info.size, etag=info.etag, progress=progress,
            )
        except OSError as exc:
            if is_no_space(exc):
                raise self.space.exhausted("the download", exc, info.size) from exc
            raise
        finally:
            self.space.release(job.id)
        digests, method = verify_download(dest, info, f"download of s3://{job.bucket}/{job.key}")
        timings["download_s"] = max(0.0, self.clock() - started)  # wall time may step back
        log.info("download_finished", size=info.size, verified_by=method,
                 duration_s=round(timings["download_s"], 3))
        return Downloaded(info, digests.sha256, method)

    def _process(
        self, job: Job, work: Path, got: Downloaded, timings: dict[str, float],
        cancel: StopToken | None, log: Any,
    ) -> Attempt:
        p = self.settings.processing
        # No transfer in this phase: the byte counters go back to zero.
        self.ledger.set_progress(job.id, phase=Phase.RUNNING, bytes_total=0, bytes_done=0)
        argv = render_argv(
            p.command, {"{input}": str(work / "input"), "{output_dir}": str(work / "output")}
        )
        log.info("command_started", argv0=argv[0])
        env = job_environment(self._base_env, job, work)
        group = self.cgroups.create(job.id, self.limits) if self.cgroups is not None else None
        try:
            result = run_command(
                argv, cwd=work, env=env, log_path=self.settings.paths.job_log(job.id),
                timeout_s=p.timeout_s, kill_grace_s=p.kill_grace_s, cancel=cancel,
                log_max_bytes=self.settings.logging.job_log_max_mb * 1024 * 1024,
                # Unique to this job and this state dir: what its leftovers are found by.
                marker=f"PROCESSOR_INPUT={env['PROCESSOR_INPUT']}", cgroup=group,
            )
        finally:
            if group is not None:
                group.remove()
        timings["process_s"] = result.duration_s
        log.info(
            "command_finished", returncode=result.returncode,
            duration_s=round(result.duration_s, 3), timed_out=result.timed_out,
            cpu_s=round(result.cpu_s, 3), peak_memory_bytes=result.peak_memory_bytes,
            leftovers_killed=result.leftovers, log_cut=result.log_cut,
        )
        ran = Attempt(Outcome.FAILED, exit_code=result.returncode, stderr_tail=result.stderr_tail,
                      cpu_s=round(result.cpu_s, 3), peak_memory_bytes=result.peak_memory_bytes)
        if result.cancelled and cancel is not None:
            return _stopped(cancel.reason or StopToken.CANCEL, ran)
        if result.oom_killed:
            return replace(ran, error=f"killed by the kernel's OOM killer: the job went over "
                                      f"processing.memory_max ({p.memory_max} MiB)")
        if result.timed_out:
            return replace(ran, error=f"timed out after {p.timeout_s}s")
        if result.returncode == EX_TEMPFAIL:
            return replace(ran, outcome=Outcome.RETRY,
                           error=f"command asked for a retry (exit {EX_TEMPFAIL})")
        if result.returncode != 0:
            error = f"command exited with status {result.returncode}"
            # Its outputs are still on disk: a (nearly) full volume now is the likely cause.
            note = self.space.nearly_full_note()
            return replace(ran, error=f"{error}; {note}" if note else error)
        _check(cancel)
        started = self.clock()
        prefix, outputs = self._upload_outputs(job, work / "output", cancel, log)
        timings["upload_s"] = max(0.0, self.clock() - started)
        # A success replaces an earlier failure record, then the manifest goes last: its
        # presence is what tells consumers the result set is complete.
        self._remove_failure_records(job)
        manifest = self._manifest(job, got, outputs, timings)
        manifest["resources"] = {"cpu_s": ran.cpu_s, "peak_memory_bytes": ran.peak_memory_bytes}
        self.store.put_json(self.settings.s3.output_bucket, prefix + MANIFEST_NAME, manifest)
        return replace(ran, outcome=Outcome.SUCCEEDED, result_prefix=prefix,
                       bytes_out=sum(o["size"] for o in outputs))

    def _remove_failure_records(self, job: Job) -> None:
        """Delete an earlier ``_failed.json`` of the job wherever it may be: only if this ledger
        recorded a failure of the key (a key that never failed here costs no DELETE; a failure
        recorded by another fleet instance is not in this ledger)."""
        if self.ledger.has_failed(job.bucket, job.key):
            for failed_key in failure_record_keys(self.settings.s3.output_prefix, job.key, job.id):
                self.store.delete(self.settings.s3.output_bucket, failed_key)

    def _progress_sink(self, job_id: str) -> Callable[[int], None]:
        # Never raises for a busy or full ledger: progress is for display (Ledger.set_progress).
        return lambda done: self.ledger.set_progress(job_id, bytes_done=done)

    def _upload_outputs(
        self, job: Job, out_dir: Path, cancel: StopToken | None, log: Any
    ) -> tuple[str, list[dict[str, Any]]]:
        """Upload every output; the attempt's one result prefix (from the outputs' names) and them."""
        files = collect_outputs(out_dir)
        total = sum(size for _, _, size in files)
        self.ledger.set_progress(job.id, phase=Phase.UPLOADING, bytes_total=total, bytes_done=0)
        progress = _Progress(self._progress_sink(job.id), cancel)
        names = [relative for _, relative, _ in files]
        prefix = self.result_prefix(job, names)
        too_long = [name for name in names if not fits(prefix, [name])]
        if too_long:  # even under the short fallback prefix
            raise OutputError(f"output {too_long[0]!r} is too long: {prefix}{too_long[0]} "
                              "would pass S3's 1024-byte key limit")
        outputs = []
        # Each output is opened without following links and uploaded and hashed from that
        # descriptor, so nothing swapped in after the listing is read (worker.runner.outputs).
        with output_dir(out_dir) as root:
            for _, relative, _ in files:
                with open_output(root, relative) as (fd, size):
                    outputs.append(self._upload_one(job, fd, size, prefix + relative, relative, progress))
        log.info("upload_finished", files=len(outputs), bytes=total)
        return prefix, outputs

    def _upload_one(
        self, job: Job, fd: int, size: int, key: str, relative: str, progress: _Progress
    ) -> dict[str, Any]:
        upload = functools.partial(
            self.store.upload_file, fd_path(fd), self.settings.s3.output_bucket, key,
            content_type=mimetypes.guess_type(relative)[0], progress=progress,
        )
        if size < OVERLAP_HASH_BYTES:
            digest = sha256_fd(fd)
            upload()
        else:
            # Hash while the upload runs (hashlib releases the GIL): for a large
            # output that is one pass over the file off the job's critical path.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hash-{job.id}") as hasher:
                pending = hasher.submit(sha256_fd, fd)
                upload()
                digest = pending.result()
        return {"key": key, "path": relative, "size": size, "sha256": digest}

    def _manifest(
        self, job: Job, got: Downloaded, outputs: list[dict[str, Any]],
        timings: Mapping[str, float],
    ) -> dict[str, Any]:
        info = got.info
        return {
            "job_id": job.id,
            "source": {
                "bucket": job.bucket, "key": job.key,
                "version_id": job.version_id or info.version_id, "etag": job.etag or info.etag,
                "size": info.size, "sha256": got.sha256, "verified_by": got.verified_by,
            },
            "outputs": outputs,
            "attempts": job.attempts,
            "timings": {
                "submitted_at": job.created_at, "started_at": job.started_at,
                "finished_at": self.clock(),
                **{name: round(value, 3) for name, value in timings.items()},
            },
            "processor_version": __version__,
        }


def _check(cancel: StopToken | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Interrupted(cancel.reason or StopToken.CANCEL)


def _stopped(reason: str, ran: Attempt | None = None) -> Attempt:
    """A shutdown requeues the job (what the command said is not kept); a cancel ends it."""
    if reason == StopToken.SHUTDOWN:
        return Attempt(Outcome.REQUEUE, "interrupted by daemon shutdown")
    return replace(ran or Attempt(Outcome.CANCELLED), outcome=Outcome.CANCELLED,
                   error="cancelled by an operator")


#: errno values that say the host is short of something for now, not that the job is bad.
_SHORTAGES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})


def _remove_tree(path: Path) -> None:
    """``rm -rf path``; raises what stops it (other than the tree being gone already)."""
    def gone_is_fine(_func: Any, _path: str, info: Any) -> None:
        if not isinstance(info[1], FileNotFoundError):
            raise info[1]

    shutil.rmtree(path, onerror=gone_is_fine)


def _input_size(work: Path) -> int:
    """Bytes this attempt downloaded (0 when it never got that far)."""
    try:
        return (work / "input").stat().st_size
    except OSError:
        return 0


class _Progress:
    """Counts transferred bytes (boto3 calls back from several threads), writes
    them to the ledger every PROGRESS_INTERVAL_S (so a transfer shorter than
    that writes nothing: the phase's next write replaces the counters anyway),
    and aborts the transfer when the job is asked to stop."""

    def __init__(self, sink: Callable[[int], None], cancel: StopToken | None = None) -> None:
        self._sink = sink
        self._cancel = cancel
        self._lock = threading.Lock()
        self._done = 0
        self._last = time.monotonic()

    def __call__(self, amount: int) -> None:
        # Raising here aborts the transfer (worker.storage.s3 carries the Interrupted
        # through s3transfer's threads): how a cancel or a drain reaches a download or upload.
        _check(self._cancel)
        with self._lock:
            self._done += amount
            now = time.monotonic()
            if now - self._last < PROGRESS_INTERVAL_S:
                return
            self._last = now
            done = self._done
        self._sink(done)
