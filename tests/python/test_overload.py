"""Past the queue limit a submit fails at once with OverloadedError instead of queueing without
bound; the engine keeps serving the requests it accepted (issue 9, "Overload policy")."""

from __future__ import annotations

import cortexstream
from cortexstream.errors import OverloadedError
from conftest import wait_until

import pytest

LONG = dict(temperature=0, max_tokens=2000, ignore_eos=True)


def test_submit_past_max_queue_raises_overloaded_and_accepted_work_continues():
    with cortexstream.Engine(embedding_model=False, kv_cache_tokens=1024, max_running=1, max_queue=1) as engine:
        running = engine.stream("Tell me a long story.", **LONG)
        assert wait_until(lambda: engine.metrics()["running"] == 1)
        waiting = engine.stream("Tell me another story.", **LONG)  # takes the one queue slot
        with pytest.raises(OverloadedError) as excinfo:
            engine.stream("One too many.", **LONG)
        assert excinfo.value.code == "overloaded"
        assert "max_queue = 1" in str(excinfo.value)
        assert engine.metrics()["requests_rejected"] >= 1
        # The rejection lost nothing: cancelling the running request lets the queued one run.
        running.cancel()
        assert list(running)[-1].finish_reason == "cancelled"
        assert next(waiting).token_id is not None
        waiting.cancel()
        assert list(waiting)[-1].finish_reason == "cancelled"
        # And the queue has room again.
        assert engine.generate("The quick brown fox", temperature=0, max_tokens=6).text == " with a quick brown bear."
