"""Cascade's Python API over Squall.

* :mod:`derecho.cascade.external_client` -- ``ServiceClientAPI`` for programs outside
  the cluster, plus ``CURRENT_VERSION`` and ``TimestampLogger``.
* :mod:`derecho.cascade.member_client` -- the same client for code running inside a
  UDL on a node.
* :mod:`derecho.cascade.udl` -- ``UserDefinedLogic``, the base class of Python UDLs.

The client is a thin layer over :class:`squall.Client`; where Squall's model differs
from Cascade's (versions, subgroup numbering, membership) the differences are spelled
out in :mod:`derecho.cascade.external_client`.
"""
