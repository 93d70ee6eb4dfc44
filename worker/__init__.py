"""processor: the worker daemon and processorctl.

Where each concern lives (docs/ARCHITECTURE.md tells the whole story):

- ``cli``             the ``processor`` console script: ``run`` (the daemon) and ``local``
- ``daemon``          the lifecycle: recover, serve, dispatch jobs to slots, drain, exit
- ``pipeline``        one job: download -> run the processing command -> upload -> record
- ``process``         the command as a child process: own process group, log file, timeout
- ``command_env``     the command's environment; ``space``: room on the state volume for its input
- ``job``             a job (one ledger row); ``states`` its states and transition table;
                      ``identity`` what makes two deliveries one job, and its id
- ``ledger``          the SQLite ledger (``ledger_schema``: tables and rows; ``ledger_queue``:
                      work-queue jobs)
- ``config``          Settings: the TOML file plus ``PROCESSOR_*`` overrides, validated once
- ``errors``          the exception tree, drawn; ``exitcodes``: the exit statuses
- ``statelock``       one daemon per state dir
- ``control_server``  the daemon's control socket (its client is ``ctl.control_client``)
- ``reconcile``       which input objects are lost (``processorctl reconcile`` submits them)
- ``ctl/``            processorctl;  ``storage/``: the object store and S3;  ``telemetry/``: logs,
                      metrics, systemd;  ``fleet/``: the shared SQS work queue;  ``local/``:
                      ``processor local``;  ``examples/``: the example processing command
"""

__version__ = "0.1.0"
