"""Streaming access to HF weights: read row/column slices from safetensors shards (or one torch state-dict
file), and write safetensors shards one tensor at a time.

Reading goes through `safe_open(...).get_slice`, which copies only the requested rows/columns out of the
memory-mapped shard, so a conversion's anonymous memory is one slice, whatever the model size.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from checkpoint.nxd_layout import Piece

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
        if path.is_file():
            self._open_torch(path)
        else:
            from checkpoint.hf_load import checkpoint_files

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

    def read(self, piece: Piece, key: str | None = None) -> torch.Tensor:
        """The piece's rows/columns of HF tensor `key` (default piece.hf_key), as a new contiguous tensor."""
        key = key or piece.hf_key
        try:
            if self._torch is not None:
                t = self._torch[key]
                parts = [t] if piece.dim < 0 else [t.narrow(piece.dim, a, b - a) for a, b in piece.ranges]
            else:
                sl = self._handles[self._where[key]].get_slice(key)
                if piece.dim < 0:
                    parts = [sl[:]]
                elif piece.dim == 0:
                    parts = [sl[a:b] for a, b in piece.ranges]
                else:
                    parts = [sl[:, a:b] for a, b in piece.ranges]
        except (SafetensorError, OSError) as e:
            raise ValueError(
                f"Reading {key} from {self.file_of(key)} failed ({e}); the file is corrupt or "
                "truncated: download it again."
            ) from e
        if len(parts) > 1:
            return torch.cat(parts, dim=max(piece.dim, 0))
        # A view into an mmap'd torch file or a non-contiguous slice: own, contiguous storage (as NxD's clone()).
        out = parts[0]
        return out.clone(memory_format=torch.contiguous_format) if self._torch is not None else out.contiguous()


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
            f.write(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
    return offset
