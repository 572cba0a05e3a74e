"""Sparse-update fine-tuning (Tiny Training Engine, Lin et al., NeurIPS 2022) in PyTorch with real memory
savings: a scheme per conv layer (frozen, bias, a ratio of weight channels; the classifier always trains),
chosen under a memory budget by contribution analysis and evolutionary search, trained with custom autograd
functions that keep only what the update needs and with operator reordering.

The pipeline registers itself from ``pipeline.py`` (imported by the registry)."""
from automl_server.engine.train.sparse_update.memory import MemoryFigures, count_saved_tensors, predict_memory
from automl_server.engine.train.sparse_update.network import SparseNet
from automl_server.engine.train.sparse_update.scheme import SparseScheme
from automl_server.engine.train.sparse_update.selection import choose_scheme, minimum_budget_kb
from automl_server.engine.train.sparse_update.updater import SparseUpdater

__all__ = ["MemoryFigures", "SparseNet", "SparseScheme", "SparseUpdater", "choose_scheme", "count_saved_tensors",
           "minimum_budget_kb", "predict_memory"]
