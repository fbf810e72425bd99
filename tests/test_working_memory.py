"""Which runs keep ONNX Runtime's arena (small whole images) and which hand memory back (tiles, large)."""

from __future__ import annotations

import ctypes.util
from collections.abc import Iterator

import numpy as np
import pytest

from ckbd.runtime import memory, tiling
from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.memory import MemoryBudget, Plan, plan_analysis, plan_synthesis
from ckbd.runtime.ort_backend import OnnxRuntimeBackend, OrtRunner
from ckbd.runtime.stages import ANALYSIS, HYPER_SYNTHESIS, LATENT_SYNTHESIS, NONANCHOR_PARAMS
from ckbd.runtime.working_memory import (
    RETAIN_MAX_PIXELS,
    image_pixels,
    releasing_working_memory,
    retains_working_memory,
)

IMAGE = np.random.default_rng(11).integers(0, 256, (48, 80, 3), dtype=np.uint8)


@pytest.mark.parametrize("stage,shapes", [
    (ANALYSIS, {"image": (1, 3, 512, 768)}),
    (LATENT_SYNTHESIS, {"anchor_hat": (1, 320, 32, 24), "nonanchor_hat": (1, 320, 32, 24)}),
    (HYPER_SYNTHESIS, {"z_symbols": (1, 192, 8, 12)}),
    (NONANCHOR_PARAMS, {"hyper": (1, 640, 32, 48), "anchor_hat": (1, 320, 32, 24)}),
])
def test_image_pixels_are_read_from_any_stage_input(stage: str, shapes: dict) -> None:  # type: ignore[type-arg]
    assert image_pixels(stage, shapes) == 512 * 768


def test_only_small_runs_outside_tiles_keep_their_memory() -> None:
    small = {"image": (1, 3, 1088, 1920)}
    large = {"image": (1, 3, 2176, 3840)}
    assert 1088 * 1920 <= RETAIN_MAX_PIXELS < 2176 * 3840
    assert retains_working_memory(ANALYSIS, small)
    assert not retains_working_memory(ANALYSIS, large)
    assert not retains_working_memory("unknown_stage", small)
    with releasing_working_memory():
        assert not retains_working_memory(ANALYSIS, small)
    assert retains_working_memory(ANALYSIS, small)


@pytest.mark.parametrize("plan", [plan_analysis, plan_synthesis])
def test_a_whole_run_keeps_its_memory_only_with_room_for_both_phases(  # type: ignore[no-untyped-def]
        plan, monkeypatch) -> None:
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
    roomy = plan("mbt2018-ckbd", 64, 96, 512, 768, MemoryBudget(1 << 40))
    assert roomy.whole and roomy.retains
    # Just enough for the larger phase: whole, but its kept buffers would add to the other phase.
    tight = plan("mbt2018-ckbd", 64, 96, 512, 768, MemoryBudget(roomy.estimate + 1))
    assert tight.whole and not tight.retains
    tiled = plan("mbt2018-ckbd", 64, 96, 512, 768, MemoryBudget(roomy.estimate * 9 // 10))
    assert not tiled.whole and not tiled.retains


def test_backend_sessions_do_not_spin_and_only_the_lean_one_drops_the_arena() -> None:
    backend = OnnxRuntimeBackend(threads=1)
    try:
        assert backend.options.enable_cpu_mem_arena and not backend.lean_options.enable_cpu_mem_arena
        for options in (backend.options, backend.lean_options):
            assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    finally:
        backend.close()


@pytest.fixture(scope="module")
def stream() -> bytes:
    with Encoder.open(threads=1) as encoder:
        return encoder.encode(IMAGE)


@pytest.fixture
def decoder() -> Iterator[Decoder]:
    with Decoder.open(threads=1) as d:
        yield d


def _synthesis(decoder: Decoder) -> OrtRunner:
    runner = decoder.model.runner(LATENT_SYNTHESIS)
    assert isinstance(runner, OrtRunner)
    return runner


def test_a_small_decode_never_creates_the_lean_session(decoder: Decoder, stream: bytes) -> None:
    decoder.decode(stream)
    decoder.decode(stream)
    assert all(r._lean is None for r in decoder.model.runners.values())  # type: ignore[attr-defined]


def test_released_runs_use_the_lean_session_with_the_same_numbers(decoder: Decoder, stream: bytes) -> None:
    latents = decoder.decode_detailed(stream).latents
    feeds = {"anchor_hat": latents.anchor_hat, "nonanchor_hat": latents.nonanchor_hat}
    runner = _synthesis(decoder)
    kept = runner.run(feeds)["image"]
    assert runner._lean is None
    with releasing_working_memory():
        lean = runner.session_for({k: v.shape for k, v in feeds.items()})
        released = runner.run(feeds)["image"]
    assert lean is runner._lean and lean is not runner.session
    np.testing.assert_array_equal(np.asarray(released), np.asarray(kept))
    runner.close()
    assert runner._lean is None


def test_tiled_synthesis_runs_on_the_lean_session(  # type: ignore[no-untyped-def]
        decoder: Decoder, stream: bytes, monkeypatch) -> None:
    whole = decoder.decode(stream)
    monkeypatch.setattr(tiling, "plan_synthesis", lambda *a, **k: Plan(False, 2, 4, 4, 0))
    tiled = decoder.decode(stream)
    assert _synthesis(decoder)._lean is not None
    assert np.abs(tiled.astype(int) - whole).max() <= 1


def test_the_c_library_is_looked_up_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[str] = []
    real = ctypes.util.find_library

    def counted(name: str) -> str | None:
        calls.append(name)
        return real(name)

    monkeypatch.setattr(ctypes.util, "find_library", counted)
    memory._malloc_trim.cache_clear()
    try:
        for _ in range(3):
            memory.release_free_memory()
    finally:
        memory._malloc_trim.cache_clear()
    assert calls == ["c"]
