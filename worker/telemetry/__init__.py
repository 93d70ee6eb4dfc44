"""What the daemon tells the outside world about itself: logs, metrics and systemd.

- ``logsetup``    structlog set-up: one JSON event per line to every configured sink
- ``journal``     the journald sink (systemd-python's ``systemd.journal`` where installed)
- ``cloudwatch``  the CloudWatch Logs sink (watchtower), a stream per instance
- ``metrics``     CloudWatch Embedded Metric Format documents, one per finished job
- ``systemd``     sd_notify (READY, STATUS, STOPPING, WATCHDOG) and the backend choice
"""
