"""The user-facing :class:`Registry`: model names from the cache on top of the compiled one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from . import _core
from ._engine import PathLike, _resolve

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._core import EngineSettings

#: Ollama's keep-alive: seconds (negative: forever, ``0``: unload when idle) or ``"5m"``.
KeepAlive = Union[float, str, None]


class Registry(_core.Registry):
    """Several models by name, each its own engine, loaded on first use (:meth:`get`) or on
    :meth:`load`, unloaded after ``keep_alive`` idle (Ollama's semantics: seconds or ``"5m"``,
    ``0`` unloads as soon as the model is idle, negative never; default 5 minutes) and, least
    recently used first, when loading another would exceed ``memory_budget_bytes``.

    >>> registry = cortexstream.Registry()
    >>> registry.register("chat", "smollm2", context_length=2048)
    >>> registry.register("minilm", "minilm", embedding=True)
    >>> with registry.get("chat") as lease:
    ...     print(lease.engine.generate("Hello", max_tokens=8).text)

    ``model`` is a name from the model cache or a path. Hold the :class:`Lease` while the
    model works for you: unloading never cuts its requests. :meth:`unregister` forgets a name
    (its running requests finish first), :meth:`metrics` reads the loaded engines' counters
    without touching their keep-alive, and :meth:`shutdown` closes and ends what still runs.
    """

    def register(
        self,
        name: str,
        model: PathLike,
        *,
        embedding: Optional[bool] = None,
        keep_alive: KeepAlive = None,
        **settings: Unpack[EngineSettings],
    ) -> None:
        """Registers ``model`` under ``name`` with the engine settings of :class:`Engine`
        (an embedding model takes only ``threads``); a bad setting raises now, naming it."""
        super().register(name, _resolve(model), embedding=embedding, keep_alive=keep_alive, **settings)

    def __repr__(self) -> str:
        return f"Registry({self.names()!r})"


__all__ = ["KeepAlive", "Registry"]
