"""Minimal safetensors reading, one tensor at a time.

The format is an 8-byte little-endian header length, a JSON header mapping
names to dtype/shape/byte range, then raw little-endian data. Reading with
`readinto` into a fresh buffer (not mmap) keeps peak memory to one tensor and
lets us name the file and tensor when a file is truncated or inconsistent.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NAMES = {v: k for k, v in DTYPES.items()}
# The float dtypes users choose by name (--dtype, random checkpoints).
FLOAT_DTYPES = {"float32": DTYPES["F32"], "bfloat16": DTYPES["BF16"]}
MAX_HEADER = 100 * 2**20


class SafetensorsError(ValueError):
    pass


class SafetensorsFile:
    """Header parsed eagerly and validated against the file size."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                raw = f.read(8)
                if len(raw) < 8:
                    raise SafetensorsError(f"{self.path}: truncated (no header)")
                (n,) = struct.unpack("<Q", raw)
                if n > MAX_HEADER or 8 + n > size:
                    raise SafetensorsError(f"{self.path}: truncated or corrupt header ({n} bytes)")
                header = json.loads(f.read(n))
        except FileNotFoundError as e:
            raise SafetensorsError(f"{self.path}: file not found") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsError(f"{self.path}: header is not valid JSON ({e})") from e
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self.entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            if e.get("dtype") not in DTYPES:
                raise SafetensorsError(
                    f"{self.path}: tensor {name}: unsupported dtype {e.get('dtype')}"
                )
            dtype, shape = DTYPES[e["dtype"]], tuple(int(s) for s in e["shape"])
            begin, end = (int(x) for x in e["data_offsets"])
            if end - begin != dtype.itemsize * int(np.prod(shape)):
                raise SafetensorsError(
                    f"{self.path}: tensor {name}: byte range does not match shape"
                )
            if self.data_start + end > size:
                raise SafetensorsError(
                    f"{self.path}: truncated: tensor {name} ends at byte {self.data_start + end}, "
                    f"file has {size}"
                )
            self.entries[name] = (dtype, shape, begin, end)

    def keys(self) -> list[str]:
        return list(self.entries)

    def spec(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        dtype, shape, _, _ = self.entries[name]
        return dtype, shape

    def read(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self.entries[name]
        out = np.empty(shape, dtype)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
        if got != end - begin:
            raise SafetensorsError(f"{self.path}: truncated while reading tensor {name}")
        return out


def header_bytes(
    specs: list[tuple[str, np.dtype, tuple[int, ...]]], metadata: dict | None
) -> bytes:
    """Serialized header (length prefix included) for tensors written in `specs` order."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape in specs:
        nbytes = np.dtype(dtype).itemsize * int(np.prod(shape))
        header[name] = {
            "dtype": NAMES[np.dtype(dtype)],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align data to 8 bytes, as the reference writer does
    return struct.pack("<Q", len(raw)) + raw


def write_file(
    path: str | Path,
    specs: list[tuple[str, np.dtype, tuple[int, ...]]],
    arrays: Iterator[np.ndarray],
    metadata: dict | None = None,
) -> None:
    """Write tensors streamed from `arrays` (same order as `specs`)."""
    with open(path, "wb") as f:
        f.write(header_bytes(specs, metadata))
        for (name, dtype, shape), arr in zip(specs, arrays, strict=True):
            arr = np.ascontiguousarray(arr)
            if arr.dtype != np.dtype(dtype) or arr.shape != tuple(shape):
                raise SafetensorsError(
                    f"{path}: tensor {name}: got {arr.dtype}{arr.shape}, declared {dtype}{shape}"
                )
            f.write(memoryview(arr.reshape(-1).view(np.uint8)))
