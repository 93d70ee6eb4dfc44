"""The daemon: its lifecycle, its slots, start-up recovery, status and the control socket.

- ``lifecycle``  ``Daemon``: start / drain / stop / wait, the event-driven main loop
- ``slots``      the slot table the daemon and the queue consumer share
- ``status``     systemd's ``STATUS=`` line and the daemon's ``status()``
- ``control``    the control API on a Unix socket and its handlers
- ``recovery``   start-up recovery: orphans killed, interrupted jobs requeued or handed back
- ``signals``    signals to a queue the CLI's loop reads (self-pipe)
"""
