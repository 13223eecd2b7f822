"""What a search prints: its own lines by default, Ray's own output too with ``--verbose``.

By default the console shows one line per evaluation and per trial end
(``callbacks.ProgressCallback``), then the results table. What Ray and Optuna say on every
search is switched off where it is made: Tune's output engine (its experiment box, a TensorBoard
hint into Ray's session folder, status tables), Ray's note that token authentication is on (a
local search turns it on by design), each trial's "Checkpoint successfully created" line per
report, Optuna's "A new study created" line. Warnings and errors, from Ray or a trial, still show.
"""

from __future__ import annotations

import logging
import os

# Logs INFO "Checkpoint successfully created at: ..." in a trial's process at every report.
CHECKPOINT_LOGGER = "ray.train._internal.storage"
# Logs a WARNING that token authentication is on when a driver imported Ray before setting
# RAY_AUTH_MODE (ray_runtime.init_ray sets it when it can).
TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
TOKEN_ENABLED = "Token authentication is enabled for this Ray cluster"


class _DropTokenEnabled(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TOKEN_ENABLED)


_TOKEN_FILTER = _DropTokenEnabled()


def configure_driver(verbose: bool) -> None:
    """Set up the driver's console; call it before Ray starts and before Tune's ``RunConfig``.

    Quiet, Tune runs its old output engine at verbosity 0, which prints nothing; the new engine
    prints its experiment box and TensorBoard hint at every verbosity. Ray reads
    ``RAY_AIR_NEW_OUTPUT`` when a ``RunConfig`` is made and again in ``fit()``.
    """
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    token = logging.getLogger(TOKEN_LOGGER)
    if verbose:
        token.removeFilter(_TOKEN_FILTER)
    else:
        token.addFilter(_TOKEN_FILTER)  # a logger keeps one copy of a filter
    try:
        import optuna
    except ImportError:  # the algorithm's build says what is missing
        return
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


def tune_verbosity(verbose: bool) -> int:
    """``RunConfig.verbose``: Ray's default (1) or silent."""
    return 1 if verbose else 0


def configure_trial(verbose: bool) -> None:
    """In a trial's process: no checkpoint line per report unless verbose."""
    logging.getLogger(CHECKPOINT_LOGGER).setLevel(logging.NOTSET if verbose else logging.WARNING)
