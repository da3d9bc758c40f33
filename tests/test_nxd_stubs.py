"""The Neuron import stubs (tests/helpers/nxd_stubs.py) behave as NxD needs: importable, raising on use, with the
few working values NxD evaluates at import. Runs everywhere: the finder is used directly (install_stubs, which also
needs torch-xla, is exercised by the nxd tests)."""

from __future__ import annotations

import importlib
import sys

import pytest

from tests.helpers import nxd_stubs
from tests.helpers.nxd_stubs import NEURON_PACKAGES, NeuronStubError


@pytest.fixture
def stub_finder():
    before = set(sys.modules)
    finder = nxd_stubs._StubFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield importlib.import_module
    finally:
        sys.meta_path.remove(finder)
        for name in set(sys.modules) - before:
            if name.split(".", 1)[0] in NEURON_PACKAGES:
                del sys.modules[name]


def test_any_module_imports_and_raises_on_use(stub_finder):
    mod = stub_finder("torch_neuronx.xla_impl.trace")
    fn = mod.generate_neff  # importing names is fine
    from torch_neuronx.pyhlo import hlo_pb2  # noqa: F401  (from-import of a stub submodule)

    with pytest.raises(NeuronStubError, match=r"torch_neuronx\.xla_impl\.trace\.generate_neff is a stub"):
        fn()
    with pytest.raises(NeuronStubError):
        mod.HloArtifacts.some.nested.attr(1, 2)

    class Sub(mod.SomeBase):  # subclassing works, instantiating raises
        pass

    with pytest.raises(NeuronStubError):
        Sub()
    assert mod.ndarray[1, 2] is mod.ndarray  # annotations
    assert (mod.ndarray | None) is mod.ndarray


def test_libneuronxla_has_no_pjrt_path(stub_finder):
    lib = stub_finder("libneuronxla")
    assert not hasattr(lib, "libneuronpjrt_path")  # else torch-xla switches into Neuron mode
    assert callable(lib.neuron_xla_compile)


def test_jit_decorators_raise_only_when_called(stub_finder):
    nki = stub_finder("nki")
    ops = stub_finder("torch_neuronx.xla_impl.ops")

    def kernel(x):
        return x

    for decorated in (nki.jit(kernel), nki.jit(kernel, mode="torchxla"), nki.jit(platform_target="trn1")(kernel)):
        assert decorated.__wrapped__ is kernel
        with pytest.raises(NeuronStubError):
            decorated(1)
        with pytest.raises(NeuronStubError):
            decorated[4](1)  # NKI launch-grid syntax
    with pytest.raises(NeuronStubError):
        ops.nki_jit()(kernel)(1)


def test_working_values(stub_finder, monkeypatch):
    utils = stub_finder("torch_neuronx.utils")
    assert utils.get_platform_target() == "trn1"
    monkeypatch.setenv(nxd_stubs.PLATFORM_ENV, "trn2")
    assert utils.get_platform_target() == "trn2"
    for path in ("neuronxcc.nki._pre_prod_kernels.collectives", "neuronxcc.nki._private_kernels.collectives"):
        cc = stub_finder(path).CollectivesConfig(replica_groups=[[0, 1, 2], [3, 4, 5]])
        assert cc.rank_src_tgt_pairs[1] == [[0, 1], [1, 2], [2, 0]]
        assert cc.rank_src_tgt_pairs[5] == [[3, 4], [4, 5], [5, 3]]
    skip = stub_finder("nkilib.core.moe.moe_cte.moe_cte_utils").SkipMode(False, True)
    assert (skip.skip_token, skip.skip_weight) == (False, True)


def test_other_packages_untouched(stub_finder):
    assert nxd_stubs._StubFinder().find_spec("torch_neuronx_other") is None
    assert nxd_stubs._StubFinder().find_spec("json") is None
