"""The sample tokenizer: trained with `tokenizers`, loaded by `transformers.AutoTokenizer` like Llama 3's."""

from __future__ import annotations

import json

from core.paths import tokenizer_dir
from data import sample
from data.tokenizer import BOS, EOS, build_sample_tokenizer, ensure_sample_tokenizer, load, tokenizer_folder
from tests.helpers.corpora import make_cfg


def test_sample_tokenizer_loads_with_autotokenizer_and_adds_bos_like_llama3(tmp_path):
    from transformers import AutoTokenizer

    cfg = make_cfg(tmp_path)
    folder = tokenizer_folder(cfg.data.tokenizer, tokenizer_dir(cfg), sample_vocab_size=cfg.model.vocab_size)
    assert folder == tmp_path / "cache" / "tokenizers" / "sample-bpe-2048"
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert len(tok) == cfg.model.vocab_size == 2048
    assert (tok.bos_token, tok.bos_token_id) == (BOS, cfg.model.bos_token_id) == (BOS, 0)
    assert (tok.eos_token, tok.eos_token_id) == (EOS, cfg.model.eos_token_id) == (EOS, 1)
    text = 'The "assert" statement: assert x, "message"  \n\n  naïve 東京 12345'
    ids = tok(text)["input_ids"]
    assert ids[0] == 0 and ids.count(0) == 1 and 1 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text  # byte-level: lossless
    assert tok(text, add_special_tokens=False)["input_ids"] == ids[1:]
    conf = json.loads((folder / "tokenizer_config.json").read_text())
    assert conf["tokenizer_class"] == "PreTrainedTokenizerFast"  # as Meta's Llama 3 tokenizer_config.json
    pre = json.loads((folder / "tokenizer.json").read_text())["pre_tokenizer"]
    assert [p["type"] for p in pre["pretokenizers"]] == ["Split", "ByteLevel"]


def test_sample_tokenizer_is_deterministic_and_compresses_the_corpus():
    a = build_sample_tokenizer(sample.documents(), 2048)
    b = build_sample_tokenizer(sample.documents(), 2048)
    assert a.to_str() == b.to_str()
    text = "\n".join(sample.documents()[:20])
    assert len(text) / len(a.encode(text).ids) > 2.5  # a real BPE, not bytes


def test_build_is_atomic_and_reused(tmp_path):
    folder = ensure_sample_tokenizer(tmp_path / "tok", 512)
    assert sorted(p.name for p in folder.iterdir()) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert not list(tmp_path.glob(".tok.tmp-*"))
    mtime = (folder / "tokenizer.json").stat().st_mtime_ns
    ensure_sample_tokenizer(folder, 512)
    assert (folder / "tokenizer.json").stat().st_mtime_ns == mtime


def test_load_reads_a_local_tokenizer_folder(tmp_path):
    folder = ensure_sample_tokenizer(tmp_path / "copy", 1024)
    loaded = load(folder, setting=str(folder), model_vocab_size=2048, model_name="tiny")
    assert loaded.path == folder and loaded.vocab_size == 1024 and loaded.bos_token_id == 0
    assert json.loads(loaded.backend_json)["post_processor"] is not None
