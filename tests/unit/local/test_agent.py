"""The local SSM agent: parameter checks, step rendering, and running the real
submit document's script against hostile keys with a fake processorctl."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from lambda_trigger.ssm import encode_key_base64
from tests.support.waiting import wait_until
from worker.jobs.identity import decode_key_base64
from worker.local import agent as agent_mod
from worker.local import cfn
from worker.local.agent import CommandResult, LocalSsmAgent
from worker.local.params import (
    InvalidDocument,
    InvalidParameters,
    render_step,
    validate_parameters,
)
from worker.local.patterns import pattern_matches

FAKE_PROCESSORCTL = """#!/bin/sh
# Records its argv, NUL-separated, exactly as it received it; prints a job id.
printf '%s\\0' "$@" > "$FAKE_ARGV_FILE"
echo job-0001
"""


def _ph(name: str, pad: str = " ") -> str:
    """The agent's textual placeholder for ``name`` (spelled out nowhere in the repo)."""
    return "{" * 2 + pad + name + pad + "}" * 2


@pytest.fixture(scope="module")
def submit_content() -> dict[str, Any]:
    specs = cfn.ssm_documents(cfn.load_template(cfn.default_template_path()), "processor")
    return next(s for s in specs if s.logical_id == "SubmitDocument").content


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "processorctl"
    fake.write_text(FAKE_PROCESSORCTL, encoding="utf-8")
    fake.chmod(0o755)
    return bin_dir


@pytest.fixture
def base_env(fake_bin: Path, tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": f"{fake_bin}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "FAKE_ARGV_FILE": str(tmp_path / "argv"),
        "LANG": "C.UTF-8",
    }


def _recorded_argv(tmp_path: Path) -> list[str]:
    data = (tmp_path / "argv").read_bytes()
    assert data.endswith(b"\0")
    return data[:-1].decode("utf-8").split("\0")


