"""Read PyTorch `.pth` and `.safetensors` checkpoints into numpy, without running their code.

A `.pth` file is a zip holding a pickle (`data.pkl`) and raw tensor storages (`data/N`).
Unpickling it with `pickle`/`torch.load` (without `weights_only=True`) executes whatever
callables the file names, so here the pickle is read by an Unpickler whose `find_class`
never imports anything: the handful of torch rebuild functions a state dict needs are
replaced by numpy equivalents, and any other global becomes an inert `Opaque` record
(training checkpoints carry e.g. an `argparse.Namespace` that we do not need).
torch itself is not required.
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from xcit_edge.errors import UsageError

log = logging.getLogger(__name__)

# Upper bound on what we are willing to read from one checkpoint (the largest XCiT is ~0.8 GB fp32).
MAX_CHECKPOINT_BYTES = 4 << 30

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class Opaque:
    """Stand-in for a pickled global we refuse to import; it records the name, runs nothing.

    `find_class` returns a fresh subclass per name, so pickle's NEWOBJ/REDUCE/BUILD
    opcodes (which need a real type) work on it without touching the named code.
    """

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any):
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<opaque {self.qualname}>"


def _opaque_type(qualname: str) -> type[Opaque]:
    return type("Opaque", (Opaque,), {"qualname": qualname})


class _StorageType:
    def __init__(self, name: str):
        if name not in _STORAGE_DTYPES:
            raise UsageError(f"checkpoint holds unsupported tensor storage type {name}")
        dtype = _STORAGE_DTYPES[name]
        if dtype == "bfloat16":
            import ml_dtypes

            dtype = ml_dtypes.bfloat16
        self.dtype = np.dtype(dtype)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    itemsize = storage.dtype.itemsize
    if not size:
        return storage[offset : offset + 1].reshape(()).copy()
    needed = offset + 1 + sum((s - 1) * st for s, st in zip(size, stride, strict=True))
    if needed > storage.size or min(stride) < 0:
        raise UsageError("corrupt checkpoint: a tensor points outside its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *rest):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        if module == "torch" and name in {"float32", "float16", "bfloat16", "float64"}:
            return name
        return _opaque_type(f"{module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UsageError("corrupt checkpoint: unexpected persistent id")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise UsageError("corrupt checkpoint: storage of an unknown type")
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}data/{key}")
            except KeyError as e:
                raise UsageError(f"corrupt checkpoint: storage {key} is missing") from e
            self.storages[key] = np.frombuffer(raw, dtype=storage_type.dtype)
        return self.storages[key]


def _read_pth(path: Path) -> Any:
    if not zipfile.is_zipfile(path):
        raise UsageError(
            f"{path}: not a zip-format PyTorch checkpoint (legacy torch<1.6 files and other formats are "
            "not read; re-save it with a current torch or convert it to .safetensors)"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise UsageError(f"{path}: zip file is not a PyTorch checkpoint (no data.pkl)")
            prefix = pkl[0][: -len("data.pkl")]
            byteorder = zf.read(prefix + "byteorder").decode() if prefix + "byteorder" in zf.namelist() else "little"
            if byteorder != "little":
                raise UsageError(f"{path}: big-endian checkpoints are not supported")
            return _SafeUnpickler(zf.read(pkl[0]), zf, prefix).load()
    except UsageError:
        raise
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as e:
        raise UsageError(f"{path}: corrupt PyTorch checkpoint ({type(e).__name__}: {e})") from e


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise UsageError(f"{path}: corrupt safetensors file ({e})") from e


def _flatten_state_dict(obj: Any, path: Path) -> dict[str, np.ndarray]:
    """Find the tensor dict inside a checkpoint (official: under 'model'; DDP: 'module.' prefix)."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise UsageError(f"{path}: checkpoint holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not tensors:
        raise UsageError(f"{path}: checkpoint holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def read_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a `.pth`/`.pt`/`.bin` (zip pickle) or `.safetensors` checkpoint, as numpy."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file not found: {path}")
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise UsageError(f"{path}: {size / 2**30:.1f} GiB is larger than any XCiT checkpoint; refusing to read it")
    with open(path, "rb") as f:
        head = f.read(9)
    looks_safetensors = len(head) == 9 and int.from_bytes(head[:8], "little") < size and head[8:] == b"{"
    if path.suffix == ".safetensors" or looks_safetensors:
        tensors = _read_safetensors(path)
    elif head.startswith(b"PK"):
        tensors = _read_pth(path)
    else:
        raise UsageError(f"{path}: not a PyTorch (zip) or safetensors checkpoint")
    state = _flatten_state_dict(tensors, path)
    log.info("read %d tensors from %s", len(state), path)
    floats = {k for k, v in state.items() if v.dtype.kind == "f" or v.dtype.name == "bfloat16"}
    return {k: (v.astype(np.float32) if k in floats else v) for k, v in state.items()}
