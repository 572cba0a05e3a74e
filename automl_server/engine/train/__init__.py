"""Training pipelines for a found network (importable without Flask or Celery).

``standard`` is plain supervised training; the federated (FedGKT), delayed
synchronous SGD and sparse-update (TTE) pipelines arrive beside it with the
same shape: a model, the job's splits, callbacks for progress and
cancellation, a checkpoint path to resume from.
"""
from automl_server.engine.train.standard import StandardConfig, TrainResult, evaluate, train_standard

__all__ = ["StandardConfig", "TrainResult", "evaluate", "train_standard"]
