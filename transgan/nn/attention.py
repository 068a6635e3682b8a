"""Multi-head attention with pluggable kernels, and the token layouts built on it.

Every kernel computes ``softmax(scale * q k^T + bias) v``:

- ``math``     the explicit reference. Stores the ``[B, H, Nq, Nk]`` scores; twice differentiable.
- ``sdpa``     ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient /
               cuDNN / math, chosen by torch).
- ``xformers`` ``xformers.ops.memory_efficient_attention`` (CUDA, when xformers imports and
               accepts the inputs; otherwise the call falls back to ``sdpa``).
- ``chunked``  attention in blocks of query rows with a saved log-sum-exp. Its backward is
               itself a blockwise, recomputing autograd Function with its own blockwise
               backward, so the kernel is twice differentiable (WGAN-GP, R1) while forward,
               backward and double backward keep memory linear in the sequence length.
- ``auto``     the fastest kernel that supports the call (xformers on CUDA when usable, else sdpa).

The fused kernels (flash, memory-efficient, xformers) have no double backward. The trainer
therefore wraps its gradient-penalty / R1 passes in :func:`double_backward_safe`; inside it
every call runs ``chunked`` (``math`` where asked for explicitly or where dropout is needed).

Kernel precedence for one call: ``double_backward_safe()`` > an explicit ``kernel=`` (argument
or ``Attention(kernel=...)``) > :func:`attention_kernel` block > :func:`set_default_kernel`.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.models.swin_transformer import get_relative_position_index
from timm.models.swin_transformer import window_partition as _timm_window_partition
from timm.models.swin_transformer import window_reverse as _timm_window_reverse
from torch import Tensor
from torch.autograd.function import once_differentiable

from transgan.errors import ConfigError

__all__ = [
    "KERNELS", "CHUNK_SCORE_ELEMENTS", "scaled_dot_product", "chunked_attention", "math_attention",
    "resolve_kernel", "attention_kernel", "double_backward_safe", "set_default_kernel",
    "get_default_kernel", "xformers_available", "Attention", "window_partition", "window_reverse",
    "shifted_window_mask", "RelativePositionBias", "WindowAttention", "GridAttention",
    "grid_attention",
]

KERNELS = ("auto", "sdpa", "xformers", "math", "chunked")

# Elements of one [B, H, rows, Nk] score block of the chunked kernel: the block height is
# chosen so a block holds about this many scores (a handful of blocks are alive at once).
CHUNK_SCORE_ELEMENTS: dict[str, int] = {"cpu": 1 << 22, "cuda": 1 << 26}

logger = logging.getLogger("transgan.attention")

_default_kernel = "auto"
_block_kernel: contextvars.ContextVar[str | None] = contextvars.ContextVar("transgan_attention_kernel", default=None)
_safe_mode: contextvars.ContextVar[bool] = contextvars.ContextVar("transgan_double_backward_safe", default=False)
_logged: set[str] = set()
_xformers_rejected: set[tuple] = set()


def _check_kernel(name: str) -> str:
    if name not in KERNELS:
        raise ConfigError(f"unknown attention kernel {name!r}; choose one of {list(KERNELS)}")
    return name


def set_default_kernel(name: str) -> None:
    """Set the process-wide kernel used when a call names none (config ``model.attention``)."""
    global _default_kernel
    _default_kernel = _check_kernel(name)


def get_default_kernel() -> str:
    """The kernel a call without ``kernel=`` asks for here (block setting, else process default)."""
    return _block_kernel.get() or _default_kernel


@contextmanager
def attention_kernel(name: str) -> Iterator[None]:
    """Use kernel ``name`` for calls inside the block that name no kernel themselves."""
    token = _block_kernel.set(_check_kernel(name))
    try:
        yield
    finally:
        _block_kernel.reset(token)


@contextmanager
def double_backward_safe() -> Iterator[None]:
    """Run every attention inside the block with a twice-differentiable kernel (for GP / R1)."""
    token = _safe_mode.set(True)
    try:
        yield
    finally:
        _safe_mode.reset(token)


def _log_once(key: str, message: str, *args: object) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.info(message, *args)


@functools.cache
def xformers_available() -> bool:
    """Whether xformers imports and runs a tiny memory-efficient attention on this CUDA device."""
    if not torch.cuda.is_available():
        return False
    try:
        import xformers.ops as xops

        t = torch.zeros(1, 8, 1, 16, device="cuda", dtype=torch.float16)
        xops.memory_efficient_attention(t, t, t)
        return True
    except Exception as e:  # any failure to import or run means "not usable", decided once
        logger.info("xformers is not usable (%s: %s); auto uses sdpa", type(e).__name__, e)
        return False


def _xformers_key(q: Tensor, bias: Tensor | None, dropout_p: float) -> tuple:
    bias_kind = None if bias is None else (bias.dtype, bias.requires_grad)
    return (q.device.type, q.dtype, q.shape[-1], bias_kind, dropout_p > 0)


def resolve_kernel(kernel: str | None, q: Tensor, bias: Tensor | None = None, dropout_p: float = 0.0) -> str:
    """The concrete kernel (``sdpa``, ``xformers``, ``math`` or ``chunked``) a call would run."""
    name = _check_kernel(kernel) if kernel is not None else get_default_kernel()
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
# [B, H, Nq, Nk] (bool masks are converted by the dispatcher, True = attend).
# ---------------------------------------------------------------------------------------------


def math_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, scale: float | None = None,
                   dropout_p: float = 0.0) -> Tensor:
    """Reference attention written out: softmax(scale * q k^T + bias) v, scores materialized."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    weights = scores.float().softmax(dim=-1).to(v.dtype)  # softmax in fp32 under half precision
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v


