"""A fleet: many daemons pulling from one shared SQS work queue (ARCHITECTURE §7).

- ``workqueue``    messages, their parsing and the queue protocol the daemon sees (pure)
- ``sqs``          that protocol on SQS (the only boto3 user for SQS)
- ``consumer``     pulls messages into free slots, extends leases, deletes on a durable outcome
- ``slots``        the daemon's side: queue slots and the ``InstanceGuard`` protocol
- ``instance``     the instance guard: Spot notice, lifecycle watch, scale-in protection
- ``autoscaling``  the Auto Scaling calls the guard makes (boto3)
"""
