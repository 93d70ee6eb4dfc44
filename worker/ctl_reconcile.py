"""`processorctl reconcile`: the command-line side of worker.reconcile (imports boto3)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TextIO

from worker import exitcodes
from worker.config import Settings
from worker.control import wake
from worker.ctl import UsageError
from worker.errors import StorageError
from worker.job import Identity
from worker.ledger import Ledger
from worker.reconcile import Verdict, plan, result_sources
from worker.render import dump_json, printable
from worker.s3 import S3Store


def reconcile(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    bucket = args.input_bucket or settings.reconcile.input_bucket
    if not bucket:
        raise UsageError("--input-bucket is required (or set reconcile.input_bucket)")
    prefix = settings.reconcile.prefix if args.prefix is None else args.prefix
    older = settings.reconcile.older_than_s if args.older_than is None else args.older_than
    store = S3Store.from_settings(settings.s3)
    try:
        owns = _ownership(args, settings)
        results = result_sources(
            (o.key for o in store.list_objects(settings.s3.output_bucket, settings.s3.output_prefix)),
            settings.s3.output_prefix,
        )
        decisions = list(plan(store.list_objects(bucket, prefix), bucket=bucket, ledger=ledger,
                              with_results=results, now=time.time(), older_than_s=older,
                              owns=owns))
    except StorageError as exc:
        print(f"processorctl: cannot list the buckets: {exc}", file=sys.stderr)
        return exitcodes.FAILURE
    except FleetError as exc:
        print(f"processorctl: cannot find the fleet: {exc}", file=sys.stderr)
        return exitcodes.FAILURE
    submitted = []
    for decision in decisions:
        if decision.verdict is Verdict.SUBMIT:
            if not args.dry_run:
                job, _ = ledger.submit(decision.identity)
                submitted.append({"key": decision.listed.key, "job_id": job.id})
            else:
                submitted.append({"key": decision.listed.key, "job_id": decision.identity.job_id()})
    if submitted and not args.dry_run:
        wake(settings.paths.socket)
    counts = {v.value: sum(1 for d in decisions if d.verdict is v) for v in Verdict}
    if args.json:
        dump_json(out, {"bucket": bucket, "prefix": prefix, "dry_run": args.dry_run,
                    "listed": len(decisions), "counts": counts, "submitted": submitted})
        return exitcodes.OK
    verb = "would submit" if args.dry_run else "submitted"
    for item in submitted:
        print(f"{verb} {item['job_id']} s3://{bucket}/{printable(item['key'], 500)}", file=out)
    print(f"listed {len(decisions)} objects in s3://{bucket}/{prefix}: {verb} {len(submitted)}, "
          f"{counts['has_job']} with a job, {counts['has_result']} with a result, "
          f"{counts['too_new']} newer than {older:g}s", file=out)
    return exitcodes.OK


class FleetError(Exception):
    """The fleet's instances could not be discovered."""


def _ownership(args: argparse.Namespace, settings: Settings) -> Callable[[Identity], bool]:
    """Which objects are this instance's to reconcile: all, or in a fleet its rendezvous share."""
    tag_text = args.fleet_tag or settings.reconcile.fleet_tag
    if not tag_text:
        return lambda _identity: True
    from lambda_trigger.ssm import make_discovery_clients
    from lambda_trigger.targeting import (
        DiscoveryError,
        InstanceDirectory,
        parse_target_tag,
        rendezvous_order,
    )
    from worker.cloudwatch import instance_id

    try:
        tag = parse_target_tag(tag_text)
    except ValueError as exc:
        raise UsageError(f"--fleet-tag: {exc}") from None
    me = args.instance_id or settings.reconcile.instance_id or instance_id()
    if not me:
        raise UsageError("--instance-id is required off EC2 (no instance metadata service)")
    ec2, ssm = make_discovery_clients(settings.s3.region)
    directory = InstanceDirectory(ec2, ssm, tag, ttl_s=0)
    try:
        fleet = sorted(set(directory.instances()) | {me})
    except DiscoveryError as exc:
        raise FleetError(str(exc)) from exc
    return lambda identity: rendezvous_order(identity.framed(), fleet)[0] == me
