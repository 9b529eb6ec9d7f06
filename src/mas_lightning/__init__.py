"""Federated multiple-task learning with MAS (Merge And Split) on Lightning Fabric."""

__version__ = "0.1.0"
