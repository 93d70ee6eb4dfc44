"""The processing command's environment.

The command never inherits the daemon's environment, which may hold AWS
credentials and endpoints. It gets, in this order (a later step wins):

1. defaults: ``PATH`` and ``LANG`` from the daemon (else a standard PATH, ``C.UTF-8``);
2. ``processing.pass_environment``: each listed name the daemon has, copied
   (a name the daemon lacks stays unset, as with systemd's ``PassEnvironment=``);
3. ``processing.environment``: NAME = "value" as configured (may override PATH, LANG);
4. per job: ``HOME`` and ``TMPDIR`` (the job's work dir) and the contract's
   ``PROCESSOR_*`` variables, last, so no configuration can change them
   (config.py refuses those names anyway).

The daemon's environment is read once, when the pipeline is built in
``main()``, never per job.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from worker.config.settings import ProcessingSettings
from worker.jobs.identity import encode_key_base64
from worker.jobs.job import Job

#: PATH for the command when the daemon itself has none.
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

#: LANG for the command when the daemon itself has none.
DEFAULT_LANG = "C.UTF-8"


def base_environment(processing: ProcessingSettings, daemon_env: Mapping[str, str]) -> dict[str, str]:
    """Steps 1-3: what every job's command gets, computed once at start."""
    env = {
        "PATH": daemon_env.get("PATH", DEFAULT_PATH),
        "LANG": daemon_env.get("LANG", DEFAULT_LANG),
    }
    for name in processing.pass_environment:
        if name in daemon_env:
            env[name] = daemon_env[name]
    env.update(processing.environment)
    return env


def job_environment(base: Mapping[str, str], job: Job, work: Path) -> dict[str, str]:
    """Step 4: ``base`` plus the job's own variables, which nothing may override."""
    env = dict(base)
    env.update({
        "HOME": str(work),
        "TMPDIR": str(work / "tmp"),
        "PROCESSOR_JOB_ID": job.id,
        "PROCESSOR_INPUT": str(work / "input"),
        "PROCESSOR_OUTPUT_DIR": str(work / "output"),
        "PROCESSOR_SOURCE_BUCKET": job.bucket,
        # An environment variable cannot hold a NUL byte, which an S3 key may: such a
        # key shows U+FFFD in its place here, and the _BASE64 form is always exact.
        "PROCESSOR_SOURCE_KEY": job.key.replace("\0", "\ufffd"),
        "PROCESSOR_SOURCE_KEY_BASE64": encode_key_base64(job.key),
        "PROCESSOR_ATTEMPT": str(job.attempts),
    })
    if job.version_id:
        env["PROCESSOR_SOURCE_VERSION_ID"] = job.version_id
    if job.etag:
        env["PROCESSOR_SOURCE_ETAG"] = job.etag
    return env

