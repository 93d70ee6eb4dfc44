"""A bad processing command is caught at start: `processor run` refuses (exit 8, naming
processing.command) instead of failing every job; `processor check` says so without starting."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import write_config
from worker import exitcodes
from worker.config.settings import ProcessingSettings
from worker.config.values import Environment
from worker.errors import CommandUnusable
from worker.runner.command_check import check_command

PROCESSOR = str(Path(sys.executable).parent / "processor")


def settings(*command: str) -> ProcessingSettings:
    return ProcessingSettings(command=(*command, "{input}"))


def test_an_absolute_executable_and_a_name_on_the_path_pass(tmp_path: Path) -> None:
    program = tmp_path / "bin" / "process"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert check_command(settings(str(program)), {}) == program
    assert check_command(settings("process"), {"PATH": str(program.parent)}) == program
    # processing.environment's PATH is the one the command gets, so the one searched.
    configured = ProcessingSettings(command=("process", "{input}"),
                                    environment=Environment((("PATH", str(program.parent)),)))
    assert check_command(configured, {"PATH": "/nonexistent"}) == program


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text("data"), "is not executable by uid"),
    (lambda p: p.mkdir(), "is a directory"),
])
def test_missing_unexecutable_or_directory_is_refused_naming_the_key(
    tmp_path: Path, make: Callable[[Path], object], fragment: str
) -> None:
    program = tmp_path / "process"
    make(program)  # a file without any x bit: not executable, even by root
    with pytest.raises(CommandUnusable, match=fragment) as caught:
        check_command(settings(str(program)), {})
    assert caught.value.key == "processing.command" and "processing.command" in str(caught.value)


def test_relative_paths_names_off_the_path_and_placeholders_are_refused() -> None:
    with pytest.raises(CommandUnusable, match="relative path"):
        check_command(settings("bin/process"), {})
    with pytest.raises(CommandUnusable, match="not found on the command's PATH"):
        check_command(settings("no-such-program-here"), {"PATH": "/nonexistent"})
    with pytest.raises(CommandUnusable, match="first argument must be the program"):
        check_command(ProcessingSettings(command=("{input}",)), {})


def test_processor_run_refuses_a_missing_command_before_touching_the_state_dir(short_tmp: Path) -> None:
    config = write_config(short_tmp, command=["/opt/processor/bin/process", "{input}", "{output_dir}"])
    done = subprocess.run([PROCESSOR, "run", "--config", str(config)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == exitcodes.COMMAND_UNUSABLE == 8, done.stderr
    assert "refusing to start: processing.command: /opt/processor/bin/process does not exist" in done.stderr
    assert not (short_tmp / "state").exists()


def test_processor_check_validates_without_starting(short_tmp: Path) -> None:
    good = write_config(short_tmp)
    done = subprocess.run([PROCESSOR, "check", "--config", str(good)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout and f"runs {sys.executable}" in done.stdout
    assert not (short_tmp / "state").exists()
    bad = write_config(short_tmp, command=["/nonexistent/process", "{input}"])
    done = subprocess.run([PROCESSOR, "check", "--config", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 8 and "processing.command: /nonexistent/process does not exist" in done.stderr
    (short_tmp / "processor.toml").write_text("[processing]\nconcurency = 2\n")
    done = subprocess.run([PROCESSOR, "check", "--config", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "configuration error" in done.stderr
