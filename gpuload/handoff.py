"""The last stage of a run: how assembled batches reach the training loop (``pipeline=``).

``"native"`` hands the assembler's tensors over as they are (zero-copy). Any other stage is a
:class:`Handoff`: it says what it can carry (``check``, called with the options before the file is
opened) and wraps each run's iterator of batches (``wrap``). A user passes their own stage as
``pipeline=`` directly, or registers it under a name (:func:`register_handoff`). A name is
registered with a factory called when the name is looked up, so a stage's libraries load only when
it is chosen: ``gpuload/__init__.py`` registers ``"dali"``
(:class:`~gpuload.integrations.dali.DaliHandoff`) that way. The loader imports no stage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from gpuload.errors import ArgumentError

if TYPE_CHECKING:
    import torch

    from gpuload.device import Backend

NATIVE = "native"


@runtime_checkable
class Handoff(Protocol):
    """A stage between the assembler and the training loop."""

    def check(self, *, dtype: torch.dtype, output: str, batch_transform: Callable | None) -> None:
        """Raise :class:`~gpuload.errors.ArgumentError` (naming the option) for what the stage
        cannot carry: the matrices' ``dtype``, the ``output`` kind (``"dense"``, ``"sparse_csr"``),
        a ``batch_transform``."""

    def wrap(
        self, batches: Iterator[dict], *, names: Sequence[str], batch_size: int, backend: Backend
    ) -> Iterator[dict]:
        """The batches the loop receives from one run's ``batches`` (the matrices under
        ``names``; at most ``batch_size`` cells each; on ``backend``'s device). When the loop
        stops early the loader calls the returned iterator's ``close()`` (a generator's
        ``finally`` runs), then stops the run."""


class NativeHandoff:
    """The batches as assembled: zero-copy, anything carried."""

    def check(self, *, dtype: torch.dtype, output: str, batch_transform: Callable | None) -> None:
        return None

    def wrap(
        self, batches: Iterator[dict], *, names: Sequence[str], batch_size: int, backend: Backend
    ) -> Iterator[dict]:
        return batches


_FACTORIES: dict[str, Callable[[], Handoff]] = {NATIVE: NativeHandoff}


def register_handoff(name: str, factory: Callable[[], Handoff]) -> None:
    """Make ``pipeline=name`` choose the stage ``factory()`` builds (called at each look-up, so
    its imports wait until the name is chosen). A name registered again is replaced; ``"native"``
    cannot be."""
    if not isinstance(name, str) or not name or name == NATIVE:
        raise ArgumentError(f"a hand-off is registered under a new non-empty name, not {name!r}")
    if not callable(factory):
        raise ArgumentError(f"register_handoff({name!r}) needs a factory of a Handoff, got {factory!r}")
    _FACTORIES[name] = factory


def handoff_names() -> list[str]:
    """The names ``pipeline=`` accepts."""
    return list(_FACTORIES)


def resolve_handoff(pipeline: str | Handoff) -> Handoff:
    """The stage ``pipeline=`` names: a registered name or a :class:`Handoff` object."""
    if isinstance(pipeline, str) and pipeline in _FACTORIES:
        stage = _FACTORIES[pipeline]()
        if not isinstance(stage, Handoff):
            raise ArgumentError(f"the hand-off registered as {pipeline!r} has no check() and wrap()")
        return stage
    if not isinstance(pipeline, str) and isinstance(pipeline, Handoff):
        return pipeline
    raise ArgumentError(
        f"pipeline must be one of {handoff_names()} or a hand-off object with check() and wrap() "
        f"(gpuload.handoff.Handoff), got {pipeline!r}"
    )
