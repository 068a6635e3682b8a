"""TransGAN (Jiang, Chang & Wang, NeurIPS 2021): a GAN whose generator and discriminator are
both pure transformers. REFERENCE.md section 2; the public code's CIFAR-10 configuration
(``ViT_custom_rp`` generator, ``ViT_custom_scale2_rp_noise`` discriminator) is the
``transgan_32`` preset.

Generator, top to bottom as in the paper (section 3.1)::

    [z, class embedding] --Linear--> bottom x bottom tokens of embed_dim, + positions
    stage 1: depth_1 x Block
    stage i > 1: x2 upsampling -- PixelShuffle (C -> C/4) or bicubic (C kept) --, + positions,
                 depth_i x Block
    1x1 conv to the image channels, tanh (``output=linear``: none, as in the public code)

    Block (pre-norm):  x = x + Attention(Norm(x));  x = x + MLP(Norm(x))     MLP ratio 4, GELU

A stage of at most ``global_attention_tokens`` tokens attends globally; a larger one uses grid
self-attention (section 3.3): tokens attend only inside their ``grid_size`` x ``grid_size``
cell. Every attention adds a learned relative position bias over the cell it attends in (the
paper's "relative position encoding"; the whole map for global stages).

Discriminator, the paper's multi-scale ViT (section 3.2)::

    patches of size P, 2P, 4P, ... embedded (linear flatten) to widths e_0, e_1, e_2, ...
    stage 0: the (R/P)^2 tokens of width e_0, + positions, depth_0 x Block
    stage s: AvgPool 2x2 of stage s-1, concatenated with the (R/(2^s P))^2 tokens of scale s
             (width e_0 + ... + e_s), + positions, depth_s x Block
    [cls] token prepended, last_depth x Block (global), LayerNorm, Linear head on [cls]
    + projection conditioning <embed(c), h_cls> (Miyato & Koyama 2018) for class labels

DiffAugment, applied by TransGAN's discriminator to everything it sees, is applied by this
framework's loss to every image D sees (``train.diffaugment``), so it is not part of D here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from torch import Tensor

from transgan.errors import ConfigError
from transgan.nn.attention import Attention
from transgan.nn.layers import check_class_labels, checkpointed, improved_spectral_norm, init_linear_like_vit
from transgan.nn.windows import GridAttention

__all__ = [
    "Stage", "generator_stages", "discriminator_stages", "attention_window", "TransformerBlock",
    "PositionEmbedding", "run_blocks", "TransGANGenerator", "TransGANDiscriminator",
]

IntOrList = Union[int, Sequence[int]]
UPSAMPLE_MODES = ("pixel_shuffle", "bicubic")
POS_EMBEDS = ("learned", "sinusoidal")
NORMS = ("layer", "pixel")
OUTPUTS = ("tanh", "linear")
SPECTRAL_NORMS = ("none", "plain", "isn")  # the discriminator's: off, Miyato et al., ViTGAN's improved


# ----------------------------------------------------------------------------- token arithmetic

@dataclass(frozen=True)
class Stage:
    """One stage of transformer blocks on a ``resolution`` x ``resolution`` map of ``dim``-wide tokens."""

    resolution: int
    dim: int
    depth: int
    num_heads: int
    window: int  # side of the cells attention works in; == resolution for global attention

    @property
    def tokens(self) -> int:
        """Tokens in the map."""
        return self.resolution * self.resolution

    @property
    def attention(self) -> str:
        """``global`` or ``grid``."""
        return "global" if self.window == self.resolution else "grid"


def attention_window(resolution: int, global_attention_tokens: int, grid_size: int, where: str) -> int:
    """The cell side a stage attends in: the whole map up to ``global_attention_tokens`` tokens, else the grid."""
    if resolution * resolution <= global_attention_tokens:
        return resolution
    if resolution % grid_size:
        raise ConfigError(f"{where}: a {resolution}x{resolution} map has {resolution ** 2} tokens "
                          f"(> global_attention_tokens={global_attention_tokens}), so it uses grid attention, "
                          f"but {resolution} is not divisible by grid_size={grid_size}")
    return grid_size


def _per_stage(value: IntOrList, n: int, name: str, where: str) -> list[int]:
    values = [int(value)] * n if isinstance(value, int) else [int(v) for v in value]
    if len(values) != n:
        raise ConfigError(f"{where}: {name} has {len(values)} entries, but there are {n} stages")
    return values


def _check_common(num_heads: list[int], global_attention_tokens: int, grid_size: int, mlp_ratio: float,
                  where: str) -> None:
    if min(num_heads) < 1:
        raise ConfigError(f"{where}: num_heads must be >= 1, got {num_heads}")
    if global_attention_tokens < 1 or grid_size < 1:
        raise ConfigError(f"{where}: global_attention_tokens and grid_size must be >= 1, "
                          f"got {global_attention_tokens} and {grid_size}")
    if mlp_ratio <= 0:
        raise ConfigError(f"{where}: mlp_ratio must be > 0, got {mlp_ratio}")


def _check_heads(stages: list[Stage], where: str, always: Sequence[int] = ()) -> None:
    for i, s in enumerate(stages):
        if (s.depth > 0 or i in always) and s.dim % s.num_heads:
            raise ConfigError(f"{where}: stage {i + 1} ({s.resolution}x{s.resolution}) is {s.dim} wide, "
                              f"not divisible by num_heads={s.num_heads}")


def generator_stages(img_resolution: int, embed_dim: int, bottom_resolution: int, depths: Sequence[int],
                     num_heads: IntOrList, upsample: Union[str, Sequence[str]], global_attention_tokens: int,
                     grid_size: int, mlp_ratio: float = 4.0) -> list[Stage]:
    """The generator's stages: resolution doubles per stage; PixelShuffle divides the width by 4."""
    where = "transgan generator"
    depths = [int(d) for d in depths]
    n = len(depths)
    if n < 1 or min(depths) < 0:
        raise ConfigError(f"{where}: depths must list one block count >= 0 per stage, got {depths}")
    if bottom_resolution < 1 or bottom_resolution * 2 ** (n - 1) != img_resolution:
        raise ConfigError(f"{where}: bottom_resolution={bottom_resolution} doubled over {n} stages "
                          f"(depths={depths}) gives {bottom_resolution * 2 ** (n - 1)}x"
                          f"{bottom_resolution * 2 ** (n - 1)} images, but the model resolution is "
                          f"{img_resolution}; change bottom_resolution or the number of stages")
    modes = [upsample] * (n - 1) if isinstance(upsample, str) else list(upsample)
    if len(modes) != n - 1 or any(m not in UPSAMPLE_MODES for m in modes):
        raise ConfigError(f"{where}: upsample must be one of {UPSAMPLE_MODES} or a list of one per "
                          f"upsampling ({n - 1}), got {upsample!r}")
    heads = _per_stage(num_heads, n, "num_heads", where)
    _check_common(heads, global_attention_tokens, grid_size, mlp_ratio, where)
    stages, dim, r = [], int(embed_dim), int(bottom_resolution)
    for i in range(n):
        if i > 0:
            r *= 2
            if modes[i - 1] == "pixel_shuffle":
                if dim % 4:
                    raise ConfigError(f"{where}: PixelShuffle into stage {i + 1} divides the width by 4, "
                                      f"but {dim} is not divisible by 4")
                dim //= 4
        if dim < 1:
            raise ConfigError(f"{where}: stage {i + 1} would have no channels (embed_dim={embed_dim} too small)")
        stages.append(Stage(r, dim, depths[i], heads[i],
                            attention_window(r, global_attention_tokens, grid_size, f"{where} stage {i + 1}")))
    _check_heads(stages, where)
    return stages


