"""Per-job overhead: the daemon draining N queued jobs against a bare boto3 loop.

A = the daemon (``processor run``, concurrency c) draining N jobs queued in
its ledger before it started: from the first job's claim (ledger
``started_at``) to the last job's end (ledger ``finished_at``, written after
its manifest is in the bucket).
B = ``bench.bare`` with c threads doing download -> command -> upload ->
manifest put for the same N objects: from the first download's start to the
last manifest's end.

Both run the same command (``/bin/cp {input} {output_dir}``) against the same
moto server, one after the other, for each concurrency of the sweep. The
sweep is repeated for several rounds (a fresh ledger and output prefix each
time): this machine is shared and noisy, so one pair of runs can be off by
±15 %; the figure per concurrency is the median over rounds of the ratio of a
back-to-back pair.
"""

from __future__ import annotations

import json
import statistics
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
    round: int = 0

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.window_s


def prefill(config: Path, objects: Sequence[tuple[str, str]]) -> None:
    """Queue every object in the daemon's ledger, as processorctl submit does (same code path)."""
    from worker.config.settings import load_settings
    from worker.jobs.identity import Identity
    from worker.state.ledger import Ledger

    settings = load_settings(config, {})
    with Ledger(settings.paths.ledger) as ledger:
        for key, etag in objects:
            ledger.submit(Identity(INPUT_BUCKET, key, None, etag))


@dataclass(frozen=True)
class Summary:
    """One concurrency over all rounds."""

    concurrency: int
    ratios: list[float]  # daemon / bare of each round's back-to-back pair
    daemon_s: float  # median drain window
    bare_s: float
    jobs: int

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)


def summarize(runs: Sequence[Run]) -> list[Summary]:
    out = []
    for c in sorted({r.concurrency for r in runs}):
        pairs: dict[int, dict[str, Run]] = {}
        for r in runs:
            if r.concurrency == c:
                pairs.setdefault(r.round, {})[r.side] = r
        ratios = [p["daemon"].window_s / p["bare"].window_s for _, p in sorted(pairs.items())]
        out.append(Summary(
            c, ratios, statistics.median(p["daemon"].window_s for p in pairs.values()),
            statistics.median(p["bare"].window_s for p in pairs.values()),
            next(iter(pairs.values()))["daemon"].jobs,
        ))
    return out


def run_daemon(endpoint: str, objects: Sequence[tuple[str, str]], concurrency: int, tmp: Path,
               *, profile: Sequence[str] = (), round_: int = 0) -> Run:
    name = f"daemon-c{concurrency}-r{round_}"
    config = write_config(tmp / name, endpoint, COPY, concurrency=concurrency, output_prefix=f"{name}/")
    prefill(config, objects)
    with Daemon(config, prefix=profile):
        wait_for(lambda: finished_count(config) >= len(objects), 600, "the daemon to drain", 0.2)
    rows = read_ledger(config, "SELECT state, started_at, finished_at FROM jobs")
    bad = [r["state"] for r in rows if r["state"] != "succeeded"]
    if bad:
        raise RuntimeError(f"daemon run c={concurrency}: {len(bad)} jobs did not succeed: {bad[:3]}")
    window = max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)
    return Run("daemon", concurrency, len(rows), window, round_)


def run_bare(endpoint: str, objects: Sequence[tuple[str, str]], concurrency: int, tmp: Path,
             *, round_: int = 0) -> Run:
    name = f"bare-c{concurrency}-r{round_}"
    keys = tmp / f"{name}.txt"
    keys.write_text("\n".join(key for key, _ in objects))
    done = subprocess.run(
        [PYTHON, "-m", "bench.bare", endpoint, str(concurrency), f"{name}/", str(keys), "--", *COPY],
        env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bare run c={concurrency} failed: {done.stderr[-2000:]} {done.stdout[-2000:]}")
    result = json.loads(done.stdout)
    return Run("bare", concurrency, len(result["durations"]), result["last_end"] - result["first_start"],
               round_)


def sweep(endpoint: str, objects: Sequence[tuple[str, str]], concurrencies: Sequence[int],
          *, rounds: int = 1, log: bool = True) -> list[Run]:
    """``rounds`` times: bare and daemon back to back at each concurrency (which goes
    first alternates, to spread any drift), each run on a fresh ledger and prefix."""
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as name:
        tmp = Path(name)
        for round_ in range(rounds):
            for i, c in enumerate(concurrencies):
                # Which side goes first alternates along the sweep and between rounds.
                order = (run_bare, run_daemon) if (round_ + i) % 2 == 0 else (run_daemon, run_bare)
                for fn in order:
                    started = time.monotonic()
                    run = fn(endpoint, objects, c, tmp, round_=round_)
                    runs.append(run)
                    if log:
                        print(f"  overhead r{round_}: {run.side:6} c={c}: {run.window_s:6.2f} s "
                              f"({run.jobs_per_s:5.1f} jobs/s; run took "
                              f"{time.monotonic() - started:.1f} s)", flush=True)
    return runs


def plot(summaries: Sequence[Summary], path: Path, *, title: str) -> None:
    """Jobs per second of both sides (median window over the rounds) at each concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for side, style in (("bare", "o--"), ("daemon", "s-")):
        points = [(s.concurrency, s.jobs / (s.bare_s if side == "bare" else s.daemon_s)) for s in summaries]
        ax.plot([c for c, _ in points], [t for _, t in points], style,
                label="bare boto3 loop (floor)" if side == "bare" else "processor daemon")
    ax.set_xscale("log", base=2)
    concurrencies = [s.concurrency for s in summaries]
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
