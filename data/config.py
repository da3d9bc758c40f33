"""The data stage's configuration. Standard library only: the launcher and the encode workers import it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class DataSource(str, Enum):
    sample = "sample"
    files = "files"
    hub = "hub"


class DataFormat(str, Enum):
    compact = "compact"
    nxd = "nxd"


@dataclass(kw_only=True)
class DataConfig:
    # The option name (conf/data/<name>.yaml); names the dataset's cache folder.
    name: str = "sample"
    source: DataSource = DataSource.sample
    # data=files: files or globs (.txt, .jsonl, .parquet). Quote globs with spaces on the command line.
    paths: list[str] = field(default_factory=list)
    # The jsonl field / parquet column that holds the text.
    text_field: str = "text"
    # data=sample: use only the first N of its 302 documents (0 = all, as the tiny recipe does).
    sample_documents: int = 0
    # data=hub: a `datasets` repo id with its config and a pinned revision.
    hub_dataset: str = ""
    hub_config: str = ""
    hub_revision: str = "main"
    # "sample" = the BPE tokenizer trained locally on the sample corpus; else a local folder or a hub id.
    tokenizer: str = "sample"
    # Tokens per packed block (the training sequence length).
    seq_len: int = 256
    # compact: one int32 `input_ids` column; nxd: input_ids/attention_mask/labels exactly as NxD's get_dataset.py.
    format: DataFormat = DataFormat.compact
    # Share of documents held out for validation, in [0, 1).
    val_fraction: float = 0.01
    # Append the tokenizer's EOS to every document (BOS is always first, as Llama 3's tokenizer does).
    append_eos: bool = False
    # Encode worker processes; 0 = all cores.
    num_proc: int = 0
    # Empty: <cluster.cache_dir>/datasets/<name>-<hash of the settings it depends on>, shared by runs.
    output_dir: str = ""
