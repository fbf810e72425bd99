"""The compiled range coder (``_rangecoder``, built at install when a C compiler is present).

It writes and reads the words constriction's queue range coder writes for the layout in
:mod:`ckbd.runtime.coder`, bit for bit, and releases the GIL for a whole call, so the substreams
of a pass (:mod:`ckbd.runtime.substreams`) are coded on several cores. Where it is not built,
:class:`~ckbd.runtime.coder.IndexedCoder` codes the same bytes through constriction, one call at a
time; tests compare the two.

A call codes row bands ``[r0, r1)`` of a C-contiguous int32 array viewed as
``(outer, rows, width)``: each band's symbols in C order, which for a whole array (one band) is
the array's own order.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import ModuleType

import numpy as np

from ckbd.errors import BitstreamError
from ckbd.runtime.entropy_tables import EntropyTables

Band = tuple[int, int]

#: Messages shared with the constriction path, so that both raise the same errors.
INVALID_DATA = "corrupt entropy-coded data: the words lie outside the coder's range"


def _load_compiled() -> ModuleType | None:
    if sys.byteorder != "little":  # the words are handed over in native order
        return None
    try:
        from ckbd.runtime import _rangecoder  # type: ignore[attr-defined]
    except ImportError:  # built without a C compiler: constriction codes the same words
        return None
    return _rangecoder


#: The compiled coder, or None where the extension was not built.
compiled: ModuleType | None = _load_compiled()


class CompiledTables:
    """An :class:`EntropyTables` in the compiled coder's form (cumulatives and lookup tables)."""

    def __init__(self, tables: EntropyTables, module: ModuleType) -> None:
        self._module = module
        self._capsule = module.tables(
            np.ascontiguousarray(tables.freqs, dtype=np.uint32),
            np.ascontiguousarray(tables.lengths, dtype=np.int32),
            np.ascontiguousarray(tables.offsets, dtype=np.int32),
            int(tables.probability_bits),
        )

    def encode(self, values: np.ndarray, indexes: np.ndarray, band: Band) -> bytes:
        """The words of rows ``band`` of 3-d int32 ``values`` coded under ``indexes``."""
        outer, rows, width = values.shape
        try:
            data: bytes = self._module.encode(self._capsule, values, indexes, outer, rows, width, *band)
        except self._module.CorruptData as exc:
            raise BitstreamError(str(exc)) from None
        return data

    def decode(self, parts: Sequence[bytes], indexes: np.ndarray, out: np.ndarray, bands: Sequence[Band]) -> None:
        """Decode each of ``parts`` into its rows ``bands`` of the 3-d int32 ``out`` (indexes alike).

        The bands are decoded in order, in one call without the GIL; a failure is that of the first
        band that fails."""
        outer, rows, width = out.shape
        try:
            self._module.decode(self._capsule, tuple(parts), indexes, out, outer, rows, width, tuple(bands))
        except self._module.CorruptData as exc:
            raise BitstreamError(str(exc)) from None
