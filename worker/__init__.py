"""processor: the worker daemon and processorctl.

Where each concern lives (docs/ARCHITECTURE.md tells the whole story):

- ``cli``             the ``processor`` console script: ``run`` (the daemon; signals mapped onto
                      its lifecycle), ``check`` and ``local``; ``signals``: handlers that only
                      enqueue; ``command_check``: is processing.command runnable
- ``daemon``          the lifecycle API: start (recover, then serve), dispatch jobs to slots,
                      drain, stop, wait; ``slots``: the slot table, its reservations and
                      threads (local jobs and the work queue's); ``recovery``: start-up
                      recovery; ``daemon_status``: STATUS line, ``status()``
- ``pipeline``        one attempt: download -> run the processing command -> upload
- ``outcome``         how an attempt ended and the one policy (``decide``) for the job's next
                      move; ``recorder``: writes that move to the ledger, ``_failed.json``
- ``process``         the command as a child process: own process group, timeout, the sweep of
                      its leftovers, CPU/memory used; ``cgroup``: a cgroup per job under
                      systemd; ``joblog``: its bounded log file;
                      ``outputs``: its output files read safely
- ``command_env``     the command's environment; ``space``: room on the state volume for its input
- ``job``             a job (one ledger row); ``states`` its states and transition table;
                      ``activity`` what it is doing now, in numbers and words;
                      ``identity`` what makes two deliveries one job, and its id
- ``ledger``          the SQLite ledger (``ledger_queries``: its read side, the base class;
                      ``ledger_schema``: tables, rows, the one checked state write, a write
                      transaction's operations; ``ledger_queue``: work-queue jobs, holding a Ledger)
- ``config``          Settings: the TOML file plus ``PROCESSOR_*`` overrides, validated once
                      (``config_values``: one value's coercion, the overrides)
- ``errors``          the exception tree, drawn; ``exitcodes``: the exit statuses
- ``statelock``       one daemon per state dir; ``dirs``: state-volume directories, mode 0750
- ``control_server``  the daemon's control socket (its client is ``ctl.control_client``);
                      ``control_handlers``: the daemon's ops on it
- ``retry``           the retry budget of every AWS client; ``imds``: the one IMDSv2 client
- ``aws_errors``      how the adapters read botocore's errors and turn them into ours (``translated``);
                      the backoff and the error reader they share with the Lambda: ``lambda_trigger.aws_edge``
- ``reconcile``       which input objects are lost (``processorctl reconcile`` submits them)
- ``ctl/``            processorctl;  ``storage/``: the object store and S3;  ``telemetry/``: logs,
                      metrics, systemd;  ``fleet/``: the shared SQS work queue;  ``local/``:
                      ``processor local``;  ``examples/``: the example processing command
"""

__version__ = "0.1.0"
