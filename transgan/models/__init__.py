"""Backbones. Importing this package registers every generator and discriminator."""

from transgan.models import conv  # noqa: F401
