"""User-facing errors: one clear line and a non-zero exit instead of a traceback wall."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

#: Exit status of a run stopped by bad input (Hydra's own config errors exit with 1).
USER_ERROR_EXIT = 2


class UserInputError(Exception):
    """Bad input the user can fix. The message names the file or config key and what to do."""


def instantiate_checked(node: Any, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` whose failure (a misspelt argument, a missing class) is one line naming ``key``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        reason = " ".join(str(err).split())
        raise UserInputError(f"{key}: {reason}") from None


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a :class:`UserInputError` into ``dbexp: error: <message>`` on stderr and exit status 2 —
    except in a Hydra multirun, where it stays an exception so the sweeper fails that trial (with the
    message as its reason) and goes on with the next."""
    try:
        yield
    except UserInputError as err:
        if _in_multirun():
            print(f"dbexp: error: {err}", file=sys.stderr, flush=True)
            raise
        stop(err)


def stop(err: UserInputError) -> NoReturn:
    """``dbexp: error: <message>`` on stderr, exit status 2 (also where a sweep as a whole cannot start)."""
    print(f"dbexp: error: {err}", file=sys.stderr, flush=True)
    raise SystemExit(USER_ERROR_EXIT) from None


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
