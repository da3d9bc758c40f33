"""Corpus readers: the sample corpus, local .txt/.jsonl/.parquet files or globs, and a hub parquet dataset.

A corpus is planned as an ordered list of `Piece`s (a sample range, a .txt file, a byte range of a .jsonl file
cut at line starts, a run of parquet row groups) that worker processes read and tokenize independently, so
reading scales with the workers and the main process only packs. Document order = piece order, then order
inside a piece: the same for any number of workers. Errors for bad input are `CorpusError` (a ValueError).

Documents: a .txt file is one document; a .jsonl line is one document (its `data.text_field`; blank lines are
skipped); a parquet row is one document (its `data.text_field` column).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from core.problems import Problem, raise_if
from data.config import DataConfig, DataSource

EXTENSIONS = (".txt", ".jsonl", ".parquet")
# Target bytes of input per piece: big enough to amortize a task, small enough to spread over many cores.
PIECE_BYTES = 4 << 20
SAMPLE_DOCS_PER_PIECE = 64


class CorpusError(ValueError):
    """Bad corpus input (the message names the file and where in it)."""


@dataclass(frozen=True)
class Piece:
    kind: str  # sample | txt | jsonl | parquet
    path: str = ""
    # sample: document indices; jsonl: byte offsets (start is a line start); parquet: row-group indices.
    start: int = 0
    stop: int = 0
    field: str = "text"
    # Bytes of input this piece covers (for the progress bar).
    weight: int = 0


@dataclass(frozen=True)
class Corpus:
    description: str
    pieces: list[Piece]
    files: list[str]

    @property
    def total_weight(self) -> int:
        return sum(p.weight for p in self.pieces)


def plan_corpus(data: DataConfig, hub_root: Path | None = None) -> Corpus:
    """Resolve the configured source into pieces, checking what can be checked before reading anything.
    `hub_root`: where data=hub's parquet files are (downloaded into it when it is not a local folder already)."""
    if data.source == DataSource.sample:
        from data import sample

        docs = sample.documents()
        if data.sample_documents:
            docs = docs[: data.sample_documents]
        pieces = [
            Piece(
                "sample",
                "",
                i,
                min(i + SAMPLE_DOCS_PER_PIECE, len(docs)),
                weight=sum(len(d) for d in docs[i : i + SAMPLE_DOCS_PER_PIECE]),
            )
            for i in range(0, len(docs), SAMPLE_DOCS_PER_PIECE)
        ]
        return Corpus(f"sample corpus (pydoc_data.topics, {len(docs)} documents)", pieces, [])
    if data.source == DataSource.files:
        files = expand(data.paths)
        return Corpus(f"{len(files)} local file(s)", plan_files(files, data.text_field), [str(f) for f in files])
    assert hub_root is not None, "data=hub needs the folder of its parquet files"
    files = hub_parquet_files(data, hub_root)
    return Corpus(
        f"{data.hub_dataset} ({data.hub_config or 'default'}, revision {data.hub_revision})",
        plan_files(files, data.text_field),
        [str(f) for f in files],
    )


def expand(patterns: list[str]) -> list[Path]:
    """Files matching the patterns, in pattern order, sorted within a glob, without repeats."""
    files, problems = resolve(patterns)
    raise_if(problems, CorpusError)
    return files


def resolve(patterns: list[str]) -> tuple[list[Path], list[Problem]]:
    """`expand` without raising: the files, and a problem for each pattern that matches nothing and each file of
    a type the data stage does not read (stat calls only: the launcher runs it at plan time)."""
    if not patterns:
        return [], [
            Problem(
                "data.paths",
                [],
                "data=files needs at least one file or glob.",
                "pass 'data.paths=[\"corpus/*.txt\"]' (quote it for the shell).",
            )
        ]
    out: list[Path] = []
    problems: list[Problem] = []
    seen: set[Path] = set()
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            problems.append(
                Problem(
                    "data.paths",
                    pattern,
                    f"matches no file (relative paths are relative to {os.getcwd()}).",
                    "check the path; globs are expanded by the launcher, so quote them on the command line: "
                    "'data.paths=[\"my corpus/*.txt\"]'.",
                )
            )
        for m in matches:
            p = Path(m).resolve()
            if p.suffix not in EXTENSIONS:
                problems.append(
                    Problem(
                        "data.paths",
                        m,
                        f"has the extension {p.suffix or '(none)'!r}; the data stage reads {', '.join(EXTENSIONS)}.",
                        "narrow the glob (for example '*.jsonl') or convert the file.",
                    )
                )
            elif p not in seen:
                seen.add(p)
                out.append(p)
    return out, problems


def plan_files(files: list[Path], field: str, piece_bytes: int = PIECE_BYTES) -> list[Piece]:
    pieces: list[Piece] = []
    for f in files:
        if f.suffix == ".txt":
            pieces.append(Piece("txt", str(f), weight=f.stat().st_size))
        elif f.suffix == ".jsonl":
            pieces.extend(_jsonl_pieces(f, field, piece_bytes))
        else:
            pieces.extend(_parquet_pieces(f, field, piece_bytes))
    return pieces


def _jsonl_pieces(path: Path, field: str, piece_bytes: int) -> list[Piece]:
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as fh:
        while cuts[-1] + piece_bytes < size:
            fh.seek(cuts[-1] + piece_bytes)
            fh.readline()  # move to the next line start
            pos = fh.tell()
            if pos >= size:
                break
            cuts.append(pos)
    cuts.append(size)
    return [Piece("jsonl", str(path), a, b, field, b - a) for a, b in pairwise(cuts) if b > a]


