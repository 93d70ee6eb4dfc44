"""`processorctl reconcile`: the command-line side of worker.ctl.lost (imports boto3).

One global pass: lost objects go into this instance's ledger. In a fleet the
Lambda's reconcile mode (on a schedule) sends them to the shared queue
instead; an instance role may not send to the queue, and running both is
harmless (the daemon checks for an existing manifest before running a job).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from processor_shared.lost import Verdict
from worker import exitcodes
from worker.config.settings import Settings
from worker.ctl.control_client import wake
from worker.ctl.lost import identity_of, plan, result_index
from worker.ctl.render import dump_json, printable
from worker.errors import StorageError, UsageError
from worker.state.ledger import Ledger
from worker.storage.s3 import S3Store


def reconcile(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    bucket = args.input_bucket or settings.reconcile.input_bucket
    if not bucket:
        raise UsageError("--input-bucket is required (or set reconcile.input_bucket)")
    prefix = settings.reconcile.prefix if args.prefix is None else args.prefix
    older = settings.reconcile.older_than_s if args.older_than is None else args.older_than
    store = S3Store.from_settings(settings.s3)
    try:
        results = result_index(
            (o.key for o in store.list_objects(settings.s3.output_bucket, settings.s3.output_prefix)),
            settings.s3.output_prefix,
        )
        decisions = list(plan(store.list_objects(bucket, prefix), bucket=bucket, ledger=ledger,
                              results=results, now=time.time(), older_than_s=older))
    except StorageError as exc:
        print(f"processorctl: cannot list the buckets: {exc}", file=sys.stderr)
        return exitcodes.FAILURE
    submitted = []
    for decision in decisions:
        if decision.verdict is Verdict.SUBMIT:
            if not args.dry_run:
                job, _ = ledger.submit(identity_of(bucket, decision.listed))
                submitted.append({"key": decision.listed.key, "job_id": job.id})
            else:
                submitted.append({"key": decision.listed.key, "job_id": decision.job_id})
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
