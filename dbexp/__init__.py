"""dbexp: a Hydra-driven experiment framework for DreamBooth fine-tuning of Stable Diffusion."""

import logging as _logging
from pathlib import Path

__version__ = "0.2.0"  # 0.2: the finetune group and renamed keys (docs/caches.md: upgrading)

# diffusers' pipelines import CLIP's image processor, whose default backend would need
# torchvision; dbexp never uses it (no safety checker), so transformers' fallback notice is noise.
# Set before transformers is first imported, in every process (DDP workers start afresh).
_logging.getLogger("transformers.utils.import_utils").setLevel(_logging.ERROR)
# peft imports bitsandbytes when it is installed; on CPUs with AVX512-BF16 it then warns that its 4-bit
# inference kernels are missing. dbexp uses bitsandbytes for 8-bit AdamW only.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)


#: The config groups (``conf/``: every command's search path) and the sweep presets (``sweeps/``: added to the
#: search path by ``hydra_plugins/dbexp_sweeps``) ship inside the package, so an installed dbexp composes them.
CONF_DIR = Path(__file__).parent / "conf"
SWEEPS_DIR = Path(__file__).parent / "sweeps"


def asset(path: str) -> Path:
    """A file or folder shipped in the package (``dbexp/assets/<path>``); ``${dbexp.asset:<path>}`` in configs."""
    return Path(__file__).parent / "assets" / path


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("dbexp.asset"):
        OmegaConf.register_new_resolver("dbexp.asset", lambda path: str(asset(path)))


_register_resolvers()
