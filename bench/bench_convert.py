"""HF -> NxD conversion at Llama-3-70B layer shapes (bf16, tp 32 x pp 2, kvm 4, qkv_linear + fused qkv), 2 and 4
layers: our streaming converter against `cp` of the same bytes (the disk's limit) and against the reference
approach (NxD's: `torch.load` the whole state dict, then slice and `torch.save` one rank at a time).

    python bench/bench_convert.py                # the full run: 70B shapes, 2 and 4 layers (~35 GB of disk)
    python bench/bench_convert.py --quick        # hidden 1024 / intermediate 3584 / vocab 16032: checks it works

Inputs are written shard by shard (one safetensors file per layer, one each for the embedding and for norm +
lm_head) with seeded random values, never built in transformers; the reference reads a single `torch.save` file of
the same tensors, written tensor by tensor. Each timed command runs in its own process with the page cache dropped
first (`sync; echo 3 > /proc/sys/vm/drop_caches`, which needs root: without it the table says so; python's and
torch's own libraries are then read back in, untimed, and freed memory is given `--settle` seconds to go back
to the host: see `drop_caches`) and a final `sync` inside its timing; cp and ours run `--repeats` times,
interleaved. Peak anonymous memory is the process's RssAnon (not RSS, which counts the memory-mapped input),
sampled from /proc every 10 ms. Outputs are deleted after each run, inputs after each model size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "hidden_act": "silu",
}
# Same heads (so the same tp 32 / kvm 4 / 2-Q-heads-per-rank layout), an eighth of the widths.
QUICK = {"hidden_size": 1024, "intermediate_size": 3584, "vocab_size": 16032}
TP, PP, KVM = 32, 2, 4
FLAGS = ["--tp_size", str(TP), "--pp_size", str(PP), "--kv_size_multiplier", str(KVM)]
FLAGS += ["--qkv_linear", "1", "--fuse_qkv", "1"]
DROP = Path("/proc/sys/vm/drop_caches")


def model_config(layers: int, quick: bool) -> dict:
    return {**CONFIG, **(QUICK if quick else {}), "num_hidden_layers": layers}


def write_input(folder: Path, cfg: dict) -> int:
    """An HF folder with random bf16 weights, one shard per layer, written tensor by tensor."""
    import torch

    from checkpoint.hf_stream import write_safetensors
    from checkpoint.nxd_layout import Arch, hf_keys

    arch = Arch.from_hf_config(cfg)
    folder.mkdir(parents=True)
    keys = hf_keys(arch)
    groups = [["model.embed_tokens.weight"]]
    groups += [[k for k in keys if k.startswith(f"model.layers.{i}.")] for i in range(arch.num_hidden_layers)]
    groups += [["model.norm.weight", "lm_head.weight"]]
    names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    total = 0
    gen = torch.Generator().manual_seed(0)
    for name, group in zip(names, groups):
        specs = [(k, arch.hf_shape(k), torch.bfloat16) for k in group]
        total += write_safetensors(
            folder / name,
            specs,
            lambda i, specs=specs: torch.randn(specs[i][1], generator=gen).mul_(0.02).to(torch.bfloat16),
        )
    index = {"metadata": {"total_size": total}, "weight_map": {k: n for n, g in zip(names, groups) for k in g}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(cfg))
    return total


def write_torch_input(src: Path, dest: Path) -> None:
    """The same tensors as one `torch.save`d state dict (NxD's converter input), written one tensor at a time."""
    import torch
    from safetensors import safe_open

    from checkpoint.hf_folder import checkpoint_files
    from checkpoint.nxd_layout import Arch, hf_keys
    from checkpoint.torch_files import write_state_dict

    arch = Arch.from_hf_config(json.loads((src / "config.json").read_text()))
    handles = {}
    for f in checkpoint_files(src):
        h = safe_open(str(f), framework="pt")
        names = h.keys()
        handles.update(dict.fromkeys(names, h))
    keys = hf_keys(arch)
    specs = [(k, arch.hf_shape(k), torch.bfloat16, torch.empty(arch.hf_shape(k), device="meta").stride()) for k in keys]
    write_state_dict(dest, specs, lambda i: handles[keys[i]].get_tensor(keys[i]))


def reference(src_file: Path, config: Path, out: Path) -> None:
    """NxD's approach: `torch.load` the whole state dict, then for each rank narrow + clone its slices into one
    partial dict and `torch.save` it."""
    import torch

    from checkpoint.nxd_layout import Arch, Layout, rank_file_name, rank_plan

    full = torch.load(src_file, map_location="cpu", weights_only=True)
    arch = Arch.from_hf_config(json.loads(config.read_text()))
    layout = Layout(TP, PP, KVM, True, True)
    (out / "model").mkdir(parents=True)
    for p in range(layout.pp):
        for t in range(layout.tp):
            part = {}
            for rt in rank_plan(arch, layout, t, p):
                pieces = []
                for pc in rt.pieces:
                    w = full[pc.hf_key]
                    if pc.dim < 0:
                        pieces.append(w)
                    else:
                        pieces.append(torch.cat([w.narrow(pc.dim, a, b - a) for a, b in pc.ranges], pc.dim))
                part[rt.key] = torch.cat(pieces).clone() if len(pieces) > 1 else pieces[0].clone()
            torch.save(part, out / "model" / rank_file_name(t, p))
            del part


def can_drop_caches() -> bool:
    return os.access(DROP, os.W_OK)


SETTLE = 10.0


def drop_caches(enabled: bool) -> None:
    """Drop the page cache, then read python's and torch's libraries back in (not timed): a cold `import torch`
    costs seconds of disk reads that would be charged to the converters and not to `cp`. Then wait SETTLE
    seconds: on a VM whose balloon driver reports free pages to the host (virtio-balloon free page reporting),
    memory freed by the drop is handed back to the host a few seconds later, and a page used again costs a host
    fault (writes into such memory measured ~0.4 GB/s against ~5 GB/s into memory still backed). Without the wait,
    whichever command runs first gets backed memory and the other does not; after it, every command pays the
    same per page it touches (its page cache, in and out), as on a freshly booted VM."""
    subprocess.run(["sync"], check=True)
    if enabled:
        DROP.write_text("3\n")
        warm = "import torch, safetensors, tqdm, checkpoint.convert, checkpoint.hf_stream, checkpoint.torch_files"
        subprocess.run([sys.executable, "-c", warm], check=True, cwd=ROOT)
        time.sleep(SETTLE)


def timed(cmd: list[str], drop: bool) -> tuple[float, int]:
    """(seconds including a final sync, peak RssAnon MiB) of a command run with a cold page cache."""
    drop_caches(drop)
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        status, peak = Path(f"/proc/{proc.pid}/status"), 0
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak = max(peak, int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.01)
        subprocess.run(["sync"], check=True)
        seconds = time.perf_counter() - start
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{cmd} failed: {err.read()[-2000:]}")
    return seconds, peak // 1024


def rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench_convert"))
    ap.add_argument("--quick", action="store_true", help="small widths (same heads and layout): a functional check")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--xser", action="store_true", help="also time --save_xser 1")
    ap.add_argument("--repeats", type=int, default=3, help="cp and ours runs per size, interleaved (median shown)")
    ap.add_argument("--settle", type=float, default=SETTLE, help="seconds to wait after dropping the page cache")
    ap.add_argument("--_reference", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    globals()["SETTLE"] = args.settle
    if args._reference:
        reference(*args._reference)
        return
    drop = can_drop_caches()
    print(subprocess.run(["df", "-h", str(args.dir.parent)], capture_output=True, text=True).stdout)
    if not drop:
        print(f"warning: {DROP} is not writable (needs root): the page cache is NOT dropped before timed runs\n")
    # Input + the reference's torch file + one output at a time.
    per_layer, ends = (1.71, 2 * 2.1) if not args.quick else (1.71 / 64, 2 * 2.1 / 64)
    need = (3 if not args.no_reference else 2) * (ends + per_layer * max(args.layers)) + 1
    free = shutil.disk_usage(args.dir.parent).free / 1e9
    if free < need:
        raise SystemExit(f"needs ~{need:.0f} GB free beside {args.dir}, has {free:.0f} GB")
    rm(args.dir)
    # Interpreter + torch start-up, part of every converter timing (not of cp's): reported to read small runs by.
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import checkpoint.convert, torch, safetensors, tqdm"], check=True, cwd=ROOT)
    startup = time.perf_counter() - start
    rows = []
    try:
        for layers in args.layers:
            cfg = model_config(layers, args.quick)
            src, out = args.dir / f"hf_{layers}l", args.dir / "out"
            size = write_input(src, cfg)
            ours_cmd = [sys.executable, "-m", "checkpoint.convert", "--input_dir", str(src), "--output_dir", str(out)]
            ours_cmd += [*FLAGS, "--no_progress", "--convert_from_full_state"]
            cps, ours, mibs = [], [], []
            for _ in range(args.repeats):  # interleaved, so drift in the machine hits both alike
                cps.append(timed(["cp", "-r", str(src), str(out)], drop)[0])
                rm(out)
                ours_s, ours_mib = timed(ours_cmd, drop)
                ours.append(ours_s)
                mibs.append(ours_mib)
                rm(out)
            row = {
                "layers": layers,
                "gb": size / 1e9,
                "cp_s": statistics.median(cps),
                "ours_s": statistics.median(ours),
                "ours_mib": max(mibs),
                "cp_all": [round(x, 1) for x in cps],
                "ours_all": [round(x, 1) for x in ours],
            }
            if args.xser:
                row["xser_s"], row["xser_mib"] = timed([*ours_cmd[:-1], "--save_xser", "1", ours_cmd[-1]], drop)
                rm(out)
            if not args.no_reference:
                pt = args.dir / f"full_{layers}l.pt"
                write_torch_input(src, pt)
                ref_cmd = [sys.executable, __file__, "--_reference", str(pt), str(src / "config.json"), str(out)]
                row["ref_s"], row["ref_mib"] = timed(ref_cmd, drop)
                rm(out)
                rm(pt)
            rm(src)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        rm(args.dir)
    report(rows, args.quick, drop, startup)


def report(rows: list[dict], quick: bool, dropped: bool, startup: float) -> None:
    shape = "quick widths (hidden 1024)" if quick else "Llama-3-70B layer shapes"
    print(
        f"\nHF -> NxD tp {TP} x pp {PP}, bf16, {shape}; page cache "
        f"{'dropped' if dropped else 'NOT dropped (not root)'} before each run, then {SETTLE:.0f} s for freed "
        "memory to settle; sync inside each timing; cp and ours: median of the runs listed; "
        f"python + torch start-up (inside ours and reference, warm) {startup:.1f} s"
    )
    print(
        "\n| layers | input GB | cp s | ours s | ours / cp (target <= 1.5) | ours peak RssAnon MiB | reference s "
        "| reference peak RssAnon MiB | ours / reference memory (target <= 0.25) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = (
            f"{r['ref_s']:.1f} | {r['ref_mib']} | {r['ours_mib'] / max(r['ref_mib'], 1):.3f}"
            if "ref_s" in r
            else "- | - | -"
        )
        print(
            f"| {r['layers']} | {r['gb']:.2f} | {r['cp_s']:.1f} | {r['ours_s']:.1f} | {r['ours_s'] / r['cp_s']:.2f} "
            f"| {r['ours_mib']} | {ref} |"
        )
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(
            f"\nours peak RssAnon, {b['layers']} vs {a['layers']} layers: {b['ours_mib']} / {a['ours_mib']} MiB = "
            f"{b['ours_mib'] / max(a['ours_mib'], 1):.2f} (flat = 1.0)"
            + (
                f"; reference: {b['ref_mib'] / max(a['ref_mib'], 1):.2f} (grows with the model)"
                if "ref_mib" in a and "ref_mib" in b
                else ""
            )
        )
    for r in rows:
        print(f"{r['layers']} layers, every run (s): cp {r['cp_all']}, ours {r['ours_all']}")
    for r in rows:
        if "xser_s" in r:
            print(
                f"xser, {r['layers']} layers: {r['xser_s']:.1f} s ({r['xser_s'] / r['cp_s']:.2f} x cp), "
                f"peak RssAnon {r['xser_mib']} MiB"
            )


if __name__ == "__main__":
    main()