def discriminator_stages(img_resolution: int, patch_size: int, embed_dims: Sequence[int], depths: Sequence[int],
                         num_heads: IntOrList, global_attention_tokens: int, grid_size: int,
                         mlp_ratio: float = 4.0) -> list[Stage]:
    """The discriminator's stages: scale s sees patches of size P 2^s; widths add up across scales."""
    where = "transgan discriminator"
    embed_dims, depths = [int(e) for e in embed_dims], [int(d) for d in depths]
    n = len(embed_dims)
    if n < 1 or min(embed_dims) < 1:
        raise ConfigError(f"{where}: embed_dims must list one width >= 1 per scale, got {embed_dims}")
    if len(depths) != n or min(depths) < 0:
        raise ConfigError(f"{where}: depths must list one block count >= 0 per scale ({n}), got {depths}")
    coarsest = patch_size * 2 ** (n - 1)
    if patch_size < 1 or img_resolution % coarsest:
        raise ConfigError(f"{where}: {n} scales of patches {[patch_size * 2 ** s for s in range(n)]} need a "
                          f"resolution divisible by {coarsest}, got {img_resolution}")
    heads = _per_stage(num_heads, n, "num_heads", where)
    _check_common(heads, global_attention_tokens, grid_size, mlp_ratio, where)
    stages = []
    for s in range(n):
        r = img_resolution // (patch_size * 2 ** s)
        stages.append(Stage(r, sum(embed_dims[:s + 1]), depths[s], heads[s],
                            attention_window(r, global_attention_tokens, grid_size, f"{where} stage {s + 1}")))
    _check_heads(stages, where, always=[n - 1])  # the [cls] blocks run at the last stage's width
    return stages


