"""transgan: a PyTorch research framework for Transformer-based GANs."""

__version__ = "0.1.0"
