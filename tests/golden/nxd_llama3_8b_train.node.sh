export FI_EFA_USE_DEVICE_RDMA=1
export FI_PROVIDER=efa
export FI_EFA_FORK_SAFE=1
export NEURON_FUSE_SOFTMAX=1
export NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS=3
export MALLOC_ARENA_MAX=64
export NEURON_CC_FLAGS='--model-type=transformer --cache_dir=/fsx/trainium-launcher/cache/neuron-compile-cache'
export NEURON_RT_STOCHASTIC_ROUNDING_EN=0
export NEURON_RT_NUM_CORES=32
export NUM_NEURONCORES=32
export TPU_NUM_DEVICES=32
export TPU_CHIPS_PER_HOST_BOUNDS=32
export XLA_DOWNCAST_BF16=1
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
reserved=$(cat /proc/sys/net/ipv4/ip_local_reserved_ports 2>/dev/null || true)
if ! tr , '\n' <<<"$reserved" | grep -qx 44000; then
    sudo -n sysctl -q -w net.ipv4.ip_local_reserved_ports="${reserved:+$reserved,}44000" || echo "warning: could not reserve port 44000 (needs passwordless sudo); cluster.neuron.reserve_port=false silences this" >&2
fi
exec python -m torch.distributed.run --nproc_per_node=32 --nnodes=4 --node_rank="$SLURM_NODEID" --master_addr="$MASTER_ADDR" --master_port=44000 -m launcher.job /fsx/trainium-launcher/runs/llama3_8b-tp32_zero1-hyperpod train
