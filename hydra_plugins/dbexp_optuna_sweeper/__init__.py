"""dbexp's Optuna sweeper for Hydra (Optuna ≥ 4): hydra-optuna-sweeper's config keys on a modern Optuna.

Hydra only loads sweepers from the ``hydra_plugins`` namespace package, hence this folder.
"""
