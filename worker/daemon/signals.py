"""Signals for `processor run`: the handlers only queue the signal; the CLI's loop acts on it.

A Python signal handler runs between two bytecodes of the main thread, maybe
inside a logging call or while a lock is held, so logging or locking there can
deadlock (gunicorn issues 2564 and 2816). The handlers installed here only put
the signal number on a ``SimpleQueue`` (reentrant by design), and
``signal.set_wakeup_fd`` writes a byte into a self-pipe, so `SignalQueue.get`
wakes at once; the caller then dispatches in ordinary code (worker.cli's
``handle_term`` and friends), where logging and the daemon's API are safe.

`wake` writes to the same pipe from any thread: the daemon calls it when it
stops on its own (a Spot notice drained it), so the CLI's loop notices without
polling.
"""

from __future__ import annotations

import os
import queue
import select
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import Any

__all__ = ["SignalQueue"]


class SignalQueue:
    """Queue ``signums`` while entered (main thread only); restores the previous handlers on exit."""

    def __init__(self, signums: Iterable[int]) -> None:
        self.signums = tuple(signums)
        self._pending: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        #: wake() may run in another thread while the main thread closes the pipe.
        self._pipe_lock = threading.Lock()
        self._previous: dict[int, Any] = {}
        self._previous_wakeup_fd: int | None = None

    def _enqueue(self, signum: int, _frame: FrameType | None) -> None:
        # Only this: see the module docstring.
        self._pending.put(signum)

    def __enter__(self) -> SignalQueue:
        handler: Callable[[int, FrameType | None], None] = self._enqueue
        try:
            for signum in self.signums:
                self._previous[signum] = signal.signal(signum, handler)
            # The C-level handler writes the signal number here even while the
            # main thread is blocked in select(), which then returns at once.
            self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous_wakeup_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            self._previous_wakeup_fd = None
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        # Under the lock and marked closed, so a late wake() cannot write into
        # whatever file reuses the descriptor number.
        with self._pipe_lock:
            write_fd, self._write_fd = self._write_fd, -1
            if write_fd >= 0:
                os.close(write_fd)
                os.close(self._read_fd)

    def wake(self) -> None:
        """Make a waiting `get` return (None if no signal came). Safe from any thread,
        not from a signal handler (it takes a lock)."""
        with self._pipe_lock:
            if self._write_fd < 0:
                return  # closed: nobody waits any more
            try:
                os.write(self._write_fd, b"\0")
            except BlockingIOError:
                pass  # the pipe is full: get() wakes anyway

    def get(self, timeout: float | None = None) -> int | None:
        """The next queued signal; else wait up to ``timeout`` (None: until a signal or
        `wake`), then return the signal that came, or None."""
        try:
            return self._pending.get_nowait()
        except queue.Empty:
            pass
        ready, _, _ = select.select([self._read_fd], [], [], timeout)
        if ready:
            try:
                while os.read(self._read_fd, 4096):
                    pass
            except BlockingIOError:
                pass
        try:
            return self._pending.get_nowait()
        except queue.Empty:
            return None
