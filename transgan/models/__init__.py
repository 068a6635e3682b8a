"""Backbones. Importing this package registers every generator and discriminator."""

from transgan.models import conv  # noqa: F401
from transgan.models import stylegan2  # noqa: F401
from transgan.models import swin  # noqa: F401
from transgan.models import transgan  # noqa: F401
from transgan.models import styletoken  # noqa: F401
