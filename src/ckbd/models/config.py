"""Architecture configuration, saved inside every ckbd checkpoint so loading never guesses."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ckbd.errors import ModelError

PARITIES = ("even", "odd")


#: Architectures whose latent M is tied to N (checked by every config, so by every command).
M_EQUALS_N = frozenset({"cheng2020-ckbd"})


@dataclass(frozen=True)
class ModelConfig:
    """``arch`` names a registered architecture; N/M are the transform/latent channel counts.

    The paper uses N=128/M=192 for low rates and N=192/M=320 for high rates. ``anchor_parity``
    "even" puts anchors where (row + col) is even, as CompressAI does; some public
    implementations use "odd". ``eb_filters`` are the hidden widths of the factorized prior's
    density network: ckbd trains Ballé's (3, 3, 3); CompressAI's default is (3, 3, 3, 3), which
    imported checkpoints keep.
    """

    arch: str = "mbt2018-ckbd"
    N: int = 192
    M: int = 320
    anchor_parity: str = "even"
    eb_filters: tuple[int, ...] = (3, 3, 3)

    def __post_init__(self) -> None:
        object.__setattr__(self, "eb_filters", tuple(self.eb_filters))  # JSON gives a list
        if not all(isinstance(f, int) and f > 0 for f in self.eb_filters):
            raise ModelError(f"eb_filters must be positive integers, not {self.eb_filters}")
        if self.anchor_parity not in PARITIES:
            raise ModelError(f"anchor_parity must be one of {PARITIES}, not {self.anchor_parity!r}")
        if self.N <= 0 or self.M <= 0:
            raise ModelError(f"N and M must be positive (got N={self.N}, M={self.M})")
        if self.arch in M_EQUALS_N and self.M != self.N:
            raise ModelError(f"{self.arch} has M = N; got N={self.N}, M={self.M}")

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        if self.eb_filters == (3, 3, 3):  # omit the default: older configs and fingerprints stay as they were
            del raw["eb_filters"]
        else:
            raw["eb_filters"] = list(self.eb_filters)
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ModelError(f"invalid model config {raw}: {exc}") from None
