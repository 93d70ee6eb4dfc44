"""Helpers shared by the test modules; test modules import from here, never from each other.

Fixtures stay in the conftest.py files (which import from here). One module per kind of helper:

    waiting           wait_until: liveness-bounded waits (no progress for stall_s), cpu_seconds
    paths             REPO, the repository root
    report            REPORT: facts printed at the end of the run (tests/conftest.py prints them)
    emulator          CREDENTIALS for the moto server on loopback; with_buckets
    daemon            the real daemon and processorctl as child processes; config files; submit; wait_state
    daemon_thread     the daemon in a thread of the test process, with a fake pipeline
    local             `processor local` as a child process (the whole stack)
    probes            the daemon's pid and memory, the ledger's integrity, S3 listings
    pipeline          a Pipeline on a fake store and a real ledger, and processing commands for it
    escapees          commands whose children leave their process group; is a PID still alive
    fakes             in-memory ObjectStore, WorkQueue and disk usage
    trigger           the Lambda trigger's SSM mode: its environment and an in-memory SSM client
    events            the canonical S3 event payloads under tests/fixtures/events/ and their expectations
    servers           loopback HTTP stubs: a recorder, IMDSv2, a black hole, a dead endpoint
    faultproxy        a fault-injecting HTTP proxy in front of the emulator
    template          the CloudFormation template as CloudFormation evaluates it in one mode
    tools             the static gates' tools (mypy, ruff, cfn-lint, checkov, ...): skip, fail under CI=true
    systemd_backends  choosing the sd_notify/journald backend (fail, not skip, under CI=true)
    journal_scenarios what the journald tests log, in the test process or in a child
    logstate          restoring the process-wide logging set-up after a test
    nspawn            a throw-away systemd machine (systemd-nspawn) for tests/system
    submit_path       what `processorctl submit` must not import (the graph test and the real run)
"""
