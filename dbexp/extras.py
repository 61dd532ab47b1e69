"""Optional features and the package extras that bring them (``pip install 'dbexp[<extra>]'``).

A feature whose package is missing stops with one line naming the extra, before any model loads. The
extras themselves are declared in ``pyproject.toml`` (``[project.optional-dependencies]``); a test checks that
every one named here is declared there and that ``dev`` (what ``make install`` installs) includes them all.
"""

from __future__ import annotations

import importlib.util

from dbexp.errors import UserInputError

#: extra → the modules whose presence means it is installed.
EXTRAS = {
    "cmaes": ("cmaes",),  # hydra/sweeper/sampler=cmaes (Optuna's CmaEsSampler imports it)
    "memory": ("bitsandbytes",),  # memory.optimizer_8bit: 8-bit AdamW
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "submitit"),  # hydra/launcher=slurm_one_gpu
    "postgresql": ("psycopg",),  # postgresql:// storages and tracking URIs (SQLAlchemy 2.1's default driver)
}


def installed(extra: str) -> bool:
    return all(_found(module) for module in EXTRAS[extra])


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        return False


def require(extra: str, feature: str, instead: str = "") -> None:
    """Stop unless ``extra`` is installed: ``<feature> needs <module> (not installed): pip install 'dbexp[extra]'``."""
    if installed(extra):
        return
    missing = [m for m in EXTRAS[extra] if not _found(m)] or list(EXTRAS[extra])
    package = missing[0].split(".")[-1]
    hint = f", or {instead}" if instead else ""
    raise UserInputError(
        f"{feature} needs {package}, which is not installed: pip install 'dbexp[{extra}]' "
        f"(in a checkout: make install){hint}"
    )


def require_for_url(url: str, key: str) -> None:
    """A database URL's driver: ``postgresql://`` and ``postgresql+psycopg://`` need psycopg 3."""
    scheme = str(url).partition("://")[0].lower()
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        require("postgresql", f"{key}={scheme}://…")
