"""examples/bench/fetch_sdist.py (the benchmark peer's source download) reads the package index
pip is configured with, not a hard-coded registry: a local stand-in index, named through
PIP_INDEX_URL or a pip configuration file, serves the sdist; hashes are checked."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FETCH = REPO / "examples/bench/fetch_sdist.py"
SDIST = b"not really a tarball, only bytes with a known digest"
SHA256 = hashlib.sha256(SDIST).hexdigest()
FILENAME = "llama_cpp_python-0.3.36.tar.gz"


def serve(root: Path) -> Iterator[str]:
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()


def write_index(root: Path, listed_digest: str | None) -> None:
    """A PEP 503 index: /simple/llama-cpp-python/ links to /files/<sdist> (relative link)."""
    page = root / "simple/llama-cpp-python"
    page.mkdir(parents=True)
    fragment = f"#sha256={listed_digest}" if listed_digest else ""
    (page / "index.html").write_text(f'<html><body><a href="../../files/{FILENAME}{fragment}">{FILENAME}</a></body></html>')
    (root / "files").mkdir()
    (root / "files" / FILENAME).write_bytes(SDIST)


@pytest.fixture
def index(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "index"
    root.mkdir()
    yield from ((root, url) for url in serve(root))


def fetch(env: dict[str, str], dest: Path, sha256: str = SHA256) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_INDEX_URL")}
    return subprocess.run(
        [sys.executable, str(FETCH), "llama-cpp-python", "0.3.36", sha256, str(dest)],
        env={**clean, **env}, capture_output=True, text=True, timeout=120, check=False,
    )


def test_the_index_from_pip_index_url_serves_the_sdist(index: tuple[Path, str], tmp_path: Path) -> None:
    root, url = index
    write_index(root, SHA256)
    result = fetch({"PIP_INDEX_URL": url}, tmp_path / FILENAME)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / FILENAME).read_bytes() == SDIST


def test_the_index_from_a_pip_configuration_file(index: tuple[Path, str], tmp_path: Path) -> None:
    root, url = index
    write_index(root, SHA256)
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nindex-url = {url}\n")
    result = fetch({"PIP_CONFIG_FILE": str(config)}, tmp_path / FILENAME)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / FILENAME).read_bytes() == SDIST


def test_a_listed_digest_other_than_the_pinned_one_is_refused(index: tuple[Path, str], tmp_path: Path) -> None:
    root, url = index
    write_index(root, "0" * 64)
    result = fetch({"PIP_INDEX_URL": url}, tmp_path / FILENAME)
    assert result.returncode != 0 and "expected " + SHA256 in result.stderr
    assert not (tmp_path / FILENAME).exists()


def test_downloaded_bytes_with_another_digest_are_refused(index: tuple[Path, str], tmp_path: Path) -> None:
    root, url = index
    write_index(root, None)  # an index that lists no hashes
    result = fetch({"PIP_INDEX_URL": url}, tmp_path / FILENAME, sha256="f" * 64)
    assert result.returncode != 0 and "has sha256 " + SHA256 in result.stderr
    assert not (tmp_path / FILENAME).exists()
