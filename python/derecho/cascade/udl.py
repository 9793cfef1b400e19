"""Cascade's ``derecho.cascade.udl``: the base class of Python user-defined logic.

A Python UDL is a subclass of :class:`UserDefinedLogic` named in a ``dfgs.json``
vertex's ``user_defined_logic_config_list`` entry (``python_path``, ``module``,
``entry_class``); the node constructs it once with that entry as JSON text and calls
:meth:`UserDefinedLogic.ocdpo_handler` for every object that arrives under the
vertex's pathname. A handler sends outputs to the vertex's destinations with
``cascade_context.emit(key, value)`` and may use the cluster through
:class:`derecho.cascade.member_client.ServiceClientAPI`.
"""

from __future__ import annotations

import abc
from typing import Any


class UserDefinedLogic(abc.ABC):
    """Base class of Python UDLs.

    Subclasses implement :meth:`ocdpo_handler`, and may override ``__init__`` (calling
    ``super().__init__(conf_str)``) and ``__del__`` to set up and release resources.
    """

    def __init__(self, conf_str: str) -> None:
        """``conf_str``: this UDL's configuration, the JSON text of its entry in the
        vertex's ``user_defined_logic_config_list``; kept as ``self.conf_str``."""
        self.conf_str = conf_str

    @abc.abstractmethod
    def ocdpo_handler(self, **kwargs: Any) -> None:
        """Handles one object, off the critical data path. Keyword arguments:

        ``sender`` (int)
            Node id of the node that sent the object.
        ``pathname`` (str)
            The vertex pathname (key prefix) the object matched.
        ``key`` (str)
            The object's key.
        ``version`` (int)
            The object's version.
        ``timestamp_us`` (int)
            The object's timestamp in microseconds.
        ``previous_version`` (int)
            The shard's version before this object (``-1`` if none).
        ``previous_version_by_key`` (int)
            This key's previous version (``-1`` if none).
        ``blob`` (numpy.ndarray)
            The value: a read-only 1-D ``uint8`` array sharing the object's memory (no
            copy); copy what must be kept after the call returns.
        ``worker_id`` (int)
            The id of the worker thread running the handler.
        ``message_id`` (int)
            The message id the object carries (``0`` if none).

        Squall adds no keyword argument (a handler with an explicit signature keeps
        working). The value as a DLPack tensor, on the GPU when the object's pool caches
        it there, is ``cascade_context.dlpack()`` (``torch.from_dlpack(...)``; GPU memory
        is valid during the call only), and ``cascade_context.device()`` says where.
        """
