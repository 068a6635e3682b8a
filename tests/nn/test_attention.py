"""Attention kernels against the math reference, and window / grid layouts against timm's Swin."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.swin_transformer import window_partition as timm_window_partition
from timm.models.swin_transformer import window_reverse as timm_window_reverse

from transgan.errors import ConfigError
from transgan.nn import attention as A

B, H, D = 2, 3, 8


@pytest.fixture(autouse=True)
def _default_kernel_restored():
    yield
    A.set_default_kernel("auto")


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
        return A.chunked_attention(q, k, v, bias, block_q=4)
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
    ref = A.math_attention(q, k, v, A._additive_bias(bias, torch.float32))
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
    f = lambda q, k, v, b: A.chunked_attention(q, k, v, b, block_q=2)  # noqa: E731
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
        out = A.chunked_attention(q, k, v, block_q=rows)
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
        assert A.resolve_kernel(None, q) == "chunked"
        assert A.resolve_kernel("math", q) == "math"
        assert A.resolve_kernel("sdpa", q, dropout_p=0.1) == "math"  # chunked has no dropout
        got = _first_and_second_derivatives("sdpa", q, k, v, None, w)
    assert A.resolve_kernel("sdpa", q) == "sdpa"
    ref = _first_and_second_derivatives("math", q, k, v, None, w)
    for g, r in zip(got[2], ref[2]):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_kernel_choice_precedence_and_validation():
    q = torch.zeros(1, 1, 4, 8)
    assert A.resolve_kernel(None, q) == "sdpa"  # auto on CPU
    A.set_default_kernel("math")
    assert A.resolve_kernel(None, q) == "math"
    with A.attention_kernel("chunked"):
        assert A.resolve_kernel(None, q) == "chunked"
        assert A.resolve_kernel("sdpa", q) == "sdpa"  # an explicit module/call choice wins
    assert A.resolve_kernel(None, q) == "math"
    assert A.resolve_kernel("xformers", q) == "sdpa"  # xformers is CUDA-only
    with pytest.raises(ConfigError, match="flashy"):
        A.set_default_kernel("flashy")
    with pytest.raises(ConfigError):
        with A.attention_kernel("flashy"):
            pass
    with pytest.raises(ConfigError):
        A.Attention(8, 2, kernel="flashy")


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
        A.WindowAttention(8, 2, window=4)(torch.zeros(1, 6, 8, 8))
    with pytest.raises(ValueError, match="shift"):
        A.WindowAttention(8, 2, window=4, shift=4)


def test_chunked_keeps_half_precision_dtype_and_accuracy():
    q, k, v = (t.detach().to(torch.bfloat16).requires_grad_() for t in _qkv(10, 10))
    out = A.chunked_attention(q, k, v, block_q=3)
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


# --- windows, shifted windows, relative position bias, grids -----------------------------------


def test_window_partition_follows_row_major_windows_and_reverses():
    x = torch.randn(2, 8, 12, 3)
    w = 4
    windows = A.window_partition(x, w)
    assert windows.shape == (2 * 2 * 3, w * w, 3)
    for b, wi, wj, i, j in [(0, 0, 0, 0, 0), (1, 1, 2, 3, 1), (0, 1, 1, 2, 3), (1, 0, 2, 1, 0)]:
        torch.testing.assert_close(windows[b * 6 + wi * 3 + wj, i * w + j], x[b, wi * w + i, wj * w + j])
    torch.testing.assert_close(A.window_reverse(windows, w, 8, 12), x)


def test_relative_position_bias_indexes_table_by_offset():
    w, heads = 3, 2
    rel = A.RelativePositionBias(w, heads)
    bias = rel()
    assert bias.shape == (heads, w * w, w * w)
    for i in range(w * w):
        for j in range(w * w):
            (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
            row = (yi - yj + w - 1) * (2 * w - 1) + (xi - xj + w - 1)
            torch.testing.assert_close(bias[:, i, j], rel.table[row])


def test_shifted_window_mask_blocks_tokens_the_roll_made_neighbours():
    Hm, Wm, w, s = 8, 12, 4, 2
    mask = A.shifted_window_mask(Hm, Wm, w, s)
    assert mask.shape == ((Hm // w) * (Wm // w), w * w, w * w)
    n_wcols = Wm // w
    for win in range(mask.shape[0]):
        for i in range(w * w):
            for j in range(w * w):
                yi, xi = (win // n_wcols) * w + i // w, (win % n_wcols) * w + i % w
                yj, xj = (win // n_wcols) * w + j // w, (win % n_wcols) * w + j % w
                # after rolling by -s, positions >= size - s wrapped around from the other edge
                same = (yi >= Hm - s) == (yj >= Hm - s) and (xi >= Wm - s) == (xj >= Wm - s)
                assert (mask[win, i, j] == 0) == same
                assert same or mask[win, i, j] == float("-inf")


def _timm_shifted_window_attention(ours: A.WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """timm's Swin W-MSA / SW-MSA (roll, partition, WindowAttention with its mask) with our weights."""
    _, Hm, Wm, C = x.shape
    w, s = ours.window, ours.shift
    block = SwinTransformerBlock(C, input_resolution=(Hm, Wm), num_heads=ours.attn.num_heads,
                                 window_size=w, shift_size=s)
    ref = block.attn
    ref.qkv.load_state_dict(ours.attn.qkv.state_dict())
    ref.proj.load_state_dict(ours.attn.proj.state_dict())
    ref.relative_position_bias_table = ours.rel_pos.table  # shared, so gradients can be compared
    if s:
        x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
    windows = timm_window_partition(x, (w, w)).reshape(-1, w * w, C)
    out = ref(windows, mask=block.attn_mask).reshape(-1, w, w, C)
    out = timm_window_reverse(out, (w, w), Hm, Wm)
    return torch.roll(out, shifts=(s, s), dims=(1, 2)) if s else out


