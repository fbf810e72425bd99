"""Peak-memory estimates, the memory budget, and the tile sizes that keep a job inside it.

The estimate of a job is a sum of measured per-pixel costs (``ckbd bench memory fit`` measures
them; the method and figures are in ``docs/RESULTS.md``), each linear in the channel count of
the tensors that dominate it:

* ``analysis`` / ``latent_synthesis``: working memory of the convolutional transform, per pixel
  of the (padded) tile it runs on, linear in N (the width of every hidden layer);
* ``encode_entropy`` / ``decode_entropy``: everything else of a job, per padded image pixel plus a
  fixed part: the packed latents, hyper features, parameters and symbols of the whole latent and
  the range coder's working arrays (linear in M), the image itself.

A stage that hands its working memory back when it finishes (ONNX Runtime without its arena:
:mod:`ckbd.runtime.working_memory` says when) leaves a job's peak at the larger of its two phases,
on top of what the process already holds (its resident set when the job is planned: interpreter,
ONNX Runtime, the loaded graphs, the input): the transform on a tile next to its image-sized
companions (the packed ``y`` it fills, or the output image), and the whole-latent entropy stages,
which tiling does not reduce. The budget is ``--max-memory``, shared equally between parallel
workers, or by default :data:`DEFAULT_BUDGET` per worker (see there why), never more than half of
what the machine still has available (``MemAvailable``, or the cgroup's remaining limit when that is
lower). A job that fits whole runs whole; otherwise the transform runs on the tiles that fit with
the least work (the fewest pixels read twice: a tile at the border has a halo on one side only); if
even the smallest tile does not fit, the job is refused before anything is allocated. The default
is never the reason for a refusal: a job whose whole-latent stages alone need more gets what they
need, up to that half.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckbd.errors import CkbdError, MemoryBudgetError, ModelError, UsageError
from ckbd.runtime.receptive_field import analysis_halo, synthesis_halo
from ckbd.runtime.stages import PAD_MULTIPLE, Y_STRIDE

#: Share of the available memory a default budget may take at most: free memory changes while a
#: job runs (other processes), and the estimates are fits, so half is left to the rest of the machine.
AVAILABLE_SHARE = 0.5
#: The default peak per worker (1.5 GiB). Tiling costs no time (docs/RESULTS.md, "Default memory
#: budget": an 8K round trip took 74-79 s with 1-4 GiB budgets, 102 s with the near-whole runs
#: that half of free memory allowed, peaking at 4.5-6.6 GiB) and a server decodes many images at once,
#: so a budget taken from free memory only wastes it. 1.5 GiB is the fastest budget measured that
#: keeps 8K within 1.5 GB (1.13 GiB encode, 0.98 decode; 2 GiB peaked at 1.59) and still codes
#: 1080p whole; 1 GiB tiles a 1080p decode, which then peaked higher (1.1 GiB) than whole (0.8).
DEFAULT_BUDGET = 3 << 29


@dataclass(frozen=True)
class Linear:
    """Bytes per pixel ``base + per_channel * C`` for the channel count ``C`` that dominates."""

    base: float
    per_channel: float

    def __call__(self, channels: int) -> float:
        # Never below half the channel term: a line through two models must not reach 0 for small ones.
        return max(self.base + self.per_channel * channels, 0.5 * self.per_channel * channels)


@dataclass(frozen=True)
class Costs:
    """Per-pixel costs of one architecture (see the module docstring); fitted to measurements."""

    analysis: Linear  # per tile pixel, C = N
    latent_synthesis: Linear  # per tile pixel, C = N
    encode_entropy: Linear  # per padded image pixel, C = M
    decode_entropy: Linear  # per padded image pixel, C = M
    overhead: int  # bytes a transform run adds whatever its size (ONNX Runtime's one-off buffers)
    #: Bytes (not per pixel; C = M) the whole-latent stages add whatever the size: the intercepts of
    #: the encode and decode entropy fits.
    encode_entropy_fixed: Linear = Linear(0.0, 0.0)
    decode_entropy_fixed: Linear = Linear(0.0, 0.0)


#: Fitted to ``ckbd bench memory fit`` (ONNX Runtime CPU, arena off, one thread), then the line
#: through the two models' channel counts (mbt2018-ckbd: N=64/M=96 and N=192/M=320;
#: cheng2020-ckbd: N=M=64 and 192). Transforms: bytes per pixel of a 1536x1024 run, its one-off
#: part included (the slope alone under-predicted 8K and 12K runs by up to a quarter); the largest
#: intercept is the overhead. Entropy terms of mbt2018-ckbd: slope and intercept between 4K and 8K
#: (where a budget binds; small sizes overstate the slope, as freed small buffers stay in the C heap)
#: on the integer path, with random latents N(0, 3) (the range coder's costly case: a photo's stream
#: decodes in about a third); cheng2020-ckbd's: the slope between 768x512 and 1536x1024. Where a
#: size was measured on both entropy-parameter paths, the larger figure is used. The points are in
#: docs/RESULTS.md.
COSTS: dict[str, Costs] = {
    "mbt2018-ckbd": Costs(Linear(13.7, 3.0), Linear(156.5, 2.403), Linear(15.35, 0.0806), Linear(6.8, 0.1325),
                          80 << 20, Linear(-35.4e6, 1.223e6), Linear(61.7e6, 0.357e6)),
    "cheng2020-ckbd": Costs(Linear(19.4, 3.911), Linear(107.1, 3.954), Linear(18.4, 0.0219), Linear(15.95, 0.043),
                            310 << 20),
}

#: Headroom on a transform's fitted cost: measured peaks of multi-tile runs at 4K and 8K came out
#: up to a quarter above the fit (the C heap between tiles, the tile's input conversion).
TILE_MARGIN = 1.15
#: Bytes per padded pixel per latent channel of the packed y halves (float32, 1/256 of the pixels).
LATENT_BYTES = 4 / 256
#: What a decode keeps of its entropy stages while synthesis runs, per channel, as planned from the
#: header: both decoded halves and their symbols, each 4 bytes at 1/256 of the pixels, and room for the
#: hyper features (2M channels; the decoder drops them before synthesis, so this errs on the safe side).
DECODED_LATENT_BYTES = 4 * 4 / 256
#: The decoded uint8 image, allocated before the synthesis tiles are written into it.
OUTPUT_BYTES = 3.0

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """Bytes from ``"4G"``, ``"1500M"``, ``"1.5GiB"``, ``"800000000"`` (K/M/G/T are powers of 1024)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise UsageError(f"memory size '{text}' is not a number with an optional K/M/G/T suffix, e.g. 4G or 1500M")
    value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value <= 0:
        raise UsageError(f"memory size '{text}' must be positive")
    return value


