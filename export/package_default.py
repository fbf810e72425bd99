"""Turn a training checkpoint into the model that ships with ckbd (``ckbd/assets``).

    ckbd ship runs/default/checkpoint.pt

Writes a float16 copy of the weights (``default_checkpoint.pt``, what ``ckbd export --default``
reads), the exported model directory ``default/`` made from exactly those weights (integer
entropy-parameter path, calibrated on ``--calibration-images``, by default ../shared/data/train),
and ``RECIPE.json`` with the training recipe so anyone can retrain it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ckbd.models.checkpoint import load_model, read_checkpoint_file, save_checkpoint


def recipe(raw: dict[str, Any]) -> dict[str, Any]:
    """What the checkpoint says about how it was trained (no optimiser state)."""
    training = raw.get("training", {})
    return {
        "config": raw.get("config"),
        "steps": training.get("step"),
        "training_wall_time_h": round(float(training.get("elapsed_s", 0.0)) / 3600, 2),
        "train_config": training.get("config"),
    }


def package(checkpoint: Path, calibration: Path, assets: Path | None = None, notes: str = "") -> Path:
    """Write the shipped model's assets (default: the installed package's assets folder, where
    :func:`ckbd.runtime.package.default_checkpoint` reads them: the checkout's in a development install)."""
    from ckbd.export.integer_quantize import calibration_images, quantize_model
    from ckbd.export.known_answers import generate, photos_from
    from ckbd.export.onnx_export import export_model
    from ckbd.runtime.entropy_tables import default_scale_table
    from ckbd.runtime.package import default_checkpoint

    assets = default_checkpoint().parent if assets is None else assets
    assets.mkdir(parents=True, exist_ok=True)
    shipped = assets / "default_checkpoint.pt"
    raw = read_checkpoint_file(checkpoint)
    # Keep the step count and schedule (not the optimiser state) so `ckbd train --resume` from the
    # shipped file continues the recipe.
    progress = {k: v for k, v in raw.get("training", {}).items() if k in ("step", "elapsed_s", "config")}
    save_checkpoint(shipped, load_model(checkpoint), training=progress, half=True)
    with tempfile.TemporaryDirectory(dir=assets) as tmp:
        staged = Path(tmp) / "default"
        model = load_model(shipped)
        spec = quantize_model(model, calibration_images(calibration), default_scale_table())
        export_model(model, staged, integer_params=spec, known_answers=generate(model, spec, photos_from(calibration)))
        target = assets / "default"
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    info = {**recipe(raw), "notes": notes}
    (assets / "RECIPE.json").write_text(json.dumps(info, indent=2) + "\n")
    return assets / "default"

