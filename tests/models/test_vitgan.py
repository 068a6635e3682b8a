"""ViTGAN's stabilizers of a transformer critic against their formulas: L2 tied attention, improved
spectral normalization, overlapping patches."""

from __future__ import annotations

import pytest
import torch

from transgan.nn import attention as A
from transgan.nn.layers import improved_spectral_norm
from transgan.registry import build_discriminator


def _l2_attention_by_hand(attn: A.Attention, x: torch.Tensor) -> torch.Tensor:
    """softmax(-||x W_q - x W_k||^2 / sqrt(d)) (x W_v), W_q = W_k, written out."""
    H, d = attn.num_heads, attn.head_dim
    w_qk, w_v = attn.qkv.weight.split(attn.dim)
    b_qk, b_v = (None, None) if attn.qkv.bias is None else attn.qkv.bias.split(attn.dim)
    qk = torch.nn.functional.linear(x, w_qk, b_qk).unflatten(-1, (H, d)).transpose(1, 2)
    v = torch.nn.functional.linear(x, w_v, b_v).unflatten(-1, (H, d)).transpose(1, 2)
    dist = (qk.unsqueeze(-2) - qk.unsqueeze(-3)).square().sum(-1)  # [B, H, N, N]: ||q_i - k_j||^2
    out = torch.softmax(-dist / d ** 0.5, dim=-1) @ v
    return attn.proj(out.transpose(1, 2).flatten(2))


@pytest.mark.parametrize("kernel", ["math", "sdpa", "chunked"])
def test_l2_tied_attention_is_the_distance_formula_with_every_kernel(kernel):
    torch.manual_seed(0)
    attn = A.Attention(16, 4, kernel=kernel, similarity="l2_tied").double()
    assert attn.qkv.weight.shape == (32, 16)  # one projection for queries and keys, one for values
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(attn(x), _l2_attention_by_hand(attn, x), rtol=1e-10, atol=1e-10)


def test_l2_tied_attention_has_the_double_backward_penalties_need():
    torch.manual_seed(0)
    attn = A.Attention(8, 2, kernel="sdpa", similarity="l2_tied").double()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    with A.double_backward_safe():  # the chunked kernel, as in a penalty pass
        (g,) = torch.autograd.grad(attn(x).square().sum(), x, create_graph=True)
        g.square().sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(_l2_attention_by_hand(attn, x2).square().sum(), x2, create_graph=True)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)
    grads = [p.grad.clone() for p in attn.parameters()]
    attn.zero_grad()
    g_ref.square().sum().backward()
    for a, b in zip(grads, (p.grad for p in attn.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_improved_spectral_norm_keeps_each_layers_initial_spectral_norm():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.Conv2d(3, 5, 3))
    initial = [torch.linalg.matrix_norm(m.weight.detach().flatten(1), 2) for m in net]
    original = [m.weight.detach().clone() for m in net]
    improved_spectral_norm(net)
    net.train()
    for _ in range(300):  # the power iteration advances one step per training-mode access
        [m.weight for m in net]
    net.eval()
    for m, sigma0, w in zip(net, initial, original):
        # W_ISN = sigma(W_init) W / sigma(W): the direction of W, the spectral norm of W_init
        torch.testing.assert_close(torch.linalg.matrix_norm(m.weight.flatten(1), 2), sigma0, rtol=1e-3, atol=0)
        torch.testing.assert_close(m.weight, w * sigma0 / torch.linalg.matrix_norm(w.flatten(1), 2), rtol=1e-3,
                                   atol=1e-6)


def test_the_vitgan_critic_builds_with_every_stabilizer_and_overlapping_patches_read_their_neighbours():
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load("configs/model/discriminator/vitgan.yaml"))
    D = build_discriminator(cfg, 32, 1, 10)
    assert all(m.attn.attn.l2_tied if hasattr(m.attn, "attn") else m.attn.l2_tied
               for stage in D.stages for m in stage)
    assert D.patch_embeds[0].kernel_size == (4 + 2 * 2, 4 + 2 * 2) and D.patch_embeds[0].padding == (2, 2)
    x, c = torch.randn(2, 1, 32, 32), torch.tensor([3, 7])
    assert D(x, c).shape == (2,)
    # a change two pixels left of patch (0, 1)'s own 4x4 pixels reaches its token: it overlaps its neighbour
    D.eval()  # (in training mode each use of a spectrally normalized weight takes a power-iteration step)
    tokens = lambda img: D.patch_embeds[0](img)  # noqa: E731
    y = x.clone()
    y[..., 0, 2] += 1.0
    changed = (tokens(y) - tokens(x)).abs().sum(1)[0]
    assert changed[0, 1] > 0 and changed[0, 0] > 0 and changed[0, 2] == 0


def test_the_vitgan_critic_is_counted_on_the_meta_device_like_every_other():
    # The ablation measures every cell's networks on the meta device before anything runs: the
    # improved spectral norm's initial sigma must not be read to the host there.
    from transgan.commands.model_stats import model_stats

    from omegaconf import OmegaConf

    counted = model_stats(["model=cwgan_gp", "dataset=digits", "model/discriminator=vitgan"], num_classes=10)
    D = build_discriminator(OmegaConf.to_container(OmegaConf.load("configs/model/discriminator/vitgan.yaml")), 32, 1, 10)
    assert counted["discriminator"]["parameters"] == sum(p.numel() for p in D.parameters())
    assert counted["discriminator"]["flops_per_image"] > 0
