"""Streaming access to HF weights: rank tensors made from memory-mapped safetensors shards (or one torch
state-dict file), and safetensors shards written one tensor at a time.

`HFSource.produce` takes views of the mapped input and copies only what must be rearranged into one reused
buffer, so a conversion's anonymous memory is one rank tensor, whatever the model size.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from checkpoint.nxd_layout import RowPiece

DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
FROM_ST = {v: k for k, v in DTYPES.items()}
INDEX = "model.safetensors.index.json"


class HFSource:
    """HF weights by name: a folder of safetensors shards (+ index) or a single torch state-dict file."""

    def __init__(self, path: Path):
        self.path = path
        self._handles: dict[Path, Any] = {}
        self._where: dict[str, Path] = {}
        self._torch: dict[str, torch.Tensor] | None = None
        self._spans: dict[str, tuple[Path, int, int]] = {}
        self._fds: dict[Path, int] = {}
        self._maps: dict[Path, mmap.mmap] = {}
        if path.is_file():
            self._open_torch(path)
        else:
            from checkpoint.hf_folder import checkpoint_files

            for f in checkpoint_files(path):
                try:
                    h = safe_open(str(f), framework="pt")
                    names = list(h.keys())
                except (SafetensorError, OSError) as e:
                    raise ValueError(
                        f"{f} is not a readable safetensors file ({e}); it is probably truncated or "
                        "corrupt: delete it and download or export it again."
                    ) from e
                self._handles[f] = h
                for n in names:
                    self._where[n] = f
                self._spans.update(_data_spans(f))

    def _open_torch(self, path: Path) -> None:
        from checkpoint.torch_files import _load_mmap

        try:
            obj = _load_mmap(path)
        except Exception as e:
            raise ValueError(
                f"{path} is not a readable torch state-dict file ({type(e).__name__}: {e}); it is truncated or corrupt."
            ) from e
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            obj = obj["model"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError(
                f"{path} is not a state dict (a dict of tensors); pass an HF model folder or the "
                "file `torch.save(model.state_dict())` wrote."
            )
        self._torch = obj

    def prefetch(self, keys: set[str]) -> None:
        """Ask the kernel to read these tensors' bytes ahead (large sequential reads into the page cache, no
        process memory), so the per-rank slicing that follows finds them cached."""
        if not hasattr(os, "posix_fadvise"):
            return
        for key in keys:
            if key in self._spans:
                path, start, stop = self._spans[key]
                if path not in self._fds:
                    self._fds[path] = os.open(path, os.O_RDONLY)
                os.posix_fadvise(self._fds[path], start, stop - start, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._maps.clear()

    def view(self, key: str) -> torch.Tensor:
        """Tensor `key` as a view of the memory-mapped input: no copy, no anonymous memory (page cache only)."""
        if self._torch is not None:
            return self._torch[key]
        path, start, stop = self._spans[key]
        shape, dtype = self.meta(key)
        return self._mapped(path, start, stop - start).view(dtype).view(shape)

    def _mapped(self, path: Path, offset: int, nbytes: int) -> torch.Tensor:
        """`nbytes` bytes of `path` from `offset`, as a uint8 tensor whose storage is exactly those bytes."""
        if path not in self._maps:
            with open(path, "rb") as f:
                # ACCESS_COPY: a private, writable mapping (torch.frombuffer wants one) that shares the page cache
                # until written to, which never happens.
                self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return torch.frombuffer(self._maps[path], dtype=torch.uint8, count=nbytes, offset=offset)

    def produce(self, pieces: Sequence[RowPiece], dest: torch.Tensor, alias: dict[str, str]) -> torch.Tensor:
        """A rank tensor: its pieces, concatenated along dim 0, each piece's ranges along its own dim.

        A single contiguous piece (a whole tensor, or one row range of a safetensors tensor) is returned as a
        view of the mapped input, so its bytes go from the page cache to the output file without a copy in
        between; anything else is copied into `dest` (a reused buffer with the rank tensor's shape and strides),
        never into fresh memory: a conversion's anonymous memory is that one buffer, whatever the model size."""
        if len(pieces) == 1 and self._torch is None and dest.is_contiguous():
            pc = pieces[0]
            if pc.dim < 0 or (pc.dim == 0 and len(pc.ranges) == 1):
                full = self.view(alias.get(pc.hf_key, pc.hf_key))
                if pc.dim == 0:
                    a, b = pc.ranges[0]
                    full = full[a:b]
                if full.is_contiguous():  # rows of a row-major tensor are one byte range
                    path, start, _ = self._spans[alias.get(pc.hf_key, pc.hf_key)]
                    offset = start + int(full.storage_offset()) * full.element_size()
                    return self._mapped(path, offset, int(full.nbytes)).view(full.dtype).view(dest.shape)
        row = 0
        for pc in pieces:
            full = self.view(alias.get(pc.hf_key, pc.hf_key))
            if pc.dim < 0:
                dest.narrow(0, row, full.shape[0]).copy_(full)
                row += full.shape[0]
            elif pc.dim == 0:
                for a, b in pc.ranges:
                    dest.narrow(0, row, b - a).copy_(full[a:b])
                    row += b - a
            else:
                rows, col = full.shape[0], 0
                block = dest.narrow(0, row, rows)
                for a, b in pc.ranges:
                    block.narrow(pc.dim, col, b - a).copy_(full.narrow(pc.dim, a, b - a))
                    col += b - a
                row += rows
        return dest

    def names(self) -> list[str]:
        return list(self._torch) if self._torch is not None else list(self._where)

    def file_of(self, key: str) -> Path:
        return self.path if self._torch is not None else self._where[key]

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        if self._torch is not None:
            t = self._torch[key]
            return tuple(t.shape), t.dtype
        sl = self._handles[self._where[key]].get_slice(key)
        return tuple(sl.get_shape()), FROM_ST[sl.get_dtype()]


def _data_spans(path: Path) -> dict[str, tuple[Path, int, int]]:
    """Byte range of every tensor in a safetensors file (header: 8-byte length, then JSON offsets)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    base = 8 + n
    return {
        k: (path, base + v["data_offsets"][0], base + v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__"
    }


def write_safetensors(
    path: Path, specs: Sequence[tuple[str, tuple[int, ...], torch.dtype]], produce: Callable[[int], torch.Tensor]
) -> int:
    """A safetensors file with the header written first, then produce(i) for each tensor in order."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape, dtype in specs:
        n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for i, (key, shape, dtype) in enumerate(specs):
            t = produce(i)
            assert tuple(t.shape) == tuple(shape) and t.dtype == dtype, key
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return offset