def _sdpa_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float, dropout_p: float) -> Tensor:
    if bias is not None and bias.dtype != torch.bool:
        bias = bias.to(q.dtype)  # sdpa wants the mask in the query dtype (autocast leaves it fp32)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


def _xformers_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float, dropout_p: float) -> Tensor:
    import xformers.ops as xops

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


# --- chunked: blockwise forward, blockwise twice-differentiable backward ----------------------
#
# With S = scale q k^T + bias, lse = logsumexp_rows(S), P = exp(S - lse), O = P v:
#   first derivatives   Dp = rowsum(dO * O),  dS = P * (dO v^T - Dp)
#                       dq = scale dS k,  dk = scale dS^T q,  dv = P^T dO,  dbias = dS
# Both passes walk over blocks of query rows against all keys, so no more than one
# [B, H, rows, Nk] block of scores (and a few like it) exists at a time; lse is saved
# instead of P, and P is recomputed per block.


def _block_rows(q: Tensor, k: Tensor, block_q: int | None) -> int:
    if block_q is not None:
        return max(1, min(int(block_q), q.shape[-2]))
    B, H, Nq, Nk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    rows = max(1, CHUNK_SCORE_ELEMENTS.get(q.device.type, 1 << 24) // max(1, B * H * Nk))
    if rows >= 32:
        rows -= rows % 16  # matmul-friendly block heights
    return min(Nq, rows)


def _bias_rows(bias4: Tensor | None, rows: slice) -> Tensor | None:
    """Rows of a 4-D broadcastable bias (a bias broadcast along queries is returned whole)."""
    if bias4 is None:
        return None
    return bias4 if bias4.shape[-2] == 1 else bias4[..., rows, :]


def _add_bias_grad(grad4: Tensor, block: Tensor, rows: slice) -> None:
    """Accumulate a [B, H, r, Nk] block of score gradients into a 4-D bias gradient."""
    if grad4.shape[-2] == 1:
        grad4.add_(block.sum_to_size(grad4.shape))
    else:
        target = grad4[..., rows, :]
        target.add_(block.sum_to_size(target.shape))


def _probabilities(qs_rows: Tensor, k_t: Tensor, bias_rows: Tensor | None, lse_rows: Tensor) -> Tensor:
    """Recompute P = exp(scale q k^T + bias - lse) for a block of (pre-scaled) query rows."""
    s = torch.matmul(qs_rows, k_t)
    if bias_rows is not None:
        s.add_(bias_rows)
    return s.sub_(lse_rows.unsqueeze(-1)).exp_()


def _acc_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)  # half inputs are computed in fp32


