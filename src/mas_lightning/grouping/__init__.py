"""The mathematics of task grouping, pure functions on tensors and task bitmasks.

Where affinity is defined (:func:`lookahead_affinity`), where MAS chooses its split (:func:`best_split`,
:func:`split_score`), and how TAG and HOA choose their groups (:func:`tag_select`, :func:`hoa_select`).
Nothing here knows of federated training: the measurement during training lives in
:mod:`mas_lightning.methods.affinity_measurement`.
"""

from mas_lightning.grouping.hoa_selection import hoa_select
from mas_lightning.grouping.lookahead import lookahead_affinity
from mas_lightning.grouping.mas_split import best_split, split_score, task_scores
from mas_lightning.grouping.tag_selection import tag_select

__all__ = ["best_split", "hoa_select", "lookahead_affinity", "split_score", "tag_select", "task_scores"]
