"""Settings: one TOML file plus ``PROCESSOR_*`` environment overrides.

Built once in ``main()`` and passed down; nothing reads the environment at
import time. Every key is validated here, at start, with an error that names
it; unknown keys are an error so a typo never silently falls back to a default.

Environment overrides are ``PROCESSOR_<SECTION>_<KEY>``, e.g.
``PROCESSOR_S3_OUTPUT_BUCKET=my-bucket`` or ``PROCESSOR_PROCESSING_CONCURRENCY=4``.
Lists (``processing.command``, ``processing.pass_environment``) are given as a
JSON array, tables (``processing.environment``) as a JSON object of strings.

The sections are ``NamedTuple``s, not dataclasses: just as immutable and
comparable, and ``processorctl`` (one fresh interpreter per submitted object)
starts without importing ``dataclasses`` and ``inspect``. No ``from __future__
import annotations`` here: the field types are read at run time
(worker.config.values).
"""

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from worker.config.values import Environment, EnvironmentNames, apply_env, build_section
from worker.errors import ConfigError

#: Where the daemon and processorctl look when neither --config nor PROCESSOR_CONFIG is given.
DEFAULT_CONFIG_PATH = Path("/etc/processor/processor.toml")

#: --config's help text, shared by `processor` and `processorctl`.
CONFIG_HELP = "config file (default: $PROCESSOR_CONFIG, else /etc/processor/processor.toml)"

#: Environment variable naming the config file.
CONFIG_ENV = "PROCESSOR_CONFIG"

#: Prefix of per-key environment overrides.
ENV_PREFIX = "PROCESSOR_"

#: What a variable name given to the processing command must look like (POSIX).
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: Names the pipeline sets for every job (with ``PROCESSOR_*``, the contract's
#: variables): neither processing.environment nor pass_environment may give them.
PIPELINE_ENV_NAMES = frozenset({"HOME", "TMPDIR"})


_LOG_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})

# CloudWatch Logs naming rules (CreateLogGroup / CreateLogStream); checked here
# so a typo fails at start, not as a stream of dropped batches later.
_LOG_GROUP_RE = re.compile(r"[A-Za-z0-9_./#-]{1,512}")
_LOG_STREAM_RE = re.compile(r"[^:*]{1,500}")


class S3Settings(NamedTuple):
    output_bucket: str
    output_prefix: str = ""
    endpoint_url: str = ""
    region: str = "us-east-1"


class ProcessingSettings(NamedTuple):
    command: tuple[str, ...] = ("/opt/processor/bin/process", "{input}", "{output_dir}")
    concurrency: int = 2
    timeout_s: int = 3600
    #: Counted attempts before a job is failed (Job.counted_attempts): attempts
    #: that ended in exit 75, a damaged download or an internal error, and those
    #: the daemon died during. Shutdowns, S3 outages and waits for disk space
    #: are not counted (worker.jobs.outcome). In a fleet the same things count; the
    #: count lives in the fleet's job record (worker.fleet.record), not in SQS.
    max_attempts: int = 3
    #: Seconds between SIGTERM and SIGKILL when a command must be stopped.
    kill_grace_s: int = 10
    #: First retry delay for a retryable failure; doubles per attempt, with jitter.
    retry_base_s: int = 30
    #: Upper bound of the retry delay.
    retry_max_s: int = 900
    #: On SIGTERM, how long running jobs may take to finish before they are
    #: stopped and left queued. Keep the unit's TimeoutStopSec above this.
    drain_timeout_s: int = 60
    #: Per-job limits, enforced by the job's own cgroup (worker.runner.cgroup: under systemd
    #: with Delegate=yes); 0: none. Memory in MiB; CPU in percent of one CPU (150 = 1.5
    #: CPUs, as systemd's CPUQuota=); tasks = processes and threads.
    memory_max: int = 0
    cpu_quota: int = 0
    tasks_max: int = 0
    #: Variables set for the command, NAME = "value" (applied after pass_environment).
    environment: Environment = Environment()
    #: Variables copied from the daemon's environment when the daemon has them
    #: (systemd's PassEnvironment=); a name the daemon lacks is left unset.
    pass_environment: EnvironmentNames = EnvironmentNames()


class PathSettings(NamedTuple):
    state_dir: Path = Path("/var/lib/processor")
    socket: Path = Path("/run/processor/processor.sock")
    #: Free space (MiB) a job must leave on the state volume after its input is
    #: downloaded; the ledger and logs live there too.
    min_free_mb: int = 64

    @property
    def ledger(self) -> Path:
        return self.state_dir / "ledger" / "ledger.db"

    @property
    def work(self) -> Path:
        return self.state_dir / "work"

    @property
    def logs(self) -> Path:
        """The daemon's log directory (``processor.jsonl``; job logs under ``jobs/``)."""
        return self.state_dir / "logs"

    @property
    def job_logs(self) -> Path:
        """Where each job's command output goes, one ``<job id>.log`` per job."""
        return self.logs / "jobs"

    def job_log(self, job_id: str) -> Path:
        """The log file of one job's processing command (stdout and stderr)."""
        return self.job_logs / f"{job_id}.log"


