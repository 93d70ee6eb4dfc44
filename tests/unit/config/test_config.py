"""Configuration: exact key names, env overrides, clear errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config.settings import (
    DEFAULT_CONFIG_PATH,
    config_path,
    load_settings,
    settings_from_mapping,
)
from worker.errors import ConfigError

MINIMAL = {"s3": {"output_bucket": "out"}}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "processor.toml"
    path.write_text(text)
    return path


def test_the_documented_example_loads(tmp_path: Path) -> None:
    path = write(tmp_path, """
[s3]
output_bucket = "processor-output"
output_prefix = ""
endpoint_url = ""
region = "us-east-1"
[processing]
command = ["/opt/processor/bin/process", "{input}", "{output_dir}"]
concurrency = 2
timeout_s = 3600
max_attempts = 3
[paths]
state_dir = "/var/lib/processor"
socket = "/run/processor/processor.sock"
[logging]
level = "info"
journald = true
cloudwatch_log_group = ""
""")
    s = load_settings(path, environ={})
    assert s.s3.output_bucket == "processor-output"
    assert s.processing.command == ("/opt/processor/bin/process", "{input}", "{output_dir}")
    assert s.processing.concurrency == 2
    assert s.paths.ledger == Path("/var/lib/processor/ledger/ledger.db")
    assert s.logging.journald is True


def test_defaults_fill_everything_but_the_bucket() -> None:
    s = settings_from_mapping(MINIMAL, {})
    assert s.s3.region == "us-east-1"
    assert (s.logging.cloudwatch_stream, s.logging.cloudwatch_create_group) == ("", False)
    assert s.logging.flush_timeout_s == 10
    assert s.paths.state_dir == Path("/var/lib/processor")
    assert s.processing.max_attempts == 3


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"s3": {"output_bucket": "o", "outptu_prefix": "x"}}, {})
    assert info.value.key == "s3.outptu_prefix"
    assert "s3.outptu_prefix" in str(info.value)


def test_unknown_section_is_named() -> None:
    with pytest.raises(ConfigError, match=r"\[s4\]"):
        settings_from_mapping({**MINIMAL, "s4": {}}, {})


def test_missing_output_bucket_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"s3": {"region": "eu-west-1"}}, {})
    assert info.value.key == "s3.output_bucket"
    with pytest.raises(ConfigError, match=r"s3\.output_bucket"):
        settings_from_mapping({"s3": {"output_bucket": "  "}}, {})


@pytest.mark.parametrize("section,key,value,fragment", [
    ("processing", "concurrency", 0, "processing.concurrency"),
    ("processing", "concurrency", "2", "processing.concurrency must be an integer"),
    ("processing", "concurrency", True, "processing.concurrency must be an integer"),
    ("processing", "command", [], "processing.command"),
    ("processing", "command", "process {input}", "processing.command must be a non-empty array"),
    ("processing", "command", ["/bin/x", "{output_dir}"], "{input}"),
    ("processing", "max_attempts", 0, "processing.max_attempts"),
    ("paths", "state_dir", "relative/dir", "paths.state_dir must be an absolute path"),
    ("paths", "socket", "/" + "s" * 120, "paths.socket"),
    ("logging", "level", "loud", "logging.level"),
    ("logging", "journald", "yes", "logging.journald must be true or false"),
    ("logging", "cloudwatch_log_group", "bad group!", "logging.cloudwatch_log_group"),
    ("logging", "cloudwatch_stream", "i-1:x", "logging.cloudwatch_stream"),
    ("logging", "cloudwatch_create_group", "yes", "logging.cloudwatch_create_group must be true or false"),
    ("logging", "flush_timeout_s", -1, "logging.flush_timeout_s"),
    ("logging", "job_log_max_mb", -1, "logging.job_log_max_mb"),
    ("logging", "job_log_retention_days", -1, "logging.job_log_retention_days"),
    ("logging", "job_log_retention_days", 1.5, "logging.job_log_retention_days must be an integer"),
    ("processing", "memory_max", -1, "processing.memory_max"),
    ("processing", "cpu_quota", -5, "processing.cpu_quota"),
    ("processing", "tasks_max", "64", "processing.tasks_max must be an integer"),
    ("s3", "endpoint_url", "localhost:4566", "s3.endpoint_url"),
])
def test_bad_values_are_named(section: str, key: str, value: object, fragment: str) -> None:
    raw = {"s3": {"output_bucket": "o"}}
    raw.setdefault(section, {})[key] = value  # type: ignore[index]
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, {})
    assert fragment in str(info.value)


def test_environment_overrides_the_file() -> None:
    env = {
        "PROCESSOR_S3_OUTPUT_BUCKET": "from-env",
        "PROCESSOR_PROCESSING_CONCURRENCY": "4",
        "PROCESSOR_LOGGING_JOURNALD": "false",
        "PROCESSOR_PROCESSING_COMMAND": '["/bin/p", "{input}"]',
        "PROCESSOR_CONFIG": "/ignored/here",
        "UNRELATED": "x",
    }
    s = settings_from_mapping(MINIMAL, env)
    assert s.s3.output_bucket == "from-env"
    assert s.processing.concurrency == 4
    assert s.logging.journald is False
    assert s.processing.command == ("/bin/p", "{input}")


def test_bad_environment_override_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="PROCESSOR_PROCESSING_CONCURRENCY"):
        settings_from_mapping(MINIMAL, {"PROCESSOR_PROCESSING_CONCURRENCY": "many"})
    with pytest.raises(ConfigError, match=r"PROCESSOR_S3_BUKET.*s3\.buket"):
        settings_from_mapping(MINIMAL, {"PROCESSOR_S3_BUKET": "x"})


def test_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[s3\n"), environ={})


def test_config_path_precedence() -> None:
    assert config_path("/a.toml", {"PROCESSOR_CONFIG": "/b.toml"}) == Path("/a.toml")
    assert config_path(None, {"PROCESSOR_CONFIG": "/b.toml"}) == Path("/b.toml")
    assert config_path(None, {}) == DEFAULT_CONFIG_PATH


def test_unknown_key_lists_the_known_ones_in_order() -> None:
    with pytest.raises(ConfigError, match=r"known in \[s3\]: output_bucket, output_prefix, endpoint_url, "
                                          r"region\)"):
        settings_from_mapping({"s3": {"output_bucket": "o", "bucket": "x"}}, {})


# -- [instance]: the instance guard ---------------------------------------------------


def test_instance_section_defaults_and_file_values(tmp_path: Path) -> None:
    from worker.config.settings import InstanceSettings

    assert settings_from_mapping(MINIMAL, {}).instance == InstanceSettings(
        scale_in_protection=False, watch_spot_interruption=False, watch_lifecycle_state=False,
        imds_url="http://169.254.169.254", poll_s=5, autoscaling_group="")
    path = write(tmp_path, """
