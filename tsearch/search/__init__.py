"""The search: Ray Tune trials, Optuna TPE, ASHA on FID (the only package importing ray/optuna).

Import submodules directly (``tsearch.search.tuner``); this package imports nothing heavy.
"""
