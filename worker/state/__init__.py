"""The state volume: the ledger (SQLite) and what guards the directory it lives in.

- ``ledger``     ``Ledger``: submit, claim, transition, retry, crash requeue, progress
- ``queue``      the queue side of the ledger: a queue message's claim, hand-backs at start
- ``queries``    the read side: get, find, list, counts, history
- ``schema``     tables, migrations, rows <-> ``Job``; the one checked state write
- ``statelock``  one daemon per state dir (``flock``)
- ``dirs``       state-volume directories, mode 0750 (stdlib only)
"""