class LoggingSettings(NamedTuple):
    level: str = "info"
    #: Send every event to the journal as structured fields (JOB_ID=, S3_KEY= …).
    journald: bool = True
    #: CloudWatch Logs group; empty turns the CloudWatch sink (and EMF metrics) off.
    cloudwatch_log_group: str = ""
    #: The instance's log stream (metrics go to "<stream>-metrics"); empty means
    #: the EC2 instance id from IMDSv2, else the host name.
    cloudwatch_stream: str = ""
    #: Create the log group when it is missing. Off in production: the stack
    #: creates it with a retention period, and the role need not be allowed to.
    cloudwatch_create_group: bool = False
    #: On shutdown, how long queued CloudWatch events may take to be sent
    #: before they are dropped. Keep drain_timeout_s + this below TimeoutStopSec.
    flush_timeout_s: int = 10
    #: A job's log (logs/jobs/<job>.log) keeps at most this many MiB: the first and the
    #: last half, with a marker line where it was cut (worker.runner.joblog). 0: no cap.
    job_log_max_mb: int = 100
    #: Logs of jobs that ended more than this many days ago are removed. 0: kept for ever.
    job_log_retention_days: int = 30


class ReconcileSettings(NamedTuple):
    #: The input bucket `processorctl reconcile` lists (the --input-bucket default).
    input_bucket: str = ""
    #: Only keys under this prefix.
    prefix: str = ""
    #: Only objects older than this, so objects whose event is still on its way
    #: are left to it (S3 -> Lambda -> SSM normally takes seconds).
    older_than_s: int = 900


class InstanceSettings(NamedTuple):
    """The instance guard (worker/fleet/instance.py): how the daemon learns its EC2 instance is going away."""

    #: Protect this instance from scale-in while the daemon holds at least one
    #: job (autoscaling:SetInstanceProtection on its Auto Scaling group).
    scale_in_protection: bool = False
    #: Poll IMDS for the two-minute Spot interruption notice and drain at once.
    watch_spot_interruption: bool = False
    #: Poll IMDS for the Auto Scaling target lifecycle state and drain at once
    #: when it says the instance is leaving (Terminated, or into a warm pool).
    watch_lifecycle_state: bool = False
    #: The instance metadata service; another http:// URL only for tests and non-EC2 hosts.
    imds_url: str = "http://169.254.169.254"
    #: Seconds between two IMDS polls (the Spot notice comes two minutes ahead).
    poll_s: int = 5
    #: The instance's Auto Scaling group; empty: read from the instance tag
    #: aws:autoscaling:groupName in IMDS (needs InstanceMetadataTags enabled).
    autoscaling_group: str = ""


class QueueSettings(NamedTuple):
    """A fleet's shared SQS work queue (README "Scaling out", "The daemon on the shared work queue")."""

    #: The queue's URL; empty: no queue (jobs come from SSM / processorctl only).
    url: str = ""
    #: Empty: AWS; else any SQS-compatible endpoint (the local emulator).
    endpoint_url: str = ""
    #: The lease: how long a received message stays invisible; extended every
    #: visibility_s/3 while its job runs, so a dead instance's jobs return this fast.
    visibility_s: int = 300
    #: Long-poll wait of each receive (SQS allows 0..20).
    wait_s: int = 20
    #: Empty: a message may name any bucket; else a message for another bucket is malformed.
    input_bucket: str = ""
    #: The fleet's job record table (DynamoDB): claims, counted attempts, the
    #: fleet-wide view. Required with ``url``.
    table: str = ""
    #: Empty: ``endpoint_url`` (or AWS); else any DynamoDB-compatible endpoint.
    table_endpoint_url: str = ""
    #: Where malformed messages and jobs failed for good are sent, with their
    #: reason; empty: the work queue's redrive policy's dead-letter queue.
    dead_letter_url: str = ""
    #: This daemon's name in claims and ``processorctl fleet``; empty: the EC2
    #: instance id (IMDS), else ``<hostname>:<state dir>``.
    holder: str = ""


class Settings(NamedTuple):
    s3: S3Settings
    processing: ProcessingSettings
    paths: PathSettings
    logging: LoggingSettings
    reconcile: ReconcileSettings
    instance: InstanceSettings = InstanceSettings()
    queue: QueueSettings = QueueSettings()


