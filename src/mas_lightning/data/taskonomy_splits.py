"""Named building lists of Taskonomy, chosen in a config by name (``train_buildings: tiny``) instead of typed out.

Sources (names only, read from the public files; nothing else taken from them):

- ``tiny``: the official *tiny* split, 25 train / 5 val / 5 test buildings, as published with the Taskonomy
  dataset (StanfordVL/taskonomy ``data/README.md`` gives the counts; the split files are in its
  ``data/assets/splits_taskonomy.zip``). The names below were read from omnidata-tools' copy of that file,
  EPFL-VILAB/omnidata ``omnidata_tools/torch/dataloader/component_datasets/taskonomy/train_val_test_tiny.csv``
  (columns id, train, val, test). Caveat: the omnidata download tool, in the version we read
  (``omnidata_tools/dataset/starter_dataset/component_datasets/taskonomy/__init__.py``), lists ``woodbine``
  among its ``forbidden_buildings``, which it leaves out of every subset it downloads: a tiny download made
  with it may hold 24 of the 25 train buildings (see :data:`OMNIDATA_SKIPPED`).
- ``mas_reference`` (train only): the 32 client buildings of the MAS authors' experiments, EasyFL
  ``applications/mas/clients.txt`` (the 35 tiny buildings less wainscott, wiconisco and woodbine). It holds
  nine of the ten official val/test buildings: the authors evaluate on other images of their client
  buildings, which this reader refuses (a building belongs to one split). Pair it with val/test buildings
  outside it (e.g. from the medium split) to train on the authors' 32 clients.
"""

from __future__ import annotations

from collections.abc import Sequence

from mas_lightning.errors import ConfigError

TINY_TRAIN: tuple[str, ...] = (
    "allensville", "beechwood", "benevolence", "coffeen", "cosmos", "forkland", "hanson", "hiteman", "klickitat",
    "lakeville", "leonardo", "lindenwood", "marstons", "merom", "mifflinburg", "newfields", "onaga", "pinesdale",
    "pomaria", "ranchester", "shelbyville", "stockman", "tolstoy", "wainscott", "woodbine",
)  # fmt: skip
TINY_VAL: tuple[str, ...] = ("collierville", "corozal", "darden", "markleeville", "wiconisco")
TINY_TEST: tuple[str, ...] = ("ihlen", "mcdade", "muleshoe", "noxapater", "uvalda")
MAS_REFERENCE_CLIENTS: tuple[str, ...] = tuple(
    sorted(set(TINY_TRAIN + TINY_VAL + TINY_TEST) - {"wainscott", "wiconisco", "woodbine"})
)
"""The MAS authors' 32 clients (EasyFL ``applications/mas/clients.txt``), sorted as in that file."""
OMNIDATA_SKIPPED: tuple[str, ...] = ("woodbine",)
"""Tiny buildings that the omnidata download tool (the version we read) does not download."""

PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "train_buildings": {"tiny": TINY_TRAIN, "mas_reference": MAS_REFERENCE_CLIENTS},
    "val_buildings": {"tiny": TINY_VAL},
    "test_buildings": {"tiny": TINY_TEST},
}
"""Option name -> preset name -> buildings."""


def resolve_buildings(option: str, value: str | Sequence[str]) -> list[str]:
    """The building list an option names: a preset name (a string) or the buildings themselves.

    Raises:
        ConfigError: ``value`` is a string that names no preset of ``option`` (the message lists them).
    """
    if not isinstance(value, str):
        return list(value)
    presets = PRESETS[option]
    if value not in presets:
        accepted = ", ".join(repr(name) for name in presets)
        raise ConfigError(
            f"{option}: no preset named {value!r}; accepted preset names: {accepted}, or a list of building "
            f"names (e.g. [{value}] for one building)"
        )
    return list(presets[value])
