"""Starts an installed `cortexstream-server` console script on a free port and asks it for one
completion (standard library only, so it runs in a venv holding just the package and its
`server` extra).

    python tests/server/check_installed.py PATH/TO/cortexstream-server
"""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

STARTUP_SECONDS = 180  # a hang guard, not a speed check


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(base: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        assert server.poll() is None, f"the server exited with status {server.returncode}"
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        assert time.monotonic() < deadline, "the server did not become healthy"
        time.sleep(0.2)


def complete(base: str) -> dict:
    body = json.dumps({"model": "smollm2", "prompt": "The quick brown fox", "max_tokens": 4, "temperature": 0})
    request = urllib.request.Request(
        f"{base}/v1/completions", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=STARTUP_SECONDS) as response:
        return json.loads(response.read())


def main(console_script: str) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([console_script, "--port", str(port), "--embedding-model", "none", "--log-level", "warning"])
    try:
        wait_until_healthy(base, server)
        answer = complete(base)
        assert answer["usage"]["completion_tokens"] == 4, answer
        assert answer["choices"][0]["finish_reason"] == "length", answer
        print("installed cortexstream-server answered:", json.dumps(answer["choices"][0]["text"]))
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main(sys.argv[1])
