"""One torchrun worker of tests/test_nxd_cpu_smoke.py: NxD's real code in its CPU mode (NXD_CPU_MODE=1, gloo) at
TP = world size, checked against the same computation in plain torch on the unsharded weights.

    NXD_SRC=... NXD_CPU_MODE=1 torchrun --nproc_per_node 2 tests/helpers/nxd_cpu_smoke_worker.py OUT_DIR

Writes OUT_DIR/rank<r>.json with the largest differences and the losses.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers.nxd_available import nxd_importable

ok, reason = nxd_importable()
if not ok:
    raise SystemExit(f"NxD not importable: {reason}")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tests.helpers.nxd_stubs import patch_cpu_mode_gaps  # noqa: E402

assert os.environ.get("NXD_CPU_MODE") == "1", "run with NXD_CPU_MODE=1"
dist.init_process_group("gloo")
patch_cpu_mode_gaps()

from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear  # noqa: E402
from neuronx_distributed.parallel_layers import parallel_state  # noqa: E402
from neuronx_distributed.parallel_layers.layers import (  # noqa: E402
    ColumnParallelLinear,
    ParallelEmbedding,
    RowParallelLinear,
)
from neuronx_distributed.parallel_layers.loss_functions import parallel_cross_entropy  # noqa: E402
from neuronx_distributed.trainer import (  # noqa: E402
    initialize_parallel_model,
    initialize_parallel_optimizer,
    load_checkpoint,
    neuronx_distributed_config,
    save_checkpoint,
)

RANK = dist.get_rank()
TP = dist.get_world_size()
out_dir = Path(sys.argv[1])
results: dict = {"world": TP}


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.detach() - b.detach()).abs().max().item()


def chunk(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t.chunk(TP, dim=dim)[RANK].contiguous()


# 1. Parallel state.
parallel_state.initialize_model_parallel(tensor_model_parallel_size=TP)
results["tp_size"] = parallel_state.get_tensor_model_parallel_size()
results["tp_rank"] = parallel_state.get_tensor_model_parallel_rank()
results["dp_size"] = parallel_state.get_data_parallel_size()

# 2. ColumnParallelLinear -> RowParallelLinear (the MLP pattern), forward and backward vs plain torch.
H, F_, B, S = 8, 12, 2, 3
g = torch.Generator().manual_seed(0)
w1 = torch.randn(F_, H, generator=g)
w2 = torch.randn(H, F_, generator=g)
x = torch.randn(B, S, H, generator=g)
dy = torch.randn(B, S, H, generator=g)

col = ColumnParallelLinear(H, F_, bias=False, gather_output=False)
row = RowParallelLinear(F_, H, bias=False, input_is_parallel=True)
with torch.no_grad():
    col.weight.copy_(chunk(w1, 0))
    row.weight.copy_(chunk(w2, 1))
xp = x.clone().requires_grad_(True)
y = row(F.gelu(col(xp)))
(y * dy).sum().backward()

w1r, w2r, xr = (t.clone().requires_grad_(True) for t in (w1, w2, x))
yr = F.gelu(xr @ w1r.T) @ w2r.T
(yr * dy).sum().backward()
results["col_row"] = {
    "local_weight_shapes": [list(col.weight.shape), list(row.weight.shape)],
    "out": maxdiff(y, yr),
    "grad_input": maxdiff(xp.grad, xr.grad),
    "grad_col_weight": maxdiff(col.weight.grad, chunk(w1r.grad, 0)),
    "grad_row_weight": maxdiff(row.weight.grad, chunk(w2r.grad, 1)),
}

# 3. GQAQKVColumnParallelLinear, fused QKV, KV replicated kv_size_multiplier times; NxD's own initialisation with
#    keep_master_weight=True gives the unsharded weights, from which the layout on this rank is checked too
#    (trn1: K/V tile-repeated kvm times along dim 0, then a contiguous dim-0 chunk per rank).
HQ, HKV, D, KVM = 4, 1, 2, TP  # KV heads 1 x kvm 2 = 2 = tp: each rank holds the one KV head
HID = 6
torch.manual_seed(1)  # same NxD init on every rank
qkv = GQAQKVColumnParallelLinear(
    HID, [HQ * D, HKV * D], bias=False, gather_output=False, keep_master_weight=True, kv_size_multiplier=KVM
)
mq, mk, mv = torch.split(qkv.master_weight_qkv, [HQ * D, HKV * D, HKV * D], dim=0)
rep_k, rep_v = mk.repeat(KVM, 1), mv.repeat(KVM, 1)
expected_local = torch.cat([chunk(mq, 0), chunk(rep_k, 0), chunk(rep_v, 0)], dim=0)
xq = torch.randn(B, S, HID, generator=g)
cq, ck, cv = (torch.randn(B, S, n, generator=g) for n in (HQ * D, HKV * D * KVM, HKV * D * KVM))
xqp = xq.clone().requires_grad_(True)
q, k, v = qkv(xqp)
(q * chunk(cq, 2)).sum().add((k * chunk(ck, 2)).sum()).add((v * chunk(cv, 2)).sum()).backward()

wq, wk, wv, xqr = (t.detach().clone().requires_grad_(True) for t in (mq, rep_k, rep_v, xq))
qr, kr, vr = xqr @ wq.T, xqr @ wk.T, xqr @ wv.T
((qr * cq).sum() + (kr * ck).sum() + (vr * cv).sum()).backward()


# NxD's backward sums the K/V output gradients over the KV-shared group (the ranks holding replicas of the same
# head), divides the K/V part of the input gradient by kv_size_multiplier (qkv_linear.py: "would cause the K and V
# duplicate factor to be counted twice") and then all-reduces it over TP. So the input gradient is the exact one of
# the replicated computation, and every replica's weight gradient is the sum of the replicas' gradients (the
# replicas stay equal). Here each rank holds one replica (kvm = tp).
def replicas_summed(grad):
    return grad.view(KVM, HKV * D, HID).sum(0)


expected_grad = torch.cat([chunk(wq.grad, 0), replicas_summed(wk.grad), replicas_summed(wv.grad)], dim=0)
results["gqa_qkv"] = {
    "weight_qkv_shape": list(qkv.weight_qkv.shape),
    "layout": maxdiff(qkv.weight_qkv, expected_local),
    "q": maxdiff(q, chunk(qr, 2)),
    "k": maxdiff(k, chunk(kr, 2)),
    "v": maxdiff(v, chunk(vr, 2)),
    "grad_input": maxdiff(xqp.grad, xqr.grad),
    "grad_weight_qkv": maxdiff(qkv.weight_qkv.grad, expected_grad),
    # NxD drops this attribute when it re-creates the fused parameter (its grad-norm bug, see nxd-cpu.md).
    "weight_qkv_has_tensor_model_parallel": hasattr(qkv.weight_qkv, "tensor_model_parallel"),
}

# 4. The trainer API: neuronx_distributed_config + initialize_parallel_model + initialize_parallel_optimizer, a tiny
#    LM of NxD layers (vocab-parallel embedding, column/row MLP, column lm_head, parallel_cross_entropy), a few AdamW
#    steps with NxD's gradient clipping, vs the same model in plain torch; save_checkpoint after step 3 and
#    load_checkpoint into a fresh model + optimizer, which then redoes steps 4-5.
V, HM, FM, STEPS, LR = 16, 8, 16, 5, 1e-2
g = torch.Generator().manual_seed(2)
full = {
    "embed": torch.randn(V, HM, generator=g),
    "up": torch.randn(FM, HM, generator=g) * 0.3,
    "down": torch.randn(HM, FM, generator=g) * 0.3,
    "head": torch.randn(V, HM, generator=g) * 0.3,
}
data = [torch.randint(0, V, (2, 5), generator=g) for _ in range(STEPS)]


class TinyNxD(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = ParallelEmbedding(V, HM)
        self.up = ColumnParallelLinear(HM, FM, bias=False, gather_output=False)
        self.down = RowParallelLinear(FM, HM, bias=False, input_is_parallel=True)
        self.head = ColumnParallelLinear(HM, V, bias=False, gather_output=False)

    def forward(self, ids, labels):
        h = self.embed(ids)
        h = h + self.down(F.gelu(self.up(h)))
        return parallel_cross_entropy(self.head(h), labels).mean()


def tiny_nxd() -> TinyNxD:
    model = TinyNxD()
    with torch.no_grad():
        model.embed.weight.copy_(chunk(full["embed"], 0))
        model.up.weight.copy_(chunk(full["up"], 0))
        model.down.weight.copy_(chunk(full["down"], 1))
        model.head.weight.copy_(chunk(full["head"], 0))
    return model


parallel_state.destroy_model_parallel()  # neuronx_distributed_config sets the groups up again
nxd_config = neuronx_distributed_config(tensor_parallel_size=TP)
model = initialize_parallel_model(nxd_config, tiny_nxd)
optimizer = initialize_parallel_optimizer(nxd_config, torch.optim.AdamW, model.parameters(), lr=LR)
devices = sorted({str(p.device) for p in model.parameters()})
ckpt_dir, SAVE_AT = out_dir / "ckpt", 3


def train_step(model, optimizer, ids) -> tuple[float, float]:
    optimizer.zero_grad()
    loss = model(ids, ids)
    loss.backward()
    optimizer.step()
    return loss.item(), float(optimizer.grad_norm)


nxd_losses, nxd_norms = [], []
for step, ids in enumerate(data, start=1):
    loss, norm = train_step(model, optimizer, ids)
    nxd_losses.append(loss)
    nxd_norms.append(norm)
    if step == SAVE_AT:  # NxD's checkpoint code synchronises with xm.rendezvous: patch_cpu_mode_gaps makes it a barrier
        save_checkpoint(str(ckpt_dir), f"step_{step}", model=model, optimizer=optimizer)

# Resume: a fresh model and optimizer (initial weights) loaded from the step-3 checkpoint redo steps 4 and 5.
model2 = initialize_parallel_model(nxd_config, tiny_nxd)
optimizer2 = initialize_parallel_optimizer(nxd_config, torch.optim.AdamW, model2.parameters(), lr=LR)
load_checkpoint(str(ckpt_dir), tag=f"step_{SAVE_AT}", model=model2, optimizer=optimizer2)
resumed_losses = [train_step(model2, optimizer2, ids)[0] for ids in data[SAVE_AT:]]
ckpt_files = sorted(str(p.relative_to(ckpt_dir)) for p in ckpt_dir.rglob("*") if p.is_file())

ref = {k: torch.nn.Parameter(v.clone()) for k, v in full.items()}
ref_opt = torch.optim.AdamW(ref.values(), lr=LR)
ref_losses, ref_norms = [], []
for ids in data:
    ref_opt.zero_grad()
    h = F.embedding(ids, ref["embed"])
    h = h + F.gelu(h @ ref["up"].T) @ ref["down"].T
    loss = F.cross_entropy((h @ ref["head"].T).reshape(-1, V), ids.reshape(-1))
    loss.backward()
    ref_norms.append(torch.nn.utils.clip_grad_norm_(ref.values(), 1.0).item())
    ref_opt.step()
    ref_losses.append(loss.item())
final_weight = maxdiff(model.original_module().head.weight, chunk(ref["head"], 0))
results["trainer"] = {
    "param_devices": devices,
    "nxd_losses": nxd_losses,
    "ref_losses": ref_losses,
    "nxd_grad_norms": nxd_norms,
    "ref_grad_norms": ref_norms,
    "loss": max(abs(a - b) for a, b in zip(nxd_losses, ref_losses)),
    "grad_norm": max(abs(a - b) for a, b in zip(nxd_norms, ref_norms)),
    "final_head_weight": final_weight,
    "resumed_losses": resumed_losses,
    "resume": max(abs(a - b) for a, b in zip(resumed_losses, nxd_losses[SAVE_AT:])),
    "checkpoint_files": ckpt_files,
}

out_dir.mkdir(parents=True, exist_ok=True)
(out_dir / f"rank{RANK}.json").write_text(json.dumps(results, indent=1))
dist.barrier()
dist.destroy_process_group()
