"""The floor for the fleet path: a textbook SQS worker loop, no ledger, no job record.

Each of ``concurrency`` threads has its own S3 client (``bench.common.s3_client``,
the daemon's TransferConfig) and SQS client, and loops: receive_message (1
message, long poll) -> download_file -> the processing command (a subprocess)
-> upload_file of every output -> put_object of a small JSON manifest ->
delete_message, until ``JOBS`` messages have been done. Prints one JSON
object: the window from the first receive's return to the last delete's end
(epoch seconds, like the daemon's ledger and log) and per-job durations.

Usage: python -m bench.sqs_bare ENDPOINT QUEUE_URL CONCURRENCY JOBS WAIT_S OUTPUT_PREFIX -- COMMAND...
(COMMAND may hold {input} and {output_dir}.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import OUTPUT_BUCKET, s3_client
from bench.queue_common import sqs_client
from worker.storage.s3 import TRANSFER_CONFIG


def main(argv: list[str]) -> int:
    split = argv.index("--")
    endpoint, queue_url, concurrency, jobs, wait_s, prefix = argv[:split]
    command = argv[split + 1:]
    total = int(jobs)
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()
    errors: list[str] = []
    scratch = Path(tempfile.mkdtemp(prefix="bench-sqs-bare-"))

    def work(n: int) -> None:
        s3, sqs = s3_client(endpoint), sqs_client(endpoint)
        while True:
            with lock:
                if len(spans) + len(errors) >= total:
                    return
            messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1,
                                           WaitTimeSeconds=int(wait_s)).get("Messages", [])
            if not messages:
                continue
            received = time.time()
            message = messages[0]
            job = scratch / f"{n}"
            out = job / "output"
            out.mkdir(parents=True)
            try:
                body = json.loads(message["Body"])
                bucket, key = body["bucket"], body["key"]
                source = job / "input"
                s3.download_file(bucket, key, str(source), Config=TRANSFER_CONFIG)
                argv = [{"{input}": str(source), "{output_dir}": str(out)}.get(a, a) for a in command]
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PROCESSOR_INPUT": str(source),
                       "PROCESSOR_OUTPUT_DIR": str(out), "PROCESSOR_JOB_ID": key.replace("/", "_")}
                subprocess.run(argv, cwd=job, env=env, stdin=subprocess.DEVNULL, check=True)
                outputs = []
                for path in sorted(out.rglob("*")):
                    if path.is_file():
                        relative = path.relative_to(out).as_posix()
                        s3.upload_file(str(path), OUTPUT_BUCKET, f"{prefix}{key}/{relative}",
                                       Config=TRANSFER_CONFIG)
                        outputs.append({"key": f"{prefix}{key}/{relative}", "size": path.stat().st_size})
                manifest = {"source": {"bucket": bucket, "key": key, "etag": body.get("etag")},
                            "outputs": outputs,
                            "timings": {"started_at": received, "finished_at": time.time()}}
                s3.put_object(Bucket=OUTPUT_BUCKET, Key=f"{prefix}{key}/_manifest.json",
                              Body=json.dumps(manifest).encode(), ContentType="application/json")
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            except Exception as exc:  # noqa: BLE001 - reported, and the run fails
                with lock:
                    errors.append(f"{message.get('MessageId')}: {exc}")
                continue
            finally:
                shutil.rmtree(job, ignore_errors=True)
            with lock:
                spans.append((received, time.time()))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(int(concurrency))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    shutil.rmtree(scratch, ignore_errors=True)
    json.dump({"first_receive": min(s for s, _ in spans) if spans else 0.0,
               "last_end": max(e for _, e in spans) if spans else 0.0,
               "durations": [e - s for s, e in spans], "errors": errors}, sys.stdout)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
