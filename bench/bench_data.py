"""Benchmark of the data stage against the tokenizer's own limit and against NxD's get_dataset.py recipe.

    python bench/bench_data.py                 # >= 200 MB corpus, all cores (a few minutes on 2 cores)
    python bench/bench_data.py --size-mb 20    # quick look

Corpus: seeded generator, a vocabulary of `--words` distinct word forms drawn with a Zipf law (s = 1.07), cut
into sentences and documents of log-normal length, written as 8 jsonl shards. Tokenizer: a byte-level BPE with
Llama 3's pre-tokenizer (vocab 32000) trained on the first shard. Both are cached under --work; every
measurement runs in a fresh process with a fresh output/cache folder and the same thread count:
- raw:  `Tokenizer.encode_batch` over the same texts (read into memory first, not timed): the limit here
        (the `x raw` column is time / this); also `encode_batch_fast` (no offsets, which ours calls), tighter;
- ours: `data.stage_data.run` on the jsonl shards (data=files, compact), start-up reported apart;
- nxd:  NxD's get_dataset.py recipe: load_dataset("json") -> map(tokenizer) -> map(group_texts) ->
        save_to_disk (three columns), with a fresh HF datasets cache;
- ours at a quarter of the corpus, for peak RSS (it must not grow with the corpus).
The machine is shared: the load average is printed with every row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARDS = 8
VOCAB = 32000


# ---------------------------------------------------------------- corpus and tokenizer (cached)


def make_corpus(folder: Path, size_mb: int, words: int, seed: int) -> dict:
    import numpy as np

    meta_path = folder / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    onsets = [
        "",
        "b",
        "c",
        "d",
        "f",
        "g",
        "h",
        "j",
        "k",
        "l",
        "m",
        "n",
        "p",
        "qu",
        "r",
        "s",
        "t",
        "v",
        "w",
        "z",
        "br",
        "ch",
        "cl",
        "dr",
        "fl",
        "gr",
        "pl",
        "pr",
        "sh",
        "sl",
        "sp",
        "st",
        "str",
        "th",
        "tr",
    ]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "oo", "ou", "y"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "nt", "rs", "st", "x", "ck"]
    syllables = np.array([o + v + c for o in onsets for v in vowels for c in codas], dtype=object)
    forms: set[str] = set()
    while len(forms) < words:
        for k in rng.integers(1, 5, size=words):
            forms.add("".join(syllables[rng.integers(0, len(syllables), size=k)]))
            if len(forms) >= words:
                break
    vocab = np.array(sorted(forms), dtype=object)
    rng.shuffle(vocab)
    p = 1.0 / np.arange(1, words + 1) ** 1.07
    p /= p.sum()
    target = size_mb * 1_000_000
    per_shard = target // SHARDS + 1
    total = 0
    used = np.zeros(words, dtype=bool)
    docs = 0
    for s in range(SHARDS):
        written = 0
        with open(tmp / f"shard-{s:02d}.jsonl", "w") as fh:
            while written < per_shard:
                idx = rng.choice(words, size=200_000, p=p)
                used[idx] = True
                toks = vocab[idx]
                pos = 0
                while pos < len(toks) and written < per_shard:
                    n_words = int(min(rng.lognormal(5.5, 0.8), 6000)) + 5
                    chunk = toks[pos : pos + n_words]
                    pos += n_words
                    cuts = np.cumsum(rng.integers(5, 25, size=len(chunk) // 5 + 2))
                    sentences = [" ".join(chunk[a:b]) for a, b in zip(np.r_[0, cuts], cuts) if a < len(chunk)]
                    text = ". ".join(x[:1].upper() + x[1:] for x in sentences) + "."
                    line = json.dumps({"text": text}) + "\n"
                    fh.write(line)
                    written += len(line)
                    docs += 1
        total += written
    meta = {"bytes": total, "documents": docs, "distinct_words": int(used.sum()), "seed": seed, "zipf_s": 1.07}
    (tmp / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)
    return meta


def make_tokenizer(folder: Path, corpus: Path) -> None:
    if (folder / "tokenizer.json").exists():
        return
    from data.tokenizer import build_sample_tokenizer, save_folder

    texts: list[str] = []
    chars = 0
    with open(corpus / "shard-00.jsonl") as fh:
        for line in fh:  # 8 MB are plenty to train the BPE merges
            texts.append(json.loads(line)["text"])
            chars += len(texts[-1])
            if chars > 8_000_000:
                break
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_folder(build_sample_tokenizer(texts, VOCAB), tmp)
    os.rename(tmp, folder)


# ---------------------------------------------------------------- the three pipelines (each in a fresh process)


def _rss_anon_kb() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class _AnonPeak:
    """Peak RssAnon of this process, sampled every 10 ms. RSS also counts file pages of memory-mapped files
    (ours maps its finished Arrow file to hand it to `save_to_disk`), which grow with the output but are page
    cache the kernel can drop; anonymous memory is what must stay flat."""

    peak_kb = 0

    @classmethod
    def start(cls) -> None:
        def sample() -> None:
            while True:
                cls.peak_kb = max(cls.peak_kb, _rss_anon_kb())
                time.sleep(0.01)

        threading.Thread(target=sample, daemon=True).start()


def _rss_mb() -> dict:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    anon_kb = max(_AnonPeak.peak_kb, _rss_anon_kb())
    return {"rss_main_mb": self_kb / 1024, "anon_main_mb": anon_kb / 1024, "rss_worker_mb": child_kb / 1024}


def job_raw(args: dict) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(args["tokenizer"]) / "tokenizer.json"))
    texts: list[str] = []
    for f in args["files"]:
        with open(f) as fh:
            texts.extend(json.loads(line)["text"] for line in fh)
    encode = tok.encode_batch_fast if args.get("fast") else tok.encode_batch
    t0 = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), 1024):
        tokens += sum(len(e.ids) for e in encode(texts[i : i + 1024]))
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, **_rss_mb()}


def job_ours(args: dict) -> dict:
    from core.config import JobConfig
    from core.stages import Stage, StageContext
    from data.config import DataSource
    from data.stage_data import run

    cfg = JobConfig()
    cfg.model.vocab_size = VOCAB
    cfg.cluster.cache_dir = args["cache"]
    cfg.data.source = DataSource.files
    cfg.data.paths = args["files"]
    cfg.data.tokenizer = args["tokenizer"]
    cfg.data.seq_len = 2048
    cfg.data.val_fraction = 0.0
    cfg.data.num_proc = args["threads"]
    out = Path(args["out"])
    s = run(cfg, StageContext(Stage.data, out.parent, out, out))
    return {
        "seconds": s["seconds"] - s["startup_seconds"],
        "startup": s["startup_seconds"],
        "tokens": s["tokens"],
        "bytes_written": s["bytes_written"],
        "stored_tokens": s["blocks"]["train"] * 2048,
        "workers_used": s["workers_used"],
        **_rss_mb(),
    }


def job_nxd(args: dict) -> dict:
    """NxD's get_dataset.py recipe on the same files (its tokenize + group_texts + save_to_disk)."""
    from itertools import chain

    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(args["tokenizer"])
    block_size = 2048
    t0 = time.perf_counter()
    raw = datasets.load_dataset("json", data_files=args["files"], split="train", cache_dir=args["cache"])
    t1 = time.perf_counter()
    tokenized = raw.map(lambda ex: tok(ex["text"]), batched=True, remove_columns=raw.column_names)
    t2 = time.perf_counter()

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = len(concatenated[next(iter(examples))]) // block_size * block_size
        result = {k: [t[i : i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    grouped = tokenized.map(group_texts, batched=True)
    t3 = time.perf_counter()
    grouped.save_to_disk(args["out"])
    t4 = time.perf_counter()
    written = sum(p.stat().st_size for p in Path(args["out"]).rglob("*") if p.is_file())
    return {
        "seconds": t4 - t0,
        "t_load": t1 - t0,
        "tokenize": t2 - t1,
        "group": t3 - t2,
        "save": t4 - t3,
        "bytes_written": written,
        "stored_tokens": grouped.num_rows * block_size,
        **_rss_mb(),
    }


def measure(kind: str, args: dict) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAYON_NUM_THREADS": str(args["threads"]),
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_CACHE": args["cache"],
    }
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, __file__, "--job", kind, json.dumps(args)], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["load"] = (load + os.getloadavg()[0]) / 2
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--words", type=int, default=150_000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "bench_data")
    ap.add_argument("--skip-nxd", action="store_true", help="skip the (slow) NxD recipe")
    ap.add_argument("--job", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.job:
        _AnonPeak.start()
        print(json.dumps({"raw": job_raw, "ours": job_ours, "nxd": job_nxd}[a.job[0]](json.loads(a.job[1]))))
        return

    sys.path.insert(0, str(ROOT))
    t = time.perf_counter()
    corpus = a.work / f"corpus-{a.size_mb}mb-{a.words}w-s{a.seed}"
    meta = make_corpus(corpus, a.size_mb, a.words, a.seed)
    tok = a.work / f"tokenizer-bpe{VOCAB}-{corpus.name}"
    make_tokenizer(tok, corpus)
    print(
        f"corpus: {meta['bytes'] / 1e6:.0f} MB, {meta['documents']:,} documents, {meta['distinct_words']:,} "
        f"distinct word forms (Zipf s={meta['zipf_s']}, seed {meta['seed']}); tokenizer: byte-level BPE "
        f"{VOCAB} (Llama 3 split); threads/workers: {a.threads}; setup {time.perf_counter() - t:.0f} s",
        flush=True,
    )
    files = [str(p) for p in sorted(corpus.glob("shard-*.jsonl"))]
    scratch = a.work / "scratch"

    def args(name: str, fs: list[str]) -> dict:
        shutil.rmtree(scratch / name, ignore_errors=True)
        (scratch / name / "cache").mkdir(parents=True)
        return {
            "files": fs,
            "tokenizer": str(tok),
            "threads": a.threads,
            "cache": str(scratch / name / "cache"),
            "out": str(scratch / name / "out"),
        }

    rows = {"raw": measure("raw", args("raw", files))}
    # encode_batch_fast skips the offsets (what ours calls): the tighter limit, shown for an honest reading.
    rows["raw_fast"] = measure("raw", {**args("raw_fast", files), "fast": True})
    rows["ours"] = measure("ours", args("ours", files))
    rows["ours_quarter"] = measure("ours", args("ours_q", files[: SHARDS // 4]))
    if not a.skip_nxd:
        rows["nxd"] = measure("nxd", args("nxd", files))
    shutil.rmtree(scratch, ignore_errors=True)

    raw = rows["raw"]["seconds"]
    print(
        f"\n{'pipeline':<36}{'seconds':>9}{'Mtok/s':>8}{'x raw':>7}{'RSS main':>10}{'anon main':>10}{'RSS wkr':>9}"
        f"{'B/token':>9}{'load':>6}"
    )
    for name, label in (
        ("raw", "raw encode_batch (the limit)"),
        ("raw_fast", "raw encode_batch_fast (no offsets)"),
        ("ours", "ours (start-up excluded)"),
        ("ours_quarter", "ours, 1/4 corpus"),
        ("nxd", "NxD get_dataset.py recipe"),
    ):
        if name not in rows:
            continue
        r = rows[name]
        toks = r["tokens"] if name in ("ours_quarter", "raw_fast") else rows["raw"]["tokens"]
        bpt = f"{r['bytes_written'] / r['stored_tokens']:.2f}" if "bytes_written" in r else "-"
        ratio = f"{r['seconds'] / raw:.2f}" if name != "ours_quarter" else "-"
        wkr = f"{r['rss_worker_mb']:.0f}M" if name.startswith("ours") else "-"  # only ours has workers
        print(
            f"{label:<36}{r['seconds']:>9.1f}{toks / r['seconds'] / 1e6:>8.2f}{ratio:>7}"
            f"{r['rss_main_mb']:>9.0f}M{r['anon_main_mb']:>9.0f}M{wkr:>9}{bpt:>9}{r['load']:>6.1f}"
        )
    o = rows["ours"]
    print(
        f"\nours: start-up {o['startup']:.1f} s (imports, tokenizer, {o['workers_used']} spawned workers); "
        f"total tokens {o['tokens']:,} (raw counted {rows['raw']['tokens']:,}); ours / encode_batch "
        f"{o['seconds'] / raw:.2f} (target <= 1.25), ours / encode_batch_fast "
        f"{o['seconds'] / rows['raw_fast']['seconds']:.2f}"
    )
    if "nxd" in rows:
        n = rows["nxd"]
        print(
            f"nxd: load {n['t_load']:.1f} s, tokenize map {n['tokenize']:.1f} s, group_texts {n['group']:.1f} s, "
            f"save {n['save']:.1f} s; ours is {n['seconds'] / o['seconds']:.2f}x faster"
        )


if __name__ == "__main__":
    main()
