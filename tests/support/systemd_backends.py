"""Choosing the sd_notify/journald backend in a test: both, or fail loudly in CI.

The systemd-python tests skip where the library is not installed (`make test`
on a machine without libsystemd-dev says so when it installs), except under
``CI=true``: CI installs the build dependencies, so a missing library there is
a broken install, and a skip would hide it.
"""

from __future__ import annotations

import os
import shutil

from tests.support.tools import missing
from worker.telemetry import systemd

#: Both implementations, as ``pytest.mark.parametrize`` values.
BACKENDS = [systemd.BUILTIN, systemd.LIBRARY]

MISSING = ("systemd-python is not installed (it needs libsystemd-dev pkg-config gcc python3-dev "
           "to build; `make clean test` after installing them)")


def require_library() -> None:
    """Skip (fail under CI=true) unless ``systemd.daemon`` and ``systemd.journal`` import."""
    if not systemd.library_available():
        missing(MISSING)


def private_run_unavailable() -> str | None:
    """Why a child cannot get its own /run (for libsystemd's fixed journal socket), or None."""
    if os.geteuid() != 0:
        return "needs root to mount a private /run for libsystemd's fixed journal socket"
    if shutil.which("unshare") is None:
        return "util-linux unshare is missing"
    return None
