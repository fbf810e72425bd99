"""An exported model opened once: manifest, verified tables and graph paths, fingerprint.

Every backend loads its stages from a :class:`ModelPackage` instead of re-reading the manifest, so
the rules "check every file against its sha256 before use" and "a variant precision falls back to
fp32 only for stages that have none" live here, once, for ONNX Runtime, TensorRT and torch alike.
A package built in memory (the torch reference of a checkpoint, no export) has no ``root`` and no
graph files, but the same manifest fields and fingerprint as its export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ckbd.errors import ModelError
from ckbd.runtime.entropy_tables import EntropyTables
from ckbd.runtime.integrity import verify_file
from ckbd.runtime.intparams import IntegerParams
from ckbd.runtime.known_answers import KnownAnswers
from ckbd.runtime.manifest import GraphEntry, Manifest

#: The exported model that ships with ckbd, relative to the ``ckbd`` package.
DEFAULT_MODEL = ("assets", "default")
#: The checkpoint the shipped model was exported from (for the torch reference backend).
DEFAULT_CHECKPOINT = ("assets", "default_checkpoint.pt")


def default_model_dir() -> Path:
    """The exported model that ships with ckbd (``ckbd/assets/default``)."""
    path = Path(str(resources.files("ckbd").joinpath(*DEFAULT_MODEL)))
    if not (path / "manifest.json").is_file():
        raise ModelError("this ckbd install has no default model; pass --model DIR")
    return path


def default_checkpoint() -> Path:
    """The checkpoint of the shipped model (what ``--backend torch`` runs by default)."""
    return Path(str(resources.files("ckbd").joinpath(*DEFAULT_CHECKPOINT)))


def known_checkpoint(model_dir: Path) -> Path | None:
    """The checkpoint ``model_dir`` was exported from, when ckbd has it: the shipped one for the shipped model."""
    return default_checkpoint() if is_default_model(model_dir) and default_checkpoint().is_file() else None


def is_default_model(model_dir: Path) -> bool:
    """Whether ``model_dir`` is the model that ships with ckbd (its checkpoint is installed too)."""
    try:
        return Path(model_dir).resolve() == default_model_dir().resolve()
    except ModelError:
        return False


@dataclass(eq=False)
class ModelPackage:
    """A model's manifest, entropy tables and (when exported) its directory of graph files."""

    manifest: Manifest
    y_tables: EntropyTables
    z_tables: EntropyTables
    #: The exported directory; None for a package built in memory from a checkpoint.
    root: Path | None = None
    #: The integer entropy-parameter spec (integer path only); read from ``root`` when first needed.
    spec: IntegerParams | None = None
    _verified: set[str] = field(default_factory=set, repr=False)
    _answers: KnownAnswers | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        m = self.manifest
        if self.z_tables.num_tables != m.N:
            raise ModelError(f"z tables hold {self.z_tables.num_tables} channels but the model has N={m.N}")
        if self.y_tables.num_tables != len(m.scale_table):
            raise ModelError("y tables do not match the manifest's scale table")
        if m.integer_params is None and self.spec is not None:
            raise ModelError("a float-path manifest was given an integer entropy-parameter spec")

    @classmethod
    def open(cls, model_dir: Path | None = None) -> ModelPackage:
        """Read and verify a model directory (the shipped model when None)."""
        root = Path(model_dir) if model_dir is not None else default_model_dir()
        if root.is_file():
            raise ModelError(f"{root} is a file; export it first (ckbd export {root} -o DIR), "
                             "or run a checkpoint with --backend torch")
        manifest = Manifest.load(root)
        for name, sha256 in manifest.tables_sha256.items():
            verify_file(root / name, sha256)
        if manifest.integer_params is not None:
            verify_file(root / manifest.integer_params.file, manifest.integer_params.sha256)
        return cls(manifest, EntropyTables.load(root / manifest.y_tables),
                   EntropyTables.load(root / manifest.z_tables), root)

    @classmethod
    def of(cls, source: ModelPackage | Path | str | None) -> ModelPackage:
        """``source`` itself, or the package of the directory it names (None: the shipped model)."""
        return source if isinstance(source, ModelPackage) else cls.open(None if source is None else Path(source))

    @property
    def integer_params(self) -> IntegerParams | None:
        """The integer path's spec (None on the float path); only the torch backend needs it."""
        entry = self.manifest.integer_params
        if entry is not None and self.spec is None and self.root is None:
            raise ModelError(f"{self.label} is on the integer path but was built without its spec")
        if entry is not None and self.spec is None:
            self.spec = IntegerParams.load(self.directory() / entry.file)  # verified by open()
        return self.spec

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def is_shipped(self) -> bool:
        """Whether this is the model that ships with ckbd (its checkpoint is installed too)."""
        return self.root is not None and is_default_model(self.root)

    @property
    def label(self) -> str:
        """How messages name the model: its directory, or its fingerprint when built in memory."""
        return str(self.root) if self.root is not None else f"model {self.fingerprint[:12]}"

    def graph(self, stage: str, variant: str = "fp32") -> GraphEntry:
        """The manifest entry of ``stage`` in ``variant`` (fp32 for stages without one)."""
        return self.manifest.graph_entry(self.directory(), stage, variant)

    def graph_path(self, stage: str, variant: str = "fp32") -> Path:
        """The verified file of ``stage``: its sha256 is checked once per package."""
        return self._verified_file(self.graph(stage, variant))

    def known_answers_path(self) -> Path | None:
        """The verified known-answer file (None: the package has none, e.g. an older export)."""
        entry = self.manifest.known_answers
        return None if entry is None or self.root is None else self._verified_file(entry)

    def known_answers(self) -> KnownAnswers | None:
        """The known-answer vectors of the integer stages, verified and read once (None: none)."""
        if self._answers is None:
            path = self.known_answers_path()
            self._answers = None if path is None else KnownAnswers.load(path)
        return self._answers

    def _verified_file(self, entry: GraphEntry) -> Path:
        path = self.directory() / entry.file
        if entry.file not in self._verified:
            verify_file(path, entry.sha256)
            self._verified.add(entry.file)
        return path

    def directory(self) -> Path:
        """The exported directory (engines and calibration data live beside the graphs)."""
        if self.root is None:
            raise ModelError(f"{self.label} was built from a checkpoint and has no exported graphs; "
                             "export it first (ckbd export CHECKPOINT -o DIR) or use the torch backend")
        return self.root
