"""Squall's exceptions: one base class, one subclass per kind of failure.

Every error a node or the client reports is a :class:`SquallError` with a stable
``code`` (the wire protocol's error code name, e.g. ``"no_such_pool"``); match on the
class or on ``code``, never on the message. Wrong argument types are Python's own
``TypeError`` / ``ValueError``.
"""

from __future__ import annotations

from typing import Optional


class SquallError(Exception):
    """Base of every error Squall reports."""

    code: str = "error"

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequestError(SquallError):
    """The request was malformed or asked for something that makes no sense."""

    code = "bad_request"


class AuthError(SquallError):
    """No valid token (``unauthenticated``) or a role too weak (``forbidden``)."""

    code = "unauthenticated"


class InvalidKeyError(SquallError):
    """A key that is not an absolute path, or too long."""

    code = "invalid_key"


class PoolError(SquallError):
    """About object pools: none for the key, none at the path, exists, nested, invalid,
    or changed (removed and made again) under a write that kept failing to catch up."""

    code = "no_such_pool"


class TooLargeError(SquallError):
    """A key, value or frame over the cluster's configured limit."""

    code = "too_large"


class ConflictError(SquallError):
    """A conditional put or remove whose condition failed.

    ``current_version`` is the version that made it fail (``None``: the key does not
    exist).
    """

    code = "conflict"

    def __init__(
        self, message: str, code: Optional[str] = None, current_version: Optional[int] = None
    ) -> None:
        super().__init__(message, code)
        self.current_version = current_version


class NotFoundError(SquallError):
    """The key (``no_such_key``), UDL (``no_such_udl``) or DFG (``no_such_dfg``) is not there."""

    code = "no_such_key"


class NotVersionedError(SquallError):
    """A read by version, time or stability of a pool that keeps no versions."""

    code = "not_versioned"


class UdlError(SquallError):
    """A plugin or ``dfgs.json`` refused whole, with the reason."""

    code = "invalid_dfg"


class UdlFailedError(UdlError):
    """A UDL run by :meth:`Client.call` raised or returned an error (its message is
    in this one); the node and its other UDLs go on."""

    code = "udl_failed"


class UnavailableError(SquallError):
    """No node could serve the request (down, unreachable, or a view change); retry."""

    code = "unavailable"


class OutboxFullError(SquallError):
    """The WAN outbox towards a remote site is full, and the cluster is configured to
    refuse new inputs then (``wan.outbox_full = "reject"``); retry once it drains."""

    code = "outbox_full"


class StorageFullError(SquallError):
    """A node that would log the write has its data disk under its reserve
    (``limits.disk_reserve_bytes``; the message names the node). Reads and volatile pools
    go on; writes there are refused until space is freed on that node."""

    code = "storage_full"


class CompactedError(SquallError):
    """A read of the past (by version, time, or a listing or watch from then) before
    the point its pool's history was compacted to (:meth:`Client.compact`): what it
    needs is no longer kept."""

    code = "compacted"


class ConnectError(UnavailableError):
    """The client could not connect to any node it was given."""

    code = "connect"


class ProtocolError(SquallError):
    """A node answered something the client does not understand."""

    code = "protocol"


class InternalError(SquallError):
    """A node failed internally (see its log)."""

    code = "internal"


#: Error code name -> exception class (used by the native module).
BY_CODE = {
    "bad_request": BadRequestError,
    "unauthenticated": AuthError,
    "forbidden": AuthError,
    "refused": AuthError,
    "invalid_key": InvalidKeyError,
    "no_pool_for_key": PoolError,
    "no_such_pool": PoolError,
    "pool_exists": PoolError,
    "nested_pool": PoolError,
    "invalid_pool": PoolError,
    "pool_changed": PoolError,
    "too_large": TooLargeError,
    "conflict": ConflictError,
    "no_such_key": NotFoundError,
    "no_such_udl": NotFoundError,
    "no_such_dfg": NotFoundError,
    "not_versioned": NotVersionedError,
    "invalid_dfg": UdlError,
    "invalid_plugin": UdlError,
    "udl_failed": UdlFailedError,
    "not_here": UnavailableError,
    "unavailable": UnavailableError,
    "outbox_full": OutboxFullError,
    "storage_full": StorageFullError,
    "compacted": CompactedError,
    "connect": ConnectError,
    "protocol": ProtocolError,
    "internal": InternalError,
}


def _make(code: str, message: str, current_version: Optional[int] = None) -> SquallError:
    cls = BY_CODE.get(code, SquallError)
    if cls is ConflictError:
        return ConflictError(message, code, current_version)
    return cls(message, code)
