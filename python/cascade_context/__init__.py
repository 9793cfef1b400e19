"""Cascade's ``cascade_context`` module for Python UDLs: ``emit`` sends a value to every
destination of the running UDL's vertex (``destination/key``), without copying a numpy
array. Cascade's extra keyword arguments (``version``, ``timestamp_us``,
``previous_version``, ``previous_version_by_key``, ``message_id``) are accepted and
ignored: Squall assigns versions at the destination and derives message ids from the
input, so a re-run is applied once."""

from typing import Any

from squall._native import cascade_emit as _emit


def emit(key: str, value: Any, **cascade_kwargs: Any) -> None:
    """Sends ``value`` (bytes-like or str) as ``key`` to the vertex's destinations."""
    _emit(key, value, **cascade_kwargs)


__all__ = ["emit"]
