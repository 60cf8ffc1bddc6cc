"""The downloader against a real HTTP server on 127.0.0.1 that injects faults."""
from __future__ import annotations

import collections
import http.server
import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from biovita_nb.config import sample_dir
from biovita_nb.data import DownloadSettings, download_file, download_items, safe_file_stem, sha256_file

MP3 = (sample_dir() / "audio" / "bald-eagle.mp3").read_bytes()
JPEG = (sample_dir() / "images" / "bald-eagle.jpg").read_bytes()
HTML = b"<!DOCTYPE html>\n<html><head><title>Error</title></head><body>Recording not available</body></html>\n"


class QuietServer(http.server.ThreadingHTTPServer):
    """A threaded server that does not print the broken pipes of clients that give up on purpose."""

    def handle_error(self, request, client_address):
        pass


class FaultServer:
    """A threaded HTTP server on 127.0.0.1 whose first path segment picks a behaviour.

    /file/<name>      200 with the file's bytes and Content-Length
    /missing/<name>   404
    /flaky/<name>     500 on the first request of that path, then 200
    /drop/<name>      Content-Length of the whole file, half the body, then the connection closes
    /drop-once/<name> like /drop on the first request, then 200
    /slow/<name>      waits `slow_s` before responding
    /html/<name>      200 with an HTML error page
    /stream/<name>    200 without Content-Length, the body streamed until the connection closes
    /to-file/<name>   302 to a file:// URL
    """

    def __init__(self, files: dict[str, bytes], slow_s: float = 1.0):
        self.files, self.slow_s = files, slow_s
        self.hits: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    server.hits[self.path] += 1
                    count = server.hits[self.path]
                _, behaviour, name = self.path.split("/", 2)
                body = server.files.get(name.split("?")[0], MP3)
                if behaviour == "missing":
                    return self.send_error(404, "Not Found")
                if behaviour == "flaky" and count == 1:
                    return self.send_error(500, "Internal Server Error")
                if behaviour == "slow":
                    time.sleep(server.slow_s)
                if behaviour == "to-file":
                    self.send_response(302)
                    self.send_header("Location", "file:///etc/passwd")
                    self.end_headers()
                    return
                if behaviour == "html":
                    body = HTML
                self.send_response(200)
                self.send_header("Content-Type", "text/html" if behaviour == "html" else "application/octet-stream")
                if behaviour != "stream":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if behaviour == "drop" or (behaviour == "drop-once" and count == 1):
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, behaviour: str, name: str = "bald-eagle.mp3") -> str:
        return f"{self.base}/{behaviour}/{name}"

    def __enter__(self) -> "FaultServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    with FaultServer({"bald-eagle.mp3": MP3, "bald-eagle.jpg": JPEG}, slow_s=1.0) as running:
        yield running


FAST = DownloadSettings(workers=4, timeout_s=0.3, retries=2, backoff_s=0.01, max_bytes=10_000_000)


def fetch(server, tmp_path, behaviour, item_id="xc-1", kind="audio", name="bald-eagle.mp3", settings=FAST,
          expected=None):
    return download_file(item_id, server.url(behaviour, name), tmp_path / "files", kind, settings, expected)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_download_ok_names_file_from_bytes(server, tmp_path):
    result = fetch(server, tmp_path, "file", name="bald-eagle.mp3?format=raw")
    assert result.status == "downloaded"
    assert result.attempts == 1
    assert Path(result.path) == tmp_path / "files" / "xc-1.mp3"
    assert Path(result.path).read_bytes() == MP3
    assert result.sha256 == sha256_file(sample_dir() / "audio" / "bald-eagle.mp3")
    assert result.bytes == len(MP3)


def test_404_fails_without_retry(server, tmp_path):
    result = fetch(server, tmp_path, "missing")
    assert (result.status, result.reason) == ("failed", "http_client_error")
    assert "HTTP 404" in result.detail
    assert result.attempts == 1
    assert server.hits["/missing/bald-eagle.mp3"] == 1
    assert leftovers(tmp_path / "files") == []


def test_500_then_success_is_retried(server, tmp_path):
    result = fetch(server, tmp_path, "flaky")
    assert result.status == "downloaded"
    assert result.attempts == 2
    assert server.hits["/flaky/bald-eagle.mp3"] == 2
    assert Path(result.path).read_bytes() == MP3


def test_dropped_body_retried_then_fails(server, tmp_path):
    result = fetch(server, tmp_path, "drop")
    assert (result.status, result.reason) == ("failed", "incomplete_body")
    assert result.attempts == FAST.retries + 1
    assert server.hits["/drop/bald-eagle.mp3"] == FAST.retries + 1
    assert leftovers(tmp_path / "files") == []  # no .part and no truncated .mp3 left behind


def test_dropped_body_once_recovers(server, tmp_path):
    result = fetch(server, tmp_path, "drop-once")
    assert result.status == "downloaded"
    assert result.attempts == 2
    assert Path(result.path).read_bytes() == MP3


def test_slow_response_times_out(server, tmp_path):
    settings = DownloadSettings(workers=1, timeout_s=0.2, retries=1, backoff_s=0.01, max_bytes=10_000_000)
    result = fetch(server, tmp_path, "slow", settings=settings)
    assert (result.status, result.reason) == ("failed", "timeout")
    assert result.attempts == 2
    assert leftovers(tmp_path / "files") == []


