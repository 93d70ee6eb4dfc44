"""The floor for per-job work: a bare boto3 loop, no ledger, no daemon.

Each of ``concurrency`` threads has its own client (the daemon's client
settings and TransferConfig) and takes keys from a shared queue; per job it
does exactly download_file -> the processing command (a subprocess) ->
upload_file of every output -> put_object of a small JSON manifest. Prints
one JSON object: the window from the first download's start to the last
manifest's end (epoch seconds, like the ledger's timestamps) and per-job
durations.

Usage: python -m bench.bare ENDPOINT CONCURRENCY OUTPUT_PREFIX KEYS_FILE -- COMMAND...
(COMMAND may hold {input} and {output_dir}; KEYS_FILE has one key per line.)
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import INPUT_BUCKET, OUTPUT_BUCKET, s3_client
from worker.storage.s3 import TRANSFER_CONFIG


def main(argv: list[str]) -> int:
    split = argv.index("--")
    endpoint, concurrency, prefix, keys_file = argv[:split]
    command = argv[split + 1:]
    keys: queue.SimpleQueue[str] = queue.SimpleQueue()
    for key in Path(keys_file).read_text().split():
        keys.put(key)
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()
    errors: list[str] = []
    scratch = Path(tempfile.mkdtemp(prefix="bench-bare-"))

    def work(n: int) -> None:
        client = s3_client(endpoint)
        while True:
            try:
                key = keys.get_nowait()
            except queue.Empty:
                return
            started = time.time()
            job = scratch / f"{n}"
            out = job / "output"
            out.mkdir(parents=True)
            try:
                source = job / "input"
                client.download_file(INPUT_BUCKET, key, str(source), Config=TRANSFER_CONFIG)
                argv = [{"{input}": str(source), "{output_dir}": str(out)}.get(a, a) for a in command]
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PROCESSOR_INPUT": str(source),
                       "PROCESSOR_OUTPUT_DIR": str(out), "PROCESSOR_JOB_ID": key.replace("/", "_")}
                subprocess.run(argv, cwd=job, env=env, stdin=subprocess.DEVNULL, check=True)
                outputs = []
                for path in sorted(out.rglob("*")):
                    if path.is_file():
                        relative = path.relative_to(out).as_posix()
                        client.upload_file(str(path), OUTPUT_BUCKET, f"{prefix}{key}/{relative}",
                                           Config=TRANSFER_CONFIG)
                        outputs.append({"key": f"{prefix}{key}/{relative}", "size": path.stat().st_size})
                manifest = {"source": {"bucket": INPUT_BUCKET, "key": key}, "outputs": outputs,
                            "timings": {"started_at": started, "finished_at": time.time()}}
                client.put_object(Bucket=OUTPUT_BUCKET, Key=f"{prefix}{key}/_manifest.json",
                                  Body=json.dumps(manifest).encode(), ContentType="application/json")
            except Exception as exc:  # noqa: BLE001 - reported, and the run fails
                with lock:
                    errors.append(f"{key}: {exc}")
            finally:
                shutil.rmtree(job, ignore_errors=True)
            with lock:
                spans.append((started, time.time()))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(int(concurrency))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    shutil.rmtree(scratch, ignore_errors=True)
    json.dump({"first_start": min(s for s, _ in spans), "last_end": max(e for _, e in spans),
               "durations": [e - s for s, e in spans], "errors": errors}, sys.stdout)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