def _run_document(
    content: Mapping[str, Any],
    parameters: Mapping[str, list[str]],
    env: Mapping[str, str],
    cwd: Path,
) -> subprocess.CompletedProcess[str]:
    """What the agent does for a one-step document, inline."""
    values = validate_parameters(content, parameters)
    (step,) = content["mainSteps"]
    script, ssm_env = render_step(step, values, content.get("parameters"))
    path = cwd / "_script.sh"
    path.write_text(script, encoding="utf-8")
    return subprocess.run(
        ["/bin/sh", str(path)],
        env={**env, **ssm_env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# --- validate_parameters ----------------------------------------------------------------

DOC = {
    "schemaVersion": "2.2",
    "parameters": {
        "Name": {"type": "String", "allowedPattern": "^[a-z]{1,5}$"},
        "Mode": {"type": "String", "default": "fast", "allowedValues": ["fast", "slow"]},
    },
    "mainSteps": [],
}


def test_defaults_are_filled_in() -> None:
    assert validate_parameters(DOC, {"Name": ["abc"]}) == {"Name": "abc", "Mode": "fast"}


@pytest.mark.parametrize(
    ("parameters", "name", "reason"),
    [
        ({"Name": ["abc"], "Bogus": ["x"]}, "Bogus", "not a parameter"),
        ({}, "Name", "required"),
        ({"Name": ["abc", "def"]}, "Name", "exactly one value"),
        ({"Name": []}, "Name", "exactly one value"),
        ({"Name": ["ABC"]}, "Name", "does not match the allowed pattern ^[a-z]{1,5}$"),
        ({"Name": ["abc\n"]}, "Name", "does not match"),
        ({"Name": ["abc"], "Mode": ["warp"]}, "Mode", "allowed values"),
    ],
)
def test_invalid_parameters_name_the_parameter(
    parameters: dict[str, list[str]], name: str, reason: str
) -> None:
    with pytest.raises(InvalidParameters) as info:
        validate_parameters(DOC, parameters)
    assert info.value.name == name
    assert repr(name) in str(info.value)
    assert reason in str(info.value)


def test_error_messages_truncate_and_show_control_characters() -> None:
    with pytest.raises(InvalidParameters) as info:
        validate_parameters(DOC, {"Name": ["\x1b[2J" + "x" * 5000]})
    message = str(info.value)
    assert len(message) < 300
    assert "\\x1b" in message and "\x1b" not in message
    assert "5004 characters" in message


def test_a_pattern_the_agent_cannot_compile_is_a_document_error() -> None:
    doc = {"parameters": {"Key": {"type": "String", "allowedPattern": "^.{1,1024}$"}}}
    with pytest.raises(InvalidDocument, match="RE2"):
        validate_parameters(doc, {"Key": ["a"]})


def test_pattern_semantics_are_re2_search() -> None:
    # MatchString is a search: an unanchored pattern matches anywhere.
    assert pattern_matches("b", "abc")
    # RE2's $ is the end of the text; Python's re.search("^a$", "a\n") would match.
    assert not pattern_matches("^a$", "a\n")
    assert pattern_matches("(?m)^a$", "a\nb")
    # \d is ASCII in RE2.
    assert not pattern_matches(r"^\d$", "٣")
    assert pattern_matches("^[]a]+$", "]a]")
    # "{,3}" is a literal in RE2 (Python alone would read it as a repetition).
    assert pattern_matches("^a{,3}$", "a{,3}")
    assert not pattern_matches("^a{,3}$", "aa")
    for unsupported in [r"^(?=a)", r"(a)\1", r"\p{Greek}", "[[:alpha:]]", "a{1001}"]:
        with pytest.raises(ValueError):
            pattern_matches(unsupported, "a")


# --- render_step --------------------------------------------------------------------------


def test_env_var_step_keeps_the_script_unchanged(submit_content: dict[str, Any]) -> None:
    (step,) = submit_content["mainSteps"]
    values = validate_parameters(submit_content, {"Bucket": ["b-1"], "Key": ["$(id)"]})
    script, env = render_step(step, values, submit_content["parameters"])
    assert script == "\n".join(step["inputs"]["runCommand"]) + "\n"
    assert env == {"SSM_Bucket": "b-1", "SSM_Key": "$(id)", "SSM_KeyBase64": "", "SSM_VersionId": "",
                   "SSM_ETag": ""}


def test_env_var_placeholders_are_left_unfilled(caplog: pytest.LogCaptureFixture) -> None:
    step = {"action": "aws:runShellScript", "inputs": {"runCommand": [f"echo {_ph('Msg')}"]}}
    definitions = {"Msg": {"type": "String", "interpolationType": "ENV_VAR"}}
    with caplog.at_level(logging.WARNING, logger="processor.local.agent"):
        script, env = render_step(step, {"Msg": "hi"}, definitions)
    assert script == f"echo {_ph('Msg')}\n"
    assert env == {"SSM_Msg": "hi"}
    assert "Msg" in caplog.text


def test_without_env_var_values_are_pasted_into_the_script() -> None:
    step = {
        "action": "aws:runShellScript",
        "inputs": {
            "runCommand": [f"echo {_ph('A')} {_ph('A', '')} {_ph('B', '  ')}", f"echo {_ph('C')}"]
        },
    }
    script, env = render_step(step, {"A": f"x{_ph('B')}", "B": "\\1 $y"})
    # One pass: a placeholder inside a pasted value stays literal; backslashes
    # in values are not regex escapes.
    assert script == f"echo x{_ph('B')} x{_ph('B')} \\1 $y\necho {_ph('C')}\n"
    assert env == {}


def test_unsupported_actions_are_document_errors() -> None:
    with pytest.raises(InvalidDocument, match="aws:runPowerShellScript"):
        render_step({"action": "aws:runPowerShellScript", "inputs": {"runCommand": []}}, {})


# --- the real submit document's script --------------------------------------------------


def _hostile_keys(tmp_path: Path) -> list[str]:
    canary = tmp_path / "pwned"
    return [
        f"$(touch {canary});`touch {canary}`; touch {canary} | & > < \"q\" 'q' ~ *",
        "-rf",
        "--help",
        "--bucket=evil",
        "résumé 日本.csv",
        "dir/sub/file name.csv",
        "../../etc/passwd",
        _ph("Key") + " $SSM_Bucket ${SSM_Bucket} \\ \\n",
        "k" * 1024,
    ]


def test_hostile_keys_reach_processorctl_verbatim(
    submit_content: dict[str, Any], base_env: dict[str, str], tmp_path: Path
) -> None:
    for key in _hostile_keys(tmp_path):
        assert pattern_matches(submit_content["parameters"]["Key"]["allowedPattern"], key)
        proc = _run_document(
            submit_content, {"Bucket": ["processor-input"], "Key": [key]}, base_env, tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "job-0001\n"
        assert _recorded_argv(tmp_path) == [
            "submit",
            "--bucket=processor-input",
            f"--key={key}",
            "--version-id=",
            "--etag=",
        ]
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("key", ["tab\there", "new\nline", "nul\x00byte", "del\x7f", "-\x1b[2J",
                                 "\r" + "\U0001F4C4" * 255 + "abc"], ids=repr)
def test_control_character_keys_reach_processorctl_as_key_base64(
    submit_content: dict[str, Any], base_env: dict[str, str], tmp_path: Path, key: str
) -> None:
    encoded = encode_key_base64(key)
    proc = _run_document(submit_content, {"Bucket": ["processor-input"], "KeyBase64": [encoded]},
                         base_env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    argv = _recorded_argv(tmp_path)
    assert argv == ["submit", "--bucket=processor-input", f"--key-base64={encoded}",
                    "--version-id=", "--etag="]
    assert decode_key_base64(argv[2].removeprefix("--key-base64=")) == key


@pytest.mark.parametrize("parameters,said", [
    ({"Key": ["a"], "KeyBase64": ["YQ"]}, "not both"),
    ({}, "both are empty"),
    ({"Key": [""], "KeyBase64": [""]}, "both are empty"),
])
def test_submit_script_wants_exactly_one_of_key_and_key_base64(
    submit_content: dict[str, Any], base_env: dict[str, str], tmp_path: Path,
    parameters: dict[str, list[str]], said: str,
) -> None:
    proc = _run_document(submit_content, {"Bucket": ["b-1"], **parameters}, base_env, tmp_path)
    assert proc.returncode == 2 and "exactly one of Key and KeyBase64" in proc.stderr, proc.stderr
    assert said in proc.stderr and not (tmp_path / "argv").exists()


def test_version_and_etag_are_passed(
    submit_content: dict[str, Any], base_env: dict[str, str], tmp_path: Path
) -> None:
    etag = "d41d8cd98f00b204e9800998ecf8427e-3"
    proc = _run_document(
        submit_content,
        {"Bucket": ["b-1"], "Key": ["k"], "VersionId": ["3/L4kq+tJ=="], "ETag": [etag]},
        base_env,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert _recorded_argv(tmp_path)[1:] == [
        "--bucket=b-1",
        "--key=k",
        "--version-id=3/L4kq+tJ==",
        f"--etag={etag}",
    ]


def test_without_ssm_variables_the_script_fails_closed(
    submit_content: dict[str, Any], base_env: dict[str, str], tmp_path: Path
) -> None:
    # An agent older than ENV_VAR support runs the same text with no SSM_ variables.
    (step,) = submit_content["mainSteps"]
    script = "\n".join(step["inputs"]["runCommand"]) + "\n"
    path = tmp_path / "_script.sh"
    path.write_text(script, encoding="utf-8")
    for partial in ({}, {"SSM_Bucket": "b-1"}):
        proc = subprocess.run(
            ["/bin/sh", str(path)],
            env={**base_env, **partial},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 2
        assert "ENV_VAR" in proc.stderr and "refusing to run" in proc.stderr
        assert not (tmp_path / "argv").exists()


def test_missing_processorctl_is_reported(
    submit_content: dict[str, Any], base_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**base_env, "PATH": "/nonexistent"}
    proc = _run_document(submit_content, {"Bucket": ["b-1"], "Key": ["k"]}, env, tmp_path)
    assert proc.returncode == 127
    assert "processorctl was not found" in proc.stderr


TOY_SHELL = f"echo {_ph('Message')}"


def _toy(env_var: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "String", "description": "m", "allowedPattern": "^.*$"}
    if env_var:
        message["interpolationType"] = "ENV_VAR"
    return {
        "schemaVersion": "2.2",
        "parameters": {"Message": message},
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": "say",
                "inputs": {"runCommand": ['echo "$SSM_Message"' if env_var else TOY_SHELL]},
            }
        ],
    }


def test_double_brace_substitution_executes_injected_shell(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    canary = tmp_path / "injected"
    value = f"hi; touch {canary}"
    proc = _run_document(_toy(env_var=False), {"Message": [value]}, base_env, tmp_path)
    assert proc.returncode == 0
    assert canary.exists(), "textual substitution should have run the injected command"

    canary.unlink()
    proc = _run_document(_toy(env_var=True), {"Message": [value]}, base_env, tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == value + "\n"
    assert not canary.exists()


# --- LocalSsmAgent against an in-memory SSM --------------------------------------------


class FakeSsm:
    """list_commands (one command per page) and get_document, like the service."""

    def __init__(self, documents: Mapping[str, dict[str, Any]]) -> None:
        self.documents = {name: yaml.safe_dump(c) for name, c in documents.items()}
        self.commands: list[dict[str, Any]] = []
        self.get_document_calls = 0
        self.fail_next_list = False

    def send(
        self,
        document: str,
        instance: str,
        parameters: dict[str, list[str]],
        version: str | None = None,
    ) -> str:
        command_id = f"cmd-{len(self.commands)}"
        command: dict[str, Any] = {
            "CommandId": command_id,
            "DocumentName": document,
            "InstanceIds": [instance],
            "Parameters": parameters,
            "Status": "Pending",
        }
        if version:
            command["DocumentVersion"] = version
        self.commands.append(command)
        return command_id

    def list_commands(self, **kwargs: Any) -> dict[str, Any]:
        if self.fail_next_list:
            self.fail_next_list = False
            raise ConnectionError("emulator hiccup")
        matching = [c for c in self.commands if kwargs["InstanceId"] in c["InstanceIds"]]
        start = int(kwargs.get("NextToken", 0))
        page: dict[str, Any] = {"Commands": matching[start : start + 1]}
        if start + 1 < len(matching):
            page["NextToken"] = str(start + 1)
        return page

    def get_document(self, **kwargs: Any) -> dict[str, Any]:
        self.get_document_calls += 1
        return {
            "Name": kwargs["Name"],
            "DocumentVersion": kwargs.get("DocumentVersion", "1"),
            "Content": self.documents[kwargs["Name"]],
            "DocumentFormat": "YAML",
        }


def _agent(ssm: FakeSsm, env: dict[str, str], tmp_path: Path, **kwargs: Any) -> LocalSsmAgent:
    return LocalSsmAgent(ssm, "i-local", env=env, work_dir=tmp_path / "work", **kwargs)


def test_agent_runs_each_command_for_this_instance_once(
    submit_content: dict[str, Any], base_env: dict[str, str], tmp_path: Path
) -> None:
    ssm = FakeSsm({"Submit": submit_content})
    seen: list[CommandResult] = []
    agent = _agent(ssm, base_env, tmp_path, on_result=seen.append)
    ssm.send("Submit", "i-other", {"Bucket": ["b-1"], "Key": ["other"]})
    first = ssm.send("Submit", "i-local", {"Bucket": ["b-1"], "Key": ["-rf"]}, version="1")
    second = ssm.send("Submit", "i-local", {"Bucket": ["b-1"], "Key": ["x y"]}, version="1")

    results = agent.run_once()
    assert [r.command_id for r in results] == [first, second]
    assert all(r.status == "Success" and r.exit_code == 0 for r in results)
    assert results[0].stdout == "job-0001\n"
    assert results[0].parameters == {"Bucket": ["b-1"], "Key": ["-rf"]}
    assert _recorded_argv(tmp_path)[2] == "--key=x y"
    assert seen == results == agent.results
    assert ssm.get_document_calls == 1  # cached by name and version
    assert agent.run_once() == []


def test_agent_reports_invalid_parameters_and_runs_nothing(
    submit_content: dict[str, Any], base_env: dict[str, str], tmp_path: Path
) -> None:
    ssm = FakeSsm({"Submit": submit_content})
    ssm.send("Submit", "i-local", {"Bucket": ["b-1"], "Key": ["a\nb"]})
    (result,) = _agent(ssm, base_env, tmp_path).run_once()
    assert result.status == "InvalidParameters"
    assert result.error is not None and "'Key'" in result.error and "\\n" in result.error
    assert result.exit_code is None
    assert not (tmp_path / "argv").exists()


def test_agent_env_and_failures(base_env: dict[str, str], tmp_path: Path) -> None:
    doc = {
        "schemaVersion": "2.2",
        "parameters": {},
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": "env",
                "inputs": {
                    "runCommand": [
                        'printf "%s %s %s\\n" "$AWS_SSM_INSTANCE_ID" "$AWS_SSM_REGION_NAME" "$PWD"',
                        "echo oops >&2",
                        "exit 3",
                    ]
                },
            },
            {"action": "aws:runShellScript", "name": "never", "inputs": {"runCommand": ["true"]}},
        ],
    }
    ssm = FakeSsm({"Env": doc})
    ssm.send("Env", "i-local", {})
    (result,) = _agent(ssm, base_env, tmp_path).run_once()
    assert result.status == "Failed" and result.exit_code == 3
    instance, region, cwd = result.stdout.split()
    assert (instance, region) == ("i-local", "us-east-1")
    assert Path(cwd).is_relative_to(tmp_path / "work")
    assert result.stderr == "oops\n"
    assert result.error == "step 'env' exited with 3"


def test_agent_times_out_a_step(base_env: dict[str, str], tmp_path: Path) -> None:
    doc = {
        "schemaVersion": "2.2",
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": "slow",
                "inputs": {"timeoutSeconds": 1, "runCommand": ["sleep 30 & wait"]},
            }
        ],
    }
    ssm = FakeSsm({"Slow": doc})
    ssm.send("Slow", "i-local", {})
    started = time.monotonic()
    (result,) = _agent(ssm, base_env, tmp_path).run_once()
    assert time.monotonic() - started < 15
    assert result.status == "TimedOut" and result.exit_code is None


def test_agent_loop_survives_errors(
    submit_content: dict[str, Any],
    base_env: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ssm = FakeSsm({"Submit": submit_content})
    ssm.fail_next_list = True
    agent = _agent(ssm, base_env, tmp_path, poll_interval=0.01)
    with caplog.at_level(logging.ERROR, logger="processor.local.agent"):
        agent.start()
        try:
            ssm.send("Submit", "i-local", {"Bucket": ["b-1"], "Key": ["k"]})
            wait_until(lambda: agent.results, stall_s=30, interval=0.02, describe="the command never ran")
        finally:
            agent.stop(timeout=10)
    assert [r.status for r in agent.results] == ["Success"]
    assert "emulator hiccup" in caplog.text


def test_bad_document_fails_only_that_command(base_env: dict[str, str], tmp_path: Path) -> None:
    ssm = FakeSsm({"Bad": {"schemaVersion": "2.2", "mainSteps": []}})
    ssm.send("Bad", "i-local", {})
    ssm.send("Missing", "i-local", {})
    results = _agent(ssm, base_env, tmp_path).run_once()
    assert [r.status for r in results] == ["Failed", "Failed"]
    assert results[0].error is not None and "mainSteps" in results[0].error
    assert results[1].error is not None and "KeyError" in results[1].error


def test_module_logger_name() -> None:
    assert agent_mod.LOGGER.name == "processor.local.agent"


def test_a_started_agent_runs_commands_side_by_side(base_env: dict[str, str], tmp_path: Path) -> None:
    """Like the real agent (CommandWorkersLimit 5), a started agent runs commands at once:
    each script waits until three of them have started, which never happens one by one
    (the step would time out instead)."""
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    document = {
        "schemaVersion": "2.2",
        "parameters": {"N": {"type": "String", "allowedPattern": "^[0-9]$",
                             "interpolationType": "ENV_VAR"}},
        "mainSteps": [{"action": "aws:runShellScript", "name": "meet", "inputs": {
            "timeoutSeconds": "20",
            "runCommand": [f'touch "{rendezvous}/$SSM_N"',
                           f'while [ "$(ls "{rendezvous}" | wc -l)" -lt 3 ]; do sleep 0.02; done']}}],
    }
    ssm = FakeSsm({"Meet": document})
    agent = _agent(ssm, base_env, tmp_path, poll_interval=0.01)
    for n in range(3):
        ssm.send("Meet", "i-local", {"N": [str(n)]})
    agent.start()
    try:
        wait_until(lambda: len(agent.results) >= 3, stall_s=30, progress=lambda: len(agent.results),
                   interval=0.02, describe=lambda: agent.results)
    finally:
        agent.stop(timeout=30)
    assert sorted(r.status for r in agent.results) == ["Success"] * 3, agent.results
