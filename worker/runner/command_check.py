"""Is processing.command runnable? Checked by `processor run` before it starts, and by
`processor check`: a missing or non-executable program would otherwise fail every job,
one by one, with ``[Errno 2]`` (systemd likewise refuses a unit whose ExecStart is missing).

The program is looked up as the pipeline will run it: an absolute path as is, a
bare name on the PATH the command gets (worker.runner.command_env), and checked
executable by this process's user, which is the user the commands run as.
A relative path with a slash is relative to each job's work dir, so it cannot
be checked before a job exists: it is refused with the reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from worker.config.settings import ProcessingSettings
from worker.errors import CommandUnusable
from worker.runner.command_env import base_environment

#: The argv placeholders (worker.runner.process.render_argv); never a program.
_PLACEHOLDERS = frozenset({"{input}", "{output_dir}"})


def check_command(processing: ProcessingSettings, daemon_env: Mapping[str, str]) -> Path:
    """The executable processing.command runs; CommandUnusable (naming the key) when there is none."""
    program = processing.command[0]
    if program in _PLACEHOLDERS:
        raise CommandUnusable(f"processing.command starts with {program}: its first argument must be "
                              "the program to run")
    if "/" not in program:
        search = base_environment(processing, daemon_env)["PATH"]
        found = shutil.which(program, path=search)
        if found is None:
            raise CommandUnusable(f"processing.command: {program!r} is not found on the command's "
                                  f"PATH ({search}); give its absolute path or install it")
        return Path(found)
    path = Path(program)
    if not path.is_absolute():
        raise CommandUnusable(f"processing.command: {program!r} is a relative path, which would be "
                              "looked up in each job's work dir; give an absolute path")
    if not path.exists():
        raise CommandUnusable(f"processing.command: {program} does not exist")
    if path.is_dir():
        raise CommandUnusable(f"processing.command: {program} is a directory, not a program")
    if not os.access(path, os.X_OK):
        raise CommandUnusable(f"processing.command: {program} is not executable by uid {os.geteuid()} "
                              "(the user the daemon runs commands as)")
    return path
