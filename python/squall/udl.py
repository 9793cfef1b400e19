"""Python UDLs: logic the node runs the moment an object arrives, next to its data.

Write a class::

    import squall

    class Doubler(squall.UserDefinedLogic):
        def handle(self, obj, ctx):
            # obj.blob: read-only numpy uint8 array over the node's buffer (no copy)
            ctx.emit(obj.key_suffix, obj.blob * 2)

upload it (``squall udl upload doubler.py --entry Doubler``, or
:meth:`squall.Client.upload_python_udl`) and name the UUID it gets in a DFG vertex.

``obj`` has ``key``, ``key_suffix`` (below the vertex pathname), ``pathname``,
``version``, ``timestamp_us``, ``previous_version``, ``previous_version_by_key``,
``message_id``, ``sender``, ``value`` (a read-only buffer) and ``blob`` (a numpy
``uint8`` array over the same memory). ``ctx`` has ``emit(key, value)`` (to every
destination of the vertex as ``destination/key``; a numpy array is not copied),
``get(key)``, ``put(key, value)``, ``config`` (the vertex's configuration of the UDL),
``worker_id`` and ``resources``.

Concurrency: a node runs its Python UDLs in one embedded interpreter, so one invocation
holds the GIL at a time; code that releases it (numpy, torch, ``ctx.get`` / ``put`` /
``emit``) overlaps with the others. Importing the module and constructing the class
happen at the first invocation on a UDL worker thread. Classes written for Cascade
(``derecho.cascade.udl.UserDefinedLogic`` with ``ocdpo_handler(**kwargs)``) run
unchanged.
"""

from __future__ import annotations

from typing import Any, Dict


class UserDefinedLogic:
    """Base class of Squall's Python UDLs (optional: any class with ``__init__(config)``
    and ``handle(obj, ctx)`` will do)."""

    def __init__(self, config: Dict[str, Any]) -> None:
        #: The vertex's configuration of this UDL (``user_defined_logic_config_list``).
        self.config = config

    def handle(self, obj: Any, ctx: Any) -> None:
        """Called for every object arriving under the vertex's pathname."""
        raise NotImplementedError("a UDL class implements handle(obj, ctx)")
