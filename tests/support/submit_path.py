"""What ``processorctl submit`` must not load: one list for the import-graph test and the real run."""

from __future__ import annotations

#: It starts once per S3 object (bench goal: at most 3x ``python -c pass``): the AWS SDK and
#: the daemon's libraries take seconds; the stdlib ones cost milliseconds each (dataclasses
#: pulls in inspect; shutil pulls in zlib, bz2 and lzma). tests/unit/test_layering.py checks
#: the import graph; tests/unit/ctl/test_ctl.py runs the real submit and lists what it loaded,
#: which also sees imports the stdlib makes on its own.
SUBMIT_MUST_NOT_IMPORT = frozenset({
    "boto3", "botocore", "s3transfer", "moto", "structlog", "tenacity", "watchtower", "systemd",
    "dataclasses", "inspect", "socketserver", "shutil",
    "worker.jobs.job", "worker.daemon.control", "worker.ctl.commands", "worker.runner.pipeline",
    "worker.daemon.lifecycle", "worker.storage.s3",
})
