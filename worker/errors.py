"""The exception tree of the worker.

::

    ProcessorError                  base of every error the worker raises on purpose
    ├── ConfigError                 the configuration is invalid; names the key
    ├── LedgerError                 the SQLite ledger cannot be opened or written
    │   ├── JobNotFound             no job with that id
    │   └── InvalidTransition       a state change the transition table forbids
    ├── StorageError                an object-store call failed (.retryable, .code)
    │   └── ObjectChanged           the object no longer matches the job's identity
    ├── CommandError                the processing command could not run or failed
    │   ├── CommandFailed           it exited non-zero (.returncode, .stderr_tail)
    │   └── CommandTimedOut         it ran past processing.timeout_s
    ├── OutputError                 the command's outputs break the contract
    ├── InsufficientSpace           the state volume cannot hold the job's input: now
    │                               (.retryable: wait for space) or ever
    ├── Interrupted                 a job was asked to stop mid-transfer (.reason)
    ├── ControlError                the control socket could not be reached
    ├── MetadataError               the EC2 instance metadata service (IMDS) did not answer (.status)
    ├── ScalingError                an Auto Scaling call failed (.retryable, .code)
    └── UsageError                  a processorctl command-line value is unusable; names the option

    ShutdownRequested (BaseException) asks the daemon to stop; no `except Exception`
                                      may swallow it.
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


class CommandError(ProcessorError):
    """The processing command could not run or did not succeed."""


class CommandFailed(CommandError):
    """The processing command exited non-zero."""

    def __init__(self, returncode: int, stderr_tail: str) -> None:
        super().__init__(f"processing command exited with status {returncode}")
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class CommandTimedOut(CommandError):
    """The processing command ran past its time limit and was stopped."""

    def __init__(self, timeout_s: float, stderr_tail: str) -> None:
        super().__init__(f"processing command timed out after {timeout_s:g}s")
        self.timeout_s = timeout_s
        self.stderr_tail = stderr_tail


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


class Interrupted(ProcessorError):
    """A job was asked to stop (cancel or shutdown) while it was transferring."""

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


class ShutdownRequested(BaseException):
    """Asks the daemon to stop; a BaseException so `except Exception` cannot eat it."""
