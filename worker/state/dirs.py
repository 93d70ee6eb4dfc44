"""Directories on the state volume, with the same mode whoever creates them first.

``processorctl submit`` (run as root by the SSM agent, umask 022) can create
the state dir before the daemon ever ran (user ``processor``, UMask 0027):
each creates missing directories with an explicit ``chmod``, so the mode never
depends on the creator's umask. Stdlib only: ``processorctl submit`` imports this.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Owner rwx, group r-x (the operators' group reads logs and the ledger), others nothing.
STATE_DIR_MODE = 0o750


def make_dirs(path: Path, mode: int = STATE_DIR_MODE) -> None:
    """``mkdir -p path``; every directory this call creates gets exactly ``mode``.

    Directories that already exist are left as they are (an operator may have
    chosen another mode).
    """
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue  # created meanwhile by the other program: its chmod applies
        os.chmod(directory, mode)
