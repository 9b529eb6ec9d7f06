"""A light per-task decoder: a small U-Net/FPN-like head over the shared encoder's feature pyramid.

Each task owns one. Starting at the deepest feature (the shared representation; 256 x 16 x 16 at
256 px for the presets, like the reference), every step up halves the channels, upsamples, adds a 1x1
projection of the encoder feature at that scale (skip) and mixes with a 3x3 conv. Channels shrink as
resolution grows so that the high-resolution stages stay cheap: with nine decoders on one encoder, the
decoders are most of the compute otherwise. The last stage runs at stride 2; its output is upsampled
bilinearly to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

MIN_WIDTH = 8
"""No decoder stage gets fewer channels than this."""


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def stage_widths(levels: int, width: int) -> list[int]:
    """Channels of each decoder stage, deepest first: ``width``, ``width / 2``, ... (at least 8)."""
    return [max(width >> i, MIN_WIDTH) for i in range(levels)]


class TaskDecoder(nn.Module):
    """Decode a feature pyramid into one task's prediction at input resolution.

    Args:
        encoder_channels: channels of the pyramid levels from stride 2 to the deepest (smp's
            ``encoder.out_channels`` without the leading input entry).
        out_channels: channels of the prediction (classes for segmentation).
        width: channels of the deepest stage; each shallower stage has half as many.
    """

    def __init__(self, encoder_channels: Sequence[int], out_channels: int, width: int) -> None:
        super().__init__()
        if width < 1 or out_channels < 1 or not encoder_channels or encoder_channels[-1] < 1:
            raise ValueError(
                f"decoder needs width >= 1 (got {width}), out_channels >= 1 (got {out_channels}) "
                f"and at least one encoder level (got {list(encoder_channels)})"
            )
        deep_first = list(reversed(encoder_channels))
        widths = stage_widths(len(deep_first), width)
        self.bottom = _conv_bn_relu(deep_first[0], widths[0], 3)
        # Stage i goes from widths[i - 1] at one scale to widths[i] at the next finer one.
        self.reduce = nn.ModuleList(nn.Conv2d(widths[i - 1], widths[i], 1) for i in range(1, len(widths)))
        # Some encoders (ConvNeXt, MiT in smp) have no stride-2 feature and report 0 channels there:
        # such a level gets no skip, only the upsampling.
        self.lateral = nn.ModuleList(
            nn.Conv2d(deep_first[i], widths[i], 1) if deep_first[i] > 0 else nn.Identity()
            for i in range(1, len(widths))
        )
        self.mix = nn.ModuleList(_conv_bn_relu(widths[i], widths[i], 3) for i in range(1, len(widths)))
        self.head = nn.Conv2d(widths[-1], out_channels, 1)

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        """Args: features from stride 2 to the deepest (as the encoder returns them, minus the input);
        size: (H, W) of the input image."""
        deep_first = list(reversed(features))
        x = self.bottom(deep_first[0])
        for skip, reduce, lateral, mix in zip(deep_first[1:], self.reduce, self.lateral, self.mix):
            # Reduce before upsampling (cheaper); interpolate to the skip's exact size since some
            # encoders (e.g. Xception) do not halve sizes exactly.
            x = F.interpolate(reduce(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = mix(x + lateral(skip) if isinstance(lateral, nn.Conv2d) else x)
        return F.interpolate(self.head(x), size=size, mode="bilinear", align_corners=False)
