"""The reconcile plan on an instance: which input objects are lost (no job here, no result).

One global pass, no ownership: every instance that runs it may submit any
lost object into its own ledger, and the Lambda's reconcile mode sends the
same objects to a fleet's queue. Overlap is harmless: the daemon checks the
output bucket for a manifest of the same identity before running a job.

The decision itself (too new, folder marker, result at either result
location) is processor_shared.lost.plan, shared with the Lambda; this
module adds the ledger check (an object with a job here is left to it).
``processorctl reconcile`` (worker.ctl.reconcile) lists the buckets and
submits what this plan calls lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from processor_shared.lost import Decision, Results, index_results
from processor_shared.lost import Listed as ListedObject
from processor_shared.lost import plan as plan_objects
from worker.jobs.identity import Identity
from worker.state.ledger import Ledger
from worker.storage.base import Listed

__all__ = ["identity_of", "plan", "result_index"]


def identity_of(bucket: str, listed: ListedObject) -> Identity:
    return Identity(bucket, listed.key, listed.version_id, listed.etag)


def result_index(result_keys: Iterable[str], output_prefix: str) -> Results:
    """Which objects have a manifest or a failure record, from an output-bucket listing."""
    return index_results(result_keys, output_prefix)


def plan(
    objects: Iterable[Listed], *, bucket: str, ledger: Ledger, results: Results,
    now: float, older_than_s: float,
) -> Iterator[Decision]:
    """Judge every listed object (pure apart from ledger reads)."""
    return plan_objects(
        objects, bucket=bucket, results=results, now=now, older_than_s=older_than_s,
        has_job=lambda listed: ledger.find(identity_of(bucket, listed)) is not None,
    )
