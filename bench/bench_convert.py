"""HF -> NxD conversion at Llama-3-70B layer shapes (bf16, tp 32 x pp 2, kvm 4, fused qkv), 2 and 4 layers.

For each model size, in one run: `cp -r` of the same input bytes (the disk limit), our streaming converter,
and the reference approach (the whole state dict in memory, then NxD's per-rank slicing and torch.save), each
with the page cache dropped first and `sync` inside the timing. Peak anonymous memory (RssAnon, which does not
count memory-mapped input) is sampled from /proc every 20 ms. Outputs are deleted between runs.

    python bench/bench_convert.py [--layers 2 4] [--dir /tmp/bench_convert] [--no-reference]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
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
FLAGS = ["--tp_size", "32", "--pp_size", "2", "--kv_size_multiplier", "4", "--qkv_linear", "1", "--fuse_qkv", "1"]


def write_input(folder: Path, layers: int) -> int:
    """An HF folder with random bf16 weights, one shard per layer, written tensor by tensor."""
    import torch

    from checkpoint.hf_stream import write_safetensors
    from checkpoint.nxd_layout import Arch, hf_keys

    cfg = {**CONFIG, "num_hidden_layers": layers}
    arch = Arch.from_hf_config(cfg)
    folder.mkdir(parents=True)
    keys = hf_keys(arch)
    groups = [["model.embed_tokens.weight"]]
    groups += [[k for k in keys if k.startswith(f"model.layers.{i}.")] for i in range(layers)]
    groups += [["model.norm.weight", "lm_head.weight"]]
    names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    total = 0
    gen = torch.Generator().manual_seed(0)
    for name, group in zip(names, groups):
        specs = [(k, arch.hf_shape(k), torch.bfloat16) for k in group]
        total += write_safetensors(
            folder / name,
            specs,
            lambda i, specs=specs: (
                torch.randn(specs[i][1], generator=gen, dtype=torch.float32).mul_(0.02).to(torch.bfloat16)
            ),
        )
    index = {"metadata": {"total_size": total}, "weight_map": {k: n for n, g in zip(names, groups) for k in g}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(cfg))
    return total


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(cmd: list[str]) -> tuple[float, int]:
    """(seconds including a final sync, peak RssAnon MiB) of a command run with a cold page cache."""
    drop_caches()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.02)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed: {err[-2000:]}")
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - start, peak // 1024


def reference(src: Path, out: Path) -> None:
    """NxD's approach: the whole state dict in memory, then one partial dict per rank, cloned and torch.save'd."""
    import torch
    from safetensors.torch import load_file

    from checkpoint.nxd_layout import Arch, Layout, rank_file_name, rank_plan

    full: dict[str, torch.Tensor] = {}
    for f in sorted(src.glob("*.safetensors")):
        # load_file maps the file; clone into process memory, as torch.load of NxD's single input file does.
        full.update({k: v.clone() for k, v in load_file(f).items()})
    arch = Arch.from_hf_config(json.loads((src / "config.json").read_text()))
    layout = Layout(32, 2, 4, True, True)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench_convert"))
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--xser", action="store_true", help="also time --save_xser 1")
    ap.add_argument("--_reference", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._reference:
        reference(*args._reference)
        return
    print(subprocess.run(["df", "-h", "/tmp", "/work"], capture_output=True, text=True).stdout)
    need = 2 * (2 * 2.1 + 1.71 * max(args.layers)) + 1
    free = shutil.disk_usage(args.dir.parent if not args.dir.exists() else args.dir).free / 1e9
    if free < need:
        raise SystemExit(f"needs ~{need:.0f} GB free beside {args.dir}, has {free:.0f} GB")
    shutil.rmtree(args.dir, ignore_errors=True)
    rows = []
    for layers in args.layers:
        src = args.dir / f"hf_{layers}l"
        size = write_input(src, layers)
        out = args.dir / "out"
        cp_s, _ = timed(["cp", "-r", str(src), str(out)])
        shutil.rmtree(out)
        ours_cmd = [
            sys.executable,
            "-m",
            "checkpoint.convert",
            "--input_dir",
            str(src),
            "--output_dir",
            str(out),
            *FLAGS,
            "--no_progress",
            "--convert_from_full_state",
        ]
        ours_s, ours_mib = timed(ours_cmd)
        shutil.rmtree(out)
        row = {"layers": layers, "gb": size / 1e9, "cp_s": cp_s, "ours_s": ours_s, "ours_mib": ours_mib}
        if args.xser:
            row["xser_s"], row["xser_mib"] = timed([*ours_cmd[:-1], "--save_xser", "1", ours_cmd[-1]])
            shutil.rmtree(out)
        if not args.no_reference:
            row["ref_s"], row["ref_mib"] = timed([sys.executable, __file__, "--_reference", str(src), str(out)])
            shutil.rmtree(out)
        rows.append(row)
        shutil.rmtree(src)
        print(json.dumps(row), flush=True)
    shutil.rmtree(args.dir, ignore_errors=True)
    print(
        "\n| layers | input GB | cp s | ours s | ours / cp | ours peak RssAnon MiB | reference s | reference "
        "peak RssAnon MiB | ours / reference memory |"
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
    for r in rows:
        if "xser_s" in r:
            print(
                f"xser, {r['layers']} layers: {r['xser_s']:.1f} s ({r['xser_s'] / r['cp_s']:.2f} x cp), "
                f"peak RssAnon {r['xser_mib']} MiB"
            )


if __name__ == "__main__":
    main()
