"""The unit file: `systemd-analyze verify` is clean and the exposure score stays <= 1.5.

Both run without booting anything; the figures are printed in pytest's
summary (see tests/conftest.py) so every CI log records them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO
from tests.support.report import REPORT
from tests.support.tools import require_tool

UNITS = REPO / "deploy/systemd"
UNIT = UNITS / "processor.service"
SERVICES = ("processor.service", "processor-reconcile.service")

#: The ceiling the project holds itself to (timesyncd scores 2.3, journald 4.3).
MAX_EXPOSURE = 1.5


@pytest.fixture
def analyze() -> str:
    """systemd-analyze (the distribution's systemd; CI has it through systemd-container)."""
    return require_tool("systemd-analyze", hint="it comes with systemd")


@pytest.mark.parametrize("name", SERVICES)
def test_exposure_score_is_at_most_1_5(name: str, analyze: str) -> None:
    done = subprocess.run([analyze, "security", "--offline=true", str(UNITS / name)],
                          capture_output=True, text=True, timeout=120)
    match = re.search(rf"Overall exposure level for {re.escape(name)}: ([0-9.]+)", done.stdout)
    assert match, done.stdout + done.stderr
    score = float(match.group(1))
    REPORT.append(f"systemd-analyze security --offline=true {name}: exposure {score}")
    assert score <= MAX_EXPOSURE, done.stdout


def test_verify_is_clean(tmp_path: Path, analyze: str) -> None:
    # Verify checks that ExecStart exists; point it at this checkout's install.
    bin_dir = str(Path(sys.executable).parent)
    names = [*SERVICES, "processor-reconcile.timer"]
    for name in names:
        text = (UNITS / name).read_text().replace("/opt/processor/venv/bin", bin_dir)
        (tmp_path / name).write_text(text)
    done = subprocess.run([analyze, "verify", *(str(tmp_path / n) for n in names)],
                          capture_output=True, text=True, timeout=120)
    findings = (done.stdout + done.stderr).strip()
    REPORT.append(f"systemd-analyze verify {' '.join(names)}: {findings or 'clean'}")
    assert done.returncode == 0 and findings == "", findings


def test_timeouts_are_consistent_with_the_daemon_defaults() -> None:
    from worker.config.settings import ProcessingSettings

    text = UNIT.read_text()
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    watchdog = int(re.search(r"^WatchdogSec=(\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    from worker.config.settings import LoggingSettings

    p, flush = ProcessingSettings(), LoggingSettings().flush_timeout_s
    # drain, then stopping what is left (grace + 15 s to join), then the CloudWatch flush
    assert stop > p.drain_timeout_s + p.kill_grace_s + 15 + flush
    assert watchdog >= 5  # the loop pings at least once a second
