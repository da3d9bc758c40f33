"""HF safetensors <-> NxD tp x pp shards, streaming: `python -m checkpoint.convert` and the `convert` stage.

HF -> NxD writes `<out>/model/dp_rank_00_tp_rank_XX_pp_rank_YY.pt` exactly as NxD's `convert_checkpoints.py
--convert_from_full_state` does (same bytes for the same file name), but reads one slice at a time from the
safetensors shards instead of `torch.load`-ing the whole model. NxD -> HF reads a converted folder or a training
checkpoint's `step_N/model` and writes safetensors shards + index, config.json, generation_config.json and the
tokenizer files (the same set as the torch backend's export: hf_companions.py). Layout rules: nxd_layout.py.

Flags keep NxD's names; booleans are strict: a bare flag, `1`, `true` or `True` is true; `0` or `false` is false;
anything else is an error. NxD's `type=bool` reads any non-empty value as true, so a carried-over `--qkv_linear
False` meant true there: it is refused rather than silently read either way.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from checkpoint.nxd_layout import Arch, Layout, check, hf_keys, piece_rows, rank_file_name, rank_plan
from core import publish
from core.fingerprint import digest

# The standalone converter's own marker (its output folder may be used without the launcher).
CONVERT_MARKER = "_convert.json"
IGNORED_HF = ("rotary_emb.inv_freq",)
# `True` means true in NxD as well; any other spelling of false (`False`, `no`) meant *true* to NxD's converter.
TRUE, FALSE = ("1", "true", "True"), ("0", "false")


def strict_bool(text: str) -> bool:
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    nxd = " (NxD's converter reads any non-empty value, this one included, as true)" if text else ""
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a boolean{nxd}: write 1 or true for true, 0 or false for false, or the bare flag for true"
    )


class Progress:
    """tqdm bar over bytes with a tensor count; the totals feed the summary."""

    def __init__(self, total_bytes: int, total_tensors: int, desc: str, enabled: bool = True):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=desc,
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        self.tensors, self.total_tensors, self.bytes = 0, total_tensors, 0
        self.start = time.perf_counter()

    def step(self, nbytes: int) -> None:
        self.tensors += 1
        self.bytes += nbytes
        self.bar.set_postfix_str(f"{self.tensors}/{self.total_tensors} tensors", refresh=False)
        self.bar.update(nbytes)

    def close(self) -> dict[str, Any]:
        self.bar.close()
        secs = time.perf_counter() - self.start
        return {
            "tensors": self.tensors,
            "bytes": self.bytes,
            "seconds": round(secs, 3),
            "mb_per_s": round(self.bytes / 2**20 / max(secs, 1e-9), 1),
            **memory_status(),
        }


def memory_status() -> dict[str, int]:
    """Peak RSS and current anonymous RSS in MiB (Linux /proc; empty elsewhere)."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmHWM", "RssAnon"):
                out[f"{name.lower()}_mib"] = int(value.split()[0]) // 1024
    except OSError:
        pass
    return out


def return_large_frees_to_the_os() -> None:
    """Serve allocations over 1 MiB with mmap (glibc): otherwise glibc's adaptive threshold puts the tens-of-MB
    slices on the heap, where freed ones are not reused in time and anonymous memory grows ~10x one slice."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; fixing it also turns off the adaptive raise
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch ops on one thread: the work is copies of slices, which one thread moves faster than the disk
    does, while intra-op threads add a fork/join per small op and spin against other processes for the cores
    (measured: 3-20x slower with 2 threads on a busy 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- HF -> NxD


def _check_source(src: Any, arch: Arch, where: Path) -> None:
    present = [k for k in src.names() if not k.endswith(IGNORED_HF)]
    expected = hf_keys(arch)
    optional = {"lm_head.weight"} if arch.tie_word_embeddings else set()
    missing = [k for k in expected if k not in set(present) and k not in optional]
    unexpected = sorted(set(present) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"The weights in {where} do not match its config ({arch.num_hidden_layers} layers, "
            f"{arch.num_attention_heads} heads): missing {missing[:6] or 'none'}"
            f"{f' (+{len(missing) - 6} more)' if len(missing) > 6 else ''}; unexpected {unexpected[:6] or 'none'}"
            f"{f' (+{len(unexpected) - 6} more)' if len(unexpected) > 6 else ''}. Pass the config.json that "
            "belongs to these weights (--config / --n_layers) or a complete download."
        )
    for k in present:
        shape, _ = src.meta(k)
        if shape != arch.hf_shape(k):
            raise ValueError(
                f"{k} in {src.file_of(k)} has shape {list(shape)} but the config implies "
                f"{list(arch.hf_shape(k))}; the config.json does not belong to these weights."
            )


def to_nxd(
    src_path: Path, dest: Path, arch: Arch, layout: Layout, *, xser: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Write NxD rank files for the HF weights at `src_path` into `dest`/model (dest must be new or empty)."""
    with one_thread():
        return _to_nxd(src_path, dest, arch, layout, xser, progress)


