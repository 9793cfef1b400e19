"""Squall from Python: a client of a Squall cluster, an embedded local cluster, and
Python UDLs that run next to the data.

>>> import squall
>>> with squall.local_cluster(nodes=3) as cluster:
...     cluster.put("/demo/hello", b"world")
...     print(bytes(cluster.get("/demo/hello").value))

See :class:`Client`, :class:`AsyncClient`, :func:`local_cluster` and
:class:`UserDefinedLogic`.
"""

from ._native import (
    Blob,
    DLPackBuffer,
    Member,
    Object,
    Output,
    Pool,
    WatchEvent,
    __version__,
    format_version,
)
from .client import AsyncClient, Client, Watch
from .cluster import LocalCluster, local_cluster, squall_binary
from .udl import UserDefinedLogic
from .errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    ConnectError,
    InternalError,
    InvalidKeyError,
    NotFoundError,
    NotVersionedError,
    PoolError,
    ProtocolError,
    SquallError,
    TooLargeError,
    UdlError,
    UdlFailedError,
    UnavailableError,
    OutboxFullError,
    StorageFullError,
    CompactedError,
)

__all__ = [
    "AsyncClient",
    "AuthError",
    "BadRequestError",
    "Blob",
    "Client",
    "ConflictError",
    "DLPackBuffer",
    "ConnectError",
    "InternalError",
    "InvalidKeyError",
    "LocalCluster",
    "Member",
    "NotFoundError",
    "NotVersionedError",
    "Object",
    "Output",
    "Pool",
    "PoolError",
    "ProtocolError",
    "SquallError",
    "TooLargeError",
    "UdlError",
    "UdlFailedError",
    "UnavailableError",
    "OutboxFullError",
    "StorageFullError",
    "CompactedError",
    "UserDefinedLogic",
    "Watch",
    "WatchEvent",
    "__version__",
    "format_version",
    "local_cluster",
    "squall_binary",
]
