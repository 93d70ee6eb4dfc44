"""The daemon's control-socket ops, served by ``worker.daemon.control.ControlServer``.

``ping`` (pid and version), ``wake`` (a job was submitted: dispatch now),
``status`` (`processorctl status`) and ``cancel`` (stop a running job; it ends
cancelled). Each handler takes the request object and returns the reply's fields.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol

from worker import __version__
from worker.daemon.control import Handler


class Controlled(Protocol):
    """What the ops ask of the daemon (``worker.daemon.lifecycle.Daemon``)."""

    def wake(self) -> None: ...
    def cancel(self, job_id: str) -> bool: ...
    def status(self) -> Mapping[str, Any]: ...


def handlers(daemon: Controlled) -> dict[str, Handler]:
    """The ops by name, for ``ControlServer``."""

    def wake(_request: Mapping[str, Any]) -> Mapping[str, Any]:
        daemon.wake()
        return {}

    def cancel(request: Mapping[str, Any]) -> Mapping[str, Any]:
        return {"running": daemon.cancel(str(request.get("job_id", "")))}

    return {
        "ping": lambda _r: {"pid": os.getpid(), "version": __version__},
        "wake": wake,
        "status": lambda _r: daemon.status(),
        "cancel": cancel,
    }
