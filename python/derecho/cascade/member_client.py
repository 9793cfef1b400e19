"""Cascade's ``derecho.cascade.member_client``: the client API for code running on a
node, such as a Python UDL.

It is the same :class:`~derecho.cascade.external_client.ServiceClientAPI` as the
external client's: Squall clients reach the cluster the same way wherever they run.
``ServiceClientAPI()`` connects to ``$SQUALL_CLUSTER`` (default ``127.0.0.1:7200``),
which the node hosting the UDL is expected to point at itself.
"""

from .external_client import (
    CURRENT_VERSION,
    INVALID_NODE_ID,
    MEMBER_SELECTION_POLICIES,
    QueryResults,
    ServiceClientAPI,
    TimestampLogger,
)

__all__ = [
    "CURRENT_VERSION",
    "INVALID_NODE_ID",
    "MEMBER_SELECTION_POLICIES",
    "QueryResults",
    "ServiceClientAPI",
    "TimestampLogger",
]
