"""``tools/convert.py --verify``: the parity a user can see on their own machine, as max abs differences.

Two checks, printed as a table:

1. **The golden fixture of the file's kind** (``tests/fixtures/official``: tensors the official code
   produced, with its commit in NOTE.md) through the same converter functions: converted G_ema images
   and D logits against the official ones. This shows that this install's converter and models
   compute what the official code computes.
2. **The user's file, end to end**: the run directory just written is loaded back the way
   tools/generate.py, eval and serve load it, and its G_ema (and D) must give exactly what the
   networks converted in memory give, on fixed latents and images; and every official parameter
   tensor must have been carried over (equal parameter counts).

The official code is not run on the user's file: a stylegan2-ada pickle carries the official
source, but running it would execute code from the file, which this converter never does. To
compare a file with the official code, run that code on it in a scratch folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from transgan.convert.common import Converted
from transgan.convert.r3gan import convert_r3gan
from transgan.convert.stylegan2_ada import convert_stylegan2_ada
from transgan.convert.styleswin import convert_styleswin
from transgan.convert.transgan_official import convert_transgan
from transgan.convert.unpickle import PersistentObject, load_official

__all__ = ["Check", "FIXTURES", "fixture_checks", "run_checks", "format_checks", "official_parameter_counts",
           "report"]

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "official"


@dataclass
class Check:
    """One comparison: what was compared, the max abs difference, and the bound it must stay under."""

    what: str
    max_abs_diff: float
    bound: float

    @property
    def ok(self) -> bool:
        """Whether the difference is within the bound."""
        return self.max_abs_diff <= self.bound


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _records(class_name: str, sd: dict[str, torch.Tensor], **attrs: Any) -> PersistentObject:
    """A flat official state dict as the nested network records a snapshot unpickles into."""
    root = PersistentObject(class_name, {"_parameters": {}, "_buffers": {}, "_modules": {}, **attrs})
    for key, value in sd.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            node = node.state["_modules"].setdefault(part, PersistentObject(part, {"_parameters": {}, "_buffers": {},
                                                                                  "_modules": {}}))
        group = "_buffers" if leaf in ("w_avg", "noise_const") else "_parameters"
        node.state[group][leaf] = value
    return root


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double().reshape(a.shape)).abs().max().item()


def _outputs(conv: Converted, io: dict[str, torch.Tensor], c: torch.Tensor | None, what: str,
             **g_kwargs: Any) -> list[Check]:
    with torch.no_grad():
        checks = [Check(f"{what}: G_ema images", _diff(conv.G_ema(io["z"], c, **g_kwargs), io["images"]), 1e-5)]
        if conv.D is not None and "logits" in io:
            checks.append(Check(f"{what}: D logits", _diff(conv.D(io["x"], c), io["logits"]), 1e-5))
    return checks


def _transgan() -> list[Check]:
    t = load_file(FIXTURES / "transgan_cifar10_small.safetensors")
    conv = convert_transgan({"avg_gen_state_dict": _part(t, "G."), "gen_state_dict": _part(t, "G."),
                             "dis_state_dict": _part(t, "D.")})
    return _outputs(conv, _part(t, "io."), None, "TransGAN fixture (VITA-Group/TransGAN 6b85440)")


def _stylegan2_ada() -> list[Check]:
    checks = []
    t = load_file(FIXTURES / "stylegan2_ada_small.safetensors")
    for name, c_dim in (("uncond", 0), ("cond", 5)):
        G = _records("Generator", _part(t, f"{name}.G."), z_dim=16, c_dim=c_dim, img_channels=3)
        D = _records("Discriminator", _part(t, f"{name}.D."), c_dim=c_dim, img_channels=3)
        io = _part(t, f"{name}.io.")
        checks += _outputs(convert_stylegan2_ada({"G": G, "D": D, "G_ema": G}), io, io.get("labels"),
                           f"stylegan2-ada fixture, {name} (NVlabs d72cc7d)", noise_mode="const")
    t = load_file(FIXTURES / "stylegan2_ada_cifar.safetensors")
    G = _records("Generator", _part(t, "cifar.G."), z_dim=16, c_dim=10, img_channels=3)
    D = _records("Discriminator", _part(t, "cifar.D."), c_dim=10, img_channels=3)
    D.state["_modules"]["b4"].state["_modules"]["mbstd"] = PersistentObject(
        "MinibatchStdLayer", {"group_size": 32, "num_channels": 1})  # the cifar config's groups of 32
    io = _part(t, "io.")
    return checks + _outputs(convert_stylegan2_ada({"G": G, "D": D, "G_ema": G}), io, io["labels"],
                             "stylegan2-ada fixture, --cfg=cifar (NVlabs d72cc7d)", noise_mode="const")


def _styleswin() -> list[Check]:
    t = load_file(FIXTURES / "styleswin_g_small.safetensors")
    conv = convert_styleswin({"g_ema": _part(t, "G."), "d": _part(t, "D."), "args": {"lr_mlp": 0.01}})
    return _outputs(conv, _part(t, "io."), None, "StyleSwin fixture (microsoft/StyleSwin a7c28b3)")


def _r3gan() -> list[Check]:
    t = load_file(FIXTURES / "r3gan_small.safetensors")
    conv = convert_r3gan(load_official(FIXTURES / "r3gan_small.pkl"))
    io = _part(t, "io.")
    return _outputs(conv, io, io["c"].argmax(1), "R3GAN fixture (brownvc/R3GAN 19a7ddf)")


FIXTURE_CHECKS: dict[str, Callable[[], list[Check]]] = {
    "transgan": _transgan, "stylegan2-ada": _stylegan2_ada, "styleswin": _styleswin, "r3gan": _r3gan}


def fixture_checks(kind: str) -> list[Check]:
    """Check 1 of the module docstring for checkpoints of ``kind``; empty where the fixtures are not here."""
    if not (FIXTURES / "NOTE.md").is_file():
        return []
    return FIXTURE_CHECKS[kind]()


def run_checks(conv: Converted, run_dir: Path, official_params: dict[str, int]) -> list[Check]:
    """Check 2 of the module docstring: the written run against the in-memory conversion, and the counts."""
    # deferred: runs.load pulls in the data and model registries only --verify needs
    from transgan.registry import build_discriminator
    from transgan.runs.checkpoint import latest_checkpoint, load_checkpoint
    from transgan.runs.load import load_source

    loaded = load_source(run_dir).G
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, conv.G_ema.z_dim if conv.G_ema is not None else conv.G.z_dim, generator=gen)
    c = torch.arange(4) % conv.num_classes if conv.num_classes else None
    G_ema = conv.G_ema if conv.G_ema is not None else conv.G
    checks = []
    def seeded(G: torch.nn.Module) -> torch.Tensor:
        torch.manual_seed(1)  # the same per-layer noise for style generators' random noise inputs
        return G(z, c)

    with torch.no_grad():
        checks.append(Check("your file: the run's G_ema images vs the converted G_ema", _diff(seeded(loaded),
                                                                                            seeded(G_ema)), 0.0))
        if conv.D is not None:
            state = load_checkpoint(latest_checkpoint(run_dir))
            D = build_discriminator(state["model"]["discriminator"], conv.resolution, G_ema.img_channels,
                                    conv.num_classes).eval()
            D.load_state_dict(state["D"])
            x = torch.rand(4, G_ema.img_channels, conv.resolution, conv.resolution, generator=gen) * 2 - 1
            checks.append(Check("your file: the run's D logits vs the converted D", _diff(D(x, c), conv.D(x, c)), 0.0))
    for name, count in official_params.items():
        net = {"G_ema": G_ema, "D": conv.D}[name]
        ours = sum(p.numel() for p in net.parameters())
        checks.append(Check(f"your file: {name} parameters, official {count:,} vs converted {ours:,}",
                            float(abs(ours - count)), 0.0))
    return checks


def format_checks(checks: list[Check]) -> str:
    """The checks as a table, one line each, with the verdict last."""
    width = max(len(c.what) for c in checks)
    lines = [f"{'check':<{width}}  max abs diff  bound    ok"]
    lines += [f"{c.what:<{width}}  {c.max_abs_diff:12.3g}  {c.bound:<7g}  {'yes' if c.ok else 'NO'}" for c in checks]
    verdict = "all checks pass" if all(c.ok for c in checks) else "SOME CHECKS FAIL"
    return "\n".join(lines + [verdict])


def official_parameter_counts(kind: str, data: Any) -> dict[str, int]:
    """The parameter counts of the official networks in a loaded checkpoint (derived buffers excluded)."""
    def count(sd: dict[str, torch.Tensor], skip: tuple[str, ...]) -> int:
        return sum(v.numel() for k, v in sd.items() if not k.endswith(skip))

    if kind in ("stylegan2-ada", "r3gan"):  # network records (an R3GAN ModuleRecord is one too)
        out = {}
        for name, rec in (("G_ema", data.get("G_ema")), ("D", data.get("D"))):
            if isinstance(rec, PersistentObject):
                params: dict[str, torch.Tensor] = {}
                stack = [("", rec)]
                while stack:
                    prefix, node = stack.pop()
                    params.update({prefix + k: v for k, v in (node.state.get("_parameters") or {}).items()})
                    stack += [(f"{prefix}{k}.", m) for k, m in (node.state.get("_modules") or {}).items()
                              if isinstance(m, PersistentObject)]
                out[name] = count(params, ())
        return out
    if kind == "transgan":
        return {name: count(data[key], ("relative_position_index",)) for name, key in
                (("G_ema", "avg_gen_state_dict"), ("D", "dis_state_dict")) if isinstance(data.get(key), dict)}
    if kind == "styleswin":
        return {name: count(data[key], ("relative_position_index", "attn_mask", "attn_mask2", "_float_tensor",
                                         "upsample.kernel", "weight_u", "weight_v", "kernel", ".ll", ".lh", ".hl",
                                         ".hh"))
                for name, key in (("G_ema", "g_ema"), ("D", "d")) if isinstance(data.get(key), dict)}
    return {}


def report(kind: str, data: Any, conv: Converted, run_dir: Path) -> tuple[str, bool]:
    """The --verify table for a converted file and the run written from it, and whether every check passed."""
    checks = fixture_checks(kind) + run_checks(conv, run_dir, official_parameter_counts(kind, data))
    note = "" if (FIXTURES / "NOTE.md").is_file() else (
        "(the golden fixtures ship with a checkout, tests/fixtures/official; only your file was checked)\n")
    return note + format_checks(checks), all(c.ok for c in checks)