def _parquet_pieces(path: Path, field: str, piece_bytes: int) -> list[Piece]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise CorpusError(
            f"{path}: not a readable parquet file ({e}). Check the file, or remove it from data.paths."
        ) from e
    schema = meta.schema_arrow
    if field not in schema.names:
        raise CorpusError(
            f"{path}: no column {field!r} (columns: {', '.join(schema.names)}). Set "
            f"data.text_field to the column that holds the text."
        )
    if not (pa.types.is_string(schema.field(field).type) or pa.types.is_large_string(schema.field(field).type)):
        raise CorpusError(
            f"{path}: column {field!r} has type {schema.field(field).type}, not string. Set "
            f"data.text_field to the column that holds the text."
        )
    md = meta.metadata
    pieces: list[Piece] = []
    start, acc = 0, 0
    for i in range(md.num_row_groups):
        acc += md.row_group(i).total_byte_size
        if acc >= piece_bytes or i == md.num_row_groups - 1:
            pieces.append(Piece("parquet", str(path), start, i + 1, field, acc))
            start, acc = i + 1, 0
    return pieces


def hub_parquet_files(data: DataConfig, root: Path) -> list[Path]:
    """The train parquet files of a hub dataset's parquet conversion (or a local folder laid out like it).

    The hub's parquet conversion (revision `refs/convert/parquet`) stores `<config>/train/NNNN.parquet`
    (`<config>/partial-train/` when the converter stopped early). A local folder with that layout is used as is.
    """
    if not Path(os.path.expanduser(data.hub_dataset)).is_dir():
        from huggingface_hub import snapshot_download

        config = data.hub_config or "default"
        try:
            snapshot_download(
                data.hub_dataset,
                repo_type="dataset",
                revision=data.hub_revision,
                local_dir=str(root),
                allow_patterns=[f"{config}/train/*.parquet", f"{config}/partial-train/*.parquet"],
            )
        except Exception as e:  # network, auth, unknown repo or revision: all user-fixable
            raise CorpusError(
                f"data.hub_dataset={data.hub_dataset!r} (revision {data.hub_revision!r}): the "
                f"download failed: {e}. Check the repo id and revision and the network (or "
                f"HF_TOKEN), or download the parquet files yourself and use data=files "
                f"data.paths=[...]."
            ) from e
    config = data.hub_config or "default"
    for sub in ("train", "partial-train"):
        files = sorted((root / config / sub).glob("*.parquet"))
        if files:
            return files
    raise CorpusError(
        f"data.hub_dataset={data.hub_dataset!r}: no parquet files under {root}/{config}/train/ "
        f"(the layout of the hub's refs/convert/parquet revision). Check data.hub_config "
        f"({data.hub_config!r}) and data.hub_revision ({data.hub_revision!r})."
    )


# ---- reading (runs in the worker processes)


def read(piece: Piece) -> Iterator[str]:
    if piece.kind == "sample":
        from data import sample

        yield from sample.documents()[piece.start : piece.stop]
    elif piece.kind == "txt":
        raw = Path(piece.path).read_bytes()
        yield _decode(raw, piece.path, 0)
    elif piece.kind == "jsonl":
        yield from _read_jsonl(piece)
    else:
        yield from _read_parquet(piece)


def _decode(raw: bytes, path: str, base: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        off = base + e.start
        raise CorpusError(
            f"{path}: not valid UTF-8 at byte offset {off} (byte 0x{raw[e.start]:02x}). Convert "
            f"the file to UTF-8 (for example `iconv -f latin1 -t utf-8`), or remove it from "
            f"data.paths."
        ) from None


def _line_number(path: str, offset: int) -> int:
    with open(path, "rb") as fh:
        return fh.read(offset).count(b"\n") + 1


def _read_jsonl(piece: Piece) -> Iterator[str]:
    with open(piece.path, "rb") as fh:
        fh.seek(piece.start)
        pos = piece.start
        while pos < piece.stop:
            raw = fh.readline()
            if not raw:
                break
            line_start, pos = pos, pos + len(raw)
            if not raw.strip():
                continue
            text = _decode(raw, piece.path, line_start)
            try:
                row = json.loads(text)
            except ValueError as e:
                line = _line_number(piece.path, line_start)
                raise CorpusError(
                    f"{piece.path}, line {line}: not valid JSON ({e}). Each line of a .jsonl "
                    f'file must be one JSON object such as {{"{piece.field}": "..."}}.'
                ) from None
            value = row.get(piece.field) if isinstance(row, dict) else None
            if not isinstance(value, str):
                line = _line_number(piece.path, line_start)
                what = "has no field" if not isinstance(row, dict) or piece.field not in row else "has a non-string"
                keys = list(row)[:8] if isinstance(row, dict) else type(row).__name__
                raise CorpusError(
                    f"{piece.path}, line {line}: the row {what} {piece.field!r} (it has {keys}). "
                    f"Set data.text_field to the field that holds the text, or fix the row."
                )
            yield value


def _read_parquet(piece: Piece) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(piece.path)
    row = sum(pf.metadata.row_group(i).num_rows for i in range(piece.start))
    for batch in pf.iter_batches(batch_size=1024, row_groups=range(piece.start, piece.stop), columns=[piece.field]):
        values = batch.column(0).to_pylist()
        for i, v in enumerate(values):
            if v is None:
                raise CorpusError(
                    f"{piece.path}, row {row + i}: {piece.field!r} is null. Drop null rows from "
                    f"the file or fill them with text."
                )
        row += len(values)
        yield from values
