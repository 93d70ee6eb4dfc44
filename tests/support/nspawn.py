"""A throw-away systemd machine: systemd-nspawn booted on a tmpfs overlay of "/".

The host's root is the lower layer (so the repository and its virtualenv are
there, read-only in effect), a tmpfs is the upper layer (everything the test
writes vanishes), and the container shares the host's network namespace so
it reaches the emulator on 127.0.0.1. Commands run inside with
``nsenter -t <container PID 1> -a`` (machinectl/-M need registration, which
this machine does not offer).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.waiting import wait_until

#: How long the container may take to start, and to leave each boot state (a liveness bound).
BOOT_TIMEOUT_S = 90.0


def unavailable_reason() -> str | None:
    """Why a system test cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (mount, losetup, systemd-nspawn); CI runs as root"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is missing: apt-get install systemd-container (.ci/run does)"
    if not Path("/lib/systemd/systemd").exists():
        return "systemd is not installed on this machine"
    if shutil.which("nsenter") is None or shutil.which("losetup") is None:
        return "util-linux nsenter/losetup are missing"
    return None


def _run(*argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


class Machine:
    """One booted container; ``close()`` stops it and removes every mount it made."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.layers = workdir / "layers"
        self.root = workdir / "root"
        self.image = workdir / "ebs.img"
        self.loop: str | None = None
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid1 = 0
        self._mounts: list[Path] = []

    # -- building the tree (before boot) ---------------------------------------

    def prepare(self) -> None:
        self.layers.mkdir(parents=True)
        self.root.mkdir()
        self._mount(["-t", "tmpfs", "-o", "size=512m", "tmpfs"], self.layers)
        (self.layers / "up").mkdir()
        (self.layers / "work").mkdir()
        self._mount(["-t", "overlay", "-o",
                     f"lowerdir=/,upperdir={self.layers}/up,workdir={self.layers}/work", "overlay"],
                    self.root)
        # Units from the host image that only slow the boot down.
        for unit in ("postgresql.service", "postgresql@15-main.service", "console-getty.service",
                     "systemd-networkd.service", "systemd-resolved.service"):
            masked = self.root / "etc/systemd/system" / unit
            masked.parent.mkdir(parents=True, exist_ok=True)
            masked.unlink(missing_ok=True)
            masked.symlink_to("/dev/null")

    def attach_volume(self, mountpoint: str, size_mb: int = 128, label: str = "processor-state") -> None:
        """An ext4 image on a loop device, mounted where the EBS volume would be."""
        _run("truncate", "-s", f"{size_mb}M", str(self.image))
        _run("mkfs.ext4", "-q", "-L", label, str(self.image))
        self.loop = _run("losetup", "--find", "--show", str(self.image)).stdout.strip()
        target = self.root / mountpoint.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        self._mount([self.loop], target)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def symlink(self, path: str, to: str) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        target.symlink_to(to)

    # -- running -------------------------------------------------------------

    def boot(self) -> None:
        log = (self.workdir / "console.log").open("wb")
        self.nspawn = nspawn = subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.root), "-b", "--register=no", "--keep-unit", "-q",
             "--console=passive"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )

        def pid1() -> int:
            assert nspawn.poll() is None, self.console()
            children = _run("pgrep", "-P", str(nspawn.pid), check=False).stdout.split()
            return int(children[0]) if children else 0

        self.pid1 = wait_until(pid1, stall_s=BOOT_TIMEOUT_S,
                               describe=lambda: "container did not start:\n" + self.console())
        state = ""

        def booted() -> bool:
            nonlocal state
            state = self.sh("systemctl", "is-system-running", check=False).stdout.strip()
            return state in ("running", "degraded")

        # Each step of the boot (initializing -> starting -> running) restarts the clock.
        wait_until(booted, stall_s=BOOT_TIMEOUT_S, progress=lambda: state, interval=0.1,
                   describe=lambda: f"container stuck in {state!r}:\n" + self.console())

    def sh(self, *argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (all of its namespaces)."""
        return _run("nsenter", "-t", str(self.pid1), "-a", *argv, timeout=timeout, check=check)

    def console(self) -> str:
        path = self.workdir / "console.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def close(self) -> None:
        if self.nspawn is not None and self.nspawn.poll() is None:
            self.nspawn.terminate()  # orderly poweroff of the container
            try:
                self.nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(timeout=10)
        for target in reversed(self._mounts):
            _run("umount", "-l", str(target), check=False)
        if self.loop:
            _run("losetup", "-d", self.loop, check=False)

    def _mount(self, args: list[str], target: Path) -> None:
        _run("mount", *args, str(target))
        self._mounts.append(target)