def _to_nxd(src_path: Path, dest: Path, arch: Arch, layout: Layout, xser: bool, progress: bool) -> dict[str, Any]:
    import torch

    from checkpoint.hf_stream import HFSource
    from checkpoint.torch_files import TorchFileStream, XserStream

    check(arch, layout)
    return_large_frees_to_the_os()
    src = HFSource(src_path)
    _check_source(src, arch, src_path)
    alias = {"lm_head.weight": "model.embed_tokens.weight"} if "lm_head.weight" not in src.names() else {}
    dtypes = {k: src.meta(alias.get(k, k))[1] for k in hf_keys(arch)}
    plans = {(t, p): rank_plan(arch, layout, t, p) for p in range(layout.pp) for t in range(layout.tp)}

    def dtype_of(rt: Any) -> Any:
        return dtypes[rt.pieces[0].hf_key]

    total = sum(_nbytes(rt.shape, dtype_of(rt)) for plan in plans.values() for rt in plan)
    bar = Progress(total, sum(map(len, plans.values())), "HF -> NxD", progress)
    (dest / "model").mkdir(parents=True, exist_ok=True)
    stream_cls = XserStream if xser else TorchFileStream
    # One buffer for every slice that needs a copy, allocated once: fresh pages for each slice would cost a
    # page fault and zeroing per 4 KiB (and, on VMs that return freed memory to the host, a host fault too).
    scratch = torch.empty(max(_nbytes(rt.shape, dtype_of(rt)) for pl in plans.values() for rt in pl), dtype=torch.uint8)
    try:
        for p in range(layout.pp):
            # Tensor-major within a pipeline stage: all tp files of the stage are filled side by side, so each
            # HF tensor is read once, while it is hot, and the page cache holds about one tensor.
            stage = [plans[(t, p)] for t in range(layout.tp)]
            assert all([rt.key for rt in pl] == [rt.key for rt in stage[0]] for pl in stage)
            streams = [
                stream_cls(
                    dest / "model" / rank_file_name(t, p), [(rt.key, rt.shape, dtype_of(rt), rt.stride) for rt in pl]
                )
                for t, pl in enumerate(stage)
            ]
            for i in range(len(stage[0])):
                src.prefetch({alias.get(pc.hf_key, pc.hf_key) for pc in stage[0][i].pieces})
                if i + 1 < len(stage[0]):
                    src.prefetch({alias.get(pc.hf_key, pc.hf_key) for pc in stage[0][i + 1].pieces})
                for t, pl in enumerate(stage):
                    rt = pl[i]
                    dtype = dtype_of(rt)
                    buf = scratch[: _nbytes(rt.shape, dtype)].view(dtype).as_strided(rt.shape, rt.stride)
                    out = src.produce(rt.pieces, buf, alias)
                    streams[t].put(out)
                    bar.step(out.numel() * out.element_size())
                    del out
            for s in streams:
                s.close()
    finally:
        src.close()
    summary = bar.close()
    return {
        "direction": "hf_to_nxd",
        "input": str(src_path),
        "output": str(dest),
        "layout": layout.describe(),
        "xser": xser,
        "files": len(plans),
        **summary,
    }


def _nbytes(shape: tuple[int, ...], dtype: Any) -> int:
    import torch

    return torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()


# ---------------------------------------------------------------- NxD -> HF


def find_rank_files(src: Path, layout: Layout) -> dict[tuple[int, int], Path]:
    """Rank files of a converted folder, a `step_N` folder or its `model/` folder (NxD's v1 and v2 names)."""
    model = src / "model" if (src / "model").is_dir() else src
    found: dict[tuple[int, int], Path] = {}
    missing: list[str] = []
    for p in range(layout.pp):
        for t in range(layout.tp):
            names = (
                rank_file_name(t, p),
                f"tp_rank_{t:02d}_pp_rank_{p:02d}",
                f"tp_rank_{t:02d}_pp_rank_{p:02d}/checkpoint.pt",
            )
            hit = next((model / n for n in names if (model / n).is_file()), None)
            if hit is None:
                missing.append(names[0])
            else:
                found[(t, p)] = hit
    extra = sorted(
        f.name
        for f in model.glob("dp_rank_*_tp_rank_*_pp_rank_*.pt")
        if int(f.name.split("_")[5]) >= layout.tp or int(f.name.split("_")[8][:2]) >= layout.pp
    )
    if missing or extra:
        raise ValueError(
            f"{model} does not hold a complete tp {layout.tp} x pp {layout.pp} NxD checkpoint: missing "
            f"{', '.join(missing[:6]) or 'none'}{f' (+{len(missing) - 6} more)' if len(missing) > 6 else ''}; "
            f"files beyond that layout: {', '.join(extra[:6]) or 'none'}. Copy the missing shards, or pass the "
            "--tp_size/--pp_size the checkpoint was written with."
        )
    return found


