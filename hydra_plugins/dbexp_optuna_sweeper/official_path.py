"""hydra-optuna-sweeper's class path, for configs that name it: dbexp's sweeper answers to it.

Configs written for hydra-optuna-sweeper may pin its class (``hydra.sweeper._target_:
hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper``; lightning-hydra-template's
``hparams_search`` files do). When that plugin is not installed, ``OptunaSweeper`` below is dbexp's sweeper
under that path: Hydra's plugin scan registers it by ``__module__`` and ``__name__``, and Hydra resolves the
path attribute by attribute from the ``hydra_plugins`` package, where this module puts it. Nothing is put in
``sys.modules``: ``import hydra_plugins.hydra_optuna_sweeper`` still fails, and ``importlib.util.find_spec``
still tells whether the real plugin is installed.

When hydra-optuna-sweeper is installed, the path is its own and nothing here is defined: a config that
names its class runs on that plugin, which rejects dbexp's own keys (``n_trials_in_total``, ...). Delete the
``_target_`` line (``hydra/sweeper=dbexp_optuna`` sets it) to run such a config on dbexp's sweeper.
"""

import importlib.util
import types

import hydra_plugins
from hydra_plugins.dbexp_optuna_sweeper.sweeper import DbexpOptunaSweeper

PACKAGE = "hydra_plugins.hydra_optuna_sweeper"
MODULE = f"{PACKAGE}.optuna_sweeper"


def official_plugin_installed() -> bool:
    return importlib.util.find_spec(PACKAGE) is not None


if not official_plugin_installed():

    class OptunaSweeper(DbexpOptunaSweeper):
        """dbexp's sweeper, named by hydra-optuna-sweeper's class path (that plugin is not installed)."""

    OptunaSweeper.__module__ = MODULE
    _module = types.ModuleType(MODULE, "dbexp's sweeper under hydra-optuna-sweeper's class path")
    _module.OptunaSweeper = OptunaSweeper
    _package = types.ModuleType(PACKAGE, "hydra-optuna-sweeper's class path, answered by dbexp's sweeper")
    _package.optuna_sweeper = _module
    hydra_plugins.hydra_optuna_sweeper = _package
