"""The federated layer: server aggregation, the Fabric-driven round loop, checkpoints and cost accounting."""
