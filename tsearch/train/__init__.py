"""Training: step order, checkpoints, evaluation, optimizer schedules.

Imports neither ray, optuna nor mlflow (a test enforces it): results leave through a Tracker and
the ``on_report`` callback.
"""

from tsearch.train.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