[s3]
output_bucket = "out"
[instance]
scale_in_protection = true
watch_spot_interruption = true
watch_lifecycle_state = true
imds_url = "http://127.0.0.1:8111"
poll_s = 2
autoscaling_group = "stack-processor"
""")
    inst = load_settings(path, environ={}).instance
    assert (inst.scale_in_protection, inst.watch_spot_interruption, inst.watch_lifecycle_state) == (
        True, True, True)
    assert (inst.imds_url, inst.poll_s, inst.autoscaling_group) == (
        "http://127.0.0.1:8111", 2, "stack-processor")


def test_instance_environment_overrides() -> None:
    inst = settings_from_mapping(MINIMAL, {
        "PROCESSOR_INSTANCE_SCALE_IN_PROTECTION": "true",
        "PROCESSOR_INSTANCE_WATCH_SPOT_INTERRUPTION": "yes",
        "PROCESSOR_INSTANCE_POLL_S": "3",
        "PROCESSOR_INSTANCE_IMDS_URL": "http://127.0.0.1:9/",
        "PROCESSOR_INSTANCE_AUTOSCALING_GROUP": "g",
    }).instance
    assert (inst.scale_in_protection, inst.watch_spot_interruption, inst.poll_s) == (True, True, 3)
    assert (inst.imds_url, inst.autoscaling_group) == ("http://127.0.0.1:9/", "g")
    with pytest.raises(ConfigError, match=r"PROCESSOR_INSTANCE_POLL_S.*instance\.poll_s.*integer") as bad:
        settings_from_mapping(MINIMAL, {"PROCESSOR_INSTANCE_POLL_S": "often"})
    assert bad.value.key == "instance.poll_s"
    with pytest.raises(ConfigError, match=r"PROCESSOR_INSTANCE_WATCH_SPOT.*instance\.watch_spot"):
        settings_from_mapping(MINIMAL, {"PROCESSOR_INSTANCE_WATCH_SPOT": "true"})


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("poll_s", 0, "must be at least 1"),
    ("poll_s", 1.5, "must be an integer"),
    ("scale_in_protection", "yes", "must be true or false"),
    ("imds_url", "", "must be an http:// URL"),
    ("imds_url", "https://169.254.169.254", "must be an http:// URL"),
    ("imds_url", "169.254.169.254", "must be an http:// URL"),
    ("imds_url", "http://169.254.169.254/latest/meta-data", "must be an http:// URL"),
    ("autoscaling_group", "g" * 256, "at most 255 characters"),
    ("autoscaling_group", " g", "without surrounding blanks"),
    ("autoscaling_grup", "g", "unknown key instance.autoscaling_grup"),
])
def test_bad_instance_values_are_named(key: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as err:
        settings_from_mapping({**MINIMAL, "instance": {key: value}}, {})
    assert err.value.key == f"instance.{key}"

def test_environment_keys_default_to_nothing() -> None:
    p = settings_from_mapping(MINIMAL, {}).processing
    assert p.environment == () and p.pass_environment == ()


def test_environment_table_and_pass_list_load_from_toml(tmp_path: Path) -> None:
    path = write(tmp_path, """