def test_html_page_with_200_is_failure(server, tmp_path):
    result = fetch(server, tmp_path, "html")
    assert (result.status, result.reason) == ("failed", "html_page")
    assert result.attempts == 1
    assert leftovers(tmp_path / "files") == []


def test_body_over_cap_with_length(server, tmp_path):
    settings = DownloadSettings(workers=1, timeout_s=2, retries=3, backoff_s=0.01, max_bytes=1000)
    result = fetch(server, tmp_path, "file", settings=settings)
    assert (result.status, result.reason) == ("failed", "too_large")
    assert "Content-Length" in result.detail
    assert result.attempts == 1
    assert leftovers(tmp_path / "files") == []


def test_body_over_cap_without_length(server, tmp_path):
    settings = DownloadSettings(workers=1, timeout_s=2, retries=3, backoff_s=0.01, max_bytes=50_000)
    result = fetch(server, tmp_path, "stream", settings=settings)
    assert (result.status, result.reason) == ("failed", "too_large")
    assert "exceeds the cap of 50000 bytes" in result.detail
    assert leftovers(tmp_path / "files") == []


def test_id_with_parent_segments_stays_inside(server, tmp_path):
    result = fetch(server, tmp_path, "file", item_id="xc-../../../escape")
    assert result.status == "downloaded"
    path = Path(result.path).resolve()
    assert path.parent == (tmp_path / "files").resolve()
    assert path.name.startswith("xc-_escape-")
    assert path.suffix == ".mp3"
    assert list(tmp_path.parent.glob("escape*")) == []
    assert leftovers(tmp_path / "files") == [path.name]


def test_url_path_segments_do_not_name_files(server, tmp_path):
    url = f"{server.base}/file/../../etc/passwd.mp3"
    result = download_file("xc-2", url, tmp_path / "files", "audio", FAST)
    assert result.status == "downloaded"
    assert Path(result.path) == tmp_path / "files" / "xc-2.mp3"
    assert not (tmp_path / "etc").exists()


def test_non_http_urls_rejected(tmp_path):
    for url in ("file:///etc/passwd", "ftp://example.org/a.mp3", "javascript:alert(1)"):
        result = download_file("xc-3", url, tmp_path / "files", "audio", FAST)
        assert (result.status, result.reason) == ("failed", "unsupported_url")
        assert result.attempts == 0
    assert leftovers(tmp_path / "files") == []


def test_redirect_to_file_scheme_rejected(server, tmp_path):
    result = fetch(server, tmp_path, "to-file")
    assert (result.status, result.reason) == ("failed", "unsupported_url")
    assert "file:///etc/passwd" in result.detail


def test_wrong_file_type_rejected(server, tmp_path):
    result = fetch(server, tmp_path, "file", name="bald-eagle.jpg")
    assert (result.status, result.reason) == ("failed", "wrong_file_type")
    assert result.detail == "expected audio, got jpg"
    image = fetch(server, tmp_path, "file", item_id="img-1", kind="image", name="bald-eagle.jpg")
    assert image.status == "downloaded"
    assert image.path.endswith("img-1.jpg")


def test_checksum_mismatch_rejected(server, tmp_path):
    result = fetch(server, tmp_path, "file", expected="0" * 64)
    assert (result.status, result.reason) == ("failed", "checksum_mismatch")
    assert leftovers(tmp_path / "files") == []


def test_many_items_parallel_then_skipped(server, tmp_path):
    behaviours = ["file", "missing", "flaky", "html", "file", "drop-once", "file", "missing"]
    items = pd.DataFrame({"item_id": [f"xc-{i}" for i in range(len(behaviours))],
                          "url": [server.url(b, f"bald-eagle.mp3?n={i}") for i, b in enumerate(behaviours)],
                          "expected_sha256": [None] * len(behaviours)})
    first = download_items(items, tmp_path / "files", "audio", FAST, progress=True)
    assert first["item_id"].tolist() == items["item_id"].tolist()
    assert first["status"].tolist() == ["downloaded", "failed", "downloaded", "failed", "downloaded", "downloaded",
                                        "downloaded", "failed"]
    assert first.loc[first["status"] == "failed", "reason"].tolist() == ["http_client_error", "html_page",
                                                                          "http_client_error"]
    for path, item_id in zip(first["path"].dropna(), first.loc[first["path"].notna(), "item_id"]):
        assert Path(path).parent.parent == tmp_path / "files" / "audio"
        assert Path(path).name == f"{safe_file_stem(item_id)}.mp3"

    hits_before = sum(server.hits.values())
    second = download_items(items, tmp_path / "files", "audio", FAST, progress=False)
    assert second.loc[first["status"] == "downloaded", "status"].eq("existing").all()
    assert second["path"].tolist() == first["path"].tolist()
    assert sum(server.hits.values()) - hits_before == 3  # only the three failed items are tried again


def test_existing_file_with_wrong_checksum_fetched_again(server, tmp_path):
    items = pd.DataFrame({"item_id": ["xc-9"], "url": [server.url("file")], "expected_sha256": [None]})
    path = Path(download_items(items, tmp_path / "files", "audio", FAST, progress=False)["path"][0])
    path.write_bytes(b"ID3" + bytes(100))
    items["expected_sha256"] = sha256_file(sample_dir() / "audio" / "bald-eagle.mp3")
    again = download_items(items, tmp_path / "files", "audio", FAST, progress=False)
    assert again["status"][0] == "downloaded"
    assert Path(again["path"][0]).read_bytes() == MP3
