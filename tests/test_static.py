"""Static checks as part of the suite: mypy --strict and ruff (both from the test extra).

Without the tool the test skips, and fails under CI=true (tests/support/tools.py).
"""

from __future__ import annotations

import subprocess
import sys

from tests.support.paths import REPO
from tests.support.tools import require_module, require_tool

#: How to get the tools these gates run.
TEST_EXTRA = "it is in the test extra: pip install -e '.[test]'"


def test_mypy_strict_is_clean() -> None:
    require_module("mypy", hint=TEST_EXTRA)
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_is_clean() -> None:
    ruff = require_tool("ruff", hint=TEST_EXTRA)
    paths = [p for p in ("worker", "lambda_trigger", "processor_shared", "tests", "bench")
             if (REPO / p).is_dir()]
    done = subprocess.run([ruff, "check", *paths], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
