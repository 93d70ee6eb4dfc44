"""Per-job overhead: the daemon draining N queued jobs against a bare boto3 loop.

A = the daemon (``processor run``, concurrency c) draining N jobs queued in
its ledger before it started: from the first job's claim (ledger
``started_at``) to the last job's end (ledger ``finished_at``, written after
its manifest is in the bucket).
B = ``bench.bare`` with c threads doing download -> command -> upload ->
manifest put for the same N objects: from the first download's start to the
last manifest's end.

Both run the same command (``/bin/cp {input} {output_dir}``) against the same
moto server, one after the other, for each concurrency of the sweep.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    ENV,
    INPUT_BUCKET,
    PYTHON,
    REPO,
    Daemon,
    finished_count,
    read_ledger,
    wait_for,
    write_config,
)

#: The processing command of both sides: a one-line copy, so the work itself is ~nothing.
COPY = ("/bin/cp", "{input}", "{output_dir}")


@dataclass(frozen=True)
class Run:
    side: str  # "daemon" or "bare"
    concurrency: int
    jobs: int
    window_s: float

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.window_s


def prefill(config: Path, objects: Sequence[tuple[str, str]]) -> None:
    """Queue every object in the daemon's ledger, as processorctl submit does (same code path)."""
    from worker.config import load_settings
    from worker.job import Identity
    from worker.ledger import Ledger

    settings = load_settings(config, {})
    with Ledger(settings.paths.ledger) as ledger:
        for key, etag in objects:
            ledger.submit(Identity(INPUT_BUCKET, key, None, etag))


def run_daemon(endpoint: str, objects: Sequence[tuple[str, str]], concurrency: int, tmp: Path,
               *, profile: Sequence[str] = ()) -> Run:
    config = write_config(tmp / f"daemon-c{concurrency}", endpoint, COPY, concurrency=concurrency,
                          output_prefix=f"daemon-c{concurrency}/")
    prefill(config, objects)
    with Daemon(config, prefix=profile):
        wait_for(lambda: finished_count(config) >= len(objects), 600, "the daemon to drain", 0.2)
    rows = read_ledger(config, "SELECT state, started_at, finished_at FROM jobs")
    bad = [r["state"] for r in rows if r["state"] != "succeeded"]
    if bad:
        raise RuntimeError(f"daemon run c={concurrency}: {len(bad)} jobs did not succeed: {bad[:3]}")
    window = max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)
    return Run("daemon", concurrency, len(rows), window)


def run_bare(endpoint: str, objects: Sequence[tuple[str, str]], concurrency: int, tmp: Path) -> Run:
    keys = tmp / f"keys-c{concurrency}.txt"
    keys.write_text("\n".join(key for key, _ in objects))
    done = subprocess.run(
        [PYTHON, "-m", "bench.bare", endpoint, str(concurrency), f"bare-c{concurrency}/", str(keys),
         "--", *COPY],
        env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bare run c={concurrency} failed: {done.stderr[-2000:]} {done.stdout[-2000:]}")
    result = json.loads(done.stdout)
    return Run("bare", concurrency, len(result["durations"]), result["last_end"] - result["first_start"])


def sweep(endpoint: str, objects: Sequence[tuple[str, str]], concurrencies: Sequence[int],
          *, log: bool = True) -> list[Run]:
    """Bare then daemon at each concurrency (the order alternates to spread any drift)."""
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as name:
        tmp = Path(name)
        for i, c in enumerate(concurrencies):
            order = (run_bare, run_daemon) if i % 2 == 0 else (run_daemon, run_bare)
            for fn in order:
                started = time.monotonic()
                run = fn(endpoint, objects, c, tmp)
                runs.append(run)
                if log:
                    print(f"  overhead: {run.side:6} c={c}: {run.window_s:6.2f} s "
                          f"({run.jobs_per_s:5.1f} jobs/s; run took {time.monotonic() - started:.1f} s)",
                          flush=True)
    return runs


def plot(runs: Sequence[Run], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for side, style in (("bare", "o--"), ("daemon", "s-")):
        points = sorted((r.concurrency, r.jobs_per_s) for r in runs if r.side == side)
        ax.plot([c for c, _ in points], [t for _, t in points], style,
                label="bare boto3 loop (floor)" if side == "bare" else "processor daemon")
    ax.set_xscale("log", base=2)
    concurrencies = sorted({r.concurrency for r in runs})
    ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
    ax.set_xlabel("concurrency (slots / threads)")
    ax.set_ylabel("jobs per second")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
