"""processor: the worker daemon and processorctl.

The packages, from the top down as work flows (docs/ARCHITECTURE.md tells the whole story;
tests/unit/test_layering.py::FLOORS holds them to it: nothing imports a package above it):

- ``cli``        the ``processor`` console script: ``run`` (the daemon; signals mapped onto its
                 lifecycle), ``check`` and ``local``
- ``local/``     ``processor local``: the whole pipeline over an embedded emulator
- ``ctl/``       processorctl: submit, list, show, status, cancel, retry, fleet, dlq, reconcile
- ``daemon/``    the lifecycle (start, drain, stop), the slots, recovery, status, the control socket
- ``fleet/``     the shared SQS work queue, the fleet's job record (DynamoDB), the instance guard
- ``runner/``    one attempt of a job: download -> the processing command -> upload -> record
- ``telemetry/`` logs (file, journald, CloudWatch), metrics, sd_notify
- ``state/``     the state volume: the SQLite ledger, the state-dir lock, its directories
- ``storage/``   the object store protocol and S3
- ``aws/``       the retry budget of every AWS client, botocore's errors, IMDSv2
- ``jobs/``      the job model: identity, states, a job, the outcome policy, activity
- ``config/``    Settings: the TOML file plus ``PROCESSOR_*`` overrides, validated once
- ``errors``     the exception tree, drawn; ``exitcodes``: the exit statuses
- ``examples/``  the example processing command (stdlib only, runs as the daemon's child)

Shared with the Lambda, stdlib only: ``processor_shared`` (layout and job id, backoff, the
reconcile rule).
"""

__version__ = "0.1.0"
