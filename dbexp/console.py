"""What a user sees in the terminal: locations of outputs, and none of the libraries' routine chatter."""

from __future__ import annotations

import logging
import os
import warnings

#: Warnings every run triggers on purpose (frozen parts in eval mode, an endless stream, no val loop).
EXPECTED_WARNINGS = (
    ".*does not have many workers.*",
    ".*module\\(s\\) in eval mode at the start of training.*",
    ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
    ".*`max_epochs` was not set.*",
    ".*You defined a `validation_step` but have no `val_dataloader`.*",
)
#: Info lines that advertise rather than inform.
ADVERTS = ("💡 Tip:",)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(ADVERTS)


def quiet_known_noise() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for pattern in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())
    # Per-file bars of loading and saving weights (tiny files here; the run log says what was loaded).
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()


def expand_home_in_overrides(argv: list[str]) -> list[str]:
    """``key=~/photos`` → ``key=/home/me/photos``: shells expand ``~`` only at a word's start, and
    Hydra's override grammar rejects an unquoted ``~``, so a typed home path would fail to parse."""
    expanded = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not arg.startswith("-") and value.startswith("~"):
            arg = f"{key}={os.path.expanduser(value)}"
        expanded.append(arg)
    return expanded


def format_bytes(size: float) -> str:
    """A byte count for people, in binary units with IEC names: ``512 B``, ``61.4 KiB``, ``7.0 MiB``, ``2.3 GiB``.

    Every size dbexp shows goes through here, so the cache listing and the export line agree on what a
    "MiB" is (2**20 bytes; never the decimal MB); the benchmark table's ``peak MiB`` column uses the same unit."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def announce(message: str) -> None:
    """Print where outputs went (stdout, rank zero only: DDP workers would repeat it)."""
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        print(message, flush=True)
