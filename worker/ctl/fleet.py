"""`processorctl`'s fleet-wide answers, from the fleet's job record table and the work queue.

- ``show s3://bucket/key`` (or a job id) with a ``[queue] table``: the job's
  fleet record: never seen, queued, waiting (why, until when), running (which
  instance, since when, attempt), succeeded (results, duration), failed
  (reason, where ``_failed.json`` is).
- ``fleet``: the queue (visible, in flight, delayed, dead letters), the
  paused daemons, and the running jobs per instance.
- ``list --fleet``: records by state and time (a Query on the ``by-state`` index).
- ``dlq list`` / ``dlq redrive``: the dead-letter queue with reasons, and
  moving it back (the jobs' failed records are reset so they run again).

Imported only for these commands: it needs boto3 (worker.fleet.dynamo, worker.fleet.sqs).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any, TextIO

from worker import exitcodes
from worker.config.settings import Settings
from worker.ctl.jobs import split_s3_url
from worker.ctl.render import dump_json, printable, table, when
from worker.errors import JobNotFound, UsageError
from worker.fleet.record import FleetJob, FleetState, RecordConflict, running_by_holder
from worker.fleet.workqueue import MalformedMessage, parse_message
from worker.state.ledger import Ledger

#: The fleet states ``list --fleet`` reads when no --state is given.
ALL_STATES = tuple(FleetState)

#: Running jobs listed one per line by ``processorctl fleet`` (the rest are counted).
MAX_JOB_LINES = 6


def _records(settings: Settings) -> Any:
    if not settings.queue.table:
        raise UsageError("fleet-wide answers need [queue] table (the fleet's job record table)")
    from worker.fleet.dynamo import DynamoRecords

    return DynamoRecords.from_settings(settings)


def _queue(settings: Settings) -> Any:
    from worker.fleet.sqs import SQSQueue

    return SQSQueue.from_settings(settings)


def record_dict(record: FleetJob, now: float) -> dict[str, Any]:
    shown = {k: (v.value if isinstance(v, FleetState) else v) for k, v in asdict(record).items()}
    shown.pop("token", None)
    shown["object"] = record.object_url
    shown["summary"] = summary(record, now)
    return shown


def summary(record: FleetJob, now: float) -> str:
    """One line, for people: the state and what it means now."""
    state = record.state
    if state is FleetState.RUNNING:
        lease = ("lease live" if record.lease_until > now
                 else f"lease ran out {when(record.lease_until)}: holder presumed dead")
        return (f"running on {record.holder} since {when(record.started_at or record.updated_at)}, "
                f"attempt {record.attempts} ({record.counted_attempts} counted; {lease})")
    if state is FleetState.WAITING:
        until = when(record.waiting_until) if record.waiting_until else "?"
        return f"waiting until {until}: {record.error or 'handed back'}"
    if state is FleetState.QUEUED:
        return f"queued (handed back {when(record.updated_at)}): {record.error or 'waiting for a daemon'}"
    if state is FleetState.SUCCEEDED:
        took = f" in {record.duration_s:.1f}s" if record.duration_s is not None else ""
        return f"succeeded {when(record.finished_at or record.updated_at)}{took}; results at {record.result}"
    if state is FleetState.FAILED:
        return (f"failed {when(record.finished_at or record.updated_at)}: {record.error}; "
                f"_failed.json at {record.result or '(not written)'}")
    return f"cancelled {when(record.updated_at)}: {record.error or ''}"


def show(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    """``show s3://bucket/key`` or ``show JOB --fleet``: the fleet record(s)."""
    records = _records(settings)
    now = time.time()
    try:
        target = args.job_id
        if target.startswith("s3://"):
            bucket, key = split_s3_url(target, option="JOB")
            if not key:
                raise UsageError(f"{target!r}: expected s3://BUCKET/KEY")
            found = records.newest_for_object(bucket, key, limit=None if args.all_versions else 1)
            if not found:
                raise JobNotFound(f"{target}: never seen by the fleet (no job record; "
                                  "a message may still wait in the work queue: processorctl fleet)")
        else:
            one = records.get(target)
            if one is None:
                raise JobNotFound(f"no job with id {target!r} in the fleet's record {settings.queue.table}")
            found = [one]
    finally:
        records.close()
    if args.json:
        shown = [record_dict(r, now) for r in found]
        dump_json(out, shown if getattr(args, "all_versions", False) else shown[0])
        return exitcodes.OK
    for record in found:
        print(f"job:       {record.job_id}", file=out)
        print(f"object:    {printable(record.object_url, 300)}"
              f"  (version {record.version_id or '-'}, etag {record.etag or '-'})", file=out)
        print(f"state:     {record.state.value}", file=out)
        print(f"now:       {printable(summary(record, now), 500)}", file=out)
        print(f"attempts:  {record.attempts} started, {record.counted_attempts} counted", file=out)
        print(f"created:   {when(record.created_at)}   updated: {when(record.updated_at)}", file=out)
        if record.error and record.state is not FleetState.FAILED:
            print(f"last error: {printable(record.error, 500)}", file=out)
    return exitcodes.OK


