"""Code the worker and the Lambda share, stdlib only: in the wheel and in the Lambda's zip.

- ``layout``    the job id and where results land (``_manifest.json``, ``_failed.json``, ``_by-id/``)
- ``aws_edge``  one backoff, one reading of an AWS error, the Lambda's client settings
- ``lost``      which input objects are lost (no result, no job): the reconcile rule
"""
