"""Command-line flags of `processor local` (stdlib only: parsed before moto is imported)."""

from __future__ import annotations

import argparse

#: Where `processor local` keeps its ledger, work files and logs by default.
DEFAULT_STATE_DIR = ".processor-local"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=4566,
                        help="loopback port of the embedded S3/SQS/SSM emulator (default 4566)")
    parser.add_argument("--input-bucket", default="processor-input")
    parser.add_argument("--output-bucket", default="processor-output")
    parser.add_argument("--command", default=None,
                        help="processing command, split like a shell would and run without one "
                        "(default: the bundled summariser); must contain {input}")
    parser.add_argument("--once", action="store_true",
                        help="process the bundled sample files, print the results and exit "
                        "(non-zero if any job failed)")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                        help=f"ledger, work files and logs (default ./{DEFAULT_STATE_DIR}; "
                        "reset at every start, since the emulator starts empty)")
    parser.add_argument("--instances", type=int, default=1,
                        help="run a fleet of N instances (a daemon and an SSM agent each) pulling from "
                        "one SQS work queue that the Lambda feeds (default 1: the Lambda sends "
                        "SendCommand to the one instance)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="with --once: give up waiting for results after this many seconds")
