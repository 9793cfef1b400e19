"""Compatibility namespace for code written against Cascade's Python API.

Cascade (Cornell's Derecho-based object store) ships its Python client as
``derecho.cascade``; Squall provides the same module names over its own client, so
such code runs unchanged against a Squall cluster. See :mod:`derecho.cascade`.
"""
