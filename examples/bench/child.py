"""Our side in a child process that keeps one engine loaded between measurements.

The benchmark alternates the two sides measurement by measurement (rounds.py), so our engine
must outlive each one: the parent starts ``python SCRIPT --serve WORKLOAD_JSON``, the child
loads the engine, answers one JSON line ``{"ready": true, ...}``, then serves requests, one
JSON line each way: ``{"op": NAME, "args": {...}}`` in, ``{"result": {...}}`` or ``{"error":
"..."}`` out. The child is a process of its own so that its peak RSS is the engine's alone.
Anything else the child (or the native library) writes to stdout goes to stderr: the protocol
has a file descriptor of its own.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Self

SERVE_FLAG = "--serve"

# Handler of one request: its keyword arguments come from the request's "args".
Op = Callable[..., dict[str, Any]]


class ChildError(RuntimeError):
    """The child failed a request, died, or did not answer in time."""


class OursChild:
    """Parent side: a running child and :meth:`call` to run one measurement in it."""

    def __init__(self, script: Path, work: dict[str, Any], timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.process = subprocess.Popen(
            [sys.executable, str(script), SERVE_FLAG, json.dumps(work)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            self.hello = self._read_line("loading the engine")
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Runs ``op`` in the child and returns its result."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise ChildError(f"our child process exited with {self.process.wait()} before `{op}`") from None
        reply = self._read_line(op)
        if "error" in reply:
            raise ChildError(f"our child process failed `{op}`: {reply['error']}")
        return reply["result"]

    def _read_line(self, what: str) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], self.timeout_s)
        if not ready:
            raise ChildError(f"our child process did not finish `{what}` within {self.timeout_s:.0f} s")
        line = stdout.readline()
        if not line:
            raise ChildError(f"our child process exited with {self.process.wait()} during `{what}`")
        return json.loads(line)

    def stop(self) -> None:
        """Closes the child's input (it closes its engine and exits), killing it if it hangs."""
        if self.process.stdin and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def is_serve_call(argv: list[str]) -> bool:
    return len(argv) == 3 and argv[1] == SERVE_FLAG


def workload_of(argv: list[str]) -> dict[str, Any]:
    """The workload the parent passed (``SCRIPT --serve WORKLOAD_JSON``)."""
    return json.loads(argv[2])


def protocol_stream() -> IO[str]:
    """The child's reply channel: the original stdout, with fd 1 pointed at stderr afterwards so
    that stray prints cannot corrupt a reply."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return replies


def serve(ops: dict[str, Op], hello: dict[str, Any], replies: IO[str]) -> None:
    """Child side: announces ``hello``, then answers requests until the parent closes stdin."""
    replies.write(json.dumps({"ready": True, **hello}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        op = ops.get(request["op"])
        try:
            if op is None:
                raise KeyError(f"unknown op {request['op']!r} (known: {', '.join(sorted(ops))})")
            reply: dict[str, Any] = {"result": op(**request.get("args", {}))}
        except Exception as error:  # reported to the parent, which raises it
            traceback.print_exc(file=sys.stderr)
            reply = {"error": f"{type(error).__name__}: {error}"}
        replies.write(json.dumps(reply) + "\n")
