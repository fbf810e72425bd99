"""Tiled against whole-image runs on real photos (``ckbd check tiling [IMAGES]``).

Every image is encoded whole and with small analysis tiles, and decoded whole and with small
synthesis tiles (fixed plans, whatever the memory budget), to state how far tiling moves anything:
whether the streams (hence all symbols) are identical, and the largest grey-level difference of the
decoded pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.runtime import tiling
from ckbd.runtime.codec import Decoder, Encoder
from ckbd.runtime.memory import Plan
from ckbd.runtime.receptive_field import analysis_halo, synthesis_halo


def check(paths: list[Path], analysis_core: int, synthesis_core: int, threads: int = 1,
          model: Path | None = None) -> dict[str, Any]:
    """Per image: whole vs tiled streams identical? largest grey-level difference of the decodes?"""
    from ckbd.runtime.imageio import read_image

    encoder, decoder = Encoder.open(model, threads=threads), Decoder.open(model, threads=threads)
    arch = encoder.manifest.arch
    a_plan = Plan(False, analysis_core, analysis_core, -(-analysis_halo(arch) // 64) * 64, 0)
    s_plan = Plan(False, synthesis_core, synthesis_core, synthesis_halo(arch) + synthesis_halo(arch) % 2, 0)
    rows = []
    for path in paths:
        image = read_image(path, quiet=True)
        whole = encoder.encode(image)
        original = tiling.plan_analysis
        try:  # the codec's own code path, with the plans forced
            tiling.plan_analysis = lambda *args, **kw: a_plan  # type: ignore[assignment]
            tiled = encoder.encode(image)
        finally:
            tiling.plan_analysis = original
        result = decoder.decode_detailed(whole)
        run = lambda stage, feeds, keep=(): decoder.model.runner(stage).run(feeds)  # noqa: E731
        pixels = tiling.synthesise(run, result.latents.anchor_hat, result.latents.nonanchor_hat, s_plan,
                                   *image.shape[:2])
        diff = np.abs(pixels.astype(np.int16) - result.image)
        rows.append({"file": path.name, "identical_streams": tiled == whole, "max_grey_difference": int(diff.max()),
                     "differing_values": int(np.count_nonzero(diff))})
        print(json.dumps(rows[-1]), flush=True)
    return {"analysis_tile": f"{analysis_core} px + {a_plan.halo}", "synthesis_tile":
            f"{synthesis_core} latent + {s_plan.halo}", "images": rows,
            "all_streams_identical": all(r["identical_streams"] for r in rows),
            "max_grey_difference": max(r["max_grey_difference"] for r in rows)}
