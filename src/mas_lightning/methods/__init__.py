"""Methods: all-in-one, one-by-one, MAS, TAG and HOA, each a small recipe of federated stages; and where
affinity is measured during training (:mod:`~mas_lightning.methods.affinity_measurement`)."""

from mas_lightning.methods.affinity_measurement import AffinityMeasurement, AffinityOptions
from mas_lightning.methods.all_in_one import AllInOne
from mas_lightning.methods.all_subsets import AllSubsets
from mas_lightning.methods.hoa import HOA
from mas_lightning.methods.mas import MAS
from mas_lightning.methods.method import Method
from mas_lightning.methods.one_by_one import OneByOne
from mas_lightning.methods.tag import TAG

__all__ = ["HOA", "MAS", "TAG", "AffinityMeasurement", "AffinityOptions", "AllInOne", "AllSubsets", "Method",
           "OneByOne"]
