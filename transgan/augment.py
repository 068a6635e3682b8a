"""Differentiable augmentation: DiffAugment (Zhao et al., "Differentiable Augmentation for
Data-Efficient GAN Training", NeurIPS 2020) and the ADA pipeline (Karras et al., "Training
Generative Adversarial Networks with Limited Data", NeurIPS 2020; see ``ADAPipeline``).

Every image the discriminator sees, real or generated, goes through the same random
transformation T, and T is differentiable so the generator is trained through it:
``D(T(x))`` for reals, ``D(T(G(z)))`` for fakes. The three families of the paper:

- ``color``: brightness (add U(-0.5, 0.5)), saturation (scale the deviation from the
  channel mean by U(0, 2)), contrast (scale the deviation from the image mean by U(0.5, 1.5));
- ``translation``: shift by up to 1/8 of the image size in each axis, zero padding;
- ``cutout``: zero a random square of half the image size.

TransGAN's public code (models_search/diff_aug.py) differs, and ``translation_transgan`` /
``cutout_transgan`` reproduce it: translation by up to 1/5 of the image, and cutout applied to
the whole batch with probability 0.3 (one draw per batch), each square centred anywhere in
the image and clipped at the border. Its 256x256 run adds ``filter_transgan`` (ADA's filtering of
4 frequency bands), ``erase_transgan`` (cutout with a random rectangle of 0.2-0.7 of the sides)
and ``hue_transgan`` (ADA's hue rotation, half the images).

All randomness comes from torch's global RNG of the input's device, so a run that
checkpoints and restores the RNG state resumes bit-for-bit. Every operation is built from
differentiable tensor ops (arithmetic, ``gather``, masking), so gradients of gradients
flow through it, as the gradient penalty and R1 passes need.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from transgan.errors import ConfigError
from transgan.nn.layers import blur2d, fir_kernel, upsample2d_fir

__all__ = ["DiffAugment", "brightness", "saturation", "contrast", "translation", "cutout", "cutout_clipped",
           "translation_transgan", "erase_transgan", "hue_transgan", "filter_transgan", "POLICY_OPS",
           "ADAPipeline", "AdaptiveAugment", "SYM6", "ada_resample", "color_matrix", "apply_color"]


def _per_sample_uniform(x: Tensor) -> Tensor:
    """U(0, 1) of shape [B, 1, 1, 1], one draw per image."""
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)


def brightness(x: Tensor) -> Tensor:
    """Add one U(-0.5, 0.5) offset per image."""
    return x + (_per_sample_uniform(x) - 0.5)


def saturation(x: Tensor) -> Tensor:
    """Scale each pixel's deviation from its channel mean by one U(0, 2) factor per image."""
    if x.shape[1] == 1:
        # A one-channel pixel equals its channel mean: saturation is the identity, and
        # skipping it keeps grayscale runs from drawing a random number that does nothing.
        return x
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_per_sample_uniform(x) * 2) + mean


def contrast(x: Tensor) -> Tensor:
    """Scale each image's deviation from its mean by one U(0.5, 1.5) factor."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_per_sample_uniform(x) + 0.5) + mean


def translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift each image by integer offsets in [-ratio*size, ratio*size] per axis; zeros fill in."""
    B, C, H, W = x.shape
    sh, sw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (B,), device=x.device)
    tx = torch.randint(-sw, sw + 1, (B,), device=x.device)
    # out[i, j] = x[i - ty, j - tx], read from a zero-padded copy; gather keeps it twice
    # differentiable (its backward is a scatter-add, whose backward is a gather).
    padded = F.pad(x, (sw, sw, sh, sh))
    rows = torch.arange(H, device=x.device)[None, :] - ty[:, None] + sh   # [B, H]
    cols = torch.arange(W, device=x.device)[None, :] - tx[:, None] + sw   # [B, W]
    out = padded.gather(2, rows[:, None, :, None].expand(B, C, H, W + 2 * sw))
    return out.gather(3, cols[:, None, None, :].expand(B, C, H, W))


def cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Zero one random (ratio*H) x (ratio*W) square per image, the same in every channel.

    The square lies wholly inside the image, so every image loses exactly ratio^2 of its
    pixels (Zhao et al.'s code lets the square cross the border and clips it).
    """
    B, _, H, W = x.shape
    sh, sw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    top = torch.randint(0, H - sh + 1, (B, 1, 1), device=x.device)
    left = torch.randint(0, W - sw + 1, (B, 1, 1), device=x.device)
    rows = torch.arange(H, device=x.device)[None, :, None]
    cols = torch.arange(W, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + sh) & (cols >= left) & (cols < left + sw)  # [B, H, W]
    return x * (~inside).unsqueeze(1).to(x.dtype)


def cutout_clipped(x: Tensor, ratio: float = 0.5, p: float = 0.3) -> Tensor:
    """With probability ``p`` for the whole batch, zero per image a (ratio*H) x (ratio*W) square
    centred anywhere in the image, clipped at the border (TransGAN's and Zhao et al.'s code)."""
    if torch.rand((), device=x.device).item() >= p:  # torch's RNG (not Python's): resumes bit-for-bit
        return x
    _, _, H, W = x.shape
    return _zero_centred_boxes(x, int(H * ratio + 0.5), int(W * ratio + 0.5))


def _zero_centred_boxes(x: Tensor, sh: int, sw: int) -> Tensor:
    """Zero an sh x sw box per image, centred anywhere in the image, clipped at the border."""
    B, _, H, W = x.shape
    # Centres range over [0, size + 1 - size % 2), as in the public code.
    top = torch.randint(0, H + (1 - sh % 2), (B, 1, 1), device=x.device) - sh // 2
    left = torch.randint(0, W + (1 - sw % 2), (B, 1, 1), device=x.device) - sw // 2
    rows = torch.arange(H, device=x.device)[None, :, None]
    cols = torch.arange(W, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + sh) & (cols >= left) & (cols < left + sw)  # [B, H, W]
    return x * (~inside).unsqueeze(1).to(x.dtype)


def translation_transgan(x: Tensor) -> Tensor:
    """TransGAN's translation: up to 1/5 of the image size per axis."""
    return translation(x, ratio=0.2)


def erase_transgan(x: Tensor, low: float = 0.2, high: float = 0.7, p: float = 0.3) -> Tensor:
    """TransGAN's 256 ``erase_ratio``: with probability ``p`` for the whole batch, one rectangle size
    (each side uniform in [low, high] of the image side), one rectangle per image centred anywhere
    and clipped at the border, zeroed."""
    if torch.rand((), device=x.device).item() >= p:
        return x
    _, _, H, W = x.shape
    sh = int(torch.randint(int(H * low), int(H * high) + 1, ()).item())
    sw = int(torch.randint(int(W * low), int(W * high) + 1, ()).item())
    return _zero_centred_boxes(x, sh, sw)


def hue_transgan(x: Tensor, p: float = 0.5) -> Tensor:
    """TransGAN's 256 ``hue`` (after ADA): rotate each image's colours about the gray axis by an angle
    uniform in [-pi, pi], with probability ``p`` per image; gray (one-channel) images are unchanged."""
    B = x.shape[0]
    theta = (torch.rand([B], device=x.device) * 2 - 1) * math.pi
    theta = torch.where(torch.rand([B], device=x.device) < p, theta, torch.zeros_like(theta))
    zero, one = torch.zeros_like(theta), torch.ones_like(theta)
    return apply_color(x, color_matrix(zero, one, zero, theta, one).to(x.dtype))


def _wavelet_filter_bank(lowpass: tuple[float, ...], bands: int = 4) -> Tensor:
    """ADA's image-filter bank: ``bands`` zero-phase FIR filters [bands, taps] that split an image into
    octave bands (lowest first) and sum to a unit impulse. Built from an orthogonal wavelet's lowpass
    filter h: the band filters are h's and its quadrature mirror's autocorrelations, each level
    upsampled by 2 and smoothed by the lowpass autocorrelation once more."""
    h = np.asarray(lowpass)
    g = h * (-1.0) ** np.arange(h.size)        # highpass: the quadrature mirror of h
    lo2 = np.convolve(h, h[::-1]) / 2           # autocorrelations, halved
    hi2 = np.convolve(g, g[::-1]) / 2
    bank = np.zeros((bands, 1))
    bank[0, 0] = 1.0                            # the lowest band starts as the identity
    for band in range(1, bands):
        up = np.zeros((bands, 2 * bank.shape[1] - 1))
        up[:, ::2] = bank                       # every band so far one octave down
        bank = np.stack([np.convolve(row, lo2) for row in up])
        mid = (bank.shape[1] - hi2.size) // 2
        bank[band, mid:mid + hi2.size] += hi2   # the new band's detail, centred
    return torch.as_tensor(bank, dtype=torch.float32)


# Daubechies' 4-tap wavelet (sym2 = db2), lowpass in closed form, in pywt's reversed order.
_SYM2 = tuple(v / (4 * math.sqrt(2)) for v in (1 - math.sqrt(3), 3 - math.sqrt(3), 3 + math.sqrt(3), 1 + math.sqrt(3)))
FILTER_BANK = _wavelet_filter_bank(_SYM2)     # [4, 43]
_BAND_POWER = (10 / 13, 1 / 13, 1 / 13, 1 / 13)  # the expected power per band of natural images (1/f)


def filter_transgan(x: Tensor, p: float = 0.25, std: float = 1.0) -> Tensor:
    """TransGAN's 256 ``filter`` (ADA's image-space filtering): each of 4 frequency bands of each image
    is amplified by 2^N(0, std) with probability ``p``, the gains normalized to keep the expected
    power; applied as one separable filter per image, borders reflected."""
    B, C, H, W = x.shape
    bank = FILTER_BANK.to(x.device)
    pad = bank.shape[1] // 2
    if min(H, W) <= pad:
        raise ValueError(f"the filter augmentation needs images larger than {pad} pixels, got {H}x{W}")
    power = torch.tensor(_BAND_POWER, device=x.device)
    gains = torch.ones([B, bank.shape[0]], device=x.device)
    for band in range(bank.shape[0]):
        t_band = torch.exp2(torch.randn([B], device=x.device) * std)
        t_band = torch.where(torch.rand([B], device=x.device) < p, t_band, torch.ones_like(t_band))
        t = torch.ones([B, bank.shape[0]], device=x.device)
        t[:, band] = t_band
        gains = gains * t / (power * t.square()).sum(-1, keepdim=True).sqrt()
    taps = (gains @ bank).to(x.dtype).repeat_interleave(C, 0)   # [B*C, taps]: one filter per image
    y = F.pad(x.reshape(1, B * C, H, W), [pad] * 4, mode="reflect")
    y = F.conv2d(y, taps[:, None, None, :], groups=B * C)       # rows, then columns
    y = F.conv2d(y, taps[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)


POLICY_OPS: dict[str, tuple[Callable[[Tensor], Tensor], ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
    "translation_transgan": (translation_transgan,),
    "cutout_transgan": (cutout_clipped,),
    "erase_transgan": (erase_transgan,),
    "hue_transgan": (hue_transgan,),
    "filter_transgan": (filter_transgan,),
}


class DiffAugment(nn.Module):
    """DiffAugment with a policy such as ``"color,translation,cutout"`` (applied in that order)."""

    def __init__(self, policy: str = "color,translation,cutout") -> None:
        super().__init__()
        if not isinstance(policy, str):
            raise ConfigError(f"DiffAugment policy must be a string like 'color,translation,cutout', got {policy!r}")
        self.policy = [op.strip() for op in policy.split(",") if op.strip()]
        unknown = [op for op in self.policy if op not in POLICY_OPS]
        if unknown:
            raise ConfigError(f"unknown DiffAugment op(s) {unknown} in policy {policy!r}; "
                              f"valid ops: {sorted(POLICY_OPS)}")

    def forward(self, x: Tensor) -> Tensor:
        """Augment a batch [B, C, H, W]; each image draws its own transformation."""
        if x.ndim != 4:
            raise ValueError(f"DiffAugment expects images [B, C, H, W], got shape {tuple(x.shape)}")
        for op in self.policy:
            for f in POLICY_OPS[op]:
                x = f(x)
        return x

    def extra_repr(self) -> str:
        return f"policy={','.join(self.policy)!r}"


# ----------------------------------------------------------------------------- ADA

# The ADA transforms, written with torch rather than kornia: each is a few lines of indexing or
# one matrix, the integer ones are exact index maps (no resampling blur), the parameter draws
# follow the paper's distributions, and every op is plain gather / where / matmul / grid_sample,
# all twice differentiable for the R1 pass. Borders are mirrored (edge pixel repeated), the same
# fill as grid_sample's reflection mode, so integer and fractional shifts fill alike and no
# black border tells D an image was augmented (the non-leaking design).

# Daubechies' least-asymmetric wavelet with 6 vanishing moments (Symlet 6), its decomposition lowpass in
# PyWavelets' order: ADA resamples geometric transforms on a 2x grid filtered with it, so they neither alias
# nor leak into the generated distribution (Karras et al. 2020, appendix B.4).
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633, 0.4910559419267466,
        0.787641141030194, 0.3379294217276218, -0.07263752278646252, -0.021060292512300564, 0.04472490177066578,
        0.0017677118642428036, -0.007800708325034148)


def ada_resample(x: Tensor, G_inv: Tensor, kernel: Tensor) -> Tensor:
    """Resample images [B, C, H, W] through ``G_inv`` [B, 3, 3], as ADA does (stylegan2-ada-pytorch augment.py).

    ``G_inv`` maps output pixels to input pixels (x right, y down, origin at the image centre).
    The image is mirrored outward by as much as the transform brings into view (plus the filter's
    reach), upsampled 2x with ``kernel`` (``fir_kernel(SYM6)``), sampled bilinearly (zeros outside),
    then filtered with it again, downsampled and cropped back to H x W.
    """
    B, C, H, W = x.shape
    dev, reach = x.device, kernel.shape[0] // 4
    cx, cy = (W - 1) / 2, (H - 1) / 2
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], device=dev)
    cp = (G_inv @ corners.t())[:, :2, :].permute(1, 0, 2).flatten(1)        # [xy, B * corners]
    margin = torch.cat([-cp, cp]).amax(1) + torch.tensor([reach * 2 - cx, reach * 2 - cy] * 2, device=dev)
    margin = margin.clamp(min=0).minimum(torch.tensor([W - 1, H - 1] * 2, device=dev, dtype=margin.dtype))
    mx0, my0, mx1, my1 = (int(v) for v in margin.ceil().tolist())        # pad widths: one host sync
    x = F.pad(x, [mx0, mx1, my0, my1], mode="reflect")
    one = torch.ones(B, device=dev)
    G_inv = _translate3(one * (mx0 - mx1) / 2, one * (my0 - my1) / 2) @ G_inv
    taps = kernel.shape[0]
    x = upsample2d_fir(x, kernel.to(x.dtype), padding=((taps + 1) // 2, (taps - 2) // 2))
    G_inv = _scale3(one * 2, one * 2) @ G_inv @ _scale3(one / 2, one / 2)
    G_inv = _translate3(-one / 2, -one / 2) @ G_inv @ _translate3(one / 2, one / 2)
    shape = [B, C, (H + reach * 2) * 2, (W + reach * 2) * 2]
    G_inv = _scale3(one * 2 / x.shape[3], one * 2 / x.shape[2]) @ G_inv @ _scale3(one * shape[3] / 2, one * shape[2] / 2)
    grid = F.affine_grid(G_inv[:, :2, :].to(x.dtype), shape, align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # filter (correlation: blur2d convolves, so the kernel goes in flipped), /2, crop the reach
    return blur2d(x, kernel.flip((0, 1)).to(x.dtype), padding=((taps - 1) // 2 - reach * 2, (taps - 2) // 2 - reach * 2),
                  stride=2)


def _rotation3(theta: Tensor) -> Tensor:
    """3x3 rotations [B, 3, 3] by angles ``theta`` [B] in the image plane."""
    c, s, z, o = theta.cos(), theta.sin(), torch.zeros_like(theta), torch.ones_like(theta)
    return torch.stack([c, -s, z, s, c, z, z, z, o], 1).reshape(-1, 3, 3)


def _scale3(sx: Tensor, sy: Tensor) -> Tensor:
    z, o = torch.zeros_like(sx), torch.ones_like(sx)
    return torch.stack([sx, z, z, z, sy, z, z, z, o], 1).reshape(-1, 3, 3)


def _translate3(tx: Tensor, ty: Tensor) -> Tensor:
    z, o = torch.zeros_like(tx), torch.ones_like(tx)
    return torch.stack([o, z, tx, z, o, ty, z, z, o], 1).reshape(-1, 3, 3)


LUMA = (1 / math.sqrt(3),) * 3  # the gray axis of [-1, 1] RGB; ADA's color transforms pivot on it


def color_matrix(brightness: Tensor, contrast: Tensor, lumaflip: Tensor, hue: Tensor, saturation: Tensor) -> Tensor:
    """4x4 homogeneous RGB matrices [B, 4, 4]: brightness (add b), contrast (scale by c), luma flip
    (mirror the gray component when set), hue (rotate by an angle about the gray axis), saturation
    (scale the part off the gray axis by s); applied in that order, all about the origin of [-1, 1].
    """
    B, dev, dt = brightness.shape[0], brightness.device, brightness.dtype
    eye = torch.eye(4, device=dev, dtype=dt).expand(B, 4, 4)
    v = torch.tensor(LUMA, device=dev, dtype=dt)
    vv = torch.zeros(4, 4, device=dev, dtype=dt)
    vv[:3, :3] = torch.outer(v, v)
    m = eye.clone()
    m[:, :3, 3] = brightness[:, None]
    m = _diag4(contrast[:, None].expand(B, 3)) @ m
    m = (eye - 2 * lumaflip.to(dt)[:, None, None] * vv) @ m
    # Rodrigues' rotation about v: cos I + sin [v]x + (1 - cos) v v^T
    kx = torch.zeros(4, 4, device=dev, dtype=dt)
    r = LUMA[0]
    kx[:3, :3] = torch.tensor([[0, -r, r], [r, 0, -r], [-r, r, 0]], device=dev, dtype=dt)
    c, s = hue.cos()[:, None, None], hue.sin()[:, None, None]
    rot = c * eye + s * kx + (1 - c) * vv
    rot[:, 3, 3] = 1
    m = rot @ m
    sat = vv + saturation[:, None, None] * (eye - vv)
    sat[:, 3, 3] = 1
    return sat @ m


def _diag4(d3: Tensor) -> Tensor:
    return torch.diag_embed(torch.cat([d3, torch.ones_like(d3[:, :1])], 1))


def apply_color(x: Tensor, m: Tensor) -> Tensor:
    """Apply homogeneous RGB matrices [B, 4, 4] per pixel; a one-channel image is treated as gray RGB."""
    B, C, H, W = x.shape
    if C == 3:
        return torch.einsum("bij,bjhw->bihw", m[:, :3, :3], x) + m[:, :3, 3, None, None]
    # gray g is RGB (g, g, g): the result's mean over RGB is g * mean of the row sums + mean offset
    gain = m[:, :3, :3].sum(2).mean(1)
    return x * gain[:, None, None, None] + m[:, :3, 3].mean(1)[:, None, None, None]


class ADAPipeline(nn.Module):
    """ADA's 'bgc' pipeline: geometric (x-flip, 90-degree rotations, integer translation, isotropic
    scale, rotation, anisotropic scale and fractional translation, composed and resampled once as ADA
    does: :func:`ada_resample`) and color (brightness, contrast, luma flip, hue, saturation) transforms,
    each applied to each image independently with probability ``p``; strengths are the paper's
    defaults. ``p = 0`` is the identity (ADA's code still resamples then, changing images by < 1e-5).
    With a ``controller`` (:class:`AdaptiveAugment`) p is the controller's, read at every call.
    """

    def __init__(self, p: float = 0.0, controller: Optional["AdaptiveAugment"] = None) -> None:
        super().__init__()
        self._p, self.controller = float(p), controller
        self.register_buffer("resample_kernel", fir_kernel(SYM6), persistent=False)

    @property
    def p(self) -> float:
        """The probability of each transform: the controller's current p, else the fixed one."""
        return self.controller.p if self.controller is not None else self._p

    def forward(self, x: Tensor, p: Optional[float] = None) -> Tensor:
        """Augment a batch [B, C, H, W] with probability ``p`` (default ``self.p``) per transform per image."""
        if x.ndim != 4:
            raise ValueError(f"ADA expects images [B, C, H, W], got shape {tuple(x.shape)}")
        p = self.p if p is None else float(p)
        if p <= 0:
            return x
        B, _, H, W = x.shape
        dev, dt = x.device, torch.float32

        def on(values: Tensor, identity: float, prob: float = p) -> Tensor:  # keep each draw with probability prob
            keep = (torch.rand(B, device=dev) < prob).view(B, *[1] * (values.ndim - 1))
            return torch.where(keep, values, torch.full_like(values, identity))

        def angle() -> Tensor:
            return torch.rand(B, device=dev) * 2 * math.pi - math.pi

        # The geometric transforms compose into one output -> input pixel map G (origin at the image centre),
        # each factor as ADA's: x-flip, quarter turns, integer translation (up to 1/8 of the size), isotropic
        # scale, rotation, anisotropic scale, rotation, fractional translation. The rotation is drawn twice with
        # 1 - sqrt(1 - p) each, so any rotation has chance p.
        one = torch.ones(B, device=dev)
        flip = on(torch.randint(0, 2, (B,), device=dev).to(dt), 0)
        G = _scale3(1 - 2 * flip, one)
        if H == W:
            G = G @ _rotation3(math.pi / 2 * on(torch.randint(0, 4, (B,), device=dev).to(dt), 0))
        t = on((torch.rand(B, 2, device=dev) * 2 - 1) * 0.125, 0)
        G = G @ _translate3(-(t[:, 0] * W).round(), -(t[:, 1] * H).round())
        p_rot = 1 - math.sqrt(max(0.0, 1 - p))
        iso = on(torch.exp2(torch.randn(B, device=dev) * 0.2), 1)
        G = G @ _scale3(1 / iso, 1 / iso) @ _rotation3(on(angle(), 0, p_rot))
        aniso = on(torch.exp2(torch.randn(B, device=dev) * 0.2), 1)
        G = G @ _scale3(1 / aniso, aniso) @ _rotation3(on(angle(), 0, p_rot))
        frac = on(torch.randn(B, 2, device=dev) * 0.125, 0)
        G = G @ _translate3(-frac[:, 0] * W, -frac[:, 1] * H)
        # Every image goes through the resampling, as in ADA (its 2x filtering round trip changes an
        # untransformed image by < 1e-5).
        x = ada_resample(x, G, self.resample_kernel)
        m = color_matrix(on(torch.randn(B, device=dev) * 0.2, 0),
                         on(torch.exp2(torch.randn(B, device=dev) * 0.5), 1),
                         on(torch.randint(0, 2, (B,), device=dev).to(dt), 0),
                         on(angle(), 0),
                         on(torch.exp2(torch.randn(B, device=dev) * 1.0), 1))
        return apply_color(x, m.to(x.dtype))

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class AdaptiveAugment:
    """ADA's p controller: every ``interval`` observed batches, r_t = E[sign(D(real))] over them is
    compared with ``target`` and p moves by (images observed) / ``speed_images`` towards more
    augmentation when r_t > target (D is overconfident on reals) and less otherwise; p stays in [0, 1].
    ``target=None`` keeps p fixed (ablations). With the default speed p can go 0 -> 1 in 500k images.
    """

    def __init__(self, p: float = 0.0, target: Optional[float] = 0.6, interval: int = 4,
                 speed_images: int = 500_000) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"ADA p must be in [0, 1], got {p}")
        if target is not None and not -1.0 < target < 1.0:
            raise ConfigError(f"ADA target must be in (-1, 1) or null, got {target}")
        if interval < 1 or speed_images < 1:
            raise ConfigError(f"ADA interval and speed_images must be >= 1, got {interval}, {speed_images}")
        self.p, self.target, self.interval, self.speed_images = float(p), target, int(interval), int(speed_images)
        self.r_t: Optional[float] = None  # the last interval's heuristic, for the logs
        self._sign_sum: Any = 0.0  # float, or a float64 tensor on D's device while an interval runs
        self._count, self._batches = 0, 0

    def observe(self, d_real: Tensor) -> None:
        """Accumulate D's outputs on (augmented) reals of one batch; update p at the end of an interval."""
        d = d_real.detach()
        self.observe_signs(d.sign().sum(dtype=torch.float64), d.numel())

    def observe_signs(self, sign_sum: Tensor, count: int) -> None:
        """Accumulate one batch given as the sum of sign(D(real)) over its ``count`` images (a tensor, e.g.
        already summed over processes); update p at the end of an interval."""
        # kept on the device until the interval closes: no host sync per step
        self._sign_sum = self._sign_sum + sign_sum.detach().to(torch.float64)
        self._count += int(count)
        self._batches += 1
        if self._batches >= self.interval:
            self.update()

    def update(self) -> None:
        """Close the interval: compute r_t and (adaptive mode) adjust p."""
        if self._count == 0:
            return
        self.r_t = float(self._sign_sum) / self._count
        if self.target is not None:
            step = math.copysign(self._count / self.speed_images, self.r_t - self.target)
            self.p = min(1.0, max(0.0, self.p + step)) if self.r_t != self.target else self.p
        self._sign_sum, self._count, self._batches = 0.0, 0, 0

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly (plain Python numbers)."""
        return {"p": self.p, "target": self.target, "interval": self.interval, "speed_images": self.speed_images,
                "r_t": self.r_t, "sign_sum": float(self._sign_sum), "count": self._count, "batches": self._batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore p and the partly accumulated interval; the configured target/interval/speed stay."""
        self.p, self.r_t = float(state["p"]), state["r_t"]
        self._sign_sum, self._count, self._batches = float(state["sign_sum"]), int(state["count"]), int(state["batches"])
