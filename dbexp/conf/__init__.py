"""Config groups of every dbexp command, shipped as package data (Hydra reads them from here)."""
