"""Python-2 protocol-2 pickles written as Python 2's ``cPickle`` did, byte-compatible with the real CIFAR-10.

Keys and strings are Python-2 ``str`` (``SHORT_BINSTRING``/``BINSTRING``), so ``pickle.load(f,
encoding='bytes')`` gives ``b'data'`` and ``encoding='latin1'`` (torchvision) gives ``'data'``; an image
array refers to ``numpy.core.multiarray._reconstruct``, which numpy 1.x and 2.x both load.
"""

from __future__ import annotations

import io
import struct
from typing import BinaryIO

import numpy as np


class _Py2Pickler:
    """Writes protocol-2 pickles as Python 2's ``cPickle`` did (memo from 1, str as BINSTRING).

    Handles what CIFAR-10 holds: dict, list, tuple, str, int, bool, None and 2-D uint8 numpy arrays.
    Every container and string is memoised (BINPUT), never looked up again, so the size of a pickle
    does not depend on which Python objects happen to be shared.
    """

    _BATCH = 1_000
    _TUPLE_OPCODES = (b"\x85", b"\x86", b"\x87")  # TUPLE1, TUPLE2, TUPLE3

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._memo = 1

    def dump(self, obj: object) -> None:
        self._out.write(b"\x80\x02")
        self._save(obj)
        self._out.write(b".")

    def _put(self) -> None:
        index = self._memo
        self._memo += 1
        self._out.write(b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index))

    def _save(self, obj: object) -> None:
        if obj is None:
            self._out.write(b"N")
        elif isinstance(obj, bool):
            self._out.write(b"\x88" if obj else b"\x89")
        elif isinstance(obj, int):
            self._save_int(obj)
        elif isinstance(obj, str):
            self._save_string(obj.encode("latin1"))
        elif isinstance(obj, tuple):
            self._save_tuple(obj)
        elif isinstance(obj, list):
            self._out.write(b"]")
            self._put()
            self._save_batched([(item,) for item in obj], b"a", b"e")
        elif isinstance(obj, dict):
            self._out.write(b"}")
            self._put()
            self._save_batched(list(obj.items()), b"s", b"u")
        elif isinstance(obj, np.ndarray):
            self._save_array(obj)
        else:
            raise TypeError(f"cannot pickle {type(obj).__name__} as a CIFAR-10 Python-2 pickle")

    def _save_int(self, value: int) -> None:
        if 0 <= value < 256:
            self._out.write(b"K" + bytes([value]))
        elif 0 <= value < 65_536:
            self._out.write(b"M" + struct.pack("<H", value))
        elif -(2**31) <= value < 2**31:
            self._out.write(b"J" + struct.pack("<i", value))
        else:
            raise ValueError(f"integer {value} does not fit the 32-bit BININT opcode")

    def _save_string(self, data: bytes | memoryview) -> None:
        size = len(data)
        self._out.write(b"U" + bytes([size]) if size < 256 else b"T" + struct.pack("<i", size))
        self._out.write(data)
        self._put()

    def _save_tuple(self, items: tuple[object, ...]) -> None:
        if not items:
            self._out.write(b")")
            return
        small = len(items) <= 3
        if not small:
            self._out.write(b"(")
        for item in items:
            self._save(item)
        self._out.write(self._TUPLE_OPCODES[len(items) - 1] if small else b"t")
        self._put()

    def _save_batched(self, entries: list[tuple[object, ...]], one: bytes, many: bytes) -> None:
        """List items (1-tuples) or dict items (pairs) in batches of 1000: MARK ... APPENDS/SETITEMS."""
        for start in range(0, len(entries), self._BATCH):
            chunk = entries[start : start + self._BATCH]
            if len(chunk) > 1:
                self._out.write(b"(")
            for entry in chunk:
                for value in entry:
                    self._save(value)
            self._out.write(many if len(chunk) > 1 else one)

    def _save_global(self, module: str, name: str) -> None:
        self._out.write(f"c{module}\n{name}\n".encode())
        self._put()

    def _save_array(self, array: np.ndarray) -> None:
        """``ndarray.__reduce__`` as numpy wrote it under Python 2, for a C-contiguous uint8 array."""
        if array.dtype != np.uint8 or not array.flags.c_contiguous:
            raise TypeError(f"only C-contiguous uint8 arrays are supported, got {array.dtype}")
        self._save_global("numpy.core.multiarray", "_reconstruct")
        self._save_global("numpy", "ndarray")
        self._save_tuple((0,))
        self._save("b")
        self._out.write(b"\x87")
        self._put()
        self._out.write(b"R")
        self._put()
        # state: (version, shape, dtype, is_fortran, raw data)
        self._out.write(b"(")
        self._save(1)
        self._save(tuple(array.shape))
        self._save_uint8_dtype()
        self._save(False)
        self._save_string(memoryview(array).cast("B"))
        self._out.write(b"t")
        self._put()
        self._out.write(b"b")

    def _save_uint8_dtype(self) -> None:
        self._save_global("numpy", "dtype")
        self._save(("u1", 0, 1))
        self._out.write(b"R")
        self._put()
        self._save((3, "|", None, None, None, -1, -1, 0))
        self._out.write(b"b")


class _CountingSink:
    """A write-only file that only counts bytes."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.size += len(data)
        return len(data)


def py2_pickle_dump(obj: object, out: BinaryIO) -> None:
    """Write ``obj`` to ``out`` as a Python-2 protocol-2 pickle (as ``cPickle.dump(obj, f, 2)`` did)."""
    _Py2Pickler(out).dump(obj)


def py2_pickle_bytes(obj: object) -> bytes:
    """``obj`` as a Python-2 protocol-2 pickle (as ``cPickle.dump(obj, f, 2)`` wrote it)."""
    buffer = io.BytesIO()
    py2_pickle_dump(obj, buffer)
    return buffer.getvalue()


def py2_pickle_size(obj: object) -> int:
    """Byte size of ``py2_pickle_bytes(obj)`` without building it."""
    sink = _CountingSink()
    py2_pickle_dump(obj, sink)  # type: ignore[arg-type]
    return sink.size
