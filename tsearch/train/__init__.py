"""Training: the step order (``loop``), what a run holds and checkpoints (``state``), what it
records (``rundir``), probe kinds (``probe``), optimizer schedules (``optim``).

Imports neither ray, optuna, mlflow nor ``tsearch.tracking`` (``tests/test_boundaries.py``
enforces it): results leave through a ``tsearch.tracker.Tracker`` and the ``on_report`` callback.
"""

from tsearch.train.loop import RunStopped, train
from tsearch.train.rundir import TrainResult

__all__ = ["RunStopped", "TrainResult", "train"]