class _ChunkedAttention(torch.autograd.Function):
    """(q, k, v, bias) -> O, one block of query rows at a time; saves lse, not P."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias4: Tensor | None, scale: float, rows: int) -> Tensor:
        acc = _acc_dtype(q)
        with torch.autocast(q.device.type, enabled=False):
            qs, k_t, va = q.to(acc) * scale, k.to(acc).transpose(-2, -1), v.to(acc)
            B, H, Nq = q.shape[:3]
            out = torch.empty(B, H, Nq, v.shape[-1], device=q.device, dtype=acc)
            lse = torch.empty(B, H, Nq, device=q.device, dtype=acc)
            for start in range(0, Nq, rows):
                r = slice(start, start + rows)
                s = torch.matmul(qs[..., r, :], k_t)
                b = _bias_rows(bias4, r)
                if b is not None:
                    s.add_(b)
                m = s.amax(dim=-1)
                m.masked_fill_(m == -math.inf, 0.0)  # fully masked rows give 0 output, not NaN
                p = s.sub_(m.unsqueeze(-1)).exp_()
                total = p.sum(-1)
                out[..., r, :] = torch.matmul(p, va).div_(total.unsqueeze(-1))
                lse[..., r] = total.log_().add_(m)
            out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, bias4, out, lse)
        ctx.scale, ctx.rows = scale, rows
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor):
        q, k, v, bias4, out, lse = ctx.saved_tensors
        # A Function rather than inline code: under create_graph its own backward (the double
        # backward) runs blockwise too. It differentiates through O and lse itself, so they
        # enter it as constants.
        dq, dk, dv, dbias = _ChunkedAttentionBackward.apply(q, k, v, bias4, out.detach(), lse, d_out,
                                                             ctx.scale, ctx.rows)
        return dq, dk, dv, dbias, None, None


class _ChunkedAttentionBackward(torch.autograd.Function):
    """(q, k, v, bias, dO) -> (dq, dk, dv, dbias): the first derivatives, blockwise."""

    @staticmethod
    def forward(ctx, q, k, v, bias4, out, lse, d_out, scale, rows):
        acc = _acc_dtype(q)
        want_bias = bias4 is not None and bias4.requires_grad
        with torch.autocast(q.device.type, enabled=False):
            qs, ka, va, do = q.to(acc) * scale, k.to(acc), v.to(acc), d_out.to(acc)
            k_t, v_t = ka.transpose(-2, -1), va.transpose(-2, -1)
            dp_row = (do * out.to(acc)).sum(-1)
            dq = torch.empty_like(qs)
            dk, dv = torch.zeros_like(ka), torch.zeros_like(va)
            dbias = torch.zeros(bias4.shape, device=q.device, dtype=acc) if want_bias else None
            for start in range(0, q.shape[-2], rows):
                r = slice(start, start + rows)
                p = _probabilities(qs[..., r, :], k_t, _bias_rows(bias4, r), lse[..., r])
                ds = torch.matmul(do[..., r, :], v_t).sub_(dp_row[..., r].unsqueeze(-1)).mul_(p)
                dq[..., r, :] = torch.matmul(ds, ka).mul_(scale)
                dk.add_(torch.matmul(ds.transpose(-2, -1), qs[..., r, :]))
                dv.add_(torch.matmul(p.transpose(-2, -1), do[..., r, :]))
                if dbias is not None:
                    _add_bias_grad(dbias, ds, r)
        ctx.save_for_backward(q, k, v, bias4, out, lse, d_out)
        ctx.scale, ctx.rows = scale, rows
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
                None if dbias is None else dbias.to(bias4.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx, g_dq, g_dk, g_dv, g_dbias):
        # The double backward: reverse mode through the forward above, block by block, given
        # cotangents g_* of dq, dk, dv, dbias. O and lse are functions of (q, k, v, bias) here,
        # so their contribution is folded in (the softmax-backward form of gS below):
        #   gdS = scale (g_dq k^T + q g_dk^T) + g_dbias        dP = dO v^T
        #   gP  = gdS * (dP - Dp) + dO g_dv^T                  gdP = gdS * P
        #   gDp = -rowsum(gdP)                                 gS  = gP * P
        #   gS <- gS - rowsum(gS) P + gDp dS                   (through lse and O)
        #   q <- scale (gS k + dS g_dk)     k <- scale (gS^T q + dS^T g_dq)     bias <- gS
        #   v <- (gdP + gDp P)^T dO         dO <- P g_dv + gdP v + gDp O
        q, k, v, bias4, out, lse, d_out = ctx.saved_tensors
        scale, rows = ctx.scale, ctx.rows
        acc = _acc_dtype(q)
        need = ctx.needs_input_grad
        with torch.autocast(q.device.type, enabled=False):
            qs, ka, va, do, oa = q.to(acc) * scale, k.to(acc), v.to(acc), d_out.to(acc), out.to(acc)
            zeros = torch.zeros((), device=q.device, dtype=acc)
            gqs = zeros.expand_as(qs) if g_dq is None else g_dq.to(acc) * scale
            gk = zeros.expand_as(ka) if g_dk is None else g_dk.to(acc)
            gv = zeros.expand_as(va) if g_dv is None else g_dv.to(acc)
            gb = None if g_dbias is None else g_dbias.to(acc)
            k_t, v_t, gv_t = ka.transpose(-2, -1), va.transpose(-2, -1), gv.transpose(-2, -1)
            # gdS = [g_dq scale, q scale] @ [k, g_dk]^T as one matmul over a doubled head dim.
            lhs = torch.cat([gqs, qs], dim=-1)
            rhs_t = torch.cat([ka, gk], dim=-1).transpose(-2, -1)
            dp_row = (do * oa).sum(-1)

            grad_q, grad_do = torch.empty_like(qs), torch.empty_like(do)
            grad_k, grad_v = torch.zeros_like(ka), torch.zeros_like(va)
            grad_bias = torch.zeros(bias4.shape, device=q.device, dtype=acc) if need[3] else None
            for start in range(0, q.shape[-2], rows):
                r = slice(start, start + rows)
                qs_r, do_r = qs[..., r, :], do[..., r, :]
                p = _probabilities(qs_r, k_t, _bias_rows(bias4, r), lse[..., r])
                dp_centered = torch.matmul(do_r, v_t).sub_(dp_row[..., r].unsqueeze(-1))
                ds = p * dp_centered
                gds = torch.matmul(lhs[..., r, :], rhs_t)
                b = _bias_rows(gb, r)
                if b is not None:
                    gds.add_(b)
                gs = torch.matmul(do_r, gv_t).addcmul_(dp_centered, gds).mul_(p)
                del dp_centered
                gdp = gds.mul_(p)
                g_dp = gdp.sum(-1, keepdim=True).neg_()
                g_lse = gs.sum(-1, keepdim=True).neg_()
                gs.addcmul_(p, g_lse).addcmul_(ds, g_dp)
                grad_do[..., r, :] = (torch.matmul(p, gv).add_(torch.matmul(gdp, va))
                                      .addcmul_(g_dp, oa[..., r, :]))
                grad_v.add_(torch.matmul(gdp.addcmul_(p, g_dp).transpose(-2, -1), do_r))
                grad_q[..., r, :] = torch.matmul(gs, ka).add_(torch.matmul(ds, gk)).mul_(scale)
                grad_k.add_(torch.matmul(gs.transpose(-2, -1), qs_r)).add_(
                    torch.matmul(ds.transpose(-2, -1), gqs[..., r, :]))
                if grad_bias is not None:
                    _add_bias_grad(grad_bias, gs, r)

        def cast(t: Tensor | None, like: Tensor | None, i: int) -> Tensor | None:
            return t.to(like.dtype) if need[i] and t is not None else None

        return (cast(grad_q, q, 0), cast(grad_k, k, 1), cast(grad_v, v, 2), cast(grad_bias, bias4, 3),
                None, None, cast(grad_do, d_out, 6), None, None)


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, scale: float | None = None,
                      block_q: int | None = None) -> Tensor:
    """Memory-lean, twice-differentiable attention over blocks of ``block_q`` query rows."""
    _check_shapes(q, k, v, bias)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    bias4 = _additive_bias(bias, _acc_dtype(q))
    if bias4 is not None:
        bias4 = bias4.reshape((1,) * (4 - bias4.dim()) + tuple(bias4.shape))
    return _ChunkedAttention.apply(q, k, v, bias4, float(scale), _block_rows(q, k, block_q))


# --- dispatcher ---------------------------------------------------------------------------------


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention wants q, k, v as [B, heads, N, head_dim]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention shapes do not fit: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if bias is not None:
        target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        try:
            fits = bias.dim() <= 4 and torch.broadcast_shapes(bias.shape, target) == target
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"attention bias of shape {tuple(bias.shape)} does not broadcast to {target}")
        if bias.dtype != torch.bool and not bias.is_floating_point():
            raise TypeError(f"attention bias must be a float (additive) or bool (True = attend) tensor, "
                            f"got {bias.dtype}")


def _additive_bias(bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if bias is None or bias.dtype != torch.bool:
        return bias
    return torch.zeros(bias.shape, device=bias.device, dtype=dtype).masked_fill_(~bias, -math.inf)


def scaled_dot_product(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, scale: float | None = None,
                       kernel: str | None = None, dropout_p: float = 0.0) -> Tensor:
    """softmax(scale * q k^T + bias) v for q [B, H, Nq, D], k/v [B, H, Nk, D], with a chosen kernel."""
    _check_shapes(q, k, v, bias)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    name = resolve_kernel(kernel, q, bias, dropout_p)
    if name == "xformers":
        try:
            out = _xformers_attention(q, k, v, _additive_bias(bias, q.dtype), scale, dropout_p)
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
    return math_attention(q, k, v, _additive_bias(bias, _acc_dtype(q)), scale, dropout_p)


# ---------------------------------------------------------------------------------------------
# Module
# ---------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self / cross attention: q from x, k and v from ``context`` (x itself if None)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, context_dim: int | None = None,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 kernel: str | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.context_dim = dim if context_dim is None else context_dim
        self.scale = self.head_dim ** -0.5 if qk_scale is None else qk_scale
        self.kernel = None if kernel is None else _check_kernel(kernel)
        self.attn_drop = float(attn_drop)
        self.fused_qkv = self.context_dim == dim
        if self.fused_qkv:
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
        return scaled_dot_product(q, k, v, bias=bias, scale=self.scale, kernel=self.kernel,
                                  dropout_p=self.attn_drop if self.training else 0.0)

    def project_out(self, out: Tensor) -> Tensor:
        """Heads [B, H, N, d] -> tokens [B, N, dim] through the output projection."""
        return self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))

    def forward(self, x: Tensor, context: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """x [B, N, dim] -> [B, N, dim]; ``bias`` broadcastable to [B, heads, N, M]."""
        return self.project_out(self.attend(*self.project_qkv(x, context), bias=bias))


# ---------------------------------------------------------------------------------------------
# Token layouts: windows (Swin), shifted windows, relative position bias, grids (TransGAN)
# ---------------------------------------------------------------------------------------------


def window_partition(x: Tensor, window: int) -> Tensor:
    """[B, H, W, C] -> [B * nW, window * window, C], windows in row-major order."""
    B, H, W, C = x.shape
    if H % window or W % window:
        raise ValueError(f"feature map {H}x{W} is not divisible into {window}x{window} windows")
    return _timm_window_partition(x, (window, window)).reshape(-1, window * window, C)


def window_reverse(windows: Tensor, window: int, H: int, W: int) -> Tensor:
    """[B * nW, window * window, C] -> [B, H, W, C]; inverse of :func:`window_partition`."""
    C = windows.shape[-1]
    return _timm_window_reverse(windows.reshape(-1, window, window, C), (window, window), H, W)


def shifted_window_mask(H: int, W: int, window: int, shift: int, device: torch.device | str | None = None) -> Tensor:
    """Swin's additive mask [nW, w*w, w*w]: 0 where two tokens of a shifted window came from the
    same image region before the cyclic shift, -inf where the roll made them neighbours."""
    if not 0 < shift < window:
        raise ValueError(f"shift must be in (0, window={window}), got {shift}")
    region = torch.zeros(1, H, W, 1, device=device)
    label = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            region[:, hs, ws, :] = label
            label += 1
    labels = window_partition(region, window).squeeze(-1)  # [nW, w*w]
    same = labels.unsqueeze(1) == labels.unsqueeze(2)
    return torch.zeros(same.shape, device=device).masked_fill_(~same, -math.inf)


class RelativePositionBias(nn.Module):
    """Learned bias per head for each relative offset inside a window (Swin, TransGAN)."""

    def __init__(self, window: int, num_heads: int) -> None:
        super().__init__()
        self.window, self.num_heads = window, num_heads
        self.table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.table, std=0.02)
        self.register_buffer("index", get_relative_position_index(window, window), persistent=False)

    def forward(self) -> Tensor:
        """The bias [heads, w*w, w*w] to add to the attention scores."""
        n = self.window * self.window
        return self.table[self.index.reshape(-1)].reshape(n, n, self.num_heads).permute(2, 0, 1)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (optionally cyclically shifted) windows, with a
    relative position bias: the W-MSA / SW-MSA of Swin. x [B, H, W, C] -> [B, H, W, C]."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int = 0, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 rel_pos: bool = True, kernel: str | None = None) -> None:
        super().__init__()
        if window < 1 or not 0 <= shift < window:
            raise ValueError(f"need window >= 1 and 0 <= shift < window, got window={window}, shift={shift}")
        self.window, self.shift = window, shift
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
                              proj_drop=proj_drop, kernel=kernel)
        self.rel_pos = RelativePositionBias(window, num_heads) if rel_pos else None
        self._masks: dict[tuple, Tensor] = {}

    def _mask(self, H: int, W: int, device: torch.device) -> Tensor:
        key = (H, W, str(device))
        if key not in self._masks:
            self._masks[key] = shifted_window_mask(H, W, self.window, self.shift, device)
        return self._masks[key]

    def forward(self, x: Tensor) -> Tensor:
        """Attend within windows of the [B, H, W, C] map and return a map of the same shape."""
        if x.dim() != 4:
            raise ValueError(f"WindowAttention wants x as [B, H, W, C], got {tuple(x.shape)}")
        B, H, W, C = x.shape
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        q, k, v = self.attn.project_qkv(window_partition(x, self.window))  # [B*nW, heads, w*w, d]
        bias = None if self.rel_pos is None else self.rel_pos()
        if self.shift:
            # The mask differs per window: fold windows into heads so the [nW, heads, n, n]
            # bias broadcasts over the batch instead of being copied B times.
            n_w, heads, n = (H // self.window) * (W // self.window), self.attn.num_heads, self.window ** 2
            mask = self._mask(H, W, x.device).unsqueeze(1)
            bias = (mask if bias is None else mask + bias).reshape(n_w * heads, n, n)
            q, k, v = (t.reshape(B, n_w * heads, n, -1) for t in (q, k, v))
            out = self.attn.attend(q, k, v, bias=bias).reshape(B * n_w, heads, n, -1)
        else:
            out = self.attn.attend(q, k, v, bias=bias)
        x = window_reverse(self.attn.project_out(out), self.window, H, W)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return x


class GridAttention(WindowAttention):
    """TransGAN grid self-attention: the map is cut into non-overlapping ``grid`` x ``grid``
    cells and tokens attend only inside their cell. x [B, H, W, C] -> [B, H, W, C]."""

    def __init__(self, dim: int, num_heads: int, grid: int, qkv_bias: bool = True, qk_scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, rel_pos: bool = True,
                 kernel: str | None = None) -> None:
        super().__init__(dim, num_heads, window=grid, shift=0, qkv_bias=qkv_bias, qk_scale=qk_scale,
                         attn_drop=attn_drop, proj_drop=proj_drop, rel_pos=rel_pos, kernel=kernel)


def grid_attention(x: Tensor, attn: Attention, grid: int, bias: Tensor | None = None) -> Tensor:
    """Apply ``attn`` inside each ``grid`` x ``grid`` cell of x [B, H, W, C] (bias: [heads, g*g, g*g])."""
    if x.dim() != 4:
        raise ValueError(f"grid_attention wants x as [B, H, W, C], got {tuple(x.shape)}")
    B, H, W, C = x.shape
    return window_reverse(attn(window_partition(x, grid), bias=bias), grid, H, W)
