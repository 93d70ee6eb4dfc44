"""A fleet: many daemons pulling from one shared SQS work queue (ARCHITECTURE §7).

- ``workqueue``    messages, their parsing and the queue protocol the daemon sees (pure)
- ``sqs``          that protocol on SQS (the only boto3 user for SQS)
- ``consumer``     pulls messages into free slots, claims, runs, extends leases
- ``settle``       how a held message ends, from the move its attempt recorded (on a durable outcome)
- ``record``       the fleet's job record and the claim rule (pure)
- ``claims``       claims on the records: read, plan, conditional write, renew, settle
- ``dynamo``       the records on DynamoDB (the only boto3 user for DynamoDB)
- ``messages``     delete, hand back (a fresh message), dead-letter, release
- ``results``      what the output bucket already says: a manifest of this version, a failure record
- ``breaker``      pause receiving while storage is down
- ``instance``     the instance guard: Spot notice, lifecycle watch, scale-in protection
- ``autoscaling``  the Auto Scaling calls the guard makes (boto3)
"""