@pytest.mark.parametrize("kernel", ["math", "sdpa", "chunked"])
@pytest.mark.parametrize("shift", [0, 2])
def test_window_attention_matches_timm_swin(kernel, shift):
    torch.manual_seed(0)
    ours = A.WindowAttention(16, 2, window=4, shift=shift, kernel=kernel)
    with torch.no_grad():
        ours.rel_pos.table.normal_()  # large enough that a wrong index would show
    x = torch.randn(2, 8, 12, 16, requires_grad=True)
    out = ours(x)
    ref = _timm_shifted_window_attention(ours, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, ours.rel_pos.table), g)
    want = torch.autograd.grad(ref, (x, ours.rel_pos.table), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_r1_through_shifted_window_attention_matches_math():
    # The trainer's pattern: the discriminator's R1 pass inside double_backward_safe(), with a
    # learnable rel-pos bias and the shifted-window mask in the scores.
    torch.manual_seed(0)
    layer = A.WindowAttention(16, 2, window=4, shift=2, kernel="sdpa")
    x = torch.randn(2, 8, 8, 16, requires_grad=True)

    def r1_grads():
        (g,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), list(layer.parameters()))

    with A.double_backward_safe():
        got = r1_grads()
    layer.attn.kernel = "math"
    want = r1_grads()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_grid_attention_attends_only_inside_each_cell():
    torch.manual_seed(0)
    g = 4
    layer = A.GridAttention(8, 2, grid=g)
    x = torch.randn(1, 8, 8, 8, requires_grad=True)
    out = layer(x)
    # each cell equals plain attention over that cell's tokens with the rel-pos bias
    cell = x[:, 4:8, 0:4].reshape(1, g * g, 8)
    expected = layer.attn(cell, bias=layer.rel_pos()).reshape(1, g, g, 8)
    torch.testing.assert_close(out[:, 4:8, 0:4], expected, atol=1e-5, rtol=1e-5)
    # and nothing outside the cell reaches it
    (grad,) = torch.autograd.grad(out[:, 0:4, 0:4].sum(), x)
    assert grad[:, 0:4, 0:4].abs().sum() > 0
    assert grad[:, 4:, :].abs().sum() == 0 and grad[:, :, 4:].abs().sum() == 0
    torch.testing.assert_close(A.grid_attention(x, layer.attn, g, bias=layer.rel_pos()), out)


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
