"""Custom-gradient ops of the building blocks: each an autograd Function with a hand-written backward.

- ``chunked_attention``: softmax attention over blocks of query rows with a saved log-sum-exp; its
  backward is itself a blockwise, recomputing autograd Function with its own blockwise backward,
  so it is twice differentiable (WGAN-GP, R1) while forward, backward and double backward keep
  memory linear in the sequence length. The ``chunked`` kernel of :mod:`transgan.nn.attention`.
- ``depthwise_filter``: depthwise convolution by a fixed filter whose gradient is the adjoint
  filter (the FIR blur of :func:`transgan.nn.layers.blur2d`), one grouped convolution per order.

Also the input checks every attention kernel shares (:func:`check_attention_shapes`,
:func:`additive_bias`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["CHUNK_SCORE_ELEMENTS", "chunked_attention", "check_attention_shapes", "additive_bias",
           "accumulation_dtype", "depthwise_filter"]

# Elements of one [B, H, rows, Nk] score block of the chunked kernel: the block height is
# chosen so a block holds about this many scores (a handful of blocks are alive at once).
CHUNK_SCORE_ELEMENTS: dict[str, int] = {"cpu": 1 << 22, "cuda": 1 << 26}


# --- attention inputs ---------------------------------------------------------------------------
# q [B, H, Nq, D], k [B, H, Nk, D], v [B, H, Nk, Dv]; bias additive, broadcastable to
# [B, H, Nq, Nk], or a bool mask (True = attend).

def check_attention_shapes(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> None:
    """Refuse q, k, v (and a bias) whose shapes or dtype do not make one attention call."""
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


def additive_bias(bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A bool mask (True = attend) as an additive 0 / -inf bias of ``dtype``; other biases as they are."""
    if bias is None or bias.dtype != torch.bool:
        return bias
    return torch.zeros(bias.shape, device=bias.device, dtype=dtype).masked_fill_(~bias, -math.inf)




def accumulation_dtype(t: Tensor) -> torch.dtype:
    """The dtype attention accumulates in: half inputs are computed in fp32."""
    return torch.promote_types(t.dtype, torch.float32)


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


class _ChunkedAttention(torch.autograd.Function):
    """(q, k, v, bias) -> O, one block of query rows at a time; saves lse, not P."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias4: Tensor | None, scale: float, rows: int) -> Tensor:
        acc = accumulation_dtype(q)
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
        acc = accumulation_dtype(q)
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
        acc = accumulation_dtype(q)
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
    check_attention_shapes(q, k, v, bias)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    bias4 = additive_bias(bias, accumulation_dtype(q))
    if bias4 is not None:
        bias4 = bias4.reshape((1,) * (4 - bias4.dim()) + tuple(bias4.shape))
    return _ChunkedAttention.apply(q, k, v, bias4, float(scale), _block_rows(q, k, block_q))


# --- depthwise filter with an adjoint-filter gradient ----------------------------------------------

class _DepthwiseFilter(torch.autograd.Function):
    """Depthwise convolution by a fixed filter, whose gradient is the adjoint filter (:class:`_DepthwiseFilterT`).

    ATen's double backward of a grouped convolution loops over the groups (one convolution per
    channel, e.g. 512 launches per blur in every R1 / path-length pass) to form a gradient for the
    filter, which is a constant here. With the adjoint as an autograd function of its own, every
    order of gradient is one grouped convolution and no filter gradient is formed.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: int) -> Tensor:  # noqa: D102
        ctx.save_for_backward(weight)
        ctx.stride, ctx.in_size = stride, x.shape[-2:]
        return F.conv2d(x, weight.to(x.dtype), stride=stride, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: D102
        (weight,) = ctx.saved_tensors
        return _DepthwiseFilterT.apply(grad, weight, ctx.stride, ctx.in_size), None, None


class _DepthwiseFilterT(torch.autograd.Function):
    """The adjoint of :class:`_DepthwiseFilter`, a transposed convolution back to ``size``; differentiates to it."""

    @staticmethod
    def forward(ctx, y: Tensor, weight: Tensor, stride: int, size: tuple[int, int]) -> Tensor:  # noqa: D102
        ctx.save_for_backward(weight)
        ctx.stride = stride
        k = weight.shape[-2:]
        # The rows/columns the strided forward never reached get zero gradient.
        extra = [n - (m - 1) * stride - kk for n, m, kk in zip(size, y.shape[-2:], k)]
        return F.conv_transpose2d(y, weight.to(y.dtype), stride=stride, output_padding=tuple(extra),
                                  groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # noqa: D102
        (weight,) = ctx.saved_tensors
        return _DepthwiseFilter.apply(grad, weight, ctx.stride), None, None, None


def depthwise_filter(x: Tensor, weight: Tensor, stride: int = 1) -> Tensor:
    """Depthwise conv of [B, C, H, W] by a fixed ``weight`` [C, 1, k, k]: every order of gradient is one
    grouped convolution and the filter gets none."""
    return _DepthwiseFilter.apply(x, weight, stride)