def _check_choice(value: str, choices: Sequence[str], name: str, where: str) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: {name} must be one of {list(choices)}, got {value!r}")
    return value


# ----------------------------------------------------------------------------- blocks

def _norm(kind: str, dim: int) -> nn.Module:
    # "pixel": PixelNorm over channels (Karras et al. 2018), TransGAN's g_norm=pn option.
    return nn.LayerNorm(dim) if kind == "layer" else nn.RMSNorm(dim, eps=1e-8, elementwise_affine=False)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + Attention(Norm(x)), then x + MLP(Norm(x)).

    With ``resolution`` set, tokens [B, r*r, C] form an r x r map and attend inside
    ``window`` x ``window`` cells (``window == resolution``: globally) with a relative position
    bias. With ``resolution=None`` they are a plain sequence (the [cls] stage) attending globally.
    """

    def __init__(self, dim: int, num_heads: int, resolution: Optional[int] = None, window: Optional[int] = None,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, rel_pos: bool = True, norm: str = "layer",
                 drop_path: float = 0.0, kernel: str = "auto", attention_noise: bool = False,
                 similarity: str = "dot") -> None:
        super().__init__()
        self.resolution = resolution
        self.norm1 = _norm(norm, dim)
        # TransGAN's public CIFAR-10 discriminator adds per-token Gaussian noise with a learned
        # strength (zero at init) to each attention's input.
        self.noise_strength = nn.Parameter(torch.zeros([])) if attention_noise else None
        if resolution is None:
            self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, kernel=kernel, similarity=similarity)
        else:
            self.attn = GridAttention(dim, num_heads, grid=window or resolution, qkv_bias=qkv_bias,
                                      rel_pos=rel_pos, kernel=kernel, similarity=similarity)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = _norm(norm, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens [B, N, C] -> [B, N, C]."""
        h = self.norm1(x)
        if self.noise_strength is not None:
            h = h + torch.randn(h.shape[0], h.shape[1], 1, device=h.device, dtype=h.dtype) * self.noise_strength
        if self.resolution is None:
            h = self.attn(h)
        else:
            h = rearrange(self.attn(rearrange(h, "b (y x) c -> b y x c", y=self.resolution)), "b y x c -> b (y x) c")
        x = x + self.drop_path(h)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PositionEmbedding(nn.Module):
    """Absolute positions of an r x r token map: learned (trunc-normal, std 0.02) or 2-D sin-cos."""

    def __init__(self, resolution: int, dim: int, kind: str = "learned") -> None:
        super().__init__()
        self.kind = kind
        if kind == "learned":
            self.embedding = nn.Parameter(torch.zeros(resolution * resolution, dim))
            trunc_normal_(self.embedding, std=0.02)
        else:
            if dim % 4:
                raise ConfigError(f"sinusoidal positions need a width divisible by 4, got {dim}")
            self.register_buffer("embedding", build_sincos2d_pos_embed([resolution, resolution], dim),
                                 persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens [B, r*r, dim] plus their positions."""
        return x + self.embedding.to(x.dtype)


def run_blocks(blocks: nn.ModuleList, x: Tensor, gradient_checkpointing: bool = False) -> Tensor:
    """Run a stage's blocks in order, each checkpointed when ``gradient_checkpointing`` is on."""
    for block in blocks:
        x = checkpointed(block, x, enabled=gradient_checkpointing)
    return x


def _drop_path_rates(depths: Sequence[int], rate: float) -> list[list[float]]:
    """Stochastic depth rule: the rate grows linearly from 0 to ``rate`` over all blocks."""
    total = sum(depths)
    rates = [rate * i / max(total - 1, 1) for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start:start + d])
        start += d
    return out


# ----------------------------------------------------------------------------- generator

