"""The wheel carries what `processor local` needs when installed without the repository."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
         str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    if done.returncode != 0 and "No module named" in done.stderr:
        pytest.skip(f"cannot build a wheel here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("processor-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_has_packages_samples_and_the_template(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert {"worker/ctl/cli.py", "worker/local/stack.py", "lambda_trigger/handler.py",
            "worker/examples/summarize.py", "processor_shared/layout.py"} <= names
    samples = [n for n in names if n.startswith("worker/local/samples/")]
    assert len(samples) >= 3
    assert any(n.endswith("data/share/processor/cloudformation/processor.yaml") for n in names)
    # What the fleet bootstrap runs or installs from the wheel (its UserData stays small).
    for script in ("processor-data-volume", "processor-lifecycle", "processor-lifecycle.service"):
        assert any(n.endswith(f"data/share/processor/fleet/{script}") for n in names), script
    assert not any(n.startswith("tests/") for n in names)


def test_the_units_documentation_is_installed_by_the_wheel(wheel: zipfile.ZipFile) -> None:
    """Every Documentation= file:// of the units is a file the wheel puts under the venv."""
    import re

    docs = {n.split("/data/", 1)[1] for n in wheel.namelist() if "/data/share/doc/" in n}
    units = Path(__file__).resolve().parents[1] / "deploy" / "systemd"
    linked = [url for unit in units.glob("*.service")
              for url in re.findall(r"^Documentation=(\S+)", unit.read_text(), re.MULTILINE)]
    assert linked
    for url in linked:
        assert url.startswith("file:///opt/processor/venv/"), url
        assert url.removeprefix("file:///opt/processor/venv/") in docs, (url, docs)


def test_wheel_declares_console_scripts_and_extras(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "processor = worker.cli:main" in text and "processorctl = worker.ctl.cli:main" in text
    (metadata,) = [n for n in wheel.namelist() if n.endswith("METADATA")]
    meta = wheel.read(metadata).decode()
    requires = {line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Requires-Dist: ")}
    for name in ("boto3", "structlog", "tenacity", "watchtower"):
        # Each with a lower bound (watchtower's range is written "<X,>=Y" in METADATA).
        assert any(r.startswith(name) and ">=" in r.split(";")[0] for r in requires), (name, requires)
    assert "Provides-Extra: local" in meta and "Provides-Extra: test" in meta
