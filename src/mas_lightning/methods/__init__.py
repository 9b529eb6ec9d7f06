"""Methods: all-in-one, one-by-one, MAS, TAG and HOA, each a small recipe of federated stages."""

from mas_lightning.methods.all_in_one import AllInOne
from mas_lightning.methods.base import Method
from mas_lightning.methods.mas import MAS
from mas_lightning.methods.one_by_one import OneByOne

__all__ = ["MAS", "AllInOne", "Method", "OneByOne"]
