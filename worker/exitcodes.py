"""Exit statuses of `processor` and `processorctl` (documented in the README).

Stdlib only: processorctl imports this and must start fast.
"""

from __future__ import annotations

#: Success.
OK = 0
#: A runtime failure: the daemon crashed, a local run had failed jobs.
FAILURE = 1
#: Bad usage or invalid configuration (the message names the key or option).
USAGE = 2
#: No job with that id (or that object).
NOT_FOUND = 3
#: `processorctl status`: the daemon is not running (not reachable on its
#: socket), like `systemctl is-active`'s 3; the ledger's counts are still printed.
DAEMON_NOT_RUNNING = 3
#: The ledger could not be opened or written; nothing was recorded.
LEDGER_UNAVAILABLE = 4
#: The operation needs the running daemon and it is not reachable.
DAEMON_UNAVAILABLE = 5
#: Another daemon already holds the state dir's lock (`processor run`); nothing was touched.
STATE_DIR_LOCKED = 6
#: `processor run` stopped before its running jobs finished (the drain timeout
#: or a second stop signal): they were stopped and left queued for the next start.
INTERRUPTED = 7
#: `processor run` / `processor check`: processing.command's executable is
#: missing or not executable; the daemon refuses to start instead of failing every job.
COMMAND_UNUSABLE = 8