class TransGANGenerator(nn.Module):
    """TransGAN generator (module docstring). ``G(z, c) -> images [B, C, R, R]`` in [-1, 1].

    ``upsample`` is one mode for every stage transition or a list with one per transition;
    ``pixel_shuffle`` divides the width by 4, ``bicubic`` keeps it (TransGAN's high-resolution
    generators upsample bicubically while the maps are small). ``class_embed_dim`` (default
    ``z_dim``) is the width of the class embedding concatenated to z for conditional data.
    ``output``: ``tanh`` (images in [-1, 1]) or ``linear`` (the public code: no squashing).
    """

    def __init__(self, img_resolution: int, img_channels: int, num_classes: int, z_dim: int = 256,
                 class_embed_dim: Optional[int] = None, embed_dim: int = 1024, bottom_resolution: int = 8,
                 depths: Sequence[int] = (5, 4, 2), num_heads: IntOrList = 4, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, upsample: Union[str, Sequence[str]] = "pixel_shuffle",
                 pos_embed: str = "learned", rel_pos: bool = True, norm: str = "layer",
                 global_attention_tokens: int = 1024, grid_size: int = 16, drop_path: float = 0.0,
                 attention_kernel: Optional[str] = None, gradient_checkpointing: bool = False,
                 output: str = "tanh") -> None:
        super().__init__()
        where = "transgan generator"
        if z_dim < 1 or img_channels < 1 or num_classes < 0:
            raise ConfigError(f"{where}: need z_dim >= 1, img_channels >= 1, num_classes >= 0; got "
                              f"{z_dim}, {img_channels}, {num_classes}")
        _check_choice(pos_embed, POS_EMBEDS, "pos_embed", where)
        _check_choice(norm, NORMS, "norm", where)
        self.output = _check_choice(output, OUTPUTS, "output", where)
        # null (the config's default) is the run's model.attention, filled in by the registry's builder.
        self.attention_kernel = kernel = attention_kernel or "auto"  # checked by the attention layers
        self.stages_plan = generator_stages(img_resolution, embed_dim, bottom_resolution, depths, num_heads, upsample,
                                            global_attention_tokens, grid_size, mlp_ratio)
        self.z_dim, self.num_classes = int(z_dim), int(num_classes)
        self.img_resolution, self.img_channels = int(img_resolution), int(img_channels)
        self.upsample_modes = [upsample] * (len(self.stages_plan) - 1) if isinstance(upsample, str) else list(upsample)
        self.gradient_checkpointing = bool(gradient_checkpointing)

        first = self.stages_plan[0]
        if num_classes:
            self.class_embed_dim = int(class_embed_dim or z_dim)
            self.class_embed = nn.Embedding(num_classes, self.class_embed_dim)
        else:
            self.class_embed_dim, self.class_embed = 0, None
        self.to_tokens = nn.Linear(self.z_dim + self.class_embed_dim, first.tokens * first.dim)
        # Positions matter only to attention: a stage without blocks (an upsampling step) has none.
        self.pos_embeds = nn.ModuleList([PositionEmbedding(s.resolution, s.dim, pos_embed) if s.depth else nn.Identity()
                                         for s in self.stages_plan])
        rates = _drop_path_rates([s.depth for s in self.stages_plan], drop_path)
        self.stages = nn.ModuleList([
            nn.ModuleList([TransformerBlock(s.dim, s.num_heads, s.resolution, s.window, mlp_ratio=mlp_ratio,
                                            qkv_bias=qkv_bias, rel_pos=rel_pos, norm=norm, drop_path=rate,
                                            kernel=kernel) for rate in stage_rates])
            for s, stage_rates in zip(self.stages_plan, rates)])
        self.to_image = nn.Conv2d(self.stages_plan[-1].dim, img_channels, kernel_size=1)
        nn.init.xavier_uniform_(self.to_image.weight)  # TransGAN's init_type=xavier_uniform for convs

    def _upsample(self, x: Tensor, resolution: int, mode: str) -> Tensor:
        """Tokens of an r x r map -> tokens of the 2r x 2r map (PixelShuffle: width / 4)."""
        x = rearrange(x, "b (y x) c -> b c y x", y=resolution)
        x = F.pixel_shuffle(x, 2) if mode == "pixel_shuffle" else F.interpolate(x, scale_factor=2, mode="bicubic",
                                                                                 align_corners=False)
        return rearrange(x, "b c y x -> b (y x) c")

    def forward(self, z: Tensor, c: Optional[Tensor] = None) -> Tensor:
        """z [B, z_dim] (and class labels c [B], int64) -> images [B, img_channels, R, R] in [-1, 1]."""
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"TransGANGenerator wants z of shape [B, {self.z_dim}], got {tuple(z.shape)}")
        c = check_class_labels(c, self.num_classes, z.shape[0], "generator")
        if c is not None:
            z = torch.cat([z, self.class_embed(c).to(z.dtype)], dim=1)
        first = self.stages_plan[0]
        x = self.to_tokens(z).reshape(z.shape[0], first.tokens, first.dim)
        for i, (blocks, pos) in enumerate(zip(self.stages, self.pos_embeds)):
            if i > 0:
                x = self._upsample(x, self.stages_plan[i - 1].resolution, self.upsample_modes[i - 1])
            x = run_blocks(blocks, pos(x), self.gradient_checkpointing)
        R = self.img_resolution
        images = self.to_image(rearrange(x, "b (y x) c -> b c y x", y=R))
        # The public code's output is linear (its images are unbounded); tanh keeps the [-1, 1] contract.
        return torch.tanh(images) if self.output == "tanh" else images


