"""Sweep presets: root configs for ``python -m dbexp.train --multirun --config-name <preset>``."""
