"""The exception tree of the worker: every exception class defined in worker/, drawn.

Most live here. Some live beside the one module that raises them and the
code that handles them (the module in brackets); the local agent's two
stand in for SSM's own errors and are ``ValueError`` like theirs would be.
``worker.examples`` is a separate program (the example processing command)
and keeps its own. tests/unit/test_errors.py checks that this drawing lists
exactly the classes defined, with their real bases, and that each one is
raised somewhere or is the base of one that is.

::

    Exception
    ├── ProcessorError              base of every error the worker raises on purpose
    │   ├── ConfigError             the configuration is invalid; names the key (.key)
    │   │   └── CommandUnusable     processing.command's executable is missing or not executable
    │   ├── LedgerError             the SQLite ledger cannot be opened or written
    │   │   ├── JobNotFound         no job with that id (.job_id)
    │   │   └── InvalidTransition   a state change the transition table forbids
    │   ├── StorageError            an object-store call failed (.retryable, .code)
    │   │   └── ObjectChanged       the object no longer matches the job's identity
    │   ├── OutputError             the command's outputs break the contract
    │   ├── InsufficientSpace       the state volume cannot hold the job's input: now
    │   │                           (.retryable: wait for space) or ever
    │   ├── ControlError            the control socket could not be reached or answered an error
    │   ├── UsageError              a processorctl command-line value is unusable; names the option
    │   ├── MetadataError           the instance metadata service (IMDS) failed or said no (.status)
    │   ├── ScalingError            an Auto Scaling call failed (.retryable, .code)
    │   ├── QueueError              [fleet.workqueue] a work-queue call failed (.retryable, .code)
    │   ├── MalformedMessage        [fleet.workqueue] a queue message is no job request (.field)
    │   ├── RecordError             [fleet.record] a fleet job-record call failed (.retryable, .code)
    │   ├── RecordConflict          [fleet.record] a conditional write lost: the record changed
    │   ├── StateDirLocked          [state.statelock] another daemon holds the state dir (.holder_pid)
    │   └── StateDirInUse           [local.statedir] another `processor local` uses its state dir
    ├── TransferStopped             [storage.s3] carries an Interrupted out of s3transfer's threads
    └── ValueError
        ├── InvalidParameters       [local.params] a command's parameters break its document (.name)
        └── InvalidDocument         [local.params] a document the local SSM agent cannot run
    BaseException                   Exception's base too: no ``except Exception`` catches these
    └── Interrupted                 a stop request (cancel or shutdown) raised mid-attempt (.reason);
                                    turned into the attempt's outcome by Pipeline._attempt

A processing command that fails is not an exception: its exit status and
stderr tail are the attempt's outcome, which the pipeline records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class ProcessorError(Exception):
    """Base of every error the worker raises on purpose."""


class ConfigError(ProcessorError):
    """The configuration is invalid; the message names the offending key."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class CommandUnusable(ConfigError):
    """processing.command's executable is missing or not executable: `processor run` refuses to start."""

    def __init__(self, message: str) -> None:
        super().__init__(message, key="processing.command")


class LedgerError(ProcessorError):
    """The SQLite ledger cannot be opened or written."""


class JobNotFound(LedgerError):
    """No job with that id exists in the ledger."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class InvalidTransition(LedgerError):
    """A state change that the transition table forbids."""

    def __init__(self, job_id: str, current: str, target: str) -> None:
        super().__init__(f"job {job_id}: illegal transition {current} -> {target}")
        self.job_id = job_id
        self.current = current
        self.target = target


class StorageError(ProcessorError):
    """An object-store call failed; `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool, code: str = "") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code


class ObjectChanged(StorageError):
    """The object no longer matches the job's identity (overwritten or deleted version)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False, code="PreconditionFailed")


class OutputError(ProcessorError):
    """The command's outputs break the processing-command contract."""


class InsufficientSpace(ProcessorError):
    """The state volume cannot hold the job's input; ``retryable``: not yet, but later."""

    def __init__(
        self, message: str, *, path: Path, needed: int, free: int, total: int | None,
        retryable: bool,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.needed = needed
        self.free = free
        self.total = total
        self.retryable = retryable


class Interrupted(BaseException):
    """A job was asked to stop (cancel or shutdown) mid-attempt; a BaseException, so that
    no ``except Exception`` on the way takes the request for a failure."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"interrupted ({reason})")
        self.reason = reason


class ControlError(ProcessorError):
    """The daemon's control socket could not be reached or answered an error."""


class UsageError(ProcessorError):
    """A command-line value is unusable; the message names the option."""


class MetadataError(ProcessorError):
    """The instance metadata service failed or answered an unexpected status (0: no answer)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ScalingError(ProcessorError):
    """An Auto Scaling call failed; `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool, code: str = "") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code