def format_bytes(n: float) -> str:
    return f"{n / (1 << 30):.2f} GB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MB"


def available_memory(meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """What the machine can still give: ``MemAvailable``, or the cgroup's headroom when lower."""
    found = []
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    for limit_file, usage_file in (("memory.max", "memory.current"),  # cgroup v2
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):  # v1
        try:
            limit = (cgroup / limit_file).read_text().strip()
            usage = int((cgroup / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            found.append(max(0, int(limit) - usage))
    return min(found) if found else None


def resident_bytes() -> int:
    """This process's resident set now (0 where /proc is missing)."""
    try:
        import os

        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def reset_peak() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM) of this process; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_resident_bytes() -> int:
    """Peak resident set since the last :func:`reset_peak` (else since the process started)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_free_memory() -> None:
    """Hand memory the C heap keeps after ``free`` back to the system (glibc ``malloc_trim``).

    Called between the phases of a job: without it, a transform's freed working memory can stay in
    the resident set under the entropy stages that follow, and the phases' peaks add up.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, looked up once (``find_library`` runs a subprocess), or None."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None  # not glibc: nothing to trim, or nothing we can do


def machine_budget() -> int | None:
    """The most a default budget may take: the resident set plus a share of what is available
    (None: the machine does not say)."""
    available = available_memory()
    return None if available is None else resident_bytes() + int(available * AVAILABLE_SHARE)


@dataclass(frozen=True)
class MemoryBudget:
    """The peak resident memory of the process: ``limit`` bytes, or the default.

    ``share`` workers of one process (``--jobs``) divide what the process does not hold yet:
    each plans its job within ``(budget - resident) / share``. Other workers' jobs in flight are
    part of the resident set, so the sum never exceeds the budget (a worker planned while others
    are busy gets smaller tiles). The default is :data:`DEFAULT_BUDGET` per worker, capped by
    :func:`machine_budget`.
    """

    limit: int | None = None
    share: int = 1

    def total(self) -> int:
        """The whole budget now."""
        if self.limit is not None:
            return self.limit
        machine = machine_budget()
        default = DEFAULT_BUDGET * self.share
        return default if machine is None else min(default, machine)

    def room(self, need: float = 0.0) -> float:
        """Bytes one job may add to the process now; a default budget grants at least ``need``
        (what no tiling reduces) where the machine has it."""
        resident = resident_bytes()
        room = (self.total() - resident) / self.share
        if self.limit is not None or need <= room:
            return room
        machine = machine_budget()
        return need if machine is None else max(room, min(need, (machine - resident) / self.share))

    @property
    def source(self) -> str:
        return "--max-memory" if self.limit is not None else "the default, capped by this machine's free memory"


@dataclass(frozen=True)
class Plan:
    """How a transform runs: whole, or on tiles of ``core_rows x core_cols`` kept units + ``halo``.

    Units are image pixels for analysis and latent positions for synthesis.
    """

    whole: bool
    core_rows: int
    core_cols: int
    halo: int
    estimate: int  # bytes the job adds to the process at its peak
    #: Whether the transform may keep its working memory for the next image: a whole run whose
    #: kept buffers still leave room for the job's other phase (kept memory adds the phases' peaks
    #: instead of taking the larger; see ckbd.runtime.working_memory).
    retains: bool = False


def costs(arch: str) -> Costs:
    try:
        return COSTS[arch]
    except KeyError:
        raise ModelError(f"no memory costs for architecture '{arch}'") from None


def plan_analysis(arch: str, N: int, M: int, height: int, width: int, budget: MemoryBudget,
                  max_extent: tuple[int, int] | None = None) -> Plan:
    """Tiles for encoding a ``height x width`` image (refused with MemoryBudgetError if impossible).

    Planned at the start of the encode: the analysis tiles run alongside their growing outputs
    (the packed ``y``), and the entropy stages run afterwards. ``max_extent`` (rows, cols in pixels)
    caps what one run may see, halo included: the largest input an engine's profile accepts.
    """
    c = costs(arch)
    halo = _round_up(analysis_halo(arch), PAD_MULTIPLE)
    return _plan("encoding", height, width, 1, halo, PAD_MULTIPLE, c.analysis(N), LATENT_BYTES * M,
                 c.encode_entropy(M), c.encode_entropy_fixed(M), c.overhead, budget, max_extent)


def plan_synthesis(arch: str, N: int, M: int, height: int, width: int, budget: MemoryBudget,
                   max_extent: tuple[int, int] | None = None, latents_resident: bool = False) -> Plan:
    """Tiles (in latent positions) for decoding a ``height x width`` image, or MemoryBudgetError.

    Planned from the header (``latents_resident=False``: the whole decode is still to come) or at
    the synthesis call (the entropy stages are done and what they keep is in the resident set; the
    tiles run alongside the output image). ``max_extent`` (rows, cols in latent positions) caps
    one run, as for :func:`plan_analysis`.
    """
    c = costs(arch)
    halo = _round_up(synthesis_halo(arch), 2)
    alongside = OUTPUT_BYTES + (0.0 if latents_resident else DECODED_LATENT_BYTES * M)
    return _plan("decoding", height, width, Y_STRIDE, halo, 2, c.latent_synthesis(N), alongside,
                 0.0 if latents_resident else c.decode_entropy(M), 0.0 if latents_resident else c.decode_entropy_fixed(M),
                 c.overhead, budget, max_extent)


def _plan(job: str, height: int, width: int, scale: int, halo: int, align: int, per_tile_px: float,
          alongside_px: float, entropy_px: float, entropy_fixed: float, overhead: int, budget: MemoryBudget,
          max_extent: tuple[int, int] | None) -> Plan:
    """Largest tiles (fewest computed pixels) that fit; ``scale`` pixels per unit.

    The peak is the larger of the two phases: the transform (``per_tile_px`` on the tile, next to
    ``alongside_px`` of the image) and the whole-latent entropy stages (``entropy_px``), which no
    tiling reduces.
    """
    padded_h, padded_w = _round_up(height, PAD_MULTIPLE), _round_up(width, PAD_MULTIPLE)
    rows, cols = padded_h // scale, padded_w // scale
    cap_rows, cap_cols = max_extent or (rows, cols)
    entropy = entropy_px * padded_h * padded_w + max(overhead, entropy_fixed)
    fixed = alongside_px * padded_h * padded_w + overhead
    unit_cost = TILE_MARGIN * per_tile_px * scale * scale
    smallest = fixed + unit_cost * min(rows, align + 2 * halo) * min(cols, align + 2 * halo)
    room = budget.room(need=max(entropy, smallest))
    if entropy > room:
        raise MemoryBudgetError(
            f"{job} {width}x{height} needs at least {format_bytes(entropy)} for its whole-latent stages, but the "
            f"memory budget of {format_bytes(budget.total())} ({budget.source}) leaves "
            f"{format_bytes(max(0.0, room))} for it; free memory or raise --max-memory")
    whole = fixed + unit_cost * rows * cols
    if whole <= room and rows <= cap_rows and cols <= cap_cols:
        return Plan(True, rows, cols, 0, int(max(whole, entropy)), retains=whole + entropy <= room)
    if min(cap_rows, rows) < min(rows, align + 2 * halo) or min(cap_cols, cols) < min(cols, align + 2 * halo):
        raise CkbdError(f"{job} in tiles needs runs of at least {align + 2 * halo} x {align + 2 * halo} "
                        f"(x{scale} pixels) but the engine accepts at most {cap_rows} x {cap_cols}; rebuild it "
                        "with a larger --max-size")
    best: Plan | None = None
    best_work = float("inf")
    tile_room = room - fixed
    row_options = [o for o in _axis_options(rows, align, halo) if o[1] <= cap_rows]
    for core_cols, tile_cols, total_cols in _axis_options(cols, align, halo):
        if tile_cols > cap_cols:
            continue
        for core_rows, tile_rows, total_rows in row_options:  # fewest tiles (least work) first
            if unit_cost * tile_rows * tile_cols <= tile_room:
                if total_rows * total_cols < best_work:
                    best_work = total_rows * total_cols
                    estimate = max(entropy, fixed + unit_cost * tile_rows * tile_cols)
                    best = Plan(False, core_rows, core_cols, halo, int(estimate))
                break
    if best is None:
        raise MemoryBudgetError(
            f"{job} {width}x{height} needs at least {format_bytes(smallest)} even in tiles, but the memory "
            f"budget of {format_bytes(budget.total())} ({budget.source}) leaves "
            f"{format_bytes(max(0.0, room))} for it; free memory or raise --max-memory")
    return best


def _axis_options(length: int, align: int, halo: int) -> list[tuple[int, int, int]]:
    """Ways to cut one axis into kept runs: (core, largest run read, sum of runs read), fewest runs first.

    A run at the border has a halo on one side only, so two tiles read ``core + halo`` each, and only
    inner tiles ``core + 2 * halo``; the sum is the work the cut costs.
    """
    options: list[tuple[int, int, int]] = []
    for n in range(1, length // align + 1):
        core = min(length, _round_up(-(-length // n), align))
        if options and core == options[-1][0]:
            continue
        reads = [min(length, keep + core + halo) - max(0, keep - halo) for keep in range(0, length, core)]
        options.append((core, max(reads), sum(reads)))
        if core <= align:
            break
    return options


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
