"""The opt-in fetch of pytorch-fid's weights, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest
import torch

from tsearch.config import EvalConfig
from tsearch.errors import DataError
from tsearch.metrics.extractors import INCEPTION_ENV, inception_weights_path
from tsearch.metrics.inception_fetch import DOWNLOAD_ENV, URL_ENV, fetch_weights


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1; ``requests`` counts the GETs."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def _weights_file(root, tamper: bool = False):
    """A state-dict file named as torch.hub names files: NAME-<sha256 prefix>.pth."""
    tmp = root / "staging.pth"
    torch.save({"w": torch.arange(1000.0)}, tmp)
    data = tmp.read_bytes()
    tmp.unlink()
    prefix = hashlib.sha256(data).hexdigest()[:8]
    name = f"pt_inception-2015-12-05-{prefix}.pth"
    (root / name).write_bytes(data[:-7] + b"altered" if tamper else data)
    return name, data


def test_fetch_verifies_caches_and_is_used_once(server, tmp_path, monkeypatch):
    root, base, requests = server
    name, data = _weights_file(root)
    cache = tmp_path / "cache"
    path = fetch_weights(f"{base}/{name}", cache)
    assert path == cache / "inception" / name and path.read_bytes() == data
    assert fetch_weights(f"{base}/{name}", cache) == path
    assert requests == [f"/{name}"]  # the second call used the cache

    # Through the config: only when allowed, and an explicit path still wins.
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    monkeypatch.setenv(URL_ENV, f"{base}/{name}")
    monkeypatch.delenv(DOWNLOAD_ENV, raising=False)
    assert inception_weights_path(EvalConfig(cache_dir=str(cache))) is None
    assert inception_weights_path(EvalConfig(cache_dir=str(cache), inception_download=True)) == path
    monkeypatch.setenv(DOWNLOAD_ENV, "1")
    assert inception_weights_path(EvalConfig(cache_dir=str(cache))) == path
    given = tmp_path / "mine.pth"
    given.write_bytes(data)
    assert inception_weights_path(EvalConfig(inception_weights=str(given))) == given
    assert len(requests) == 1

    # A cached file that no longer verifies is fetched again.
    path.write_bytes(b"corrupted")
    assert fetch_weights(f"{base}/{name}", cache).read_bytes() == data
    assert len(requests) == 2


def test_a_download_that_fails_its_checksum_is_refused_and_not_kept(server, tmp_path):
    root, base, _ = server
    name, _ = _weights_file(root, tamper=True)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="refused") as info:
        fetch_weights(f"{base}/{name}", cache)
    assert "\n" not in str(info.value)
    assert not any((cache / "inception").iterdir())  # no file, no temp file


def test_unreachable_or_unverifiable_urls_are_one_line(server, tmp_path):
    _, base, _ = server
    with pytest.raises(DataError, match="could not download") as info:
        fetch_weights(f"{base}/pt_inception-2015-12-05-6726825d.pth", tmp_path)  # 404
    assert "eval.inception_weights" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="no sha256 prefix"):
        fetch_weights(f"{base}/weights.pth", tmp_path)
