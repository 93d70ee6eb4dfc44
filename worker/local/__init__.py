"""`processor local`: the whole pipeline on one machine against an embedded emulator.

- ``options``   the command-line flags (stdlib only: parsed before moto is imported)
- ``stack``     wires the stack together and runs it (``--once``, ``--instances N``)
- ``statedir``  claims the state dir (lock, port) before resetting it
- ``interrupts`` Ctrl-C: the first drains, a second forces; what was left
- ``systemctl`` the agent's ``systemctl`` stand-in (the DrainDocument's ``stop processor``)
- ``emulator``  the moto server on loopback and the AWS resources in it (boto3)
- ``node``      one instance of the local fleet: its config, daemon and SSM agent
- ``pump``      S3 events from SQS into the real Lambda handler, as Lambda would
- ``ssmfront``  the emulator's SSM API, made to behave like the service where moto does not
- ``agent``     the local stand-in for the SSM agent, running our documents' steps
- ``params``    a command's parameters: checked against its document, delivered to its steps
- ``patterns``  ``allowedPattern`` matched as the Go agent (RE2) matches it
- ``cfn``       the SSM documents read out of the CloudFormation template, so local
                and AWS run the same content
"""
