"""Import stubs for the Neuron-only modules that neuronx-distributed (NxD) imports, so that NxD's real Python code
imports and runs on a CPU machine in NxD's own CPU mode (NXD_CPU_MODE=1: eager CPU tensors, gloo, torchrun).

Test harness only: nothing here is used by the project's backend.

`install_stubs()` puts a meta-path finder on sys.meta_path that creates a module for any name under the Neuron-only
packages (torch_neuronx, neuronxcc, libneuronxla, nki, nkilib; the public index's packages of those names are
placeholders that raise at import). Every attribute of such a module is a placeholder that can be imported, passed
around, subscripted and used in annotations, and raises `NeuronStubError` naming itself when it is USED (called,
instantiated, subclassed-and-instantiated). A few names get working values because NxD evaluates them at import or
while setting up its process groups (the traps, from ../shared/reference/nxd-cpu.md):

1. `libneuronxla` must NOT have `libneuronpjrt_path`: torch-xla's `__init__` imports libneuronxla and, when that
   attribute exists, switches into Neuron (PJRT plugin) mode and fails. The stub raises AttributeError for it, and
   torch_xla is imported before the finder is installed.
2. `trace/spmd.py` evaluates `torch.classes.neuron.SPMDModel` at class definition: a `torch.classes.neuron`
   namespace of placeholder classes is set.
3. `modules/moe/nki_import.py` (and `moe_fused_tkg_mx.py`) apply NKI `jit` decorators at import: `jit` and
   `nki_jit` are decorator factories whose kernels raise only when called.
4. `parallel_state.initialize_model_parallel` reads `CollectivesConfig(replica_groups=...).rank_src_tgt_pairs[rank]`
   (ring pairs, used only by ring attention): a working `CollectivesConfig` is provided.
5. `parallel_layers.utils.get_local_world_size` falls back to `torch_xla.core.xla_env_vars.HOST_WORLD_SIZE`, which
   torch-xla 2.9 removed: it is defined (with its old value) and the environment variable set to 1 if unset.
6. `torch_neuronx.utils.get_platform_target()` selects NxD's TP group / KV replication layout: it returns
   `$NXD_STUB_PLATFORM_TARGET`, default `trn1`.

`patch_cpu_mode_gaps()` patches the three places where NxD's CPU mode is incomplete (see its docstring); call it after
`torch.distributed.init_process_group("gloo")` and after `install_stubs()`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types
from typing import Any, NamedTuple

NEURON_PACKAGES = ("torch_neuronx", "neuronxcc", "libneuronxla", "nki", "nkilib")
PLATFORM_ENV = "NXD_STUB_PLATFORM_TARGET"
# The value torch-xla had for xla_env_vars.HOST_WORLD_SIZE before 2.9 removed it.
HOST_WORLD_SIZE_VAR = "XRT_HOST_WORLD_SIZE"
# Attributes that must not exist on a stub module (see trap 1).
_ABSENT = {"libneuronxla": {"libneuronpjrt_path"}}
_DECORATORS = {"jit", "nki_jit"}

_installed = False
_touched: set[str] = set()


class NeuronStubError(RuntimeError):
    """A Neuron-only function or class was used on a machine without Neuron (it is a test stub)."""


def _fail(qualname: str) -> NeuronStubError:
    return NeuronStubError(
        f"{qualname} is a stub of a Neuron-only module (tests/helpers/nxd_stubs.py): it needs the Neuron SDK "
        "(torch-neuronx, neuronx-cc) on a Trainium machine and cannot be used in NxD's CPU mode"
    )


class Placeholder:
    """Any attribute of a stub module: importable, raises when used."""

    def __init__(self, qualname: str):
        self._qualname = qualname

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _fail(self._qualname)

    def __getattr__(self, name: str) -> Placeholder:
        if name.startswith("__"):
            raise AttributeError(name)
        _touched.add(f"{self._qualname}.{name}")
        return Placeholder(f"{self._qualname}.{name}")

    def __getitem__(self, item: Any) -> Placeholder:  # annotations such as nl.tensor[...]
        return self

    def __or__(self, other: Any) -> Any:  # annotations such as X | None
        return self

    __ror__ = __or__

    def __mro_entries__(self, bases: tuple) -> tuple:  # class Foo(stub.Base): defines, raises on instantiation
        qualname = self._qualname

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise _fail(qualname)

        return (type(qualname.rsplit(".", 1)[-1], (), {"__init__": __init__}),)

    def __repr__(self) -> str:
        return f"<Neuron stub {self._qualname}>"


class _Kernel(Placeholder):
    """What a stubbed NKI jit decorator returns: subscriptable (kernel[grid]), raises when called."""

    def __init__(self, qualname: str, func: Any):
        super().__init__(f"{qualname}({getattr(func, '__qualname__', func)!r})")
        self.__wrapped__ = func


class _DecoratorFactory(Placeholder):
    """`jit(f)`, `jit(f, mode=...)`, `jit(platform_target=...)(f)`, `nki_jit()(f)`: all give a kernel stub."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args and callable(args[0]):
            return _Kernel(self._qualname, args[0])
        return _DecoratorFactory(self._qualname)


