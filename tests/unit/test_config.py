"""Configuration: exact key names, env overrides, clear errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import (
    DEFAULT_CONFIG_PATH,
    ProcessingSettings,
    S3Settings,
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


def test_settings_are_immutable_values() -> None:
    a, b = settings_from_mapping(MINIMAL, {}), settings_from_mapping(MINIMAL, {})
    assert a == b and hash(a) == hash(b) and a.paths == b.paths
    assert a != settings_from_mapping({"s3": {"output_bucket": "other"}}, {})
    with pytest.raises(AttributeError):
        a.s3 = a.s3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        a.paths.state_dir = Path("/elsewhere")  # type: ignore[misc]
    assert S3Settings(output_bucket="out") == a.s3
    assert ProcessingSettings().command == ("/opt/processor/bin/process", "{input}", "{output_dir}")


def test_unknown_key_lists_the_known_ones_in_order() -> None:
    with pytest.raises(ConfigError, match=r"known in \[s3\]: output_bucket, output_prefix, endpoint_url, "
                                          r"region\)"):
        settings_from_mapping({"s3": {"output_bucket": "o", "bucket": "x"}}, {})


# -- [instance]: the instance guard ---------------------------------------------------


def test_instance_section_defaults_and_file_values(tmp_path: Path) -> None:
    from worker.config import InstanceSettings

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
