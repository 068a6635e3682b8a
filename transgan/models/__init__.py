"""Backbones: one file per family, and the table of registered names.

``transgan.registry`` reads these two tables (``model/generator=<name>``,
``model/discriminator=<name>``); a backbone file imports nothing of the registry. Adding a backbone
is one file here, its names below, and one yaml per half in configs/model/.
"""

from transgan.models.conv import ConvCritic, ConvGenerator
from transgan.models.r3gan import R3GANDiscriminator, R3GANGenerator
from transgan.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from transgan.models.styletoken import StyleTokenGenerator
from transgan.models.swin import StyleSwinDiscriminator, SwinGenerator, WaveletDiscriminator
from transgan.models.transgan import TransGANDiscriminator, TransGANGenerator

GENERATORS = {
    "cwgan_gp": ConvGenerator,
    "transgan": TransGANGenerator,
    "swin_gan": SwinGenerator,
    "stylegan2": StyleGAN2Generator,
    "styletoken": StyleTokenGenerator,
    "r3gan": R3GANGenerator,
}
DISCRIMINATORS = {
    "cwgan_gp": ConvCritic,
    "transgan": TransGANDiscriminator,
    "stylegan2": StyleGAN2Discriminator,
    "stylegan2_wavelet": WaveletDiscriminator,
    "styleswin": StyleSwinDiscriminator,
    "r3gan": R3GANDiscriminator,
}
