"""ctrkit.native: the C kernels are built into the cache under a temporary name, and every failure to
build them falls back to the torch implementation with one warning, never to an error."""

import logging
import shutil

import pytest
import torch

from ctrkit import native

needs_compiler = pytest.mark.skipif(native._compiler() is None, reason="no C compiler on this machine")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path / "cache"))
    native._load.cache_clear()
    yield tmp_path / "cache"
    native._load.cache_clear()


@needs_compiler
def test_builds_once_into_the_cache_without_leftovers(fresh_cache):
    lib = native.library("gated_recurrence")
    assert lib is not None
    built = list(fresh_cache.iterdir())
    assert [p.suffix for p in built] == [".so"] and built[0].name.startswith("gated_recurrence-")
    stamp = built[0].stat().st_mtime_ns
    native._load.cache_clear()
    assert native.library("gated_recurrence") is not None
    assert [p.stat().st_mtime_ns for p in fresh_cache.iterdir()] == [stamp]  # reused, not rebuilt


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert native.library("gated_recurrence") is None


@pytest.mark.parametrize("compiler", ["false", "no-such-compiler-xyz"])
def test_a_broken_compiler_falls_back_with_a_warning(fresh_cache, monkeypatch, caplog, compiler):
    if compiler == "false" and shutil.which("false") is None:
        pytest.skip("no `false` on this machine")
    monkeypatch.setattr(native, "_compiler", lambda: None if compiler.startswith("no-such") else compiler)
    with caplog.at_level(logging.WARNING, logger="ctrkit.native"):
        assert native.library("gated_recurrence") is None
    assert "using the torch implementation" in caplog.text
    assert not fresh_cache.exists() or not any(fresh_cache.iterdir())  # no half-written library

    from ctrkit.pytorch.layers.sequence import GRU

    gru = GRU(4, 3)
    x, mask = torch.randn(2, 5, 4), torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(gru(x, mask), gru.reference_forward(x, mask), rtol=1e-5, atol=1e-6)


@needs_compiler
def test_embedding_backward_in_c_matches_torch(monkeypatch):
    """The C scatter gives the embedding gradient of torch's accumulating index_put_, repeated ids included."""
    from ctrkit.pytorch.layers.embedding import _GatherRows

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(50, 7, generator=g, requires_grad=True)
    ids = torch.randint(0, 50, (300, 3), generator=g)  # many repeats
    upstream = torch.randn(300, 3, 7, generator=g)

    def gradient():
        return torch.autograd.grad(_GatherRows.apply(weight, ids), weight, upstream)[0]

    with_c = gradient()
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    torch.testing.assert_close(with_c, gradient(), rtol=1e-6, atol=1e-6)
    assert with_c.abs().sum() > 0


@needs_compiler
def test_the_scatter_kernel_refuses_ids_outside_the_table():
    lib = native.library("scatter")
    rows, out = torch.ones(3, 4), torch.zeros(5, 4)
    for bad in (-1, 5):
        ids = torch.tensor([0, bad, 1])
        assert lib.ctrkit_scatter_add_rows_f32(3, 4, ids.data_ptr(), rows.data_ptr(), 5, out.data_ptr()) == 1
    with pytest.raises(RuntimeError, match="an id outside"):
        native.check(1, "embedding backward: an id outside the table")
