"""A loaded model: manifest, entropy tables and one runner per stage, on one backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ckbd.errors import ModelError
from ckbd.runtime.backend import Backend, Runner, create_backend
from ckbd.runtime.coder import IndexedCoder
from ckbd.runtime.entropy_tables import EntropyTables
from ckbd.runtime.integrity import verify_file
from ckbd.runtime.manifest import Manifest
from ckbd.runtime.memory import MemoryBudget
from ckbd.runtime.stages import ALL_STAGES, STAGE_IO


def default_model_dir() -> Path:
    """The exported model that ships with ckbd (``ckbd/assets/default``)."""
    path = Path(str(resources.files("ckbd") / "assets" / "default"))
    if not (path / "manifest.json").is_file():
        raise ModelError("this ckbd install has no default model; pass --model DIR")
    return path


@dataclass
class CodecModel:
    """Everything the encoder and decoder need; built once, shared by both directions."""

    manifest: Manifest
    y_coder: IndexedCoder
    z_coder: IndexedCoder
    runners: dict[str, Runner]
    backend_name: str
    #: Peak-memory budget that decides whole-image or tiled transforms (see ckbd.runtime.memory).
    memory: MemoryBudget = field(default_factory=MemoryBudget)

    @classmethod
    def from_parts(cls, manifest: Manifest, y_tables: EntropyTables, z_tables: EntropyTables,
                   runners: dict[str, Runner], backend_name: str) -> CodecModel:
        if z_tables.num_tables != manifest.N:
            raise ModelError(f"z tables hold {z_tables.num_tables} channels but the model has N={manifest.N}")
        if y_tables.num_tables != len(manifest.scale_table):
            raise ModelError("y tables do not match the manifest's scale table")
        _check_io(runners)
        return cls(manifest, IndexedCoder(y_tables), IndexedCoder(z_tables), runners, backend_name)

    @classmethod
    def open(cls, model_dir: Path | None = None, backend: str | Backend = "onnxruntime",
             stages: tuple[str, ...] = ALL_STAGES, **backend_options: object) -> CodecModel:
        """Load ``stages`` of a model directory (the shipped default when None) on ``backend``."""
        model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        if model_dir.is_file():
            raise ModelError(f"{model_dir} is a file; export it first (ckbd export {model_dir} -o DIR)")
        manifest = Manifest.load(model_dir)
        # The graphs are checked by the backend that loads them; the tables here.
        for name, sha256 in manifest.tables_sha256.items():
            verify_file(model_dir / name, sha256)
        if manifest.integer_params is not None:
            verify_file(model_dir / manifest.integer_params.file, manifest.integer_params.sha256)
        engine = create_backend(backend, **backend_options) if isinstance(backend, str) else backend
        runners = {stage: engine.load(model_dir, stage) for stage in stages}
        return cls.from_parts(manifest, EntropyTables.load(model_dir / manifest.y_tables),
                              EntropyTables.load(model_dir / manifest.z_tables), runners, engine.name)

    def runner(self, stage: str) -> Runner:
        try:
            return self.runners[stage]
        except KeyError:
            raise ModelError(f"stage '{stage}' was not loaded for this codec") from None


def _check_io(runners: dict[str, Runner]) -> None:
    """Refuse graphs whose tensor names differ from the stage contract (e.g. a foreign ONNX file)."""
    for stage, runner in runners.items():
        want_in = {t.name for t in STAGE_IO[stage][0]}
        want_out = {t.name for t in STAGE_IO[stage][1]}
        have_in = {t.name for t in runner.inputs}
        have_out = {t.name for t in runner.outputs}
        if have_in != want_in or not want_out <= have_out:
            raise ModelError(
                f"graph '{stage}' has inputs {sorted(have_in)} / outputs {sorted(have_out)}; "
                f"expected {sorted(want_in)} / {sorted(want_out)}"
            )
