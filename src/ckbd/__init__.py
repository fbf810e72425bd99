"""ckbd: learned image codecs with a checkerboard context model, from PyTorch checkpoint to production decoder."""

__version__ = "0.1.0"
