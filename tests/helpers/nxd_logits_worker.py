"""Worker of tests/test_nxd_checkpoints.py, run under torchrun (or alone) in the NxD CPU-mode environment:

    python -m tests.helpers.nxd_logits_worker RUN_DIR HF_DIR OUT_JSON [STEP_DIR]

Builds the nxd backend of RUN_DIR's config exactly as the train stage does (model.init=pretrained: the convert
stage's shards are loaded), optionally loads the model weights of a training checkpoint STEP_DIR
(nxd.load_checkpoint), gathers the vocab-parallel logits of fixed token ids over the TP group and, on rank 0,
compares them with transformers' LlamaForCausalLM loaded from HF_DIR. Writes OUT_JSON: the largest absolute
difference, and the key names of the backend's model under NxD's names (what `nxd.save_checkpoint` writes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(run_dir: Path, hf_dir: Path, out: Path, step: Path | None) -> None:
    import torch
    import torch.distributed as dist

    from launcher.job import load_config
    from model.parallelize_nxd import to_nxd_names
    from train.backend_nxd import NxDBackend
    from train.stage_train import train_job

    cfg = load_config(run_dir)
    backend = NxDBackend(train_job(cfg, run_dir))
    backend.setup()
    backend.build(resuming=False)
    if step is not None:
        backend.checkpoints.load_model(step)
    module = backend.model.local_modules()[0]
    ids = torch.randint(0, cfg.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        from model.llama3 import Llama3

        local = Llama3.forward(module, ids).float()  # [B, S, V/tp] (vocab-parallel lm_head)
    from neuronx_distributed.parallel_layers import parallel_state as ps

    tp = ps.get_tensor_model_parallel_size()
    parts = [torch.empty_like(local) for _ in range(tp)]
    dist.all_gather(parts, local.contiguous(), group=ps.get_tensor_model_parallel_group())
    logits = torch.cat(parts, dim=-1)
    keys = sorted(to_nxd_names(module.state_dict()))
    if backend.rank == 0:
        from transformers import LlamaForCausalLM

        hf = LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
        with torch.no_grad():
            ref = hf(ids).logits.float()
        result = {"max_abs_diff": float((logits - ref).abs().max()), "ref_max": float(ref.abs().max()), "keys": keys}
        out.write_text(json.dumps(result))
    backend.teardown()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(Path(a[0]), Path(a[1]), Path(a[2]), Path(a[3]) if len(a) > 3 else None)
