"""dbexp's sweep presets (``dbexp/sweeps/``) on the config search path of dbexp's own commands, so that
``python -m dbexp.train --multirun --config-name quick_cpu`` finds them wherever dbexp is installed.

Hydra loads search-path plugins only from the ``hydra_plugins`` namespace package, hence this folder. It
runs for every Hydra app in the environment and changes nothing unless the app's primary config folder is
dbexp's ``conf/``.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin


def is_dbexp_conf(path: str | None) -> bool:
    """``/…/dbexp/conf`` (``python -m``), ``file:///…/dbexp/conf`` (the compose API) or ``pkg://dbexp/conf``
    (console scripts)."""
    scheme, _, location = (path or "").rpartition("://")
    if scheme == "pkg":
        location = location.replace(".", "/")
    return location.rstrip("/").endswith("dbexp/conf")


SUBMITIT_SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


class DbexpSweepsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(is_dbexp_conf(element.path) for element in search_path.get_path() if element.provider == "main"):
            return
        from dbexp import SWEEPS_DIR  # only now: the scan imports this module for every Hydra app
        from dbexp.extras import installed

        search_path.append(provider="dbexp-sweeps", path=f"file://{SWEEPS_DIR}")
        # ``sweeps/hydra/launcher/slurm_one_gpu.yaml`` extends hydra-submitit-launcher's ``submitit_slurm`` (the
        # slurm extra). Without it that name would not exist and composing would fail with "could not find ...":
        # a stand-in holding only the launcher's class lets the preset compose, and the sweeper then stops with
        # one line naming the extra (``DbexpOptunaSweeper.check_extras``).
        if not installed("slurm"):
            ConfigStore.instance().store(
                group="hydra/launcher", name="submitit_slurm", node={"_target_": SUBMITIT_SLURM}, provider="dbexp"
            )
