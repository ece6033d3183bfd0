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
