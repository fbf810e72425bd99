"""What a model directory says about its model: manifest fields, entropy tables, fingerprint.

Built from the torch model alone, so the ONNX export and the torch reference backend of the same
checkpoint get the same manifest fields and the same fingerprint, and a bitstream written by one
decodes with the other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ckbd.errors import ModelMismatchError
from ckbd.export.stage_modules import require_checkerboard
from ckbd.models.architectures import HyperpriorModel
from ckbd.runtime.entropy_tables import (
    EntropyTables,
    default_scale_table,
    discrete_tables,
    gaussian_tables,
)
from ckbd.runtime.intparams import INTEGER_PARAMS_NAME, IntegerParams
from ckbd.runtime.manifest import Y_TABLES_NAME, Z_TABLES_NAME, GraphEntry, Manifest, file_sha256
from ckbd.runtime.package import ModelPackage

#: Bumped whenever the bytes hashed by :func:`model_fingerprint` change meaning.
_FINGERPRINT_DOMAIN = b"ckbd-model-fingerprint-v1\0"


def _update_tensor(digest: hashlib._Hash, name: str, tensor: torch.Tensor) -> None:
    """Hash a tensor's name, shape and float32 little-endian values (framed, so unambiguous)."""
    values = tensor.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
    header = json.dumps({"name": name, "shape": list(values.shape)}, sort_keys=True).encode()
    digest.update(len(header).to_bytes(8, "little") + header)
    digest.update(values.nbytes.to_bytes(8, "little") + values.tobytes())


def model_fingerprint(model: HyperpriorModel, scale_table: np.ndarray) -> str:
    """Hex sha256 over the config, every persistent tensor of the state dict and the scale table.

    The z tables are a function of the weights, and the y tables of the scale table, so this
    identifies everything a bitstream depends on. Non-persistent buffers (kernel masks, targets)
    are not in the state dict and are derived from the config anyway.
    """
    digest = hashlib.sha256(_FINGERPRINT_DOMAIN)
    config = json.dumps(model.config.to_dict(), sort_keys=True).encode()
    digest.update(len(config).to_bytes(8, "little") + config)
    state = model.state_dict()
    for name in sorted(state):
        _update_tensor(digest, name, state[name])
    _update_tensor(digest, "__scale_table__", torch.as_tensor(np.asarray(scale_table, np.float32)))
    return digest.hexdigest()


def integer_fingerprint(float_fingerprint: str, integer_params: IntegerParams) -> str:
    """The integer path's fingerprint: the weights' fingerprint plus the quantised spec.

    Two integer exports of one checkpoint with different calibrations code differently, so their
    streams must not be interchangeable; nor are they with the float export of the same weights.
    """
    digest = hashlib.sha256(b"ckbd-integer-path-v1\0" + float_fingerprint.encode())
    digest.update(integer_params.digest().encode())
    return digest.hexdigest()


def package_fingerprint(model: HyperpriorModel, scale_table: np.ndarray,
                        integer_params: IntegerParams | None = None) -> str:
    """The fingerprint a package of ``model`` carries: of the weights, and of the spec on the integer path."""
    fingerprint = model_fingerprint(model, scale_table)
    return fingerprint if integer_params is None else integer_fingerprint(fingerprint, integer_params)


def check_exported_from(model: HyperpriorModel, package: ModelPackage, which: str, remedy: str) -> None:
    """Refuse ``model`` unless ``package`` was exported from exactly these weights (its fingerprint)."""
    table = np.asarray(package.manifest.scale_table, np.float32)
    if package_fingerprint(model, table, package.integer_params) != package.fingerprint:
        raise ModelMismatchError(f"{package.label} was not exported from {which}: {remedy}")


def build_tables(model: HyperpriorModel, scale_table: np.ndarray) -> tuple[EntropyTables, EntropyTables]:
    """(y tables: one Gaussian per scale, z tables: the factorized prior per channel)."""
    y_tables = gaussian_tables(scale_table)
    with torch.no_grad():
        pmfs, offsets = model.entropy_bottleneck.discrete_pmfs()
    return y_tables, discrete_tables(pmfs, offsets)


def build_package(
    model: HyperpriorModel, opset: int = 0, scale_table: np.ndarray | None = None,
    integer_params: IntegerParams | None = None,
) -> tuple[Manifest, EntropyTables, EntropyTables]:
    """(manifest without graphs, y tables, z tables) of a checkerboard model.

    ``opset`` is 0 for a package with no ONNX graphs (the torch reference). With
    ``integer_params`` the manifest describes the integer entropy-parameter path (its file entry
    is filled in by whoever writes the spec). Raises :class:`~ckbd.errors.ModelError` for
    architectures that do not follow the stage contract.
    """
    model = require_checkerboard(model)
    table = default_scale_table() if scale_table is None else np.asarray(scale_table, np.float32)
    y_tables, z_tables = build_tables(model, table)
    config = model.config
    manifest = Manifest(
        arch=config.arch,
        N=config.N,
        M=config.M,
        anchor_parity=config.anchor_parity,
        fingerprint=package_fingerprint(model, table, integer_params),
        scale_table=[float(s) for s in table],
        opset=opset,
        y_tables=Y_TABLES_NAME,
        z_tables=Z_TABLES_NAME,
    )
    if integer_params is not None:
        manifest.entropy_params = "integer"
        manifest.integer_params = GraphEntry(INTEGER_PARAMS_NAME, integer_params.digest(), "int")
    return manifest, y_tables, z_tables


def save_tables(model_dir: Path, manifest: Manifest, y_tables: EntropyTables, z_tables: EntropyTables) -> None:
    """Write both tables (atomically each) under the names the manifest gives them, and record
    their sha256 in the manifest, which checks them on load."""
    for tables, name in ((y_tables, manifest.y_tables), (z_tables, manifest.z_tables)):
        tables.save(Path(model_dir) / name)
        manifest.tables_sha256[name] = file_sha256(Path(model_dir) / name)
