"""Image classification as a Python UDL, next to the data, on the GPU when there is one.

``TinyNet`` is a small convolutional network for 32x32 RGB images (``uint8``, HWC, 3072
bytes): two 3x3 convolutions with stride 2 and ReLU (3 -> 8 -> 16 channels), a global
average pool and a linear layer to ``classes`` scores. Its weights are drawn from
``numpy.random.default_rng(seed)``: no download, and the same seed gives the same network
everywhere. There are two implementations of the same network:

- :func:`forward_numpy` (numpy only), used where torch is not importable;
- :class:`TorchTinyNet` (torch), with the very same weights, used where torch is; on a GPU
  when the input is on one (a GPU-cached pool) or when the machine has one.

Both give the same scores up to float32 rounding (about 1e-5 here), so the same class
except for near ties.

The UDLs (:class:`Classify`, Squall's API, and :class:`CascadeClassify`, Cascade's) build
the network once per UDL instance (in ``__init__``: warm across invocations) and, for
every image arriving under their vertex, emit ``{"class", "score", "backend", "device",
"start_ns", "done_ns"}`` as JSON to the vertex's destinations under the same key suffix.
The image reaches the network without a copy: ``torch.from_dlpack(obj.dlpack)`` is a
tensor over the object's copy in GPU memory for a GPU-cached pool (the host buffer
otherwise), and the numpy path reads ``numpy.from_dlpack(obj.dlpack)``, the host buffer.

On a GPU the warm network is also captured once as a CUDA graph (input buffer, network,
softmax and arg-max): an image costs one copy into the graph's input, one replay and one
read of ``[score, class]``, instead of a dozen kernel launches from Python and two
synchronisations. :meth:`Classifier.infer` is what both the UDL and the Ray actor of
``bench/python/bench_gpu.py`` run.

Configuration (the vertex's ``user_defined_logic_config_list`` entry): ``seed`` (default
7), ``classes`` (10), ``backend`` (``"auto"``: torch if importable, else numpy; or
``"torch"``, ``"numpy"``), ``cuda_graph`` (default true; false runs the network eagerly).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

try:  # optional: the numpy implementation serves without it
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

import squall

IMAGE_SHAPE = (32, 32, 3)  # height, width, channels; uint8
IMAGE_BYTES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
CHANNELS = (3, 8, 16)
DEFAULT_SEED = 7
DEFAULT_CLASSES = 10
# Inputs are scaled to [0, 1] then standardised with these (one value for all channels).
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


def make_weights(seed: int = DEFAULT_SEED, classes: int = DEFAULT_CLASSES) -> Dict[str, np.ndarray]:
    """The network's parameters (float32), He-initialised from ``seed``."""
    rng = np.random.default_rng(seed)

    def he(shape: Tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    c0, c1, c2 = CHANNELS
    return {
        "conv1.weight": he((c1, c0, 3, 3), c0 * 9),
        "conv1.bias": (rng.standard_normal(c1) * 0.1).astype(np.float32),
        "conv2.weight": he((c2, c1, 3, 3), c1 * 9),
        "conv2.bias": (rng.standard_normal(c2) * 0.1).astype(np.float32),
        "fc.weight": he((classes, c2), c2),
        "fc.bias": (rng.standard_normal(classes) * 0.1).astype(np.float32),
    }


def make_images(count: int, seed: int = 1) -> np.ndarray:
    """``count`` test images (``uint8``, ``(count, 32, 32, 3)``): smooth colour gradients
    with noise, different enough that the network does not give them all one class."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:32, 0:32].astype(np.float32) / 31.0
    images = np.empty((count, *IMAGE_SHAPE), np.uint8)
    for i in range(count):
        a, b, c = rng.uniform(-1.0, 1.0, 3), rng.uniform(-1.0, 1.0, 3), rng.uniform(0, 1, 3)
        img = c[None, None, :] + a[None, None, :] * ys[..., None] + b[None, None, :] * xs[..., None]
        img = img + rng.normal(0.0, 0.05, IMAGE_SHAPE)
        images[i] = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    return images


def _conv3x3_stride2(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``torch.nn.functional.conv2d(x, weight, bias, stride=2, padding=1)`` for one
    image ``x`` of shape (C, H, W)."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    windows = windows[:, ::2, ::2]  # (C, H/2, W/2, 3, 3)
    out = np.einsum("chwij,ocij->ohw", windows, weight, optimize=True)
    return out + bias[:, None, None]


def forward_numpy(weights: Dict[str, np.ndarray], image: np.ndarray) -> np.ndarray:
    """Scores (float32, one per class) of one ``uint8`` image: 3072 bytes, HWC."""
    x = np.asarray(image, np.uint8).reshape(IMAGE_SHAPE).astype(np.float32) / 255.0
    x = ((x - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1)  # CHW
    x = np.maximum(_conv3x3_stride2(x, weights["conv1.weight"], weights["conv1.bias"]), 0.0)
    x = np.maximum(_conv3x3_stride2(x, weights["conv2.weight"], weights["conv2.bias"]), 0.0)
    pooled = x.mean(axis=(1, 2))
    return (weights["fc.weight"] @ pooled + weights["fc.bias"]).astype(np.float32)


def softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max())
    return e / e.sum()


def classify_numpy(weights: Dict[str, np.ndarray], image: np.ndarray) -> Tuple[int, float]:
    """``(class id, probability)`` of one image with the numpy implementation: what the
    UDL emits on a machine without torch."""
    probs = softmax(forward_numpy(weights, image).astype(np.float64))
    best = int(np.argmax(probs))
    return best, float(probs[best])


if torch is not None:

    class TorchTinyNet(torch.nn.Module):
        """The same network in torch; takes a batch of ``uint8`` HWC images (N, 32, 32, 3)
        on any device."""

        def __init__(self, weights: Dict[str, np.ndarray]) -> None:
            super().__init__()
            c0, c1, c2 = CHANNELS
            self.conv1 = torch.nn.Conv2d(c0, c1, 3, stride=2, padding=1)
            self.conv2 = torch.nn.Conv2d(c1, c2, 3, stride=2, padding=1)
            self.fc = torch.nn.Linear(c2, weights["fc.weight"].shape[0])
            self.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})

        def forward(self, images: "torch.Tensor") -> "torch.Tensor":
            x = images.permute(0, 3, 1, 2).float() / 255.0
            x = (x - PIXEL_MEAN) / PIXEL_STD
            x = torch.relu(self.conv1(x))
            x = torch.relu(self.conv2(x))
            return self.fc(x.mean(dim=(2, 3)))


class Classifier:
    """The network, built once, and how to run it on a UDL's input."""

    def __init__(self, config: Dict[str, Any]) -> None:
        self.seed = int(config.get("seed", DEFAULT_SEED))
        self.classes = int(config.get("classes", DEFAULT_CLASSES))
        backend = config.get("backend", "auto")
        if backend not in ("auto", "torch", "numpy"):
            raise ValueError(f"backend must be auto, torch or numpy, not {backend!r}")
        if backend == "torch" and torch is None:
            raise ImportError("backend 'torch' asked for, but torch is not importable")
        self.backend = "torch" if backend in ("auto", "torch") and torch is not None else "numpy"
        self.weights = make_weights(self.seed, self.classes)
        self.cuda_graph = bool(config.get("cuda_graph", True))
        # torch: one copy of the network per device it has run on (built on first use).
        self._torch_models: Dict[str, Any] = {}
        # CUDA: the captured graph per device, (input, graph, output), or None where the
        # capture failed (then the network runs eagerly); replays share the input and
        # output buffers, so one runs at a time.
        self._graphs: Dict[str, Any] = {}
        self._graph_lock = threading.Lock()
        self._default_device = "cpu"
        if self.backend == "torch" and torch.cuda.is_available():
            self._default_device = "cuda:0"
            self._model_on(self._default_device)  # warm now, not at the first image
            if self.cuda_graph:
                self._graph_on(self._default_device)

    def _model_on(self, device: str):
        model = self._torch_models.get(device)
        if model is None:
            model = TorchTinyNet(self.weights).to(device).eval()
            self._torch_models[device] = model
        return model

    def _head(self, model, images: "torch.Tensor") -> "torch.Tensor":
        """``[score, class]`` of one image, as one tensor (read with one synchronisation)."""
        probs = torch.softmax(model(images).double(), dim=1)[0]
        score, best = torch.max(probs, dim=0)
        return torch.stack([score, best.double()])

    def _graph_on(self, device: str):
        """The network captured as a CUDA graph on ``device`` (built on first use), or None
        if capturing failed there."""
        if device in self._graphs:
            return self._graphs[device]
        model = self._model_on(device)
        captured = None
        try:
            static_in = torch.zeros((1, *IMAGE_SHAPE), dtype=torch.uint8, device=device)
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.inference_mode():
                with torch.cuda.stream(side):
                    for _ in range(3):  # warm-up on a side stream, as capture requires
                        self._head(model, static_in)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                # Thread-local: the node's own threads use the GPU while this captures.
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    static_out = self._head(model, static_in)
            captured = (static_in, graph, static_out)
        except RuntimeError:
            captured = None  # the eager path serves
        self._graphs[device] = captured
        return captured

    def infer(self, pixels: "torch.Tensor", device: str) -> Tuple[int, float]:
        """The class and score of one image (``pixels``: its 3072 ``uint8`` values, on
        ``device``)."""
        images = pixels.view(1, *IMAGE_SHAPE)
        with torch.inference_mode():
            captured = self._graph_on(device) if self.cuda_graph and device != "cpu" else None
            if captured is None:
                score, best = self._head(self._model_on(device), images).tolist()
                return int(best), score
            static_in, graph, static_out = captured
            with self._graph_lock:
                static_in.copy_(images)
                graph.replay()
                score, best = static_out.tolist()
            return int(best), score

    def classify(self, buffer: "squall.DLPackBuffer", host: Optional[np.ndarray]) -> Dict[str, Any]:
        """Classifies the image in ``buffer`` (the input's DLPack buffer); ``host`` is the
        same bytes as a host numpy array (``obj.blob``), for the numpy path when the
        buffer is on a GPU."""
        start = time.time_ns()
        if len(buffer) != IMAGE_BYTES:
            raise ValueError(f"an image is {IMAGE_BYTES} bytes (32x32x3 uint8), not {len(buffer)}")
        if self.backend == "torch":
            pixels = torch.from_dlpack(buffer)  # no copy: on the GPU for a GPU-cached pool
            device = str(pixels.device) if pixels.device.type == "cuda" else self._default_device
            if pixels.device.type != "cuda" and device != "cpu":
                pixels = pixels.to(device)  # a host object and a GPU: one upload
            best, score = self.infer(pixels, device)
            del pixels  # the input's GPU memory is the node's once the call returns
        else:
            device = "cpu"
            image = np.from_dlpack(buffer) if buffer.device == "cpu" else host
            best, score = classify_numpy(self.weights, image)
        return {
            "class": best,
            "score": score,
            "backend": self.backend,
            "device": device,
            "start_ns": start,
            "done_ns": time.time_ns(),
        }


class Classify(squall.UserDefinedLogic):
    """Squall's API: classifies every image arriving under the vertex."""

    def __init__(self, config: Dict[str, Any]) -> None:
        super().__init__(config)
        self.classifier = Classifier(config)

    def handle(self, obj, ctx) -> None:
        result = self.classifier.classify(obj.dlpack, obj.blob)
        result["input_device"] = obj.device
        ctx.emit(obj.key_suffix, json.dumps(result))


try:  # Cascade's API, where the compatibility package is installed (it is, with squall)
    import cascade_context
    from derecho.cascade.udl import UserDefinedLogic as _CascadeUdl
except ImportError:  # pragma: no cover
    _CascadeUdl = None

if _CascadeUdl is not None:

    class CascadeClassify(_CascadeUdl):
        """The same with Cascade's API: ``ocdpo_handler(**kwargs)`` keeps Cascade's
        keyword arguments; the tensor comes from ``cascade_context.dlpack()``."""

        def __init__(self, conf_str: str) -> None:
            super().__init__(conf_str)
            self.classifier = Classifier(json.loads(conf_str))

        def ocdpo_handler(self, **kwargs: Any) -> None:
            result = self.classifier.classify(cascade_context.dlpack(), kwargs["blob"])
            result["input_device"] = cascade_context.device()
            cascade_context.emit(kwargs["key"], json.dumps(result))