def list_fleet(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    """``list --fleet [--state S[,S]] [--since T] [--until T] [--key P] [--limit N|--all]``:
    newest first, a Query on the ``by-state`` index per state (times are the records' last update)."""
    from worker.ctl.jobs import DEFAULT_LIMIT, parse_time

    now = time.time()
    states = _states(args.state)
    since = parse_time(args.since, option="--since", now=now) if args.since else None
    until = parse_time(args.until, option="--until", now=now) if args.until else None
    bucket, prefix = None, args.key or ""
    if prefix.startswith("s3://"):
        bucket, prefix = split_s3_url(prefix, option="--key")
    limit = None if args.all else (args.limit or DEFAULT_LIMIT)
    records = _records(settings)
    try:
        found: list[FleetJob] = []
        for state in states:
            # The key filter is applied to what the index returns: read them all then.
            each = records.in_state(state, since=since, until=until,
                                    limit=None if (prefix or bucket) else limit)
            found += [r for r in each if r.key.startswith(prefix) and bucket in (None, r.bucket)]
    finally:
        records.close()
    found.sort(key=lambda r: r.updated_at, reverse=True)
    total = len(found)
    if limit is not None:
        found = found[:limit]
    if args.json:
        dump_json(out, [record_dict(r, now) for r in found])
    else:
        rows = [("JOB", "STATE", "HOLDER", "ATTEMPTS", "UPDATED", "KEY", "ERROR")]
        rows += [(r.job_id, r.state.value, r.holder or "-", f"{r.attempts}/{r.counted_attempts}",
                  when(r.updated_at), printable(r.key, 60),
                  printable((r.error or "").split("\n")[0], 60)) for r in found]
        table(out, rows)
    if total > len(found):
        print(f"processorctl: showing the {len(found)} newest of {total} or more matching jobs; "
              "--limit N or --all for more", file=sys.stderr)
    return exitcodes.OK


def _states(value: str | None) -> Sequence[FleetState]:
    if not value:
        return ALL_STATES
    try:
        return [FleetState(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--state {value!r}: use {', '.join(s.value for s in FleetState)}") from None


def fleet(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    """``fleet``: the queue's depths and the running jobs per instance."""
    if not settings.queue.url:
        raise UsageError("processorctl fleet needs [queue] url (this instance is not in a fleet)")
    queue, records = _queue(settings), _records(settings)
    try:
        depths: dict[str, Any] = {**queue.depths(), "oldest_age_s": queue.oldest_age()}
        running = records.in_state(FleetState.RUNNING)
        waiting = records.in_state(FleetState.WAITING)
        failed_1h = records.in_state(FleetState.FAILED, since=time.time() - 3600)
    finally:
        queue.close()
        records.close()
    now = time.time()
    by_holder = running_by_holder(running)
    doc = {
        "queue": {"url": settings.queue.url, **depths},
        "running": {holder: [record_dict(r, now) for r in jobs] for holder, jobs in by_holder.items()},
        "waiting": len(waiting), "failed_last_hour": len(failed_1h),
        "stale_leases": [r.job_id for r in running if r.lease_until <= now],
    }
    if args.json:
        dump_json(out, doc)
        return exitcodes.OK
    dl = depths["dead_letters"]
    age = depths["oldest_age_s"]
    print(f"queue: {depths['visible']} visible, {depths['in_flight']} in flight, "
          f"{depths['delayed']} delayed; dead letters: {'-' if dl is None else dl}; oldest message: "
          f"{'unknown' if age is None else f'{age:.0f}s'}", file=out)
    print(f"jobs: {len(running)} running on {len(by_holder)} instance(s), {len(waiting)} waiting, "
          f"{len(failed_1h)} failed in the last hour", file=out)
    # Bounded, so it fits in the SSM console's 2,500 characters with the status after it.
    shown = 0
    for holder, jobs in by_holder.items():
        print(f"{holder}: {len(jobs)} running", file=out)
        for r in jobs[:max(0, MAX_JOB_LINES - shown)]:
            stale = "" if r.lease_until > now else "  LEASE RAN OUT"
            print(f"  {r.job_id}  attempt {r.attempts}  since {when(r.started_at or r.updated_at)}  "
                  f"{printable(r.key, 40)}{stale}", file=out)
            shown += 1
    if len(running) > shown:
        print(f"  ... {len(running) - shown} more running job(s): processorctl fleet --json", file=out)
    return exitcodes.OK


def dlq(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    """``dlq list`` (reasons) / ``dlq redrive`` (back to the work queue, records reset)."""
    if not settings.queue.url:
        raise UsageError("processorctl dlq needs [queue] url")
    queue = _queue(settings)
    try:
        if args.dlq_command == "list":
            letters = queue.dead_letters(limit=args.limit)
            if args.json:
                dump_json(out, letters)
                return exitcodes.OK
            rows = [("MESSAGE", "JOB", "REASON", "BODY")]
            rows += [(m["message_id"], m["job_id"] or "-", printable(m["reason"], 80),
                      printable(m["body"], 80)) for m in letters]
            table(out, rows)
            return exitcodes.OK
        reset = _reset_failed(settings, queue.dead_letters(limit=10_000)) if settings.queue.table else 0
        moved = queue.redrive(limit=args.limit)
    finally:
        queue.close()
    if args.json:
        dump_json(out, {"moved": moved, "records_reset": reset})
    else:
        print(f"moved {moved} message(s) back to the work queue; {reset} failed job record(s) "
              "reset to queued (they run again, with their counted attempts cleared)", file=out)
    return exitcodes.OK


def _reset_failed(settings: Settings, letters: list[dict[str, str]]) -> int:
    """Failed records of the dead letters' jobs back to queued, so their messages run again."""
    records = _records(settings)
    reset = 0
    try:
        for letter in letters:
            try:
                identity = parse_message(letter["body"])
            except MalformedMessage:
                continue  # a malformed message has no record to reset
            record = records.get(identity.job_id())
            if record is None or record.state is not FleetState.FAILED:
                continue
            again = replace(record, state=FleetState.QUEUED, counted_attempts=0, finished_at=None,
                            updated_at=time.time(), error=f"redriven by an operator after: {record.error}")
            try:
                records.put(again, expected_rev=record.rev)
                reset += 1
            except RecordConflict:
                continue
    finally:
        records.close()
    return reset
