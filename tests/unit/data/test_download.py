"""download(): streaming, checksums, caching and failures against a real server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from lite_rec.core.errors import ChecksumError, DownloadError
from lite_rec.data.download import download, file_digest, parse_checksum, verify_checksum
from tests.helpers.http_server import LoopbackServer, Route, loopback_server  # noqa: F401 - fixture

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes
SHA256 = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
MD5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest()  # noqa: S324 - GroupLens publishes md5


def test_download_streams_payload_and_verifies_sha256(loopback_server: LoopbackServer, tmp_path: Path) -> None:
    loopback_server.routes["/data.zip"] = PAYLOAD
    dest = tmp_path / "raw" / "data.zip"
    got = download(loopback_server.url("/data.zip"), dest, checksum=SHA256, progress=False)
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["data.zip"]  # no .part left behind


def test_download_verifies_md5(loopback_server: LoopbackServer, tmp_path: Path) -> None:
    loopback_server.routes["/data.zip"] = PAYLOAD
    dest = download(loopback_server.url("/data.zip"), tmp_path / "data.zip", checksum=MD5, progress=False)
    assert file_digest(dest, "md5") == MD5.split(":")[1]


def test_cached_file_with_matching_checksum_is_not_downloaded_again(
    loopback_server: LoopbackServer, tmp_path: Path
) -> None:
    loopback_server.routes["/data.zip"] = PAYLOAD
    dest = tmp_path / "data.zip"
    download(loopback_server.url("/data.zip"), dest, checksum=SHA256, progress=False)
    download(loopback_server.url("/data.zip"), dest, checksum=SHA256, progress=False)
    assert loopback_server.requests == ["/data.zip"]


def test_existing_file_counts_as_cached_when_no_checksum_is_given(
    loopback_server: LoopbackServer, tmp_path: Path
) -> None:
    dest = tmp_path / "data.zip"
    dest.write_bytes(b"an earlier copy")
    download(loopback_server.url("/data.zip"), dest, checksum=None, progress=False)
    assert loopback_server.requests == []
    assert dest.read_bytes() == b"an earlier copy"


def test_cached_file_with_wrong_checksum_is_downloaded_again(loopback_server: LoopbackServer, tmp_path: Path) -> None:
    loopback_server.routes["/data.zip"] = PAYLOAD
    dest = tmp_path / "data.zip"
    dest.write_bytes(b"stale")
    download(loopback_server.url("/data.zip"), dest, checksum=SHA256, progress=False)
    assert loopback_server.requests == ["/data.zip"]
    assert dest.read_bytes() == PAYLOAD


def test_download_cut_off_midway_names_url_and_bytes_and_keeps_earlier_file(
    loopback_server: LoopbackServer, tmp_path: Path
) -> None:
    loopback_server.routes["/data.zip"] = Route(PAYLOAD, truncate_at=4000)
    dest = tmp_path / "data.zip"
    dest.write_bytes(b"earlier good copy")
    url = loopback_server.url("/data.zip")
    with pytest.raises(DownloadError) as info:
        download(url, dest, checksum=SHA256, progress=False)
    assert not isinstance(info.value, ChecksumError)
    assert str(info.value) == f"{url}: cut off midway: received 4000 of 10240 bytes"
    assert dest.read_bytes() == b"earlier good copy"
    assert not dest.with_suffix(".zip.part").exists()


def test_checksum_mismatch_reports_expected_and_got_and_keeps_earlier_file(
    loopback_server: LoopbackServer, tmp_path: Path
) -> None:
    loopback_server.routes["/data.zip"] = PAYLOAD + b"tampered"
    dest = tmp_path / "data.zip"
    dest.write_bytes(b"earlier good copy")
    url = loopback_server.url("/data.zip")
    got = hashlib.sha256(PAYLOAD + b"tampered").hexdigest()
    with pytest.raises(ChecksumError) as info:
        download(url, dest, checksum=SHA256, progress=False)
    assert str(info.value) == f"{url}: checksum mismatch: expected {SHA256}, got sha256:{got}"
    assert dest.read_bytes() == b"earlier good copy"
    assert not dest.with_suffix(".zip.part").exists()


def test_http_error_status_names_url_and_status(loopback_server: LoopbackServer, tmp_path: Path) -> None:
    url = loopback_server.url("/missing.zip")
    with pytest.raises(DownloadError, match=r"missing\.zip: HTTP 404"):
        download(url, tmp_path / "missing.zip", checksum=None, progress=False)
    assert not (tmp_path / "missing.zip").exists()


def test_empty_body_is_an_error(loopback_server: LoopbackServer, tmp_path: Path) -> None:
    loopback_server.routes["/empty.zip"] = b""
    with pytest.raises(DownloadError, match="empty body"):
        download(loopback_server.url("/empty.zip"), tmp_path / "empty.zip", checksum=None, progress=False)


def test_unreachable_server_is_a_download_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.zip"
    with pytest.raises(DownloadError, match=rf"127\.0\.0\.1:{port}/data\.zip: unreachable"):
        download(url, tmp_path / "data.zip", checksum=None, progress=False, timeout=5)


def test_parse_and_verify_checksum(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(PAYLOAD)
    assert parse_checksum("md5:AB") == ("md5", "ab")
    with pytest.raises(ValueError, match="sha256"):
        parse_checksum("crc32:1234")
    verify_checksum(path, SHA256)
    wrong = "md5:" + "0" * 32
    with pytest.raises(ChecksumError, match=f"expected {wrong}, got {MD5}"):
        verify_checksum(path, wrong)
