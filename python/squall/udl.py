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
``message_id``, ``sender``, ``value`` (a read-only buffer), ``blob`` (a numpy
``uint8`` array over the same memory), ``dlpack``, ``device`` and ``tensor()`` (below).
``ctx`` has ``emit(key, value)`` (to every
destination of the vertex as ``destination/key``; a numpy array is not copied),
``get(key)``, ``put(key, value)``, ``config`` (the vertex's configuration of the UDL),
``worker_id`` and ``resources``.

Tensors (DLPack): ``obj.dlpack`` is a :class:`squall.DLPackBuffer` (``__dlpack__`` /
``__dlpack_device__``) over the value, a 1-D ``uint8`` tensor of its length:

- ``torch.from_dlpack(obj.dlpack)`` (or ``obj.tensor()``) and
  ``numpy.from_dlpack(obj.dlpack)`` wrap it without a copy;
- ``obj.device`` says where it is: ``"cuda:N"`` when the object's pool caches it on a GPU
  (the pool's ``gpu_cache`` option: the node hands the UDL its copy in GPU memory), else
  ``"cpu"`` (the host buffer, the same memory as ``obj.blob``);
- GPU memory is lent for the call only: a tensor over it must not outlive ``handle``
  (copy what you keep: ``t.clone()``, ``t.cpu()``); ``obj.dlpack.__dlpack__`` raises
  ``BufferError`` after the call, and an invocation that returns with such a tensor still
  referenced (in ``self``, a global) fails with that reason. Host memory has no such
  limit: an array over it keeps it alive;
- numpy >= 2.1 imports it read-only (DLPack 1.0's read-only flag); PyTorch has no
  read-only tensors: do not write into the input, it is the stored object.

::

    class Classify(squall.UserDefinedLogic):
        def __init__(self, config):
            super().__init__(config)
            self.model = make_model().to("cuda").eval()   # once per UDL instance

        def handle(self, obj, ctx):
            x = obj.tensor()                 # CUDA tensor over the cached copy, no copy
            if x.device.type != "cuda":
                x = x.to("cuda")             # a host object: one upload
            with torch.no_grad():
                scores = self.model(x.view(1, 32, 32, 3))
            ctx.emit(obj.key_suffix, scores.cpu().numpy())

Cascade-style classes keep Cascade's keyword arguments and reach the same buffer with
``cascade_context.dlpack()`` (and ``cascade_context.device()``).

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
