"""Both bootstraps install the wheel with systemd-python, and what building it needs."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.template import TEMPLATE
from worker.local import cfn


def _bodies() -> dict[str, str]:
    resources: dict[str, Any] = cfn.load_template(TEMPLATE)["Resources"]
    return {
        "single": resources["Instance"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"],
        "fleet": resources["FleetLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
        ["Fn::Base64"]["Fn::Sub"],
    }


@pytest.mark.parametrize("mode", ["single", "fleet"])
def test_user_data_installs_systemd_python_and_its_build_deps(mode: str) -> None:
    body = _bodies()[mode]
    lines = [line.strip() for line in body.splitlines()]
    dnf = [line for line in lines if line.startswith("dnf install")]
    assert dnf, "no dnf install in the UserData"
    packages = set(dnf[0].split()[3:])
    # libsystemd's headers and pkg-config file, a compiler, and the headers of the venv's Python.
    assert {"python3.11", "systemd-devel", "gcc", "python3.11-devel", "pkgconf-pkg-config"} <= packages
    assert any("python3.11 -m venv" in line for line in lines)
    (install,) = [line for line in lines if "-m pip install" in line]
    assert install.endswith('"$download"/processor-*.whl "processor[systemd]"'), install
    assert ' -c "$download/constraints.txt" ' in install
