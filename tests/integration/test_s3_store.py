"""The S3 adapter against the emulator over real HTTP (no patching of boto3)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.faultproxy import FaultProxy
from worker.config.settings import S3Settings
from worker.errors import Interrupted, ObjectChanged, StorageError
from worker.storage.s3 import TRANSFER_CONFIG, S3Store


@pytest.fixture
def store(aws: Callable[[str], Any], moto_endpoint: str) -> S3Store:
    s3 = aws("s3")
    s3.create_bucket(Bucket="in-bucket")
    s3.create_bucket(Bucket="out-bucket")
    return S3Store.from_settings(S3Settings(output_bucket="out-bucket", endpoint_url=moto_endpoint))


def test_head_and_download_round_trip(store: S3Store, aws: Callable[[str], Any], tmp_path: Path) -> None:
    body = b"x" * (40 * 1024 * 1024 + 7)  # above the multipart threshold: ranged GETs
    aws("s3").put_object(Bucket="in-bucket", Key="dir/big file.bin", Body=body)
    info = store.head("in-bucket", "dir/big file.bin")
    assert info.size == len(body) and info.etag
    seen: list[int] = []
    store.download("in-bucket", "dir/big file.bin", tmp_path / "input", progress=seen.append)
    assert (tmp_path / "input").read_bytes() == body
    assert sum(seen) == len(body)


def test_head_with_a_stale_etag_is_object_changed(store: S3Store, aws: Callable[[str], Any]) -> None:
    aws("s3").put_object(Bucket="in-bucket", Key="k", Body=b"v2")
    with pytest.raises(ObjectChanged) as info:
        store.head("in-bucket", "k", etag=hashlib.md5(b"v1").hexdigest())
    assert not info.value.retryable
    assert store.head("in-bucket", "k", etag=hashlib.md5(b"v2").hexdigest()).size == 2


def test_versioned_head_and_download_pin_the_version(
    store: S3Store, aws: Callable[[str], Any], tmp_path: Path
) -> None:
    s3 = aws("s3")
    s3.put_bucket_versioning(Bucket="in-bucket", VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket="in-bucket", Key="k", Body=b"first")["VersionId"]
    s3.put_object(Bucket="in-bucket", Key="k", Body=b"second!")
    assert store.head("in-bucket", "k", version_id=v1).size == 5
    store.download("in-bucket", "k", tmp_path / "f", version_id=v1)
    assert (tmp_path / "f").read_bytes() == b"first"


def test_missing_object_and_bucket_are_permanent_errors(store: S3Store) -> None:
    with pytest.raises(StorageError) as info:
        store.head("in-bucket", "nope.csv")
    assert not info.value.retryable and "nope.csv" in str(info.value)
    with pytest.raises(StorageError) as info:
        store.put_json("no-such-bucket", "k", {"a": 1})
    assert not info.value.retryable and "NoSuchBucket" in str(info.value)


def test_upload_put_json_and_delete(store: S3Store, aws: Callable[[str], Any], tmp_path: Path) -> None:
    src = tmp_path / "r.json"
    src.write_bytes(b'{"ok": true}')
    key = "res/$(rm -rf ~) ../x/r.json"
    store.upload_file(src, "out-bucket", key, content_type="application/json")
    s3 = aws("s3")
    assert s3.get_object(Bucket="out-bucket", Key=key)["Body"].read() == b'{"ok": true}'
    store.put_json("out-bucket", "m/_manifest.json", {"key": "日本"})
    assert "日本" in s3.get_object(Bucket="out-bucket", Key="m/_manifest.json")["Body"].read().decode()
    store.delete("out-bucket", "m/_manifest.json")
    store.delete("out-bucket", "m/_manifest.json")  # deleting a missing key is fine
    assert "Contents" not in s3.list_objects_v2(Bucket="out-bucket", Prefix="m/")


def test_unreachable_endpoint_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    dead = S3Store.from_settings(S3Settings(output_bucket="out-bucket", endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(StorageError) as info:
        dead.head("in-bucket", "k")
    assert info.value.retryable and info.value.code == "Transport"


def test_multipart_object_without_a_full_object_checksum_is_not_compared(
    store: S3Store, aws: Callable[[str], Any], tmp_path: Path
) -> None:
    from boto3.s3.transfer import TransferConfig

    body = bytes(range(256)) * (40 * 1024 * 4 + 3)  # ~40 MiB: a multipart upload
    src = tmp_path / "src"
    src.write_bytes(body)
    aws("s3").upload_file(str(src), "in-bucket", "mpu.bin",
                          Config=TransferConfig(multipart_threshold=8 * 1024 * 1024))
    info = store.head("in-bucket", "mpu.bin")
    assert info.etag and "-" in info.etag
    assert info.checksums == {}
    aws("s3").put_object(Bucket="in-bucket", Key="single.bin", Body=b"abc", ChecksumAlgorithm="SHA256")
    assert "sha256" in store.head("in-bucket", "single.bin").checksums


def _requests(store: S3Store) -> list[str]:
    """The HTTP requests the store's client sends from now on (observed, not patched)."""
    sent: list[str] = []
    store._client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.method))
    return sent


@pytest.mark.parametrize("size", [64 * 1024, 40 * 1024 * 1024 + 7], ids=["single-get", "ranged-gets"])
def test_download_told_the_size_and_etag_does_not_head_again(
    store: S3Store, aws: Callable[[str], Any], tmp_path: Path, size: int
) -> None:
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    aws("s3").put_object(Bucket="in-bucket", Key="k.bin", Body=body)
    info = store.head("in-bucket", "k.bin")
    sent = _requests(store)
    for n in range(2):
        store.download("in-bucket", "k.bin", tmp_path / f"in{n}", size=info.size, etag=info.etag)
        assert (tmp_path / f"in{n}").read_bytes() == body
    assert sent and set(sent) == {"GET"}
    if size < TRANSFER_CONFIG.multipart_threshold:
        # One GetObject, made in the caller's thread: no transfer manager at all.
        assert len(sent) == 2 and store._managers.qsize() == 0
    else:
        # Ranged GETs by a transfer manager, made once and reused by the second download.
        assert store._managers.qsize() == 1


