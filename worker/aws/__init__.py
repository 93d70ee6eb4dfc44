"""The daemon's AWS edge: the retry budget of every client, botocore's errors, instance metadata.

- ``retry``   the retry budget: every client's tries and timeouts, tenacity's policy
- ``errors``  botocore's errors read once, for every adapter; the translation wrapper
- ``imds``    instance metadata over IMDSv2
"""
