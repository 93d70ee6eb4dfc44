"""The Lambda's reconcile pass over a large bucket stays within a bounded memory (issue 20).

The function has 128 MB. A pass that indexes every result key of the output
bucket before judging the input ran out around 10^6 results; the pass now judges
the input listing a chunk at a time against the one range of the output listing
that can hold that chunk's markers. Here 200,000 input objects, each with a
result (200,000 listed results), plus a few lost ones, go through the real
``reconcile`` with an in-memory S3 client whose listings are computed page by
page (so the fake holds no bucket either), under tracemalloc: the peak must stay
far below what an index of the results takes, and every lost object is sent.
"""

from __future__ import annotations

import bisect
import json
import tracemalloc
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, overload

from lambda_trigger import reconciler
from processor_shared.layout import FALLBACK_DIR, MANIFEST_NAME

#: Input objects; all but the lost ones have a _manifest.json.
OBJECTS = 200_000
#: Every LOST_EVERY-th object has no result.
LOST_EVERY = 10_000
#: Keys per listing page (S3's page size).
PAGE = 1000
#: The bound on the pass's peak allocation. The old whole-bucket index held all
#: 200,000 result keys: about 30 MB here.
PEAK_BYTES = 8 * 1024 * 1024

NOW = 2_000_000_000.0
OLD = datetime.fromtimestamp(NOW - 86_400, tz=UTC)
ENV = {"INPUT_BUCKET": "in-bucket", "OUTPUT_BUCKET": "out-bucket",
       "QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/work"}


def _key(index: int) -> str:
    return f"uploads/{index:07d}.csv"


def _lost(index: int) -> bool:
    return index % LOST_EVERY == 0


class _Keys(Sequence[str]):
    """The output bucket's keys in S3's order, computed on demand (a manifest per object but the lost)."""

    def __init__(self) -> None:
        self._with_result = [i for i in range(0, OBJECTS, LOST_EVERY)]  # the gaps, 20 of them

    def __len__(self) -> int:
        return OBJECTS - len(self._with_result)

    def _index(self, position: int) -> int:
        # position-th object that has a result (skipping the lost ones).
        index = position
        for gap in self._with_result:
            if gap <= index:
                index += 1
        return index

    @overload
    def __getitem__(self, position: int) -> str: ...

    @overload
    def __getitem__(self, position: slice) -> Sequence[str]: ...

    def __getitem__(self, position: int | slice) -> str | Sequence[str]:
        if isinstance(position, slice):
            raise TypeError("no slices")
        if not 0 <= position < len(self):
            raise IndexError(position)
        return f"{_key(self._index(position))}/{MANIFEST_NAME}"


class _Paginator:
    def __init__(self, pages: Callable[..., Iterator[Mapping[str, Any]]]) -> None:
        self._pages = pages

    def paginate(self, **kwargs: Any) -> Iterator[Mapping[str, Any]]:
        return self._pages(**kwargs)


class LazyS3:
    """ListObjectVersions of the input and ListObjectsV2 (Prefix, StartAfter) of the output."""

    def __init__(self) -> None:
        self.output_keys = _Keys()
        self.output_pages = 0

    def get_paginator(self, name: str) -> _Paginator:
        return _Paginator({"list_object_versions": self._versions, "list_objects_v2": self._results}[name])

    def _versions(self, *, Bucket: str, Prefix: str) -> Iterator[Mapping[str, Any]]:
        assert (Bucket, Prefix) == (ENV["INPUT_BUCKET"], "")
        for start in range(0, OBJECTS, PAGE):
            yield {"Versions": [
                {"Key": _key(i), "VersionId": f"v{i}", "IsLatest": True, "ETag": '"e"', "LastModified": OLD}
                for i in range(start, min(start + PAGE, OBJECTS))]}

    def _results(self, *, Bucket: str, Prefix: str, StartAfter: str = "") -> Iterator[Mapping[str, Any]]:
        assert Bucket == ENV["OUTPUT_BUCKET"]
        if Prefix == FALLBACK_DIR:
            return  # no _by-id results
        assert Prefix == ""
        position = bisect.bisect_right(self.output_keys, StartAfter)
        while position < len(self.output_keys):
            self.output_pages += 1
            end = min(position + PAGE, len(self.output_keys))
            yield {"Contents": [{"Key": self.output_keys[p]} for p in range(position, end)]}
            position = end


class CountingQueue:
    """SendMessageBatch that accepts everything and keeps only the keys sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_message_batch(self, **kwargs: Any) -> Mapping[str, Any]:
        entries = kwargs["Entries"]
        for entry in entries:
            self.sent.append(entry["MessageBody"])
        return {"Successful": [{"Id": e["Id"], "MessageId": f"m-{e['Id']}"} for e in entries], "Failed": []}


def test_a_pass_over_200000_results_stays_in_bounded_memory() -> None:
    client, queue = LazyS3(), CountingQueue()
    tracemalloc.start()
    try:
        summary = reconciler.reconcile({"processor": "reconcile"}, ENV, lambda: client, lambda: queue,
                                       clock=lambda: NOW)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    lost = [i for i in range(OBJECTS) if _lost(i)]
    assert summary["listed"] == OBJECTS
    assert summary["has_result"] == OBJECTS - len(lost)
    assert summary["sent"] == len(lost) and summary["failed"] == 0
    assert sorted(json.loads(body)["key"] for body in queue.sent) == [_key(i) for i in lost]
    # Each chunk lists only its own range: about one pass over the output listing in all.
    assert client.output_pages <= 2 * (OBJECTS // PAGE) + 10
    assert peak < PEAK_BYTES, f"peak {peak / 1e6:.1f} MB"


def test_the_ranged_listing_finds_markers_of_keys_that_prefix_each_other() -> None:
    # "a" and "a-b" in one chunk: "a-b/_manifest.json" sorts before "a/_manifest.json"
    # ('-' < '/'), so the range runs from the first key to the last marker, not the last key.
    keys = ["a", "a-b", "a.c", "b"]
    results = {"a/_manifest.json", "a-b/_failed.json", "b/_manifest.json", "a-b/out.txt", "a/x/y"}

    class Client:
        def get_paginator(self, name: str) -> _Paginator:
            if name == "list_object_versions":
                return _Paginator(lambda **_: iter([{"Versions": [
                    {"Key": k, "VersionId": "null", "IsLatest": True, "ETag": '"e"', "LastModified": OLD}
                    for k in keys]}]))

            def pages(*, Bucket: str, Prefix: str, StartAfter: str = "") -> Iterator[Mapping[str, Any]]:
                listed = sorted(k for k in results if k.startswith(Prefix) and k > StartAfter)
                yield {"Contents": [{"Key": k} for k in listed]}
            return _Paginator(pages)

    queue = CountingQueue()
    summary = reconciler.reconcile({"processor": "reconcile", "older_than_s": 0}, ENV, Client, lambda: queue,
                                   clock=lambda: NOW)
    assert (summary["has_result"], summary["sent"]) == (3, 1)
    (body,) = queue.sent
    assert json.loads(body)["key"] == "a.c"