def test_a_small_download_of_a_replaced_object_is_object_changed(
    store: S3Store, aws: Callable[[str], Any], tmp_path: Path
) -> None:
    s3 = aws("s3")
    s3.put_object(Bucket="in-bucket", Key="small", Body=b"v1")
    info = store.head("in-bucket", "small")
    s3.put_object(Bucket="in-bucket", Key="small", Body=b"v2")
    with pytest.raises(ObjectChanged):
        store.download("in-bucket", "small", tmp_path / "in", size=info.size, etag=info.etag)


def test_small_and_multipart_uploads_and_their_progress(
    store: S3Store, aws: Callable[[str], Any], tmp_path: Path
) -> None:
    for name, size in (("small.bin", 1000), ("big.bin", TRANSFER_CONFIG.multipart_threshold + 5)):
        path = tmp_path / name
        path.write_bytes(b"q" * size)
        seen: list[int] = []
        store.upload_file(path, "out-bucket", name, content_type="application/octet-stream",
                          progress=seen.append)
        assert sum(seen) == size
        got = aws("s3").get_object(Bucket="out-bucket", Key=name)
        assert got["Body"].read() == path.read_bytes()
        assert got["ContentType"] == "application/octet-stream"


@pytest.mark.parametrize("transfer", ["download", "upload"])
def test_a_stop_during_a_managed_transfer_is_raised_not_taken_for_its_end(
    store: S3Store, aws: Callable[[str], Any], tmp_path: Path, transfer: str
) -> None:
    """Interrupted is a BaseException, which s3transfer's threads do not catch: raised from
    a progress callback in one of them, it must still fail the transfer (without the
    adapter carrying it, a download returned cut short and an upload never completed)."""
    big = tmp_path / "big"
    big.write_bytes(b"s" * (TRANSFER_CONFIG.multipart_threshold + 5))
    aws("s3").put_object(Bucket="in-bucket", Key="big", Body=big.read_bytes())
    calls: list[int] = []

    def stop_soon(amount: int) -> None:
        calls.append(amount)
        if len(calls) >= 3:  # from then on, like the pipeline's progress once its token is set
            raise Interrupted("shutdown")

    with pytest.raises(Interrupted, match="shutdown"):
        if transfer == "download":
            info = store.head("in-bucket", "big")
            store.download("in-bucket", "big", tmp_path / "in", size=info.size, etag=info.etag,
                           progress=stop_soon)
        else:
            store.upload_file(big, "out-bucket", "big", progress=stop_soon)
    if transfer == "upload":
        assert "Contents" not in aws("s3").list_objects_v2(Bucket="out-bucket")


def test_a_ranged_download_of_a_replaced_object_is_object_changed(
    store: S3Store, aws: Callable[[str], Any], tmp_path: Path
) -> None:
    """Ranged GETs carry If-Match with the HEAD's ETag: parts of two versions never mix."""
    s3 = aws("s3")
    s3.put_object(Bucket="in-bucket", Key="big", Body=b"a" * (40 * 1024 * 1024))
    info = store.head("in-bucket", "big")
    s3.put_object(Bucket="in-bucket", Key="big", Body=b"b" * (40 * 1024 * 1024))
    with pytest.raises(ObjectChanged):
        store.download("in-bucket", "big", tmp_path / "in", size=info.size, etag=info.etag)


def test_uploads_carry_a_crc32_that_s3_checks(
    store: S3Store, aws: Callable[[str], Any], tmp_path: Path
) -> None:
    (tmp_path / "r.txt").write_bytes(b"result")
    store.upload_file(tmp_path / "r.txt", "out-bucket", "r.txt")
    store.put_json("out-bucket", "m.json", {"a": 1})
    s3 = aws("s3")
    for key in ("r.txt", "m.json"):
        assert s3.head_object(Bucket="out-bucket", Key=key, ChecksumMode="ENABLED").get("ChecksumCRC32")


@pytest.mark.parametrize("size", [64 * 1024, 40 * 1024 * 1024 + 7], ids=["single-get", "ranged-gets"])
def test_a_body_cut_off_mid_download_is_retried_then_complete(
    aws: Callable[[str], Any], moto_endpoint: str, tmp_path: Path, size: int
) -> None:
    """A GET whose body stops short of its Content-Length is a transport error, retried."""
    s3 = aws("s3")
    s3.create_bucket(Bucket="in-bucket")
    body = bytes(range(256)) * (size // 256) + b"t" * (size % 256)
    s3.put_object(Bucket="in-bucket", Key="cut.bin", Body=body)
    with FaultProxy(moto_endpoint, rate=0.0) as proxy:
        store = S3Store.from_settings(S3Settings(output_bucket="o", endpoint_url=proxy.endpoint))
        info = store.head("in-bucket", "cut.bin")
        proxy.truncate_gets = 1
        store.download("in-bucket", "cut.bin", tmp_path / "in", size=info.size, etag=info.etag)
        assert proxy.counts["truncated"] == 1
        assert (tmp_path / "in").read_bytes() == body
        proxy.truncate_gets = 100  # every GET: the error surfaces, retryable, naming the key
        with pytest.raises(StorageError) as caught:
            store.download("in-bucket", "cut.bin", tmp_path / "in2", size=info.size, etag=info.etag)
        assert caught.value.retryable and "cut.bin" in str(caught.value)
        store.close()
