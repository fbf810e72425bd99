"""The load-time self-check of an integer stage that runs anywhere but ONNX Runtime's CPU provider.

:func:`guard_integer_runner` runs the package's known-answer vectors (:mod:`ckbd.runtime.known_answers`)
through a freshly loaded runner of ``hyper_synthesis``, ``anchor_params`` or ``nonanchor_params``.
A runner that reproduces every value is kept; on any mismatch the stage runs on ONNX Runtime's CPU
provider instead (the caller's ``fallback``) and one ``notice:`` line names the stage, the device
and the mismatch count. A package without vectors (an export older than them) falls back too: an
unverified kernel must not decide an index.

The verdict is cached like the verified files (:mod:`ckbd.runtime.integrity`) under a key made of
the vectors, the model, the stage and the runner's ``identity`` (backend and library versions,
device name, driver): a second load on the same machine costs one small JSON read. A runner whose
identity cannot be told (``identity`` None) is checked at every load.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from ckbd.runtime.backend import Runner
from ckbd.runtime.bitstream import INTEGER_PATH
from ckbd.runtime.integrity import cache_dir, load_json_cache, save_json_cache
from ckbd.runtime.known_answers import KnownAnswers, score_runner
from ckbd.runtime.manifest import Manifest
from ckbd.runtime.package import ModelPackage
from ckbd.runtime.stages import INDEX_STAGES

VERDICTS_NAME = "known-answer-verdicts.json"

_lock = threading.Lock()
_enabled: ContextVar[bool] = ContextVar("ckbd_self_check", default=True)


@dataclass(frozen=True)
class Verdict:
    """A runner's result on one stage's vectors (what the cache keeps)."""

    elements: int
    mismatches: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.elements > 0 and self.mismatches == 0 and not self.error


def verdicts_path() -> Path:
    return cache_dir() / VERDICTS_NAME


@contextmanager
def unguarded() -> Iterator[None]:
    """Load runners as they are, unchecked: ``ckbd check known-answers`` scores the runner itself."""
    token = _enabled.set(False)
    try:
        yield
    finally:
        _enabled.reset(token)


def integer_stage(manifest: Manifest, stage: str) -> bool:
    """Whether ``stage`` decides indexes in integer arithmetic: exact on every device that really
    multiplies and adds, which the self-check proves before any runner but ORT's CPU provider is used."""
    return manifest.entropy_params == INTEGER_PATH and stage in INDEX_STAGES


def _cache_key(package: ModelPackage, stage: str, answers_sha256: str, identity: Mapping[str, str]) -> str:
    from ckbd import __version__

    described = {"ckbd": __version__, "fingerprint": package.fingerprint, "answers": answers_sha256,
                 "stage": stage, **identity}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def check_runner(runner: Runner, package: ModelPackage, stage: str, identity: Mapping[str, str] | None,
                 answers: KnownAnswers | None = None) -> Verdict:
    """The runner's verdict on ``stage``: from the cache when ``identity`` was seen, else by running.

    ``answers`` replaces the package's own vectors (a package built in memory has no file).
    """
    entry = package.manifest.known_answers
    if answers is None and (entry is None or package.root is None):
        return Verdict(0, 0, f"{package.label} has no known-answer vectors (re-export it with this ckbd)")
    sha256 = answers.digest() if answers is not None else entry.sha256  # type: ignore[union-attr]
    key = None if identity is None else _cache_key(package, stage, sha256, identity)
    if key is not None:
        with _lock:
            cached = load_json_cache(verdicts_path()).get(key)
        if isinstance(cached, dict):
            return Verdict(int(cached.get("elements", 0)), int(cached.get("mismatches", 0)), str(cached.get("error", "")))
    vectors = answers or package.known_answers()
    assert vectors is not None
    score = score_runner(runner, vectors, stage)
    errors = score.errors or ([] if score.cases else [f"the known-answer vectors have no case of {stage}"])
    verdict = Verdict(score.elements, score.mismatches, "; ".join(errors))
    if key is not None and not score.errors:  # a run that raised may have been transient (memory): not kept
        with _lock:
            entries = load_json_cache(verdicts_path())
            entries.pop(key, None)
            entries[key] = {"elements": verdict.elements, "mismatches": verdict.mismatches, "error": verdict.error}
            save_json_cache(verdicts_path(), entries)
    return verdict


def guard_integer_runner(runner: Runner, package: ModelPackage, stage: str, *, device: str,
                         identity: Mapping[str, str] | None, fallback: Callable[[], Runner],
                         answers: KnownAnswers | None = None,
                         notify: Callable[[str], None] | None = None) -> Runner:
    """``runner`` if it passes ``stage``'s known-answer vectors, else ``fallback()`` (ORT's CPU provider).

    ``device`` is how the notice names where the runner computes (e.g. ``cuda:0 (NVIDIA H100)``);
    ``identity`` is what its results depend on besides the model (see the module docstring).
    Stages that are not integer stages, and loads inside :func:`unguarded`, return ``runner`` as is.
    """
    if not _enabled.get() or not integer_stage(package.manifest, stage):
        return runner
    verdict = check_runner(runner, package, stage, identity, answers)
    if verdict.ok:
        return runner
    if notify is None:
        from ckbd.progress import notice

        notify = notice
    if verdict.error and not verdict.elements:
        why = verdict.error
    else:
        why = f"{stage} on {device} gave {verdict.mismatches} of {verdict.elements} known-answer values wrong"
        why += f" ({verdict.error})" if verdict.error else ""
    notify(f"{why}; {stage} runs on ONNX Runtime's CPU provider instead of {device}")
    close = getattr(runner, "close", None)
    if callable(close):
        close()
    return fallback()


def cuda_identity(device_id: int) -> dict[str, str] | None:
    """Device name, compute capability and driver version from the CUDA driver API (None: unknown).

    Read with ctypes from ``libcuda`` (the driver every CUDA runtime sits on), so it needs no CUDA
    binding. The runtime libraries a backend loads (cuDNN, cuBLAS) are named by the caller.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version, count, device = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    major, minor = ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    calls = (lambda: cuda.cuInit(0), lambda: cuda.cuDriverGetVersion(ctypes.byref(version)),
             lambda: cuda.cuDeviceGetCount(ctypes.byref(count)),
             lambda: cuda.cuDeviceGet(ctypes.byref(device), device_id),
             lambda: cuda.cuDeviceGetName(name, len(name), device),
             lambda: cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device),  # compute capability major
             lambda: cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device))  # and minor
    if any(call() != 0 for call in calls):
        return None
    return {"gpu": name.value.decode(errors="replace"), "compute_capability": f"{major.value}.{minor.value}",
            "cuda_driver": str(version.value)}


def loaded_libraries(prefixes: tuple[str, ...] = ("libcudnn", "libcublas", "libcudart", "libnvinfer")) -> str:
    """The versioned file names of the GPU libraries this process has loaded (Linux; else empty).

    Their versions decide which kernels run, so they belong in a verdict's key; the process must
    have created its sessions first (libraries load lazily).
    """
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return ""
    names = set()
    for line in maps.splitlines():
        path = line.rsplit(" ", 1)[-1]
        base = Path(path).name
        if base.startswith(prefixes):
            names.add(Path(path).resolve().name if Path(path).exists() else base)
    return ",".join(sorted(names))
