"""Attention kernels against the math reference (the dispatcher and the chunked op of nn/ops.py), and the module."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from transgan.errors import ConfigError
from transgan.nn import attention as A
from transgan.nn import ops
from transgan.nn import windows as layouts

B, H, D = 2, 3, 8


def _qkv(nq: int, nk: int, seed: int = 0, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, D, generator=g, dtype=dtype).requires_grad_() for n in (nq, nk, nk))
    return q, k, v


def _bias(kind: str, nq: int, nk: int, seed: int = 1) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(seed)
    if kind == "none":
        return None
    if kind == "float":  # learnable, per head, broadcast over the batch (like a rel-pos bias)
        return torch.randn(H, nq, nk, generator=g).requires_grad_()
    if kind == "bool":  # True = attend; every query keeps key 0 so no row is fully masked
        mask = torch.rand(B, 1, nq, nk, generator=g) > 0.4
        mask[..., 0] = True
        return mask
    if kind == "key_padding":  # float, broadcast over heads and queries
        return torch.randn(B, 1, 1, nk, generator=g).requires_grad_()
    raise AssertionError(kind)


def _run(kernel: str, q, k, v, bias):
    if kernel == "chunked_small_blocks":  # several blocks, the last one ragged
        return ops.chunked_attention(q, k, v, bias, block_q=4)
    return A.scaled_dot_product(q, k, v, bias, kernel=kernel)


def _leaves(q, k, v, bias):
    return [t for t in (q, k, v, bias) if t is not None and t.requires_grad]


def _first_and_second_derivatives(kernel: str, q, k, v, bias, w):
    """Output, first derivatives, and derivatives of a gradient-penalty-style loss."""
    out = _run(kernel, q, k, v, bias)
    leaves = _leaves(q, k, v, bias)
    grads = torch.autograd.grad((out * w).sum(), leaves, create_graph=True)
    penalty = sum(g.square().sum() for g in grads)
    second = torch.autograd.grad(penalty, leaves)
    return out, grads, second


SIZES = {"self": (13, 13), "cross": (11, 7)}
BIASES = ("none", "float", "bool", "key_padding")


@pytest.mark.parametrize("kernel", ["sdpa", "chunked", "chunked_small_blocks"])
@pytest.mark.parametrize("bias_kind", BIASES)
@pytest.mark.parametrize("layout", sorted(SIZES))
def test_kernel_matches_math_in_output_and_first_derivatives(kernel, bias_kind, layout):
    nq, nk = SIZES[layout]
    q, k, v = _qkv(nq, nk)
    bias = _bias(bias_kind, nq, nk)
    w = torch.randn(B, H, nq, D, generator=torch.Generator().manual_seed(2))
    out = _run(kernel, q, k, v, bias)
    ref = A.math_attention(q, k, v, ops.additive_bias(bias, torch.float32))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    leaves = _leaves(q, k, v, bias)
    grads = torch.autograd.grad((out * w).sum(), leaves)
    ref_grads = torch.autograd.grad((ref * w).sum(), leaves)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["chunked", "chunked_small_blocks"])
@pytest.mark.parametrize("bias_kind", BIASES)
@pytest.mark.parametrize("layout", sorted(SIZES))
def test_chunked_second_derivatives_match_math(kernel, bias_kind, layout):
    nq, nk = SIZES[layout]
    q, k, v = _qkv(nq, nk)
    bias = _bias(bias_kind, nq, nk)
    w = torch.randn(B, H, nq, D, generator=torch.Generator().manual_seed(2))
    got = _first_and_second_derivatives(kernel, q, k, v, bias, w)
    ref = _first_and_second_derivatives("math", q, k, v, bias, w)
    for g, r in zip([got[0], *got[1], *got[2]], [ref[0], *ref[1], *ref[2]]):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_chunked_passes_numerical_second_order_check_in_float64():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 3, generator=g, dtype=torch.float64, requires_grad=True) for n in (5, 4, 4))
    bias = torch.randn(2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    key_bias = torch.randn(1, 1, 1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    f = lambda q, k, v, b: ops.chunked_attention(q, k, v, b, block_q=2)  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (q, k, v, bias))
    assert torch.autograd.gradgradcheck(f, (q, k, v, key_bias))


def test_chunked_keeps_no_score_matrix_through_double_backward():
    # Every tensor autograd saves for the R1 pattern must be O(N): none as large as the scores.
    n, rows = 256, 32
    q, k, v = (torch.randn(1, 1, n, 4, requires_grad=True) for _ in range(3))
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = ops.chunked_attention(q, k, v, block_q=rows)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v), create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
    penalty.backward()
    assert sizes and max(sizes) < n * n // 8

    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # the reference does keep them
        out = A.math_attention(q, k, v)
        torch.autograd.grad(out.square().sum(), (q, k, v), create_graph=True)
    assert max(sizes) >= n * n


def test_double_backward_safe_routes_fused_kernels_to_chunked():
    q, k, v = _qkv(9, 9)
    w = torch.randn(B, H, 9, D)
    with A.double_backward_safe():
        assert A.resolve_kernel("sdpa", q) == "chunked"
        assert A.resolve_kernel("xformers", q) == "chunked"
        assert A.resolve_kernel("auto", q) == "chunked"
        assert A.resolve_kernel("math", q) == "math"
        assert A.resolve_kernel("sdpa", q, dropout_p=0.1) == "math"  # chunked has no dropout
        got = _first_and_second_derivatives("sdpa", q, k, v, None, w)
    assert A.resolve_kernel("sdpa", q) == "sdpa"
    ref = _first_and_second_derivatives("math", q, k, v, None, w)
    for g, r in zip(got[2], ref[2]):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_kernel_setting_is_validated_where_given_and_resolved_per_call():
    q = torch.zeros(1, 1, 4, 8)
    assert A.resolve_kernel("auto", q) == "sdpa"  # auto on CPU
    assert A.resolve_kernel("math", q) == "math"
    assert A.resolve_kernel("chunked", q) == "chunked"
    assert A.resolve_kernel("xformers", q) == "sdpa"  # xformers is CUDA-only
    with pytest.raises(ConfigError, match="flashy"):  # a direct call with a bad name still fails, once it dispatches
        A.scaled_dot_product(q, q, q, kernel="flashy")
    with pytest.raises(ConfigError, match="flashy"):
        A.Attention(8, 2, kernel="flashy")
    with pytest.raises(ConfigError, match="attention_kernel must be one of"):
        A.check_kernel("flash", "attention_kernel")


@pytest.mark.parametrize("kernel, runs", [("math", "math"), ("chunked", "chunked"), ("auto", "sdpa"),
                                          ("sdpa", "sdpa")])
def test_the_module_runs_the_kernel_it_was_built_with(kernels_run, kernel, runs):
    """The setting is read once at construction; only a penalty pass switches it (to a twice-differentiable one)."""
    calls = kernels_run
    attn = A.Attention(8, 2, kernel=kernel)
    assert attn.kernel == kernel
    x = torch.randn(2, 5, 8, requires_grad=True)
    attn(x)
    assert calls == [runs]
    calls.clear()
    with A.double_backward_safe():
        attn(x)
    assert calls == ["math" if kernel == "math" else "chunked"]


def test_auto_on_cpu_is_silent_and_logs_each_kernel_once(monkeypatch, caplog):
    monkeypatch.setattr(A, "_logged", set())
    q, k, v = _qkv(6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.INFO, logger="transgan.attention"):
            for _ in range(2):
                A.scaled_dot_product(q, k, v)
                A.scaled_dot_product(q, k, v, kernel="chunked")
    messages = [r.getMessage() for r in caplog.records if r.name == "transgan.attention"]
    assert messages == ["attention kernel: sdpa", "attention kernel: chunked"]


def test_bad_inputs_get_clear_errors():
    q, k, v = _qkv(5, 5)
    with pytest.raises(ValueError, match="does not broadcast"):
        A.scaled_dot_product(q, k, v, torch.zeros(5, 4))
    with pytest.raises(ValueError, match="do not fit"):
        A.scaled_dot_product(q, k[..., :4], v)
    with pytest.raises(ValueError, match="B, heads, N, head_dim"):
        A.scaled_dot_product(q[0], k[0], v[0])
    with pytest.raises(TypeError, match="float"):
        A.scaled_dot_product(q, k, v, torch.zeros(5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        A.Attention(10, 3)
    with pytest.raises(ValueError, match="pass context"):
        A.Attention(8, 2, context_dim=6)(torch.zeros(1, 3, 8))
    with pytest.raises(ValueError, match="divisible"):
        layouts.WindowAttention(8, 2, window=4)(torch.zeros(1, 6, 8, 8))
    with pytest.raises(ValueError, match="shift"):
        layouts.WindowAttention(8, 2, window=4, shift=4)


def test_chunked_keeps_half_precision_dtype_and_accuracy():
    q, k, v = (t.detach().to(torch.bfloat16).requires_grad_() for t in _qkv(10, 10))
    out = ops.chunked_attention(q, k, v, block_q=3)
    assert out.dtype == torch.bfloat16
    ref = A.math_attention(*(t.float() for t in (q, k, v)))
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    (g,) = torch.autograd.grad(out.float().square().sum(), q, create_graph=True)
    g.float().square().sum().backward()
    assert g.dtype == torch.bfloat16 and k.grad.dtype == torch.bfloat16


# --- the module ------------------------------------------------------------------------------


def _explicit_attention(x, ctx, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, heads, bias=None):
    """Multi-head attention written head by head from the definition."""
    outs = []
    d = w_q.shape[0] // heads
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        qh = x @ w_q[sl].T + b_q[sl]
        kh = ctx @ w_k[sl].T + b_k[sl]
        vh = ctx @ w_v[sl].T + b_v[sl]
        scores = qh @ kh.transpose(-1, -2) / d ** 0.5
        if bias is not None:
            scores = scores + bias[h]
        outs.append(torch.softmax(scores, -1) @ vh)
    return torch.cat(outs, -1) @ w_o.T + b_o


@pytest.mark.parametrize("kernel", ["math", "sdpa", "chunked"])
def test_attention_module_matches_definition(kernel):
    torch.manual_seed(0)
    dim, heads = 12, 3
    x, ctx = torch.randn(2, 9, dim), torch.randn(2, 5, dim)
    bias = torch.randn(heads, 9, 9)
    attn = A.Attention(dim, heads, kernel=kernel)
    w_q, w_k, w_v = attn.qkv.weight.split(dim)
    b_q, b_k, b_v = attn.qkv.bias.split(dim)
    ref = _explicit_attention(x, x, w_q, b_q, w_k, b_k, w_v, b_v, attn.proj.weight, attn.proj.bias, heads, bias)
    torch.testing.assert_close(attn(x, bias=bias), ref, atol=1e-5, rtol=1e-5)
    # cross attention with a same-width context reuses the fused projection's k, v rows
    ref = _explicit_attention(x, ctx, w_q, b_q, w_k, b_k, w_v, b_v, attn.proj.weight, attn.proj.bias, heads)
    torch.testing.assert_close(attn(x, context=ctx), ref, atol=1e-5, rtol=1e-5)

    cross = A.Attention(dim, heads, context_dim=7, kernel=kernel)
    ctx7 = torch.randn(2, 5, 7)
    w_k, w_v = cross.kv.weight.split(dim)
    b_k, b_v = cross.kv.bias.split(dim)
    ref = _explicit_attention(x, ctx7, cross.q.weight, cross.q.bias, w_k, b_k, w_v, b_v,
                              cross.proj.weight, cross.proj.bias, heads)
    torch.testing.assert_close(cross(x, context=ctx7), ref, atol=1e-5, rtol=1e-5)


# --- CUDA ------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("kernel", ["sdpa", "xformers", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_cuda_kernels_match_math(kernel, dtype):
    if kernel == "xformers" and not A.xformers_available():
        pytest.skip("xformers is not installed or not usable here")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 64, device="cuda", dtype=dtype, generator=g).requires_grad_()
               for n in (200, 136, 136))
    bias = torch.randn(4, 200, 136, device="cuda", dtype=dtype, generator=g)
    w = torch.randn(2, 4, 200, 64, device="cuda", generator=g)
    tol = dict(atol=1e-2, rtol=1e-2) if dtype == torch.float16 else dict(atol=1e-5, rtol=1e-5)
    for b in (None, bias):
        out = A.scaled_dot_product(q, k, v, b, kernel=kernel)
        ref = A.math_attention(*(t.double() for t in (q, k, v)), None if b is None else b.double())
        torch.testing.assert_close(out.double(), ref, **tol)
        grads = torch.autograd.grad((out.double() * w).sum(), (q, k, v))
        ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
        for a, r in zip(grads, ref_grads):
            torch.testing.assert_close(a.double(), r.double(), **tol)


@pytest.mark.cuda
@needs_cuda
def test_cuda_r1_inside_double_backward_safe_matches_math():
    q, k, v = (t.detach().cuda().requires_grad_() for t in _qkv(77, 77))
    w = torch.randn(B, H, 77, D, device="cuda")
    with A.double_backward_safe():
        got = _first_and_second_derivatives("sdpa", q, k, v, None, w)
    ref = _first_and_second_derivatives("math", q, k, v, None, w)
    for a, b in zip(got[2], ref[2]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
