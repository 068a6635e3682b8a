"""FIR blur (transgan.nn.layers.blur2d) against a grouped convolution written out here."""

import pytest
import torch
import torch.nn.functional as F

from transgan.eval.complexity import OpCounter
from transgan.nn.layers import blur2d, fir_kernel


def reference_blur(x: torch.Tensor, kernel: torch.Tensor, pad: int, stride: int) -> torch.Tensor:
    """Pad, then correlate every channel with the flipped kernel: one grouped F.conv2d."""
    C = x.shape[1]
    w = kernel.flip((0, 1)).to(x)[None, None].expand(C, 1, *kernel.shape)
    return F.conv2d(F.pad(x, (pad,) * 4), w, stride=stride, groups=C)


def three_orders(f, x: torch.Tensor) -> list[torch.Tensor]:
    """f(x), and the gradients of first, second and third order of fixed scalar functions of it."""
    y = f(x)
    probe = torch.linspace(-1, 1, y.numel(), dtype=x.dtype).reshape(y.shape)
    (g1,) = torch.autograd.grad((y.square() * probe).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g1.square().sum(), x, create_graph=True)
    (g3,) = torch.autograd.grad(g2.sin().sum(), x)
    return [y, g1, g2, g3]


@pytest.mark.parametrize("stride, pad, size", [(2, 1, 16), (2, 2, 17), (1, 2, 15), (1, 1, 9)])
def test_blur_and_its_gradients_match_a_grouped_convolution(stride: int, pad: int, size: int) -> None:
    kernel = fir_kernel((1, 3, 3, 1)).double()
    x = torch.randn(2, 5, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = three_orders(lambda t: blur2d(t, kernel, pad, stride), x.clone().requires_grad_())
    ref = three_orders(lambda t: reference_blur(t, kernel, pad, stride), x.clone().requires_grad_())
    for name, a, b in zip(("value", "grad", "grad of grad", "third order"), ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_double_backward_is_one_convolution_per_order_not_one_per_channel() -> None:
    # ATen's double backward of a grouped convolution runs one convolution per group (to form a
    # gradient for the filter); an R1 pass through a 512-channel blur launched 512 of them.
    C = 64
    x = torch.randn(2, C, 16, 16, requires_grad=True)
    with OpCounter() as ours:
        three_orders(lambda t: blur2d(t, fir_kernel(), 1, 2), x)
    with OpCounter() as ref:
        three_orders(lambda t: reference_blur(t, fir_kernel(), 1, 2), x)
    assert ref.counts["convolution"] > C  # what the fix removes: the reference loops over channels
    assert ours.counts["convolution"] <= 8, ours.counts


def test_blur_keeps_channels_last_and_autocast_dtypes() -> None:
    x = torch.randn(2, 8, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = blur2d(x, fir_kernel(), 1, 2)
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    assert y.is_contiguous(memory_format=torch.channels_last) and g.is_contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = blur2d(x, fir_kernel(), 1, 2)
        (g,) = torch.autograd.grad(y.float().square().sum(), x, create_graph=True)
    assert y.dtype == torch.bfloat16 and g.dtype == torch.float32
    g.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
