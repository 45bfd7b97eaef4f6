"""The core's structured log records reach Python logging, with their fields, off the engine
thread; a raising handler does not break generation."""

from __future__ import annotations

import logging
import sys
from typing import Iterator, List

import pytest

import cortexstream
from cortexstream import _core, logs

PROMPT = "The secret ingredient of the soup is"


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Raising(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError("a broken log handler")


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("cortexstream")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield logger
    logger.setLevel(level)
    logs.forward_logs()


def test_a_requests_records_arrive_with_their_fields(engine: cortexstream.Engine, logger: logging.Logger) -> None:
    capture = Capture()
    logger.addHandler(capture)
    try:
        logs.forward_logs(logging.DEBUG)
        done = engine.generate(PROMPT, max_tokens=3, temperature=0, tag="py-req-1")
        logs.stop_forwarding()  # delivers what is queued, then returns
    finally:
        logger.removeHandler(capture)
    ours = [r for r in capture.records if r.fields.get("tag") == "py-req-1"]  # type: ignore[attr-defined]
    assert [r.getMessage() for r in ours] == ["queued", "prefill start", "first token", "finished"]
    assert {r.name for r in ours} == {"cortexstream.request"}
    assert len({r.request_id for r in ours}) == 1  # type: ignore[attr-defined]
    queued, _, first, finished = ours
    assert (first.levelno, finished.levelno) == (logging.DEBUG, logging.INFO)
    assert queued.max_tokens == 3  # type: ignore[attr-defined]
    assert finished.reason == "length"  # type: ignore[attr-defined]
    assert finished.completion_tokens == 3 == done.usage.completion_tokens  # type: ignore[attr-defined]
    assert finished.prompt_tokens == done.usage.prompt_tokens  # type: ignore[attr-defined]
    assert finished.fields["reason"] == "length"  # type: ignore[attr-defined]
    assert all("secret ingredient" not in str(r.__dict__) for r in capture.records)


def test_records_below_the_forwarded_level_are_not_sent(engine: cortexstream.Engine, logger: logging.Logger) -> None:
    capture = Capture()
    logger.addHandler(capture)
    try:
        logs.forward_logs(logging.INFO)
        engine.generate(PROMPT, max_tokens=2, tag="py-req-2")
        logs.stop_forwarding()
    finally:
        logger.removeHandler(capture)
    messages = [r.getMessage() for r in capture.records if r.fields.get("tag") == "py-req-2"]  # type: ignore[attr-defined]
    assert messages == ["queued", "finished"]


def test_a_raising_handler_does_not_break_generation(
    engine: cortexstream.Engine, logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: List[BaseException] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.append(unraisable.exc_value))
    raising = Raising()
    logger.addHandler(raising)
    try:
        logs.forward_logs(logging.DEBUG)
        first = engine.generate(PROMPT, max_tokens=4, temperature=0)
        second = engine.generate(PROMPT, max_tokens=4, temperature=0)
        logs.stop_forwarding()
    finally:
        logger.removeHandler(raising)
    assert first.finish_reason == second.finish_reason == "length"
    assert first.text == second.text
    assert reported and all(isinstance(e, RuntimeError) for e in reported)


def test_a_bad_level_is_refused_naming_it() -> None:
    with pytest.raises(cortexstream.InvalidRequestError) as error:
        _core.set_log_handler(9, lambda *record: None)
    assert error.value.param == "level"


def test_a_bad_tag_is_refused_naming_it(engine: cortexstream.Engine) -> None:
    with pytest.raises(cortexstream.InvalidRequestError) as error:
        engine.generate(PROMPT, max_tokens=1, tag=5)
    assert error.value.param == "tag"
