"""Cascade's ``cascade_context`` module for Python UDLs: ``emit`` sends a value to every
destination of the running UDL's vertex (``destination/key``), without copying a numpy
array. Cascade's extra keyword arguments (``version``, ``timestamp_us``,
``previous_version``, ``previous_version_by_key``, ``message_id``) are accepted and
ignored: Squall assigns versions at the destination and derives message ids from the
input, so a re-run is applied once."""

from typing import Any

from squall._native import DLPackBuffer
from squall._native import cascade_emit as _emit
from squall._native import current_dlpack as _current_dlpack


def emit(key: str, value: Any, **cascade_kwargs: Any) -> None:
    """Sends ``value`` (bytes-like or str) as ``key`` to the vertex's destinations."""
    _emit(key, value, **cascade_kwargs)


def dlpack() -> DLPackBuffer:
    """Squall's addition: the running handler's input as a DLPack buffer
    (``torch.from_dlpack(cascade_context.dlpack())``, ``numpy.from_dlpack(...)``), a 1-D
    ``uint8`` tensor over the value without a copy. When the object's pool caches it on
    a GPU, it is the GPU copy, valid during the handler call only (copy what you keep).
    ``RuntimeError`` outside a handler (or on another thread)."""
    buffer = _current_dlpack()
    if buffer is None:
        raise RuntimeError("cascade_context.dlpack() called outside a UDL invocation (or on another thread)")
    return buffer


def device() -> str:
    """Squall's addition: where :func:`dlpack` is, ``"cpu"`` or ``"cuda:N"``."""
    return dlpack().device


__all__ = ["device", "dlpack", "emit"]
