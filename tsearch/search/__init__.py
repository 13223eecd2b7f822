"""The search: Ray Tune trials proposed by a registered algorithm (``algorithms/``), ASHA on the
search metric, MLflow parent and child runs. The only package importing ray and optuna.

``plan.plan`` checks a search before anything starts; ``tuner.run_search`` runs it. Import
submodules directly (``tsearch.search.tuner``); this package imports nothing heavy.
"""