# ----------------------------------------------------------------------------- discriminator

class TransGANDiscriminator(nn.Module):
    """TransGAN's multi-scale ViT discriminator (module docstring). ``D(x, c) -> logits [B]``.

    ``embed_dims[s]`` is the width of the scale-s patch embedding (patch size
    ``patch_size * 2**s``); stage s works at ``sum(embed_dims[:s+1])``. ``depths[s]`` blocks per
    stage, then ``last_depth`` blocks over the tokens and the [cls] token.
    ``attention_noise`` adds the public CIFAR-10 discriminator's per-token noise (a learned
    strength per attention, zero at init) to every attention's input.

    ViTGAN's stabilizers of a transformer critic (Lee et al., ICLR 2022), each an option:
    ``attention_similarity="l2_tied"`` (L2-distance attention with tied queries and keys, a
    Lipschitz self-attention), ``spectral_norm="isn"`` (improved spectral normalization of every
    linear and conv layer: spectrally normalized, scaled by the layer's spectral norm at
    initialization; ``"plain"``: scaled to 1) and ``patch_overlap`` (each patch embedding also sees
    that many pixels of its neighbours on every side).
    """

    def __init__(self, img_resolution: int, img_channels: int, num_classes: int, patch_size: int = 2,
                 embed_dims: Sequence[int] = (288, 96), depths: Sequence[int] = (3, 3), last_depth: int = 1,
                 num_heads: IntOrList = 4, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 pos_embed: str = "learned", rel_pos: bool = True, norm: str = "layer",
                 global_attention_tokens: int = 1024, grid_size: int = 16, drop_path: float = 0.0,
                 attention_kernel: Optional[str] = None, gradient_checkpointing: bool = False,
                 attention_noise: bool = False, attention_similarity: str = "dot", spectral_norm: str = "none",
                 patch_overlap: int = 0) -> None:
        super().__init__()
        where = "transgan discriminator"
        _check_choice(spectral_norm, SPECTRAL_NORMS, "spectral_norm", where)
        if patch_overlap < 0:
            raise ConfigError(f"{where}: patch_overlap must be >= 0, got {patch_overlap}")
        if img_channels < 1 or num_classes < 0 or last_depth < 1:
            raise ConfigError(f"{where}: need img_channels >= 1, num_classes >= 0, last_depth >= 1; got "
                              f"{img_channels}, {num_classes}, {last_depth}")
        _check_choice(pos_embed, POS_EMBEDS, "pos_embed", where)
        _check_choice(norm, NORMS, "norm", where)
        # null (the config's default) is the run's model.attention, filled in by the registry's builder.
        self.attention_kernel = kernel = attention_kernel or "auto"  # checked by the attention layers
        self.stages_plan = discriminator_stages(img_resolution, patch_size, embed_dims, depths, num_heads,
                                                global_attention_tokens, grid_size, mlp_ratio)
        self.num_classes = int(num_classes)
        self.img_resolution, self.img_channels = int(img_resolution), int(img_channels)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        dim = self.stages_plan[-1].dim
        # Linear flatten of non-overlapping patches = a conv with kernel = stride = patch size.
        # With patch_overlap o the kernel grows by o on each side at the same stride (ViTGAN's overlapping patches).
        self.patch_embeds = nn.ModuleList([
            nn.Conv2d(img_channels, e, kernel_size=patch_size * 2 ** s + 2 * patch_overlap,
                      stride=patch_size * 2 ** s, padding=patch_overlap)
            for s, e in enumerate(embed_dims)])
        self.pos_embeds = nn.ModuleList([PositionEmbedding(s.resolution, s.dim, pos_embed) for s in self.stages_plan])
        rates = _drop_path_rates([s.depth for s in self.stages_plan] + [last_depth], drop_path)
        self.stages = nn.ModuleList([
            nn.ModuleList([TransformerBlock(s.dim, s.num_heads, s.resolution, s.window, mlp_ratio=mlp_ratio,
                                            qkv_bias=qkv_bias, rel_pos=rel_pos, norm=norm, drop_path=rate,
                                            kernel=kernel, attention_noise=attention_noise,
                                            similarity=attention_similarity) for rate in stage_rates])
            for s, stage_rates in zip(self.stages_plan, rates)])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.last_blocks = nn.ModuleList([
            TransformerBlock(dim, self.stages_plan[-1].num_heads, None, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                             norm=norm, drop_path=rate, kernel=kernel, attention_noise=attention_noise,
                             similarity=attention_similarity)
            for rate in rates[-1]])
        self.norm = _norm(norm, dim)
        self.head = nn.Linear(dim, 1)
        self.class_embed = nn.Embedding(num_classes, dim) if num_classes else None
        # TransGAN's discriminator init: ViT's trunc-normal(0.02) Linear weights, zero biases;
        # xavier-uniform patch embeddings (init_type=xavier_uniform).
        self.apply(_init_vit)
        trunc_normal_(self.cls_token, std=0.02)
        if self.class_embed is not None:
            # Glorot-uniform like ClassProjection (conv, StyleGAN2 critics), not ViT's 0.02: with 0.02 the class
            # term starts at ~0.1 of a logit and a WGAN-GP critic learned almost no class margin in 200 steps
            # (docs/ablation.md, "ViT critic conditioning: measured").
            nn.init.xavier_uniform_(self.class_embed.weight)
        if spectral_norm == "isn":
            improved_spectral_norm(self)  # after init: each layer keeps its initial spectral norm
        elif spectral_norm == "plain":
            for layer in [m for m in self.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]:
                nn.utils.parametrizations.spectral_norm(layer, name="weight")

    def features(self, x: Tensor) -> Tensor:
        """Images [B, C, R, R] -> the normalized [cls] feature [B, dim]."""
        R, C = self.img_resolution, self.img_channels
        if x.dim() != 4 or x.shape[1:] != (C, R, R):
            raise ValueError(f"TransGANDiscriminator wants images of shape [B, {C}, {R}, {R}], got {tuple(x.shape)}")
        h = None
        for plan, embed, pos, blocks in zip(self.stages_plan, self.patch_embeds, self.pos_embeds, self.stages):
            tokens = rearrange(embed(x), "b c y x -> b (y x) c")
            if h is not None:
                # Average-pool the finer stage to this scale's grid and concatenate its patches.
                pooled = F.avg_pool2d(rearrange(h, "b (y x) c -> b c y x", y=2 * plan.resolution), 2)
                tokens = torch.cat([rearrange(pooled, "b c y x -> b (y x) c"), tokens], dim=-1)
            h = run_blocks(blocks, pos(tokens), self.gradient_checkpointing)
        h = torch.cat([self.cls_token.to(h.dtype).expand(h.shape[0], -1, -1), h], dim=1)
        return self.norm(run_blocks(self.last_blocks, h, self.gradient_checkpointing)[:, 0])

    def forward(self, x: Tensor, c: Optional[Tensor] = None) -> Tensor:
        """Images [B, C, R, R] (and class labels c [B], int64) -> logits [B]."""
        c = check_class_labels(c, self.num_classes, x.shape[0], "discriminator")
        h = self.features(x)
        logits = self.head(h).squeeze(1)
        if c is not None:
            # Projection discriminator: the class adds <embed(c), h> to the logit.
            logits = logits + (self.class_embed(c).to(h.dtype) * h).sum(dim=1)
        return logits


def _init_vit(m: nn.Module) -> None:
    init_linear_like_vit(m)
    if isinstance(m, nn.Conv2d):
        nn.init.xavier_uniform_(m.weight)
