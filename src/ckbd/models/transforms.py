"""Analysis/synthesis transforms of the two architecture families."""

from __future__ import annotations

from torch import nn

from ckbd.models.layers import (
    GDN,
    ResidualBlock,
    ResidualBlockUpsample,
    ResidualBlockWithStride,
    conv,
    conv3x3,
    deconv,
    subpel_conv3x3,
)


def minnen_transforms(N: int, M: int) -> dict[str, nn.Module]:
    """Minnen et al. 2018: 5x5 stride-2 convs with GDN, transposed convs with IGDN."""
    return {
        "g_a": nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M)),
        "g_s": nn.Sequential(
            deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
            deconv(N, N), GDN(N, inverse=True), deconv(N, 3),
        ),
        "h_a": nn.Sequential(
            conv(M, N, 3, 1), nn.LeakyReLU(inplace=True), conv(N, N), nn.LeakyReLU(inplace=True), conv(N, N)
        ),
        "h_s": nn.Sequential(
            deconv(N, M), nn.LeakyReLU(inplace=True), deconv(M, M * 3 // 2), nn.LeakyReLU(inplace=True),
            conv(M * 3 // 2, M * 2, 3, 1),
        ),
    }


def cheng_anchor_transforms(N: int) -> dict[str, nn.Module]:
    """Cheng et al. 2020 "anchor": residual blocks, no attention, sub-pixel upsampling (M = N)."""
    return {
        "g_a": nn.Sequential(
            ResidualBlockWithStride(3, N), ResidualBlock(N, N), ResidualBlockWithStride(N, N),
            ResidualBlock(N, N), ResidualBlockWithStride(N, N), ResidualBlock(N, N), conv3x3(N, N, stride=2),
        ),
        "g_s": nn.Sequential(
            ResidualBlock(N, N), ResidualBlockUpsample(N, N), ResidualBlock(N, N), ResidualBlockUpsample(N, N),
            ResidualBlock(N, N), ResidualBlockUpsample(N, N), ResidualBlock(N, N), subpel_conv3x3(N, 3, 2),
        ),
        "h_a": nn.Sequential(
            conv3x3(N, N), nn.LeakyReLU(inplace=True), conv3x3(N, N), nn.LeakyReLU(inplace=True),
            conv3x3(N, N, stride=2), nn.LeakyReLU(inplace=True), conv3x3(N, N), nn.LeakyReLU(inplace=True),
            conv3x3(N, N, stride=2),
        ),
        "h_s": nn.Sequential(
            conv3x3(N, N), nn.LeakyReLU(inplace=True), subpel_conv3x3(N, N, 2), nn.LeakyReLU(inplace=True),
            conv3x3(N, N * 3 // 2), nn.LeakyReLU(inplace=True), subpel_conv3x3(N * 3 // 2, N * 3 // 2, 2),
            nn.LeakyReLU(inplace=True), conv3x3(N * 3 // 2, N * 2),
        ),
    }


def entropy_parameters(M: int) -> nn.Sequential:
    """1x1 convs 4M -> 10M/3 -> 8M/3 -> 2M on concatenated (hyper, context) features."""
    return nn.Sequential(
        nn.Conv2d(M * 12 // 3, M * 10 // 3, 1), nn.LeakyReLU(inplace=True),
        nn.Conv2d(M * 10 // 3, M * 8 // 3, 1), nn.LeakyReLU(inplace=True),
        nn.Conv2d(M * 8 // 3, M * 6 // 3, 1),
    )
