"""The command's output files, read so that nothing swapped in after the listing is uploaded.

A processing command (or a process it left behind) can replace an output with
a symlink, or the output dir itself, between the listing and the upload. So:

- the output dir is opened with ``O_NOFOLLOW | O_DIRECTORY`` (a link is refused);
- each output is opened relative to that descriptor, one path component at a
  time, every component with ``O_NOFOLLOW`` (a directory swapped for a link
  on the way is refused too), and ``fstat`` on the open descriptor must show
  a regular file;
- the upload and the manifest's SHA-256 both read that descriptor: the
  SHA-256 with ``pread``, the upload through ``/proc/self/fd/<fd>``, which
  reopens the very inode the descriptor holds (no name is resolved again), so
  boto3's managed transfer can still read parts in parallel.

Names: S3 keys are UTF-8. A name that is not (Linux names are bytes) fails
the job with the name escaped (``\\xe9``), the same outcome as any bad output.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from processor_shared.layout import RESERVED_NAMES
from worker.errors import OutputError

#: Read size when hashing an output.
_HASH_CHUNK = 1024 * 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused by fstat next).
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def escaped(name: str) -> str:
    """A file name as text a log or a reason can carry: undecodable bytes as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def check_name(relative: str) -> None:
    """Raise OutputError unless ``relative`` (from os.walk, surrogate-escaped) is valid UTF-8."""
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        raise OutputError(
            f"output name '{escaped(relative)}' is not valid UTF-8 (S3 keys are UTF-8); "
            "rename it in the processing command"
        ) from None


@contextmanager
def output_dir(out_dir: Path) -> Iterator[int]:
    """The output dir's descriptor; OutputError when it is a symlink or not a directory."""
    try:
        fd = os.open(out_dir, _DIR_FLAGS)
    except OSError as exc:
        if out_dir.is_symlink():
            raise OutputError(f"the output dir {out_dir} is a symlink; it is not followed") from None
        if not out_dir.is_dir() and out_dir.exists():
            raise OutputError(f"the output dir {out_dir} is not a directory") from None
        raise exc
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def open_output(root_fd: int, relative: str) -> Iterator[tuple[int, int]]:
    """Open ``relative`` under the output dir without following any link: (fd, size).

    OutputError names the file when any component is a link or it is not a
    regular file (anymore).
    """
    parts = relative.split("/")
    opened: list[int] = []
    try:
        parent = root_fd
        for part in parts[:-1]:
            parent = _open_at(part, parent, _DIR_FLAGS, relative)
            opened.append(parent)
        fd = _open_at(parts[-1], parent, _FILE_FLAGS, relative)
        opened.append(fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OutputError(f"output {escaped(relative)} is not a regular file")
        yield fd, info.st_size
    finally:
        for each in reversed(opened):
            os.close(each)


def _open_at(name: str, dir_fd: int, flags: int, relative: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if _is_link(name, dir_fd):
            raise OutputError(f"output {escaped(relative)} is a symlink (or lies under one)") from None
        raise exc


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def sha256_fd(fd: int) -> str:
    """SHA-256 of an open file, read with pread (the descriptor's offset is left alone)."""
    sha = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _HASH_CHUNK, offset):
        sha.update(chunk)
        offset += len(chunk)
    return sha.hexdigest()


def fd_path(fd: int) -> Path:
    """A path that reopens exactly the file ``fd`` holds (Linux's ``/proc/self/fd``)."""
    path = Path(f"/proc/self/fd/{fd}")
    if not path.exists():
        raise OSError(f"{path} is missing: /proc is needed to upload outputs safely")
    return path


def collect_outputs(out_dir: Path) -> list[tuple[Path, str, int]]:
    """Every regular file under ``out_dir`` as (path, relative key part, size).

    Symlinks are refused (a link to /etc/shadow must not be uploaded), the
    output dir itself included; a name that is not UTF-8 fails the job naming
    it (``check_name``); the reserved names may not appear at the
    top level. The listing only names the files: the upload opens each one
    again without following links (``open_output``).
    """
    found: list[tuple[Path, str, int]] = []
    with output_dir(out_dir):
        pass  # refuses a link or a non-directory before anything is walked
    for root, dirs, names in os.walk(out_dir, followlinks=False):
        for name in sorted(dirs):
            if (Path(root) / name).is_symlink():
                relative_dir = str(Path(root, name).relative_to(out_dir))
                raise OutputError(f"output {escaped(relative_dir)} is a symlink")
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            relative = path.relative_to(out_dir).as_posix()
            check_name(relative)
            if relative in RESERVED_NAMES:
                raise OutputError(f"the command wrote {relative}, a name reserved for the pipeline")
            if path.is_symlink() or not path.is_file():
                raise OutputError(f"output {relative} is not a regular file")
            found.append((path, relative, path.stat().st_size))
    return found
