"""Named model sizes, so a config can say ``preset: tiny`` or ``preset: paper`` and override details.

Both presets use encoder depth 4 (output stride 16): at 256 px the shared representation is
256 x 16 x 16, the size of the reference's Xception-style representation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PresetName = Literal["tiny", "paper"]


@dataclass(frozen=True)
class Preset:
    """Architecture of a named model size.

    Attributes:
        encoder_name: any encoder ``segmentation_models_pytorch`` offers, ``tu-*`` for timm ones.
        encoder_depth: number of downsampling stages used (3 to 5); 4 gives output stride 16.
        decoder_width: channels of each decoder's deepest stage (halved at each finer stage).
        resolution: image side the preset is meant for; the model itself accepts any size.
    """

    encoder_name: str
    encoder_depth: int
    decoder_width: int
    resolution: int


PRESETS: dict[str, Preset] = {
    # ResNet-10-T trunk truncated after stage 3 (1.2 M encoder parameters): fast on CPU for tests,
    # smoke runs and the mini-Taskonomy quickstart.
    "tiny": Preset("tu-resnet10t", 4, 32, 64),
    # ResNet-34 trunk truncated after stage 3 (8.2 M encoder parameters), close to the reference's
    # encoder in size and representation shape, with wider decoders.
    "paper": Preset("tu-resnet34", 4, 128, 256),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a clear error listing the known ones otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
