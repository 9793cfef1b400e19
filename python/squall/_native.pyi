"""Type stubs of the native module (the Rust half of ``squall``)."""

from typing import Any, Callable, Dict, List, Optional, Tuple

__version__: str

def format_version(version: int) -> str: ...
def python_udl_uuid(module: str, entry_class: str) -> str: ...
def python_bundle(
    uuid: str, module: str, entry_class: str, format: str, payload: bytes, description: str = ...
) -> bytes: ...
def connect(addrs: List[str], token: Optional[str] = ..., policy_name: str = ...) -> Call: ...
def cascade_emit(key: str, value: Any, **ignored: Any) -> None: ...
def current_context() -> Optional[UdlContext]: ...
def current_dlpack() -> Optional[DLPackBuffer]: ...
def _dlpack_view(
    address: int,
    nbytes: int,
    device_type: int,
    device_id: int = ...,
    stream: int = ...,
    owner: Any = ...,
) -> Tuple[DLPackBuffer, DLPackLease]: ...

class Blob:
    """A read-only buffer over an object's bytes (buffer protocol)."""

    address: int
    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...
    def tobytes(self) -> bytes: ...
    def __buffer__(self, flags: int) -> memoryview: ...

class DLPackBuffer:
    """An object's bytes for DLPack consumers: a 1-D ``uint8`` tensor over them (no
    copy) with ``numpy.from_dlpack`` / ``torch.from_dlpack``. GPU memory (``lent``) is
    valid during the UDL call only."""

    address: int
    nbytes: int
    device: str
    memory_type: int
    stream: int
    cached: bool
    lent: bool
    valid: bool
    def __dlpack__(
        self,
        stream: Optional[int] = ...,
        *,
        max_version: Optional[Tuple[int, int]] = ...,
        dl_device: Optional[Tuple[int, int]] = ...,
        copy: Optional[bool] = ...,
    ) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...
    def __len__(self) -> int: ...

class DLPackLease:
    open: bool
    exports_alive: int
    def close(self) -> None: ...

class Call:
    def wait(self) -> Any: ...
    def spawn(self) -> Pending: ...

class Pending:
    def add_done_callback(self, callback: Callable[[], Any]) -> None: ...
    def done(self) -> bool: ...
    def result(self) -> Any: ...

class Object:
    key: str
    version: int
    timestamp_us: int
    previous_version: Optional[int]
    previous_version_by_key: Optional[int]
    value: Blob
    def tobytes(self) -> bytes: ...
    def __len__(self) -> int: ...

class Output:
    key: str
    value: Blob
    def tobytes(self) -> bytes: ...
    def __len__(self) -> int: ...

class Pool:
    path: str
    kind: str
    subgroup: int
    shards: int
    affinity: Optional[str]
    overrides: Dict[str, int]
    gpu_cache: Optional[Dict[str, int]]

class Member:
    node: int
    incarnation: int
    client_addr: str

class WatchEvent:
    key: str
    version: int
    timestamp_us: int
    value: Optional[Blob]
    removed: bool

class Watch:
    def next(self, timeout_s: Optional[float] = ...) -> Call: ...
    def close(self) -> None: ...

class NativeClient:
    def put(
        self,
        key: str,
        value: Any,
        previous_version: Optional[int] = ...,
        previous_version_by_key: Optional[int] = ...,
        if_absent: bool = ...,
    ) -> Call: ...
    def put_and_forget(self, key: str, value: Any) -> Call: ...
    def trigger_put(self, key: str, value: Any) -> Call: ...
    def call(self, key: str, value: Any) -> Call: ...
    def remove(self, key: str) -> Call: ...
    def get(
        self,
        key: str,
        version: Optional[int] = ...,
        timestamp_us: Optional[int] = ...,
        stable: bool = ...,
    ) -> Call: ...
    def multi_get(self, keys: List[str]) -> Call: ...
    def get_size(self, key: str) -> Call: ...
    def list_keys(self, prefix: str, timestamp_us: Optional[int] = ...) -> Call: ...
    def create_pool(
        self,
        path: str,
        kind: str,
        subgroup: Optional[int] = ...,
        shards: int = ...,
        affinity: Optional[str] = ...,
        overrides: Optional[Dict[str, int]] = ...,
        gpu_cache: Optional[Tuple[int, int]] = ...,
    ) -> Call: ...
    def remove_pool(self, path: str) -> Call: ...
    def compact(self, pool: str, before_us: int) -> Call: ...
    def find_pool(self, key: str) -> Call: ...
    def list_pools(self) -> Call: ...
    def members(self) -> Call: ...
    def watch(self, prefix: str) -> Call: ...
    def upload_udl(self, name: str, plugin: Any) -> Call: ...
    def remove_udl(self, uuid: str) -> Call: ...
    def add_dfgs(self, json: str) -> Call: ...
    def remove_dfg(self, id: str) -> Call: ...
    def list_udls(self) -> Call: ...
    def list_dfgs(self) -> Call: ...

class UdlInput:
    key: str
    key_suffix: str
    pathname: str
    version: int
    timestamp_us: int
    previous_version: Optional[int]
    previous_version_by_key: Optional[int]
    message_id: Tuple[int, int]
    sender: int
    value: Blob
    blob: Any
    dlpack: DLPackBuffer
    device: str
    def tensor(self) -> Any: ...

class UdlContext:
    config: Any
    worker_id: int
    resources: Dict[str, Any]
    def emit(self, key: str, value: Any) -> None:
        """Sends ``value`` to the vertex's destinations; bytes-like values are not copied,
        a contiguous CUDA tensor is copied by the node (to host once, and on the GPU into
        destination pools cached there)."""
    def get(self, key: str) -> Optional[Blob]: ...
    def put(self, key: str, value: Any) -> None: ...
