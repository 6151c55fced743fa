"""A nested tree of numpy arrays and JSON values as two byte strings that cannot carry code.

`encode` splits a tree of dicts (string keys), lists/tuples, numbers, strings, booleans, None and
numeric numpy arrays into

- a JSON document: the tree, with every array replaced by a reference
  ``{"__ndarray__": NAME, "dtype": "<f4", "shape": [131072, 21]}`` (readable without numpy);
- an ``.npz`` archive (a zip of ``.npy`` files) holding the arrays under those names, which are
  the arrays' paths in the tree, percent-encoded (``heads/quality/dense_w``).

`decode` reverses it with ``numpy.load(..., allow_pickle=False)`` and the standard JSON parser,
neither of which can run code, checks each array against its reference (dtype, shape, referenced
exactly once) and bounds the decompressed size before reading, so a hostile archive is a
`ValueError`, never an allocation it did not pay for in bytes. Encoding is deterministic: the
same tree gives the same bytes (fixed zip timestamps, sorted names), so the artifact's sha256
identifies its content.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from typing import Any
from urllib.parse import quote

import numpy as np

__all__ = ["ARRAY_KEY", "MAX_ARRAY_BYTES", "decode", "encode"]

ARRAY_KEY = "__ndarray__"
# Decompressed bytes an archive may declare; a trained router is tens of MB (2**17 hashed rows
# × 21 models × 4 bytes × 2 heads ≈ 22 MB), so this only stops a zip bomb.
MAX_ARRAY_BYTES = 1 << 31
_KINDS = "biuf"  # bool, signed and unsigned ints, floats: no objects, strings or records
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _pointer(path: tuple[str, ...]) -> str:
    # Percent-encoding each segment keeps names unique for any keys ("a/b" vs a → b) and keeps
    # zip member names to printable ASCII (zipfile cuts a name at a NUL byte).
    return "/".join(quote(p, safe="") for p in path) or "root"


def _where(path: tuple[str, ...]) -> str:
    return "/" + "/".join(path)


def encode(tree: Any, *, compress: bool = False) -> tuple[bytes, bytes]:
    """Split `tree` into (JSON bytes, npz bytes); raise TypeError/ValueError on anything else.

    Examples
    --------
    >>> values, arrays = encode({"w": np.zeros(2), "name": "x"})
    >>> json.loads(values)["w"]
    {'__ndarray__': 'w', 'dtype': '<f8', 'shape': [2]}
    >>> decode(values, arrays)["name"]
    'x'
    """
    arrays: dict[str, np.ndarray] = {}

    def walk(node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, np.ndarray):
            if node.dtype.kind not in _KINDS:
                raise TypeError(f"{_where(path)}: arrays of dtype {node.dtype} cannot be stored")
            name = _pointer(path)
            arrays[name] = node
            return {ARRAY_KEY: name, "dtype": node.dtype.str, "shape": list(node.shape)}
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if not isinstance(key, str):
                    raise TypeError(f"{_where(path)}: key {key!r} is not a string")
                if key == ARRAY_KEY:
                    raise ValueError(f"{_where(path)}: the key {ARRAY_KEY!r} is reserved")
                out[key] = walk(value, (*path, key))
            return out
        if isinstance(node, list | tuple):
            return [walk(v, (*path, str(i))) for i, v in enumerate(node)]
        if isinstance(node, np.generic) and node.dtype.kind in _KINDS:
            node = node.item()
        if isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"{_where(path)}: {node} is not a finite number")
        if node is None or isinstance(node, bool | int | float | str):
            return node
        raise TypeError(f"{_where(path)}: {type(node).__name__} is not an array or a JSON value")

    document = walk(tree, ())
    values = json.dumps(document, sort_keys=True, allow_nan=False, indent=1).encode() + b"\n"
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = method
            with archive.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arrays[name], allow_pickle=False)
    return values, buffer.getvalue()


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a finite number")


def decode(values: bytes, arrays: bytes, *, max_array_bytes: int = MAX_ARRAY_BYTES) -> Any:
    """The tree `encode` split into `values` and `arrays`; ValueError if they do not fit."""
    try:
        document = json.loads(values.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ValueError(f"values: not UTF-8 ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"values: not JSON ({exc})") from None
    try:
        with zipfile.ZipFile(io.BytesIO(arrays)) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise ValueError(f"arrays: not an npz archive ({exc})") from None
    if declared > max_array_bytes:
        raise ValueError(f"arrays: {declared} bytes uncompressed, over the {max_array_bytes} limit")
    try:
        with np.load(io.BytesIO(arrays), allow_pickle=False) as npz:
            loaded = {name: npz[name] for name in npz.files}
    except Exception as exc:  # zipfile, npy header and dtype errors all mean a bad archive
        raise ValueError(f"arrays: unreadable ({type(exc).__name__}: {exc})") from None
    used: set[str] = set()

    def walk(node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            if ARRAY_KEY in node:
                return resolve(node, path)
            return {k: walk(v, (*path, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*path, str(i))) for i, v in enumerate(node)]
        return node

    def resolve(ref: dict[str, Any], path: tuple[str, ...]) -> np.ndarray:
        name = ref.get(ARRAY_KEY)
        if set(ref) != {ARRAY_KEY, "dtype", "shape"} or not isinstance(name, str):
            raise ValueError(f"{_where(path)}: malformed array reference")
        if name not in loaded:
            raise ValueError(f"{_where(path)}: array {name!r} is not in the archive")
        if name in used:
            raise ValueError(f"{_where(path)}: array {name!r} is referenced twice")
        used.add(name)
        array = loaded[name]
        if array.dtype.kind not in _KINDS:
            raise ValueError(f"{_where(path)}: array {name!r} has dtype {array.dtype}")
        if array.dtype.str != ref["dtype"] or list(array.shape) != ref["shape"]:
            raise ValueError(
                f"{_where(path)}: array {name!r} is {array.dtype.str} {list(array.shape)}, "
                f"the reference says {ref['dtype']} {ref['shape']}"
            )
        return array

    tree = walk(document, ())
    extra = sorted(set(loaded) - used)
    if extra:
        raise ValueError(f"arrays: {len(extra)} unreferenced array(s): {', '.join(extra[:5])}")
    return tree
