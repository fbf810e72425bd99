"""The memory budget: sizes, the machine's default, refusal before allocation, acceptance."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest

from ckbd.errors import MemoryBudgetError, UsageError
from ckbd.runtime import memory
from ckbd.runtime.codec import Encoder
from ckbd.runtime.memory import MemoryBudget, available_memory, parse_memory, plan_analysis, plan_synthesis
from ckbd.runtime.tiling import tiles

ARCH, N, M = "mbt2018-ckbd", 64, 96


@pytest.mark.parametrize("text,expected", [("4G", 4 << 30), ("1500M", 1500 << 20), ("1.5GiB", 3 << 29),
                                           ("800000000", 800000000), ("512k", 512 << 10), (" 2 gb ", 2 << 30)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "4X", "-1G", "0", "G", "1.5.2G"])
def test_parse_memory_refuses_nonsense(text):
    with pytest.raises(UsageError):
        parse_memory(text)


def test_available_memory_takes_the_lower_of_meminfo_and_cgroup(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:    8000000 kB\n")
    cgroup = tmp_path / "cg"
    cgroup.mkdir()
    assert available_memory(meminfo, cgroup) == 8000000 * 1024
    (cgroup / "memory.max").write_text("3000000000\n")
    (cgroup / "memory.current").write_text("1000000000\n")
    assert available_memory(meminfo, cgroup) == 2000000000
    (cgroup / "memory.max").write_text("max\n")
    assert available_memory(meminfo, cgroup) == 8000000 * 1024


def _machine(monkeypatch, available: int | None, resident: int) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda: available)
    monkeypatch.setattr(memory, "resident_bytes", lambda: resident)


def test_budget_is_what_the_process_does_not_hold_yet_shared_by_workers(monkeypatch):
    _machine(monkeypatch, 10 << 30, 1 << 30)
    assert MemoryBudget(4 << 30).total() == 4 << 30
    assert MemoryBudget(4 << 30).room() == 3 << 30
    assert MemoryBudget(4 << 30, share=2).room() == 3 << 29  # what the process does not hold, halved


def test_the_default_budget_is_1_5_gib_per_worker_on_a_large_machine(monkeypatch):
    assert memory.DEFAULT_BUDGET == 3 << 29
    _machine(monkeypatch, 20 << 30, 100 << 20)
    assert MemoryBudget().total() == 3 << 29
    assert MemoryBudget().room() == (3 << 29) - (100 << 20)
    assert MemoryBudget(share=2).total() == 3 << 30
    assert MemoryBudget(share=2).room() == ((3 << 30) - (100 << 20)) / 2
    _machine(monkeypatch, None, 100 << 20)  # a machine that does not say what it has
    assert MemoryBudget().total() == 3 << 29


def test_the_default_budget_never_takes_more_than_a_share_of_what_is_available(monkeypatch):
    _machine(monkeypatch, 1 << 30, 100 << 20)
    assert MemoryBudget().total() == (100 << 20) + int((1 << 30) * memory.AVAILABLE_SHARE) < memory.DEFAULT_BUDGET
    assert MemoryBudget().room(need=4 << 30) == int((1 << 30) * memory.AVAILABLE_SHARE)
    assert MemoryBudget(share=2).total() == MemoryBudget().total()


def test_a_default_budget_grants_what_no_tiling_reduces_where_the_machine_has_it(monkeypatch):
    _machine(monkeypatch, 20 << 30, 100 << 20)
    assert MemoryBudget().room(need=3 << 30) == 3 << 30
    assert MemoryBudget().room(need=1 << 20) == (3 << 29) - (100 << 20)  # never less than the default
    assert MemoryBudget(3 << 29).room(need=3 << 30) == (3 << 29) - (100 << 20)  # --max-memory is a limit


def test_default_plans_tile_8k_as_1_5g_does_and_still_code_12k(monkeypatch):
    _machine(monkeypatch, 20 << 30, 100 << 20)
    for plan in (plan_analysis, plan_synthesis):
        assert plan(ARCH, N, M, 4320, 7680, MemoryBudget()) == plan(ARCH, N, M, 4320, 7680, MemoryBudget(3 << 29))
        assert plan(ARCH, N, M, 1080, 1920, MemoryBudget()).whole
        # 12000x9000: the whole-latent stages alone need more than 1.5 GiB; the default grants it, a limit refuses
        big = plan(ARCH, N, M, 9000, 12000, MemoryBudget())
        assert not big.whole and big.estimate > 3 << 29
        with pytest.raises(MemoryBudgetError, match="whole-latent stages"):
            plan(ARCH, N, M, 9000, 12000, MemoryBudget(3 << 29))


@pytest.fixture
def empty_process(monkeypatch):
    """Plans as for a process that holds nothing yet, so that they do not depend on the test runner."""
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)


@pytest.mark.parametrize("plan", [plan_analysis, plan_synthesis])
def test_whole_image_when_it_fits(plan, empty_process):
    p = plan(ARCH, N, M, 512, 768, MemoryBudget(2 << 30))
    assert p.whole and p.halo == 0 and p.estimate < 2 << 30


@pytest.mark.parametrize("plan", [plan_analysis, plan_synthesis])
def test_tiles_when_the_whole_does_not_fit(plan, empty_process):
    """8K in 1.5 GB: tiles whose estimate is inside the budget, halo at least the receptive field."""
    budget = MemoryBudget(3 << 29)
    whole = plan(ARCH, N, M, 4320, 7680, MemoryBudget(1 << 40))
    tiled = plan(ARCH, N, M, 4320, 7680, budget)
    assert whole.whole and whole.estimate > 3 << 29
    assert not tiled.whole and tiled.estimate <= 3 << 29 and tiled.halo > 0


@pytest.mark.parametrize("plan", [plan_analysis, plan_synthesis])
def test_refused_when_even_tiles_do_not_fit(plan, empty_process):
    with pytest.raises(MemoryBudgetError) as err:
        plan(ARCH, N, M, 9000, 12000, MemoryBudget(1 << 30))
    message = str(err.value)
    assert "\n" not in message and "12000x9000" in message and "1.00 GB" in message and "--max-memory" in message


def test_the_larger_model_needs_more():
    small = plan_synthesis(ARCH, 64, 96, 2160, 3840, MemoryBudget(1 << 40)).estimate
    large = plan_synthesis(ARCH, 192, 320, 2160, 3840, MemoryBudget(1 << 40)).estimate
    assert large > 1.5 * small


def test_encoder_refuses_before_allocating():
    """An 8192x8192 image (a view of one pixel, so the test allocates nothing) is refused by the
    planner before the float network input (800 MB) or anything else image-sized exists."""
    encoder = Encoder.open(threads=1)
    encoder.model.memory = MemoryBudget(64 << 20)
    image = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (8192, 8192, 3))
    tracemalloc.start()
    try:
        with pytest.raises(MemoryBudgetError, match="8192x8192"):
            encoder.encode(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_decoder_refuses_a_huge_header_by_its_budget_before_allocating():
    """A header within the pixel limit (16384x16384 = 2**28, the default) but beyond the budget is refused
    by the budget when the header is read, before any payload or image-sized buffer exists."""
    from ckbd.runtime import bitstream as bs
    from ckbd.runtime.codec import Decoder
    from ckbd.runtime.stream_io import read_stream

    decoder = Decoder.open(threads=1)
    decoder.model.memory = MemoryBudget(1 << 30)
    m = decoder.manifest
    data = bs.pack(bs.Bitstream.build(height=16384, width=16384, arch_id=m.arch_id, fingerprint_hex=m.fingerprint,
                                      N=m.N, M=m.M, symbols_crc=0, z=b"", anchors=b"", nonanchors=b"",
                                      entropy_params=m.entropy_params))
    assert bs.peek_header(data).height == 16384  # the pixel limit lets it through
    tracemalloc.start()
    try:
        with pytest.raises(MemoryBudgetError, match="16384x16384"):
            read_stream(io.BytesIO(data), decoder.max_pixels, check=decoder.check_header)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_peak_rss_follows_an_allocation():
    if not memory.reset_peak():
        pytest.skip("this kernel does not let a process reset its peak RSS")
    base = memory.peak_resident_bytes()
    block = np.ones(64 << 20, np.uint8)
    with_block = memory.peak_resident_bytes()
    assert with_block >= base + (60 << 20)
    del block
    memory.reset_peak()  # the peak restarts from what is resident now: the block is gone from it
    assert memory.peak_resident_bytes() <= with_block - (60 << 20)


@pytest.mark.parametrize("plan,cap", [(plan_analysis, (1024, 1536)), (plan_synthesis, (64, 96))])
def test_engine_extent_caps_the_tiles(plan, cap, empty_process):
    """An engine built for at most ``cap`` gets tiles (halo included) inside it, even with memory to spare."""
    p = plan(ARCH, N, M, 4320, 7680, MemoryBudget(1 << 40), cap)
    assert not p.whole
    scale = 1 if plan is plan_analysis else 16
    for rows, cols in tiles(4352 // scale, 7680 // scale, p):
        assert rows.stop - rows.start <= cap[0] and cols.stop - cols.start <= cap[1]
    assert plan(ARCH, N, M, 512, 768, MemoryBudget(1 << 40), cap).whole


def test_border_tiles_carry_one_halo():
    """Cutting an axis in two reads core + halo per tile, not core + 2 halo: the plan may use it."""
    options = memory._axis_options(4352, 64, 192)
    assert options[0] == (4352, 4352, 4352)
    assert options[1] == (2176, 2368, 4736)
    assert options[2] == (1472, 1856, 5120)  # three tiles: the middle one has both halos
    assert all(core % 64 == 0 for core, _, _ in options)


@pytest.mark.parametrize("plan,scale", [(plan_analysis, 1), (plan_synthesis, 16)])
def test_estimate_covers_the_largest_tile(plan, scale, empty_process):
    """Whatever the cut, the estimate is the largest tile actually read (border tiles have one halo)."""
    c = memory.costs(ARCH)
    per_px = (c.analysis(N) if plan is plan_analysis else c.latent_synthesis(N)) * memory.TILE_MARGIN
    for budget in (3 << 29, 1 << 31, 3 << 30):
        p = plan(ARCH, N, M, 4320, 7680, MemoryBudget(budget))
        largest = max((r.stop - r.start) * (k.stop - k.start) for r, k in tiles(4352 // scale, 7680 // scale, p))
        assert per_px * largest * scale * scale <= p.estimate <= budget
