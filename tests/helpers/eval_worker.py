"""Run under torchrun by tests/test_train_trust.py: the backend's evaluation over held-out splits of several
sizes (0 blocks, 1, fewer than ranks, an uneven remainder, more than one batch), on whatever layout argv names.
Rank 0 writes, per size, the collective result and a one-process reference computed on an unparallelised copy
of the same model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from data.loader import eval_batches
from model.config import DataParallelMode
from tests.helpers.training import small_config
from train.backend_torch import TorchBackend
from train.stage_train import train_job


class FakeSplit:
    def __init__(self, rows: int, seq_len: int, vocab: int):
        g = torch.Generator().manual_seed(rows)
        self.data = torch.randint(0, vocab, (rows, seq_len), generator=g)
        self.rows = rows

    def take(self, idx):
        return self.data[torch.as_tensor(idx, dtype=torch.long)]


def main() -> None:
    out, dp, tp, mode = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    cfg = small_config(out / "cache")
    cfg.parallel.data_parallel_degree, cfg.parallel.tensor_parallel_degree = dp, tp
    cfg.parallel.data_parallel_mode = DataParallelMode(mode)
    cfg.trainer.collective_timeout_s = 120
    backend = TorchBackend(train_job(cfg, Path("unused-run")))
    backend.setup()
    backend.build(resuming=False)
    from model import llama3
    from model.llama3 import loss_fn

    ref = llama3.build(cfg.model)
    ref.init_weights(cfg.trainer.seed)
    ref.eval()
    results = {}
    for rows in (0, 1, dp * 2 - 1, 5, 13):
        split = FakeSplit(rows, cfg.data.seq_len, cfg.model.vocab_size)
        mine = eval_batches(
            split,  # type: ignore[arg-type]
            global_batch=cfg.trainer.global_batch_size,
            micro_batch=cfg.trainer.micro_batch_size,
            num_batches=2,
            dp_rank=backend.dp_rank,
            dp_size=backend.dp_size,
        )
        loss, blocks = backend.eval_loss(mine)
        with torch.no_grad():
            total = min(rows, 2 * cfg.trainer.global_batch_size)
            expect = (
                sum(float(loss_fn(ref(split.data[i : i + 1]), split.data[i : i + 1])) for i in range(total)) / total
                if total
                else None
            )
        results[rows] = {"loss": loss if loss == loss else None, "blocks": blocks, "expect": expect, "held": total}
    if backend.rank == 0:
        (out / f"eval-dp{dp}-tp{tp}-{mode}.json").write_text(json.dumps(results))
    backend.teardown()


if __name__ == "__main__":
    main()
