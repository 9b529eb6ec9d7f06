"""Data sources: each turns its configuration into a :class:`FederatedData` (clients, val, test)."""

from mas_lightning.data.base import DataSource, FederatedData, TensorTaskDataset

__all__ = ["DataSource", "FederatedData", "TensorTaskDataset"]