def get_platform_target() -> str:
    return os.environ.get(PLATFORM_ENV, "trn1")


class CollectivesConfig:
    """Working stand-in for neuronxcc's CollectivesConfig: ring (src, tgt) pairs per rank of each replica group."""

    def __init__(self, replica_groups: list[list[int]], **_: Any):
        self.replica_groups = [list(g) for g in replica_groups]
        pairs: dict[int, list[list[int]]] = {}
        for group in self.replica_groups:
            n = len(group)
            ring = [[group[i], group[(i + 1) % n]] for i in range(n)]
            for rank in group:
                pairs[rank] = ring
        self.rank_src_tgt_pairs = pairs


class SkipMode(NamedTuple):
    """nkilib's MoE SkipMode: `blockwise.py` constructs one as a dataclass default at import."""

    skip_token: bool = False
    skip_weight: bool = False


_WORKING: dict[str, dict[str, Any]] = {
    "torch_neuronx.utils": {"get_platform_target": get_platform_target},
    "torch_neuronx.utils.utils": {"get_platform_target": get_platform_target, "SUPPORTED_TYPES": ("trn1", "trn2")},
    "neuronxcc.nki._pre_prod_kernels.collectives": {"CollectivesConfig": CollectivesConfig},
    "neuronxcc.nki._private_kernels.collectives": {"CollectivesConfig": CollectivesConfig},
    "nkilib.core.moe.moe_cte.moe_cte_utils": {"SkipMode": SkipMode},
}


class StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in _ABSENT.get(self.__name__, ()):
            raise AttributeError(f"module {self.__name__!r} (Neuron stub) has no attribute {name!r}")
        qualname = f"{self.__name__}.{name}"
        _touched.add(qualname)
        value = _DecoratorFactory(qualname) if name in _DECORATORS else Placeholder(qualname)
        setattr(self, name, value)
        return value


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = StubModule(spec.name)
        module.__path__ = []  # every stub is a package, so any submodule imports
        module.__nxd_stub__ = True
        for key, value in _WORKING.get(spec.name, {}).items():
            setattr(module, key, value)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _StubFinder(importlib.abc.MetaPathFinder):
    loader = _StubLoader()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".", 1)[0] not in NEURON_PACKAGES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self.loader, is_package=True)


class _NeuronClasses:
    """`torch.classes.neuron`: placeholder classes (SPMDModel, LayoutTransformation, ...)."""

    def __getattr__(self, name: str) -> Placeholder:
        if name.startswith("__"):
            raise AttributeError(name)
        return Placeholder(f"torch.classes.neuron.{name}")


def install_stubs() -> None:
    """Make NxD importable on CPU. Idempotent. Raises if a real Neuron package was already imported."""
    global _installed
    if _installed:
        return
    for name in NEURON_PACKAGES:
        mod = sys.modules.get(name)
        if mod is not None and not getattr(mod, "__nxd_stub__", False):
            raise RuntimeError(f"{name} is already imported from {getattr(mod, '__file__', '?')}; stubs not installed")
    # Trap 1: torch-xla looks at libneuronxla during its own import; import it before any stub exists.
    import torch
    import torch_xla  # noqa: F401
    import torch_xla.core.xla_env_vars as xenv

    # Trap 5.
    if not hasattr(xenv, "HOST_WORLD_SIZE"):
        xenv.HOST_WORLD_SIZE = HOST_WORLD_SIZE_VAR
    os.environ.setdefault(xenv.HOST_WORLD_SIZE, "1")
    # Trap 2.
    torch.classes.neuron = _NeuronClasses()
    # Traps 3, 4, 6 and everything else: the finder.
    sys.meta_path.insert(0, _StubFinder())
    _installed = True


def touched() -> list[str]:
    """Names of stub attributes NxD has looked up so far (how the stubbed surface was found)."""
    return sorted(_touched)


_patched = False