[s3]
output_bucket = "o"
[processing]
pass_environment = ["HTTPS_PROXY", "NO_PROXY"]
[processing.environment]
MODEL_PATH = "/opt/models/v3"
LD_LIBRARY_PATH = "/opt/vendor/lib"
PATH = "/opt/vendor/bin:/usr/bin:/bin"
""")
    s = load_settings(path, environ={})
    assert dict(s.processing.environment) == {
        "MODEL_PATH": "/opt/models/v3", "LD_LIBRARY_PATH": "/opt/vendor/lib",
        "PATH": "/opt/vendor/bin:/usr/bin:/bin",
    }
    assert s.processing.pass_environment == ("HTTPS_PROXY", "NO_PROXY")
    # Immutable, and the settings stay hashable values.
    assert isinstance(s.processing.environment, tuple) and hash(s) == hash(load_settings(path, environ={}))
    with pytest.raises(AttributeError):
        s.processing.environment.append(("X", "y"))  # type: ignore[attr-defined]


def test_environment_keys_are_overridden_by_json_in_the_environment() -> None:
    s = settings_from_mapping(
        {**MINIMAL, "processing": {"environment": {"A": "file"}, "pass_environment": ["B"]}},
        {"PROCESSOR_PROCESSING_ENVIRONMENT": '{"MODEL_PATH": "/m", "LICENSE_SERVER": "27000@lic"}',
         "PROCESSOR_PROCESSING_PASS_ENVIRONMENT": '["HTTPS_PROXY"]'},
    )
    assert dict(s.processing.environment) == {"MODEL_PATH": "/m", "LICENSE_SERVER": "27000@lic"}
    assert s.processing.pass_environment == ("HTTPS_PROXY",)


@pytest.mark.parametrize("variable,value,fragment", [
    ("PROCESSOR_PROCESSING_ENVIRONMENT", "MODEL_PATH=/m", "must be a JSON object of strings"),
    ("PROCESSOR_PROCESSING_ENVIRONMENT", '["MODEL_PATH"]', 'must be a table of NAME = "value"'),
    ("PROCESSOR_PROCESSING_ENVIRONMENT", '{"THREADS": 4}', "processing.environment.THREADS must be a string"),
    ("PROCESSOR_PROCESSING_ENVIRONMENT", '{"PROCESSOR_JOB_ID": "x"}', "'PROCESSOR_JOB_ID'"),
    ("PROCESSOR_PROCESSING_PASS_ENVIRONMENT", "HTTPS_PROXY", "must be a JSON array of strings"),
    ("PROCESSOR_PROCESSING_PASS_ENVIRONMENT", '{"HTTPS_PROXY": "x"}', "must be an array of strings"),
    ("PROCESSOR_PROCESSING_PASS_ENVIRONMENT", '["HOME"]', "'HOME'"),
])
def test_bad_environment_overrides_name_the_variable(variable: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(MINIMAL, {variable: value})
    # A bad value names the variable it came from; a bad name (checked after merging, the
    # fragments quoting it) names only the key, like one from the file would.
    key = "processing." + variable.removeprefix("PROCESSOR_PROCESSING_").lower()
    bad_name = fragment.startswith("'")
    assert str(info.value).startswith("config: " if bad_name else f"{variable}: "), str(info.value)
    assert key in str(info.value) and fragment in str(info.value) and info.value.key == key


@pytest.mark.parametrize("key,value,fragment", [
    ("environment", {"MODEL PATH": "/m"}, "'MODEL PATH', which is not a variable name"),
    ("environment", {"1ST": "x"}, "'1ST', which is not a variable name"),
    ("environment", {"": "x"}, "'', which is not a variable name"),
    ("environment", {"A=B": "x"}, "'A=B', which is not a variable name"),
    ("environment", {"PROCESSOR_INPUT": "/etc/passwd"}, "PROCESSOR_* names are the command contract's"),
    ("environment", {"PROCESSOR_ANYTHING": "x"}, "PROCESSOR_* names"),
    ("environment", {"HOME": "/root"}, "'HOME', which the pipeline sets"),
    ("environment", {"TMPDIR": "/tmp"}, "'TMPDIR', which the pipeline sets"),
    ("environment", {"X": "a\0b"}, "value of X contains a NUL byte"),
    ("environment", {"X": 1}, "processing.environment.X must be a string"),
    ("environment", {"X": ["a"]}, "processing.environment.X must be a string"),
    ("environment", ["X=1"], 'processing.environment must be a table of NAME = "value"'),
    ("environment", "X=1", 'processing.environment must be a table of NAME = "value"'),
    ("pass_environment", "HTTPS_PROXY", "processing.pass_environment must be an array of strings"),
    ("pass_environment", [1], "processing.pass_environment must be an array of strings"),
    ("pass_environment", ["HTTPS-PROXY"], "'HTTPS-PROXY', which is not a variable name"),
    ("pass_environment", ["PROCESSOR_CONFIG"], "PROCESSOR_* names"),
    ("pass_environment", ["TMPDIR"], "'TMPDIR', which the pipeline sets"),
])
def test_bad_environment_settings_name_the_key_and_the_name(key: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({**MINIMAL, "processing": {key: value}}, {})
    assert f"processing.{key}" in str(info.value) and info.value.key == f"processing.{key}"
    assert fragment in str(info.value)


def test_path_and_lang_may_be_set_for_the_command() -> None:
    s = settings_from_mapping(
        {**MINIMAL, "processing": {"environment": {"PATH": "/opt/bin", "LANG": "de_DE.UTF-8"},
                                   "pass_environment": ["PATH", "LC_ALL"]}}, {})
    assert dict(s.processing.environment) == {"PATH": "/opt/bin", "LANG": "de_DE.UTF-8"}
