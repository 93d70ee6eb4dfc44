"""`processorctl`, the operators' command line (console script ``worker.ctl.cli:main``).

- ``cli``             the parser, ``submit`` (stdlib only: it starts in milliseconds) and dispatch
- ``commands``        list, show, status, cancel, retry (one job or bulk), logs
- ``jobs``            where list and show find jobs: the query, the ``JobSource`` (this ledger; a
                      fleet-wide record can be another), id prefixes and ``s3://`` look-ups
- ``reconcile``       ``processorctl reconcile`` (imports boto3)
- ``fleet``           ``show s3://…``/``--fleet``, ``fleet``, ``list --fleet``, ``dlq`` (imports boto3)
- ``render``          tables and JSON for people and machines
- ``control_client``  the client half of the daemon's control socket (server: worker.daemon.control)

"ctl" always means this command line; "control" means the daemon's Unix-socket API.
"""
