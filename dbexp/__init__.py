"""dbexp: a Hydra-driven experiment framework for DreamBooth fine-tuning of Stable Diffusion."""

__version__ = "0.1.0"
