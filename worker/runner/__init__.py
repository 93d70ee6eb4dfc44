"""Running one job: download -> the processing command -> upload -> record.

- ``pipeline``       ``Pipeline``: one attempt of a job, end to end
- ``recorder``       writes the move the outcome policy picks, ``_failed.json``, the outcome's log line
- ``process``        the command's child process: no shell, own session, timeout, cancel, sweep
- ``cgroup``         one delegated cgroup v2 group per job (limits, kill, accounting)
- ``command_env``    the command's clean environment
- ``command_check``  the configured program exists and is executable
- ``outputs``        outputs read safely (no links followed), hashed and uploaded from the descriptor
- ``joblog``         a job's capped log file and its retention
- ``space``          room for an input on the volume: now, later or never
"""
