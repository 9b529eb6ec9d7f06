"""Data sources: each turns its configuration into a :class:`FederatedData` (clients, val, test)."""

from mas_lightning.data.base import DataSource, FederatedData, TensorTaskDataset
from mas_lightning.data.minitaskonomy import MiniTaskonomy
from mas_lightning.data.taskonomy import Taskonomy
from mas_lightning.data.taskonomy_shards import TaskonomyShards

__all__ = ["DataSource", "FederatedData", "MiniTaskonomy", "Taskonomy", "TaskonomyShards", "TensorTaskDataset"]
