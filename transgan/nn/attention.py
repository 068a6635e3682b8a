"""Multi-head attention with pluggable kernels: kernel selection and dispatch, and the module.

Every kernel computes ``softmax(scale * q k^T + bias) v``:

- ``math``     the explicit reference. Stores the ``[B, H, Nq, Nk]`` scores; twice differentiable.
- ``sdpa``     ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient /
               cuDNN / math, chosen by torch).
- ``xformers`` ``xformers.ops.memory_efficient_attention`` (CUDA, when xformers imports and
               accepts the inputs; otherwise the call falls back to ``sdpa``).
- ``chunked``  attention in blocks of query rows, twice differentiable with memory linear in the
               sequence length (:func:`transgan.nn.ops.chunked_attention`).
- ``auto``     the fastest kernel that supports the call (xformers on CUDA when usable, else sdpa).

A model carries its kernel setting from construction (``Attention(kernel=...)``, filled from the
config's ``model.attention`` by the registry's builders), as timm's layers read their fused-attention
flag once. The fused kernels (flash, memory-efficient, xformers) have no double backward, so the
gradient-penalty / R1 passes run inside :func:`double_backward_safe`: there every call runs
``chunked`` (``math`` where the setting is ``math`` or dropout is needed). Those two are the only
inputs of the choice. Window and grid layouts built on this module are in
:mod:`transgan.nn.windows`.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from transgan.errors import ConfigError
from transgan.nn.ops import accumulation_dtype, additive_bias, check_attention_shapes, chunked_attention

__all__ = [
    "KERNELS", "check_kernel", "scaled_dot_product", "math_attention", "resolve_kernel", "double_backward_safe",
    "xformers_available", "Attention",
]

KERNELS = ("auto", "sdpa", "xformers", "math", "chunked")

logger = logging.getLogger("transgan.attention")

_safe_mode: contextvars.ContextVar[bool] = contextvars.ContextVar("transgan_double_backward_safe", default=False)
_logged: set[str] = set()
_xformers_rejected: set[tuple] = set()


def check_kernel(name: str, what: str = "attention kernel") -> str:
    """``name`` if it is a kernel setting (one of :data:`KERNELS`); a ConfigError naming ``what`` otherwise."""
    if name not in KERNELS:
        raise ConfigError(f"{what} must be one of {list(KERNELS)}, got {name!r}")
    return name


@contextmanager
def double_backward_safe() -> Iterator[None]:
    """Run every attention inside the block with a twice-differentiable kernel (for GP / R1)."""
    token = _safe_mode.set(True)
    try:
        yield
    finally:
        _safe_mode.reset(token)


def _log_once(key: str, message: str, *args: object) -> None:
    # Not while dynamo traces: a logger call is a graph break (the eager calls log it).
    if key not in _logged and not torch.compiler.is_compiling():
        _logged.add(key)
        logger.info(message, *args)


@functools.cache
def xformers_available() -> bool:
    """Whether xformers imports and runs a tiny memory-efficient attention on this CUDA device."""
    if not torch.cuda.is_available():
        return False
    try:
        import xformers.ops as xops  # optional dependency (CUDA only): imported where it may be used

        t = torch.zeros(1, 8, 1, 16, device="cuda", dtype=torch.float16)
        xops.memory_efficient_attention(t, t, t)
        return True
    except Exception as e:  # any failure to import or run means "not usable", decided once
        logger.info("xformers is not usable (%s: %s); auto uses sdpa", type(e).__name__, e)
        return False


def _xformers_key(q: Tensor, bias: Tensor | None, dropout_p: float) -> tuple:
    bias_kind = None if bias is None else (bias.dtype, bias.requires_grad)
    return (q.device.type, q.dtype, q.shape[-1], bias_kind, dropout_p > 0)


def resolve_kernel(kernel: str, q: Tensor, bias: Tensor | None = None, dropout_p: float = 0.0) -> str:
    """The concrete kernel (``sdpa``, ``xformers``, ``math`` or ``chunked``) a call with setting ``kernel`` runs
    (the setting was checked where it was given: a layer's constructor or the config schema)."""
    name = kernel
    if _safe_mode.get() and name != "math":
        # The only kernels with a double backward; chunked has no dropout.
        name = "math" if dropout_p > 0 else "chunked"
    if name == "chunked" and dropout_p > 0:
        _log_once("chunked-dropout", "chunked attention has no dropout; using math for calls with dropout")
        name = "math"
    if name == "auto":
        name = "xformers" if q.is_cuda and xformers_available() else "sdpa"
    if name == "xformers" and not (q.is_cuda and xformers_available()):
        _log_once(f"xformers-missing-{q.device.type}", "xformers is not usable for %s tensors; using sdpa",
                  q.device.type)
        name = "sdpa"
    elif name == "xformers" and _xformers_key(q, bias, dropout_p) in _xformers_rejected:
        name = "sdpa"
    return name


# ---------------------------------------------------------------------------------------------
# Kernels. q [B, H, Nq, D], k [B, H, Nk, D], v [B, H, Nk, Dv]; bias additive, broadcastable to
# [B, H, Nq, Nk] (bool masks are converted by the dispatcher, True = attend). The chunked
# kernel is an op of its own: transgan.nn.ops.chunked_attention.
# ---------------------------------------------------------------------------------------------


def math_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, scale: float | None = None,
                   dropout_p: float = 0.0) -> Tensor:
    """Reference attention written out: softmax(scale * q k^T + bias) v, scores materialized."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    weights = scores.to(accumulation_dtype(scores)).softmax(dim=-1).to(v.dtype)  # half precision: in fp32
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v


def _sdpa_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float, dropout_p: float) -> Tensor:
    if bias is not None and bias.dtype != torch.bool:
        bias = bias.to(q.dtype)  # sdpa wants the mask in the query dtype (autocast leaves it fp32)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


def _xformers_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float, dropout_p: float) -> Tensor:
    import xformers.ops as xops  # optional dependency (CUDA only)

    attn_bias = None
    if bias is not None:
        B, H, Nq, Nk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        # xformers wants a dense bias whose rows are 8-aligned in memory.
        padded = torch.empty(B, H, Nq, -(-Nk // 8) * 8, device=q.device, dtype=q.dtype)
        attn_bias = padded[..., :Nk]
        attn_bias.copy_(bias.expand(B, H, Nq, Nk))
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_bias=attn_bias, p=dropout_p, scale=scale)
    return out.transpose(1, 2)


# --- dispatcher ---------------------------------------------------------------------------------

def scaled_dot_product(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, scale: float | None = None,
                       kernel: str = "auto", dropout_p: float = 0.0) -> Tensor:
    """softmax(scale * q k^T + bias) v for q [B, H, Nq, D], k/v [B, H, Nk, D], with a chosen kernel."""
    check_attention_shapes(q, k, v, bias)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    name = resolve_kernel(kernel, q, bias, dropout_p)
    if name == "xformers":
        try:
            out = _xformers_attention(q, k, v, additive_bias(bias, q.dtype), scale, dropout_p)
            _log_once("xformers", "attention kernel: xformers memory_efficient_attention")
            return out
        except torch.OutOfMemoryError:
            raise
        except (ValueError, NotImplementedError, RuntimeError, TypeError) as e:
            key = _xformers_key(q, bias, dropout_p)
            _xformers_rejected.add(key)
            _log_once(f"xformers-reject-{key}", "xformers rejected %s (%s); using sdpa for such calls", key, e)
            name = "sdpa"
    _log_once(name, "attention kernel: %s", name)
    if name == "sdpa":
        return _sdpa_attention(q, k, v, bias, scale, dropout_p)
    if name == "chunked":
        return chunked_attention(q, k, v, bias, scale)
    if name == "math":
        return math_attention(q, k, v, additive_bias(bias, accumulation_dtype(q)), scale, dropout_p)
    raise ConfigError(f"attention kernel must be one of {list(KERNELS)}, got {kernel!r}")


# ---------------------------------------------------------------------------------------------
# Module
# ---------------------------------------------------------------------------------------------


SIMILARITIES = ("dot", "l2_tied")


class Attention(nn.Module):
    """Multi-head self / cross attention: q from x, k and v from ``context`` (x itself if None).

    ``similarity="l2_tied"`` is ViTGAN's Lipschitz attention (Lee et al. 2022): one projection
    for queries and keys, logits -||q_i - k_j||^2 / sqrt(d) instead of q_i . k_j / sqrt(d). Within
    a row that is 2 q_i . k_j / sqrt(d) - ||k_j||^2 / sqrt(d) (||q_i||^2 is the same for every j
    and cancels in the softmax), so every kernel runs it as dot-product attention with scale
    2 / sqrt(d) and an additive bias -||k_j||^2 / sqrt(d) per key.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, context_dim: int | None = None,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 kernel: str = "auto", similarity: str = "dot") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        if similarity not in SIMILARITIES:
            raise ConfigError(f"attention similarity must be one of {list(SIMILARITIES)}, got {similarity!r}")
        if similarity == "l2_tied" and context_dim not in (None, dim):
            raise ConfigError("l2_tied attention ties queries and keys: self-attention only")
        self.l2_tied = similarity == "l2_tied"
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.context_dim = dim if context_dim is None else context_dim
        self.scale = self.head_dim ** -0.5 if qk_scale is None else qk_scale
        self.kernel = check_kernel(kernel)  # read once, as timm reads its fused-attention flag
        self.attn_drop = float(attn_drop)
        self.fused_qkv = self.context_dim == dim
        if self.l2_tied:
            self.qkv = nn.Linear(dim, 2 * dim, bias=qkv_bias)  # [q = k | v]
        elif self.fused_qkv:
            # One fused projection (timm layout: [q | k | v], heads inside each); cross attention
            # with a same-width context uses its q rows on x and its k, v rows on the context.
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(self.context_dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def project_qkv(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Tokens [B, N, dim] (and context [B, M, context_dim]) -> q [B, H, N, d], k, v [B, H, M, d]."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"Attention({self.dim}) wants x as [B, N, {self.dim}], got {tuple(x.shape)}")
        if context is not None and (context.dim() != 3 or context.shape[-1] != self.context_dim
                                    or context.shape[0] != x.shape[0]):
            raise ValueError(f"Attention wants context as [{x.shape[0]}, M, {self.context_dim}], "
                             f"got {tuple(context.shape)}")
        if self.l2_tied:
            if context is not None:
                raise ValueError("l2_tied attention is self-attention: no context")
            qk, v = rearrange(self.qkv(x), "b n (two h d) -> two b h n d", two=2, h=self.num_heads)
            return qk, qk, v
        if self.fused_qkv:
            if context is None:
                q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
                return q, k, v
            w_q, w_kv = self.qkv.weight.split([self.dim, 2 * self.dim])
            b_q, b_kv = (None, None) if self.qkv.bias is None else self.qkv.bias.split([self.dim, 2 * self.dim])
            q, kv = F.linear(x, w_q, b_q), F.linear(context, w_kv, b_kv)
        else:
            if context is None:
                raise ValueError(f"this Attention was built for cross attention (context_dim={self.context_dim}); "
                                 "pass context")
            q, kv = self.q(x), self.kv(context)
        q = rearrange(q, "b n (h d) -> b h n d", h=self.num_heads)
        k, v = rearrange(kv, "b m (two h d) -> two b h m d", two=2, h=self.num_heads)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
        """The attention core with this module's scale, kernel and dropout."""
        scale = self.scale
        if self.l2_tied:
            # -scale ||q - k||^2 = 2 scale q.k - scale ||k||^2 - scale ||q||^2, the last constant along a row
            key_norms = (k.to(accumulation_dtype(k)).square().sum(-1) * -scale).unsqueeze(-2).to(q.dtype)  # [.., 1, M]
            bias = key_norms if bias is None else additive_bias(bias, q.dtype) + key_norms
            scale = 2 * scale
        return scaled_dot_product(q, k, v, bias=bias, scale=scale, kernel=self.kernel,
                                  dropout_p=self.attn_drop if self.training else 0.0)

    def project_out(self, out: Tensor) -> Tensor:
        """Heads [B, H, N, d] -> tokens [B, N, dim] through the output projection."""
        return self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))

    def forward(self, x: Tensor, context: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """x [B, N, dim] -> [B, N, dim]; ``bias`` broadcastable to [B, heads, N, M]."""
        return self.project_out(self.attend(*self.project_qkv(x, context), bias=bias))
