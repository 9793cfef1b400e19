"""Cascade's ``derecho.cascade.member_client``: the client API for code running on a
node, such as a Python UDL.

It is the same :class:`~derecho.cascade.external_client.ServiceClientAPI` as the
external client's: Squall clients reach the cluster the same way wherever they run.
``ServiceClientAPI()`` connects to ``$SQUALL_CLUSTER`` (default ``127.0.0.1:7200``),
which the node hosting the UDL is expected to point at itself.
"""

from . import external_client
from .external_client import *  # noqa: F401,F403 - the same names, re-exported

__all__ = list(external_client.__all__)