def patch_cpu_mode_gaps() -> None:
    """Patch, in this process only, the three places where NxD's CPU mode (NXD_CPU_MODE=1) is incomplete.

    Test harness only; the project's backend never does this. Call after `torch.distributed.init_process_group`.

    1. `neuronx_distributed.trainer.trainer.initialize_parallel_model` moves the model to `xm.xla_device()`
       unconditionally (phase 3 "materialize model and move to device"), although the rest of NxD uses
       `neuronx_distributed.utils.get_device()` (CPU in CPU mode). On an XLA device the model's tensors live in a
       one-process torch-xla world whose collectives are silently local, so TP results are wrong without an error.
       Patch: the `xm` that module sees is a proxy of torch_xla.core.xla_model whose `xla_device()` returns
       `get_device()`.
    2. `xm.rendezvous(tag)` is an XLA collective: across CPU processes (each its own one-device XLA world) it
       returns at once, so it is not a barrier. NxD's checkpoint code relies on it as one (rank 0 creates folders
       that the others then write into: "Parent directory .../optim does not exist"). Patch: in CPU mode with a
       process group, `xm.rendezvous` is a `torch.distributed` all-gather of the payloads over the default group
       (gloo), which is a barrier, returning the payloads as xm.rendezvous does.
    3. `neuronx_distributed.modules.qkv_linear_utils` (GQAQKVColumnParallelLinear's autograd) calls
       `xm.all_gather`, `xm.reduce_scatter` and `xm.all_reduce` itself, where the other layers go through NxD's
       CPU-mode-aware `parallel_layers.comm`: under sequence parallelism (the input all-gather, the input-gradient
       reduce-scatter) and at kv_size_multiplier > 1 (the K/V gradient all-reduce over the KV-shared group) CPU
       tensors reach torch-xla ("Expected XLA tensor"). Patch: that module's `xm` is a proxy whose three
       collectives call `parallel_layers.comm` with the process group of the replica groups passed.
    """
    global _patched
    if _patched:
        return
    import torch.distributed as dist
    import torch_xla.core.xla_model as xm
    from neuronx_distributed.trainer import trainer
    from neuronx_distributed.utils import cpu_mode, get_device

    class _XmForCpuMode(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            return getattr(xm, name)

        @staticmethod
        def xla_device(*args: Any, **kwargs: Any) -> Any:
            return get_device() if cpu_mode() else xm.xla_device(*args, **kwargs)

    trainer.xm = _XmForCpuMode("torch_xla.core.xla_model (NxD CPU-mode proxy)")

    original_rendezvous = xm.rendezvous

    def rendezvous(tag: str, payload: bytes = b"", replicas: list | None = None) -> list[bytes]:
        if not (cpu_mode() and dist.is_available() and dist.is_initialized()):
            return original_rendezvous(tag, payload, replicas or [])
        if replicas:
            raise NotImplementedError("CPU-mode rendezvous over a subset of replicas")
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, payload)
        return gathered

    xm.rendezvous = rendezvous
    _patch_qkv_collectives()
    _patched = True


def _patch_qkv_collectives() -> None:
    """Gap 3 of patch_cpu_mode_gaps."""
    import torch
    import torch_xla.core.xla_model as xm
    from neuronx_distributed.modules import qkv_linear_utils
    from neuronx_distributed.parallel_layers import comm
    from neuronx_distributed.parallel_layers import parallel_state as ps
    from neuronx_distributed.utils import cpu_mode

    def group_of(replica_groups: Any) -> Any:
        if not isinstance(replica_groups, list):
            return replica_groups
        if replica_groups == ps.get_tensor_model_parallel_replica_groups():
            return ps.get_tensor_model_parallel_group()
        if replica_groups == ps.get_kv_shared_replica_groups():
            return ps.get_kv_shared_group()
        raise NotImplementedError(f"CPU-mode collective over replica groups {replica_groups}")

    class _XmCollectivesForCpuMode(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            return getattr(xm, name)

        @staticmethod
        def all_gather(value, dim=0, groups=None, output=None, pin_layout=True):
            if not cpu_mode():
                return xm.all_gather(value, dim=dim, groups=groups, output=output, pin_layout=pin_layout)
            return comm.all_gather(value, dim=dim, groups=group_of(groups), output=output)

        @staticmethod
        def reduce_scatter(reduce_type, input, scale, scatter_dim, shard_count, groups=None, output=None, **kw):
            if not cpu_mode():
                return xm.reduce_scatter(
                    reduce_type, input, scale, scatter_dim, shard_count, groups=groups, output=output, **kw
                )
            return comm.cpu_reduce_scatter(
                reduce_type, input, scale, scatter_dim, shard_count, groups=group_of(groups), output=output
            )

        @staticmethod
        def all_reduce(reduce_type, inputs, scale=1.0, groups=None, pin_layout=True):
            if not cpu_mode():
                return xm.all_reduce(reduce_type, inputs, scale=scale, groups=groups, pin_layout=pin_layout)
            tensors = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
            comm.all_reduce(reduce_type, tensors, groups=group_of(groups))
            if scale != 1.0:
                for t in tensors:
                    t.mul_(scale)
            return tensors[0] if isinstance(inputs, torch.Tensor) else tensors

    qkv_linear_utils.xm = _XmCollectivesForCpuMode("torch_xla.core.xla_model (NxD CPU-mode collectives proxy)")