_SECTIONS: Mapping[str, type[Any]] = {
    "s3": S3Settings,
    "processing": ProcessingSettings,
    "paths": PathSettings,
    "logging": LoggingSettings,
    "reconcile": ReconcileSettings,
    "instance": InstanceSettings,
    "queue": QueueSettings,
}

#: SQS keeps a received message invisible for at most this long, whatever the
#: extensions: past it the message comes back and another instance would run the job again.
SQS_MAX_INVISIBLE_S = 12 * 3600

#: What a fleet job may spend besides its command (download, upload, the
#: manifest check) within SQS_MAX_INVISIBLE_S; processing.timeout_s +
#: processing.kill_grace_s + this must stay below it.
QUEUE_TRANSFER_MARGIN_S = 1800

_SQS_URL_RE = re.compile(r"^https://sqs[.-]([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/")


def queue_region(settings: Settings) -> str:
    """The queue's region: from an AWS queue URL, else ``[s3] region``."""
    found = _SQS_URL_RE.match(settings.queue.url)
    return found.group(1) if found else settings.s3.region

def config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """The config file to read: --config, else $PROCESSOR_CONFIG, else the default."""
    if cli_value:
        return Path(cli_value)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, merge and validate the configuration; raise ConfigError naming the bad key."""
    environ = os.environ if environ is None else environ
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        hint = (f"; point --config or ${CONFIG_ENV} at the config file"
                if path == DEFAULT_CONFIG_PATH else "")
        raise ConfigError(f"config file {path} does not exist{hint}") from None
    except PermissionError as exc:
        raise ConfigError(f"config file {path} is not readable: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return settings_from_mapping(raw, environ, source=str(path))


def settings_from_mapping(
    raw: Mapping[str, Any], environ: Mapping[str, str], *, source: str = "config"
) -> Settings:
    """Validate a parsed TOML document merged with environment overrides."""
    for section in raw:
        if section not in _SECTIONS:
            raise ConfigError(
                f"{source}: unknown section [{section}] (known: {', '.join(_SECTIONS)})",
                key=section,
            )
        if not isinstance(raw[section], Mapping):
            raise ConfigError(f"{source}: [{section}] must be a table", key=section)
    merged: dict[str, dict[str, Any]] = {name: dict(raw.get(name, {})) for name in _SECTIONS}
    apply_env(merged, environ, prefix=ENV_PREFIX, skip=CONFIG_ENV)
    built = {name: build_section(name, cls, merged[name], source) for name, cls in _SECTIONS.items()}
    settings = Settings(**built)
    _check(settings, source)
    return settings


def _check(settings: Settings, source: str) -> None:
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{source}: {key} {message}", key=key)

    if not settings.s3.output_bucket.strip():
        fail("s3.output_bucket", "must name the output bucket")
    if settings.s3.endpoint_url and not settings.s3.endpoint_url.startswith(("http://", "https://")):
        fail("s3.endpoint_url", f"must be empty or an http(s) URL, got {settings.s3.endpoint_url!r}")
    if settings.s3.output_prefix.startswith("/"):
        fail("s3.output_prefix", "must not start with '/'")
    p = settings.processing
    if p.concurrency < 1:
        fail("processing.concurrency", f"must be at least 1, got {p.concurrency}")
    if p.timeout_s < 1:
        fail("processing.timeout_s", f"must be at least 1, got {p.timeout_s}")
    if p.max_attempts < 1:
        fail("processing.max_attempts", f"must be at least 1, got {p.max_attempts}")
    if p.kill_grace_s < 0:
        fail("processing.kill_grace_s", f"must not be negative, got {p.kill_grace_s}")
    if p.drain_timeout_s < 0:
        fail("processing.drain_timeout_s", f"must not be negative, got {p.drain_timeout_s}")
    for key in ("memory_max", "cpu_quota", "tasks_max"):
        if getattr(p, key) < 0:
            fail(f"processing.{key}", f"must not be negative (0: no limit), got {getattr(p, key)}")
    if p.retry_base_s < 0 or p.retry_max_s < p.retry_base_s:
        fail("processing.retry_max_s", "must be >= processing.retry_base_s >= 0")
    if "{input}" not in p.command:
        fail("processing.command", "must contain the argument \"{input}\"")
    _check_environment(p, fail)
    if not settings.paths.state_dir.is_absolute():
        fail("paths.state_dir", f"must be an absolute path, got {str(settings.paths.state_dir)!r}")
    if not settings.paths.socket.is_absolute():
        fail("paths.socket", f"must be an absolute path, got {str(settings.paths.socket)!r}")
    if len(str(settings.paths.socket).encode()) > 107:
        fail("paths.socket", "is longer than a Unix socket path may be (107 bytes)")
    if settings.reconcile.older_than_s < 0:
        fail("reconcile.older_than_s", f"must not be negative, got {settings.reconcile.older_than_s}")
    if settings.paths.min_free_mb < 0:
        fail("paths.min_free_mb", f"must not be negative, got {settings.paths.min_free_mb}")
    lg = settings.logging
    if lg.level.lower() not in _LOG_LEVELS:
        fail("logging.level", f"must be one of {', '.join(sorted(_LOG_LEVELS))}")
    if lg.cloudwatch_log_group and not _LOG_GROUP_RE.fullmatch(lg.cloudwatch_log_group):
        fail("logging.cloudwatch_log_group", "must be 1-512 of A-Z a-z 0-9 _ . / # -")
    # 500, not 512: "-metrics" is appended for the EMF stream.
    if lg.cloudwatch_stream and not _LOG_STREAM_RE.fullmatch(lg.cloudwatch_stream):
        fail("logging.cloudwatch_stream", "must be at most 500 characters without ':' or '*'")
    if lg.flush_timeout_s < 0:
        fail("logging.flush_timeout_s", f"must not be negative, got {lg.flush_timeout_s}")
    if lg.job_log_max_mb < 0:
        fail("logging.job_log_max_mb", f"must not be negative (0: no cap), got {lg.job_log_max_mb}")
    if lg.job_log_retention_days < 0:
        fail("logging.job_log_retention_days",
             f"must not be negative (0: keep for ever), got {lg.job_log_retention_days}")
    _check_instance(settings.instance, fail)
    _check_queue(settings, fail)


def _check_instance(inst: InstanceSettings, fail: Callable[[str, str], None]) -> None:
    # http.client speaks plain HTTP only, as IMDS does; a host is needed to connect at all.
    if not re.fullmatch(r"http://[^/?#\s]+/?", inst.imds_url):
        fail("instance.imds_url", f"must be an http:// URL of a host (and port), got {inst.imds_url!r}")
    # IMDS answers a limited number of requests per second per instance.
    if inst.poll_s < 1:
        fail("instance.poll_s", f"must be at least 1, got {inst.poll_s}")
    if len(inst.autoscaling_group) > 255 or inst.autoscaling_group != inst.autoscaling_group.strip():
        fail("instance.autoscaling_group", "must be at most 255 characters without surrounding blanks")


def _check_environment(p: ProcessingSettings, fail: Callable[[str, str], None]) -> None:
    """Names the command may be given: POSIX names, none the pipeline sets itself."""
    named = [("processing.pass_environment", name) for name in p.pass_environment]
    named += [("processing.environment", name) for name, _ in p.environment]
    for key, name in named:
        if not ENV_NAME_RE.fullmatch(name):
            fail(key, f"has {name!r}, which is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if name.startswith(ENV_PREFIX):
            fail(key, f"has {name!r}: PROCESSOR_* names are the command contract's, set by the pipeline")
        if name in PIPELINE_ENV_NAMES:
            fail(key, f"has {name!r}, which the pipeline sets for each job (its work dir)")
    for name, value in p.environment:
        if "\0" in value:
            fail("processing.environment", f"value of {name} contains a NUL byte")


def _check_queue(settings: Settings, fail: Callable[[str, str], None]) -> None:
    q = settings.queue
    for key, url in (("queue.url", q.url), ("queue.endpoint_url", q.endpoint_url),
                     ("queue.table_endpoint_url", q.table_endpoint_url),
                     ("queue.dead_letter_url", q.dead_letter_url)):
        if url and not url.startswith(("http://", "https://")):
            fail(key, f"must be empty or an http(s) URL, got {url!r}")
    if q.url and not q.table:
        fail("queue.table", "is required with queue.url: the fleet's job record table (DynamoDB)")
    if not 1 <= q.visibility_s <= SQS_MAX_INVISIBLE_S:
        fail("queue.visibility_s", f"must be 1..{SQS_MAX_INVISIBLE_S}, got {q.visibility_s}")
    if not 0 <= q.wait_s <= 20:
        fail("queue.wait_s", f"must be 0..20 (SQS long poll), got {q.wait_s}")
    p = settings.processing
    if q.url and p.timeout_s + p.kill_grace_s + QUEUE_TRANSFER_MARGIN_S >= SQS_MAX_INVISIBLE_S:
        fail("processing.timeout_s",
             f"is {p.timeout_s}: with a queue, timeout_s + kill_grace_s + {QUEUE_TRANSFER_MARGIN_S}s "
             f"(download/upload margin) must stay below SQS's 12 h visibility ceiling "
             f"({SQS_MAX_INVISIBLE_S}s), or a long job would be run twice")
