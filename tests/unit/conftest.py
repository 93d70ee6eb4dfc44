"""Fixtures of the unit tier: the CloudFormation template, as written and as each mode deploys
it; an AWS environment that cannot reach AWS.

Module-scoped (each module gets its own copies; the template is read once per module).
Helpers that are not fixtures live in tests/support/ (template.py for these).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.emulator import CREDENTIALS
from tests.support.servers import dead_endpoint
from tests.support.template import MODES, TEMPLATE, as_deployed
from worker.local import cfn


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    """deploy/cloudformation/processor.yaml, loaded as CloudFormation reads it."""
    return cfn.load_template(TEMPLATE)


@pytest.fixture(scope="module")
def single(template: dict[str, Any]) -> dict[str, Any]:
    """The resources of a one-instance stack (FleetSize 1, the default)."""
    res: dict[str, Any] = as_deployed(template, FleetSize=MODES["single"])["Resources"]
    return res


@pytest.fixture(scope="module")
def fleet(template: dict[str, Any]) -> dict[str, Any]:
    """The resources of a fleet stack (FleetSize 3)."""
    res: dict[str, Any] = as_deployed(template, FleetSize=MODES["fleet"])["Resources"]
    return res


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Dummy credentials; no profile; the tests point each client at their stub."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # Safety nets: a client that forgets its endpoint fails on loopback, never reaches AWS.
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead_endpoint())
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield monkeypatch
