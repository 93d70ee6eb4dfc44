"""The job model: what a job is, the states it moves through and the one outcome policy (pure, no I/O).

- ``states``    ``JobState``, ``Phase``, the transition table (stdlib only: submit loads it)
- ``identity``  ``Identity`` (bucket, key, version) and its job id (stdlib only)
- ``job``       ``Job``: a frozen snapshot of one ledger row
- ``outcome``   how an attempt ended (``Attempt``) and where it goes next (``decide`` -> ``Move``)
- ``activity``  what a job is doing now, in numbers and words (show, status, ``STATUS=``)
"""