def _shard_names(n: int) -> list[str]:
    return ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def to_hf(
    src: Path,
    dest: Path,
    arch: Arch,
    layout: Layout,
    hf_config: dict[str, Any],
    *,
    max_shard_bytes: int = 5 * 2**30,
    progress: bool = True,
    tokenizer_dir: Path | None = None,
) -> dict[str, Any]:
    """Write HF safetensors shards + index, config.json (`hf_config`), generation_config.json and the tokenizer
    files of `tokenizer_dir` (None: no tokenizer) for the NxD checkpoint at `src` into `dest`."""
    with one_thread():
        return _to_hf(src, dest, arch, layout, hf_config, max_shard_bytes, progress, tokenizer_dir)


def _to_hf(
    src: Path,
    dest: Path,
    arch: Arch,
    layout: Layout,
    hf_config: dict[str, Any],
    max_shard_bytes: int,
    progress: bool,
    tokenizer_dir: Path | None,
) -> dict[str, Any]:
    import torch

    from checkpoint.hf_companions import tokenizer_files, write_companions
    from checkpoint.hf_stream import write_safetensors
    from checkpoint.torch_files import RankFile

    check(arch, layout)
    if tokenizer_dir is not None:
        tokenizer_files(tokenizer_dir)  # a missing tokenizer is reported before anything is written
    return_large_frees_to_the_os()
    paths = find_rank_files(src, layout)
    files = {tp_pp: RankFile(path) for tp_pp, path in paths.items()}
    contributions: dict[str, list[tuple[tuple[int, int], Any, int, Any]]] = {}
    for (t, p), f in files.items():
        plan = rank_plan(arch, layout, t, p)
        keys = [k for k in f.names() if not k.endswith(IGNORED_HF)]
        if sorted(keys) != sorted(rt.key for rt in plan):
            want = {rt.key for rt in plan}
            raise ValueError(
                f"{paths[(t, p)]} does not have the keys of layout {layout.describe()}: unexpected "
                f"{sorted(set(keys) - want)[:4] or 'none'}, missing {sorted(want - set(keys))[:4] or 'none'}. "
                "Pass the flags the checkpoint was written with (--qkv_linear, --fuse_qkv, --pp_size, ...)."
            )
        for rt in plan:
            row = 0
            for pc in rt.pieces:
                contributions.setdefault(pc.hf_key, []).append(((t, p), rt, row, pc))
                row += piece_rows(pc, rt.shape)
    keys = [k for k in hf_keys(arch) if not (arch.tie_word_embeddings and k == "lm_head.weight")]
    dtypes = {}
    for k in keys:
        tp_pp, rt, _, _ = contributions[k][0]
        dtypes[k] = files[tp_pp].get(rt.key).dtype
    shards: list[list[str]] = [[]]
    size = 0
    for k in keys:
        n = _nbytes(arch.hf_shape(k), dtypes[k])
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += n
    names = _shard_names(len(shards))
    total = sum(_nbytes(arch.hf_shape(k), dtypes[k]) for k in keys)
    bar = Progress(total, len(keys), "NxD -> HF", progress)
    warnings: list[str] = []

    def assemble(key: str) -> torch.Tensor:
        out = torch.empty(arch.hf_shape(key), dtype=dtypes[key])
        done: dict[tuple[int, int, int], tuple[int, int]] = {}
        for tp_pp, rt, row, pc in contributions[key]:
            t = files[tp_pp].get(rt.key)
            if tuple(t.shape) != rt.shape:
                raise ValueError(
                    f"{rt.key} in {paths[tp_pp]} has shape {list(t.shape)}, the layout "
                    f"{layout.describe()} gives {list(rt.shape)}: wrong --config or flags."
                )
            part = t.narrow(0, row, piece_rows(pc, rt.shape))
            regions = [(-1, 0, 0)] if pc.dim < 0 else [(pc.dim, a, b) for a, b in pc.ranges]
            col = 0
            for dim, a, b in regions:
                seg = part if dim < 0 else part.narrow(dim, col, b - a)
                col += b - a
                dst = out if dim < 0 else out.narrow(dim, a, b - a)
                if (dim, a, b) in done:  # a replica (K/V copies, norms on every tp rank): must agree
                    if not torch.equal(dst, seg):
                        warnings.append(
                            f"{key}: the copy in tp rank {tp_pp[0]} differs from tp rank "
                            f"{done[(dim, a, b)][0]} (rows/cols {a}:{b}); the first copy is exported"
                        )
                else:
                    dst.copy_(seg)
                    done[(dim, a, b)] = tp_pp
        covered = arch.hf_shape(key)[0] if (-1, 0, 0) in done else sum(b - a for (_, a, b) in done)
        assert covered == arch.hf_shape(key)[max(next(iter(done))[0], 0)], key
        bar.step(out.numel() * out.element_size())
        return out

    dest.mkdir(parents=True, exist_ok=True)
    for name, shard in zip(names, shards):
        specs = [(k, arch.hf_shape(k), dtypes[k]) for k in shard]
        write_safetensors(dest / name, specs, partial(_assemble_at, assemble, shard))
    if len(shards) > 1:
        weight_map = {k: name for name, shard in zip(names, shards) for k in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if "dtype" in hf_config:  # the 5.x layout names the weights' dtype: say what was written
        hf_config = {**hf_config, "dtype": str(dtypes[keys[0]]).removeprefix("torch.")}
    companions = write_companions(dest, hf_config, tokenizer_dir)
    summary = bar.close()
    return {
        "direction": "nxd_to_hf",
        "input": str(src),
        "output": str(dest),
        "layout": layout.describe(),
        "files": names,
        "companions": companions,
        "warnings": warnings[:20],
        **summary,
    }


def _assemble_at(assemble: Any, shard: list[str], i: int) -> Any:
    return assemble(shard[i])


# ---------------------------------------------------------------- atomic output


def input_signature(path: Path) -> list[tuple[str, int, int]]:
    """(relative name, size, mtime) of every file under `path`: a changed input means a new conversion."""
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return [(str(f.relative_to(path)) if f != path else f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]


@contextmanager
def atomic_dir(final: Path, inputs: dict[str, Any]) -> Iterator[Path | None]:
    """Yield a temporary sibling of `final` to fill (None: `final` already holds this conversion); renamed into
    place with a marker only when the body finished."""
    fp = digest(inputs)
    if final.exists() and any(final.iterdir()):
        try:
            marker = json.loads((final / CONVERT_MARKER).read_text())
        except (OSError, ValueError):
            marker = None
        if marker is not None and marker.get("fingerprint") == fp:
            yield None
            return
        held = f"a conversion of {marker.get('inputs', {}).get('input')}" if marker else "other files"
        raise ValueError(
            f"Output folder {final} already holds {held}, not this one (a different input, layout or flag). "
            "Nothing was written. Choose another --output_dir or delete that folder first."
        )
    with publish.publishing(final) as tmp:
        yield tmp
        publish.write_json(tmp / CONVERT_MARKER, {"fingerprint": fp, "inputs": inputs})


# ---------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m checkpoint.convert",
        description="Convert HF Llama safetensors to NxD tp x pp shards (--convert_from_full_state) or back "
        "(--convert_to_full_state), streaming. Flags as NxD's convert_checkpoints.py; booleans take 1/true/0/false.",
    )
    b: dict[str, Any] = {"type": strict_bool, "nargs": "?", "const": True, "default": False, "metavar": "BOOL"}
    ap.add_argument(
        "--input_dir",
        required=True,
        type=Path,
        help="HF -> NxD: HF model folder (safetensors + config.json) or one torch state-dict file; "
        "NxD -> HF: converted folder, step_N folder or its model/ folder",
    )
    ap.add_argument("--output_dir", required=True, type=Path)
    ap.add_argument("--config", type=Path, help="config.json (default: <input_dir>/config.json)")
    ap.add_argument("--tp_size", type=int, default=1)
    ap.add_argument("--pp_size", type=int, default=1)
    ap.add_argument("--n_layers", type=int, default=0, help="checked against config.json (0: not checked)")
    ap.add_argument("--kv_size_multiplier", type=int, default=1)
    ap.add_argument("--qkv_linear", **b)
    ap.add_argument("--fuse_qkv", **b)
    ap.add_argument("--save_xser", **b)
    ap.add_argument("--load_xser", **b, help="accepted for NxD compatibility; xser input is detected")
    ap.add_argument("--hw_backend", default="trn1", choices=["trn1", "trn2"])
    ap.add_argument("--max_shard_size_gb", type=float, default=5.0, help="NxD -> HF shard size")
    ap.add_argument(
        "--tokenizer_dir",
        type=Path,
        help="NxD -> HF: tokenizer folder whose files are copied into the output (default: the folder of --config "
        "when it holds a tokenizer, as a downloaded HF model folder does)",
    )
    ap.add_argument("--no_progress", action="store_true")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--convert_from_full_state", action="store_true", help="HF -> NxD shards")
    mode.add_argument("--convert_to_full_state", action="store_true", help="NxD shards -> HF safetensors")
    return ap


def _config_for(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    cfg_path = args.config
    if cfg_path is None:
        base = args.input_dir if args.input_dir.is_dir() else args.input_dir.parent
        cfg_path = base / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{cfg_path} does not exist: pass --config with the model's HF config.json.")
    try:
        hf = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON ({e}).") from e
    return cfg_path, hf


def _tokenizer_for(args: argparse.Namespace, cfg_path: Path) -> Path | None:
    """NxD -> HF: the tokenizer folder to copy (--tokenizer_dir, else the --config's folder if it has one)."""
    from checkpoint.hf_companions import TOKENIZER_MODELS, tokenizer_files

    if args.tokenizer_dir is not None:
        tokenizer_files(args.tokenizer_dir, "pass --tokenizer_dir a folder that AutoTokenizer.from_pretrained loads")
        return args.tokenizer_dir
    beside = cfg_path.parent
    return beside if any((beside / name).is_file() for name in TOKENIZER_MODELS) else None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        summary = run_cli(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    if not args.input_dir.exists():
        raise ValueError(f"--input_dir {args.input_dir} does not exist.")
    cfg_path, hf = _config_for(args)
    arch = Arch.from_hf_config(hf, str(cfg_path))
    if args.n_layers and args.n_layers != arch.num_hidden_layers:
        raise ValueError(
            f"--n_layers {args.n_layers} disagrees with num_hidden_layers "
            f"{arch.num_hidden_layers} in {cfg_path}; drop --n_layers or pass the right config."
        )
    layout = Layout(
        args.tp_size, args.pp_size, args.kv_size_multiplier, args.qkv_linear, args.fuse_qkv, args.hw_backend
    )
    check(arch, layout)
    to_nxd_mode = args.convert_from_full_state
    tokenizer = None if to_nxd_mode else _tokenizer_for(args, cfg_path)
    inputs = {
        "direction": "hf_to_nxd" if to_nxd_mode else "nxd_to_hf",
        "input": str(args.input_dir.resolve()),
        "files": input_signature(args.input_dir),
        "config": hf,
        "layout": layout.describe(),
        "xser": args.save_xser if to_nxd_mode else None,
        "max_shard_size_gb": None if to_nxd_mode else args.max_shard_size_gb,
    }
    if tokenizer is not None:
        inputs["tokenizer"] = input_signature(tokenizer)
    progress = not args.no_progress
    with atomic_dir(args.output_dir, inputs) as tmp:
        if tmp is None:
            return {
                "skipped": True,
                "output": str(args.output_dir),
                "reason": f"{args.output_dir} already holds this conversion ({CONVERT_MARKER} matches)",
            }
        if to_nxd_mode:
            summary = to_nxd(args.input_dir, tmp, arch, layout, xser=args.save_xser, progress=progress)
            if args.input_dir.is_dir():
                shutil.copyfile(cfg_path, tmp / "config.json")
        else:
            summary = to_hf(
                args.input_dir,
                tmp,
                arch,
                layout,
                hf,
                max_shard_bytes=int(args.max_shard_size_gb * 2**30),
                progress=progress,
                tokenizer_dir=tokenizer,
            )
    summary["output"] = str(args.output_dir)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    if s.get("skipped"):
        return f"skipped: {s['reason']}"
    files = s["files"] if isinstance(s["files"], int) else len(s["files"])
    lines = [
        f"{s['direction']}: {s['input']} -> {s['output']}",
        f"  layout   {s['layout']}",
        f"  wrote    {files} files, {s['tensors']} tensors, {s['bytes'] / 2**30:.2f} GiB in {s['seconds']:.1f} s "
        f"({s['mb_per_s']:.0f} MiB/s)",
        f"  memory   peak RSS {s.get('vmhwm_mib', '?')} MiB, anonymous now {s.get('rssanon_mib', '?')} MiB",
    ]
    lines += [f"  warning  {w}" for w in s.get("warnings", [])]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
