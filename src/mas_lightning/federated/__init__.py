"""Generic federated learning, knowing nothing of task grouping: where clients train and the server aggregates.

``engine`` runs stages of rounds, ``client`` trains a client locally, ``aggregation`` holds the server
strategies, ``sampling`` the per-round choices, ``state`` and ``checkpoint`` what survives a crash, and
``callbacks`` the hooks that methods (e.g. affinity measurement) attach to the loop.
"""

from mas_lightning.federated.aggregation import Aggregator, FedAvg, FedProx, fedavg, proximal_term
from mas_lightning.federated.callbacks import Callback
from mas_lightning.federated.config import FederatedConfig, Stage
from mas_lightning.federated.engine import FederatedEngine
from mas_lightning.federated.state import RunState, StageResult, new_state

__all__ = ["Aggregator", "Callback", "FedAvg", "FedProx", "FederatedConfig", "FederatedEngine", "RunState", "Stage",
           "StageResult", "fedavg", "new_state", "proximal_term"]
