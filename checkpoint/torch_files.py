"""NxD rank files written one tensor at a time, byte-identical to `torch.save(dict)`; and read back lazily.

`write_state_dict` runs torch's own `torch.serialization._save` on a dict of uninitialised placeholders (never
touched, so never resident) and swaps in each real tensor when torch writes its `data/N` record: the pickle,
record order, alignment and CRCs are torch's, while only one tensor is in memory at a time.

xser (`torch_xla.utils.serialization`, NxD's `--save_xser`): `<file>` holds the dict with
`torch_xla.utils.serialization.TensorReference(tid)` placeholders, `<file>.tensors/tensor_<tid>.pt` each tensor,
and `<file>.info.pt` the {tid: dtype/shape} table of NxD's trainer (its loader indexes that table whenever a
reference is present). torch_xla is not needed: a stand-in class with the same module path is pickled.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import mmap
import pickle
import struct
import sys
import types
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

# (key, shape, dtype, strides): torch.save records the strides, so they are part of the bytes.
Spec = tuple[str, tuple[int, ...], torch.dtype, tuple[int, ...]]
XLA_MODULE = "torch_xla.utils.serialization"


def with_strides(t: torch.Tensor, spec: Spec) -> torch.Tensor:
    """`t` with the spec's strides in a storage of its own (what NxD's `.clone()` leaves)."""
    key, shape, dtype, stride = spec
    assert tuple(t.shape) == tuple(shape) and t.dtype == dtype, (key, t.shape, shape, t.dtype, dtype)
    # The writer writes a storage's first nbytes: a tensor at offset 0 with the spec's (dense) strides is exactly
    # those bytes, even in a larger (reused) storage.
    if t.stride() == tuple(stride) and not t.storage_offset() and t.untyped_storage().nbytes() >= t.nbytes:
        return t
    return torch.empty_strided(shape, stride, dtype=dtype).copy_(t)


def _untouched(shape: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A tensor over fresh anonymous pages it never touches: virtual only, so never resident (RssAnon 0)."""
    numel = torch.Size(shape).numel()
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    buf = mmap.mmap(-1, max(nbytes, 1))
    flat = torch.frombuffer(buf, dtype=torch.uint8, count=nbytes) if nbytes else torch.empty(0, dtype=torch.uint8)
    return flat.view(dtype).as_strided(shape, stride)


class TorchFileStream:
    """One `torch.save` file filled tensor by tensor: `put` the tensors in spec order, then `close`.

    torch's `_save` runs first on placeholders with this object as its zip writer: it writes data.pkl and the
    small records through to the real writer and only notes the `data/N` records, which `put` then writes
    with the real bytes, so several files can be filled side by side. torch's writer computes CRC-32 with a
    slow byte-wise loop (~120 MB/s); it runs with CRC off here, zlib computes the same CRCs at GB/s, and
    `close` patches them (and the CRC half of `.data/serialization_id`) in, so the bytes equal torch.save's.
    `single`: the file holds one tensor (xser's tensor_N.pt) instead of a dict.
    """

    def __init__(self, path: Path, specs: Sequence[Spec], single: bool = False):
        ser = torch.serialization
        self.path, self.specs = path, specs
        self.pending: list[tuple[str, int]] = []
        self.crcs: dict[str, int] = {}
        self.writer = torch._C.PyTorchFileWriter(str(path), False, ser._get_storage_alignment())
        placeholders = {key: _untouched(shape, stride, dtype) for key, shape, dtype, stride in specs}
        obj = next(iter(placeholders.values())) if single else placeholders
        ser._save(obj, self, pickle, ser.DEFAULT_PROTOCOL, False)
        assert [n for n, _ in self.pending] == [f"data/{i}" for i in range(len(specs))]
        self.done = 0

    def write_record(self, name: str, data: Any, size: int) -> None:
        if name.startswith("data/"):
            self.pending.append((name, size))
            return
        raw = data.encode() if isinstance(data, str) else bytes(data)
        self.crcs[name] = zlib.crc32(raw)
        self.writer.write_record(name, data, size)

    def write_record_metadata(self, name: str, size: int) -> None:
        raise NotImplementedError("torch.serialization.skip_data is not supported here")

    def put(self, t: torch.Tensor) -> None:
        name, size = self.pending[self.done]
        t = with_strides(t, self.specs[self.done])
        storage = t.untyped_storage()
        raw = torch.empty(0, dtype=torch.uint8).set_(storage).numpy()[:size] if size else b""
        # The write (torch's writer, holding the GIL) runs on a helper thread while this one computes the CRC
        # (zlib releases the GIL): the two passes over the bytes overlap on two cores.
        written = _writer_thread().submit(self.writer.write_record, name, storage, size)  # type: ignore[arg-type]
        # A uint8 numpy array is a buffer; numpy's stubs do not say so.
        self.crcs[name] = zlib.crc32(raw)  # type: ignore[arg-type]
        written.result()
        self.done += 1

    def close(self) -> None:
        assert self.done == len(self.specs), (self.done, len(self.specs))
        self.writer.write_end_of_file()
        _patch_crcs(self.path, self.crcs)


@functools.cache
def _writer_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-file-writer")


_U64 = (1 << 64) - 1


def _hash_combine(seed: int, value: int) -> int:
    """c10::hash_combine on 64-bit size_t."""
    return (seed ^ ((value + 0x9E3779B9 + ((seed << 6) & _U64) + (seed >> 2)) & _U64)) & _U64


