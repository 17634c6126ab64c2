"""nanoforge: train a small ChatGPT-style model from scratch, on a laptop CPU or a SLURM GPU cluster."""

__version__ = "0.1.0"
