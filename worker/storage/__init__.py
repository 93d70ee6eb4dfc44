"""The object store: what the pipeline needs from it, and S3 behind that.

- ``base``    the ``ObjectStore`` protocol, listing/metadata records, download verification
- ``s3``      the S3 adapter (the only boto3 user for S3; errors become ``StorageError``)

Where a job's outcome lands in the output bucket is processor_shared.layout (shared
with the Lambda). Nothing here imports the pipeline, the daemon or the ledger.
"""