def _patch_crcs(path: Path, crcs: dict[str, int]) -> None:
    """Write CRC-32s into a torch zip written with CRC off: each record's data descriptor and central
    directory entry, and the CRC half of `.data/serialization_id` (a c10::hash_combine chain of the CRCs)."""
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        cd_start = z.start_dir
    with open(path, "r+b") as f:
        f.seek(cd_start)
        cd_offsets = []
        for _ in infos:
            pos = f.tell()
            head = f.read(46)
            assert head[:4] == b"PK\x01\x02"
            n, x, c = struct.unpack("<HHH", head[28:34])
            f.seek(pos + 46 + n + x + c)
            cd_offsets.append(pos)
        combined = 0
        for info, cd in zip(infos, cd_offsets):
            name = info.filename.split("/", 1)[1]
            f.seek(info.header_offset)
            local = f.read(30)
            n, x = struct.unpack("<HH", local[26:30])
            data_at = info.header_offset + 30 + n + x
            if name == ".data/serialization_id":
                f.seek(data_at)
                sid = f.read(info.compress_size)
                sid = sid[:20] + f"{combined:020d}".encode()
                f.seek(data_at)
                f.write(sid)
                crc = zlib.crc32(sid)
            elif name in crcs:
                crc = crcs[name]
            else:  # written by the writer itself ("version")
                f.seek(data_at)
                crc = zlib.crc32(f.read(info.compress_size))
            combined = _hash_combine(combined, crc)
            f.seek(data_at + info.compress_size)
            assert f.read(4) == b"PK\x07\x08", (path, name)
            f.write(struct.pack("<I", crc))
            f.seek(cd + 16)
            f.write(struct.pack("<I", crc))


class XserStream:
    """The xser form of one rank file, tensor by tensor (same `put` / `close` as TorchFileStream)."""

    def __init__(self, path: Path, specs: Sequence[Spec]):
        self.path, self.specs, self.done = path, specs, 0
        self.folder = Path(f"{path}.tensors")
        self.folder.mkdir()

    def put(self, t: torch.Tensor) -> None:
        spec = self.specs[self.done]
        one = TorchFileStream(self.folder / f"tensor_{self.done}.pt", [spec], single=True)
        one.put(t)
        one.close()
        self.done += 1

    def close(self) -> None:
        assert self.done == len(self.specs)
        with xla_reference_class() as ref:
            torch.save({spec[0]: ref(i) for i, spec in enumerate(self.specs)}, self.path)
        info = {
            i: {"dtype": dtype, "shape": torch.Size(shape), "expert_model_parallel": False}
            for i, (_, shape, dtype, _) in enumerate(self.specs)
        }
        torch.save(info, f"{self.path}.info.pt")


def write_state_dict(path: Path, specs: Sequence[Spec], produce: Callable[[int], torch.Tensor]) -> None:
    """Write what `torch.save({key: tensor})` writes, calling produce(i) for the i-th tensor, in order."""
    stream = TorchFileStream(path, specs)
    for i in range(len(specs)):
        stream.put(produce(i))
    stream.close()


class TensorReference:
    """Stand-in for torch_xla.utils.serialization.TensorReference (same pickled name and state)."""

    def __init__(self, tid: int):
        self.tid = tid


@contextlib.contextmanager
def xla_reference_class() -> Iterator[type]:
    """The TensorReference class pickled under torch_xla's module path (a stand-in when torch_xla is absent)."""
    if importlib.util.find_spec("torch_xla") is not None:
        from torch_xla.utils.serialization import TensorReference as real

        yield real
        return
    names = ("torch_xla", "torch_xla.utils", XLA_MODULE)
    saved = {n: sys.modules.get(n) for n in names}
    mod = types.ModuleType(XLA_MODULE)
    mod.TensorReference = TensorReference  # type: ignore[attr-defined]
    old = TensorReference.__module__
    TensorReference.__module__ = XLA_MODULE
    sys.modules.update(
        {
            "torch_xla": types.ModuleType("torch_xla"),
            "torch_xla.utils": types.ModuleType("torch_xla.utils"),
            XLA_MODULE: mod,
        }
    )
    try:
        yield TensorReference
    finally:
        TensorReference.__module__ = old
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


class RankFile:
    """One NxD rank file (plain torch or xser), read lazily: tensors are memory-mapped or loaded one by one."""

    def __init__(self, path: Path, model_key: str = "model"):
        self.path = path
        folder = Path(f"{path}.tensors")
        self.xser = folder.is_dir()
        try:
            if self.xser:
                with xla_reference_class():
                    obj = torch.load(path, map_location="cpu", weights_only=False)
            else:
                obj = _load_mmap(path)
        except Exception as e:  # torch raises many types for a damaged zip / pickle
            raise ValueError(
                f"{path} is not a readable NxD checkpoint file ({type(e).__name__}: {e}); it is "
                "truncated or corrupt: re-copy it or convert from an intact checkpoint."
            ) from e
        if isinstance(obj, dict) and model_key in obj and isinstance(obj[model_key], dict):
            obj = obj[model_key]
        if not isinstance(obj, dict):
            raise ValueError(f"{path} holds a {type(obj).__name__}, not a dict of tensors: not an NxD model file.")
        self.entries: dict[str, Any] = obj
        self.folder = folder

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, key: str) -> torch.Tensor:
        v = self.entries[key]
        if isinstance(v, torch.Tensor):
            return v
        f = self.folder / f"tensor_{v.tid}.pt"
        try:
            return _load_mmap(f)
        except Exception as e:
            raise ValueError(
                f"{f} (tensor {key!r} of {self.path}) is missing or unreadable ({type(e).__name__}: "
                f"{e}); the xser checkpoint is incomplete."
            ) from e


def _load_mmap(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        # Legacy (non-zip) files cannot be memory-mapped: read them whole.
        return torch.load(path, map_location="cpu", weights_only=True)
