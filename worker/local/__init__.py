"""`processor local`: the whole pipeline on one machine against an embedded emulator.

Modules: ``options`` (the CLI flags, stdlib only), ``stack`` (wiring and the
run loop), ``emulator`` (moto server on loopback and the AWS resources),
``pump`` (S3 events from SQS into the real Lambda handler), ``agent`` (the
local stand-in for the SSM agent, with ``params`` for parameter validation and
step rendering and ``patterns`` for allowedPattern matching as the Go agent
does it) and ``cfn`` (reads the SSM documents out of
the CloudFormation template, so local and AWS run the same content).
"""
