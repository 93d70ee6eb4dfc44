"""The S3-event Lambda: each uploaded object becomes a job for the worker.

- ``handler``     the entry point, ``lambda_handler(event, context)``: glue only
- ``config``      its environment, read per invocation and validated up front
- ``events``      S3 event notification -> job requests (pure; decodes keys once)
- ``ssm``         SendCommand of the submit document to one instance
- ``sqs``         messages to a fleet's shared work queue
- ``reconciler``  the reconcile mode: re-queue lost objects (``s3`` lists the bucket)
- ``loglines``    its log lines, one JSON object each

The deployment package holds this package and ``processor_shared`` (stdlib only, shared
with the worker: job ids and the result layout, the decision "is this object lost?",
the backoff, the reading of an AWS error, the clients' retries and timeouts), so nothing
here imports ``worker`` (tests/unit/test_layering.py checks it); boto3 comes from the
Lambda runtime.
"""
