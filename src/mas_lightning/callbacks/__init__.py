"""Callbacks on the federated loop's hooks: lookahead affinity on the clients, and the MAS split."""

from mas_lightning.callbacks.affinity import AffinityCallback
from mas_lightning.callbacks.split import SplitCallback

__all__ = ["AffinityCallback", "SplitCallback"]
