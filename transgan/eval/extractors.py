"""Feature extractors for the metrics, and where their weights come from — offline.

* ``inception-v3-compat`` (FID, KID, IS) and ``vgg16`` (precision/recall) are
  torch-fidelity's own extractors. Their weights are never downloaded behind the user's
  back: :func:`resolve_weights` finds the file given in the config or in torch's hub
  cache, and otherwise fails — before any image is generated — with one message naming
  the file, its expected name and where to put it.
* ``fd-digits`` is the digits judge shipped with the package, registered here as a
  torch-fidelity feature extractor, so FID-style distances ("FD-digits"), KID and
  precision/recall run on CPU with no download at all.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
import torch_fidelity
from torch_fidelity import feature_extractor_clip as clip
from torch_fidelity import feature_extractor_dinov2 as dinov2
from torch_fidelity.feature_extractor_dinov2 import MODEL_METADATA
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from transgan.errors import ConfigError
from transgan.eval.digits_judge import JUDGE_WEIGHTS, load_digits_judge

FD_DIGITS = "fd-digits"


class MissingWeightsError(FileNotFoundError):
    """A feature extractor's weights file is not on this machine."""


class WeightsDownloadError(ConfigError):
    """``eval.download_weights=true`` but the file could not be fetched (offline, blocked, moved)."""


class WeightsMismatchError(ConfigError):
    """A weights file whose sha256 is not the published one."""


@dataclass(frozen=True)
class WeightsFile:
    """A pretrained extractor's weights: the file name torch expects and where it is published."""

    what: str        # words for the message
    file_name: str  # the name torch's hub cache stores it under
    url: str
    config_key: str  # the config key that points at a local copy
    sha256: str      # the published digest, or its prefix (the hex part of the file name); "" if unknown
    hub_repo: str = ""  # torch.hub code the extractor also loads (DINOv2): torch-fidelity takes no file path then


WEIGHTS = {
    "inception-v3-compat": WeightsFile(
        "Inception-v3 weights (FID, KID, IS)", "weights-inception-2015-12-05-6726825d.pth",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
        "eval.inception_weights", "6726825d"),
    "vgg16": WeightsFile(
        "VGG16 weights (precision/recall)", "vgg16-397923af.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "eval.vgg16_weights", "397923af"),  # torchvision names its files by the sha256 prefix
}


def _torch_fidelity_weights() -> dict[str, WeightsFile]:
    """CLIP and DINOv2, as torch-fidelity fetches them: the same file names in torch's hub cache."""
    out = {name: WeightsFile(f"CLIP weights ({name})", f"{name}-{meta['hash']}.pt", clip.MODEL_URLS[name],
                             "eval.extractor_weights", meta["hash"])
           for name, meta in clip.MODEL_METADATA.items()}
    for name, model in dinov2.MODEL_METADATA.items():
        # No published digest is known to transgan for these: recorded, not verified.
        out[name] = WeightsFile(f"DINOv2 weights ({name}) and torch.hub's copy of facebookresearch/dinov2",
                                f"{model}_pretrain.pth",
                                f"https://dl.fbaipublicfiles.com/dinov2/{model}/{model}_pretrain.pth",
                                "", "", hub_repo="facebookresearch_dinov2_main")
    return out


WEIGHTS.update(_torch_fidelity_weights())
# The digits judge shipped in transgan/assets/: its digest is the published one (a judge retrained with
# tools/train_digits_judge.py, or a test's random one, is another judge and is refused unless allowed).
WEIGHTS[FD_DIGITS] = WeightsFile(
    "digits judge weights (fd-digits)", "digits_judge.safetensors", "the transgan package (transgan/assets/)",
    "eval.extractor_weights", "90e1104db413105a45dba500290888a6e581a68da75e76953e7e5c4cd0bff64c")


def weights_path_argument(extractor: str, path: Optional[Path]) -> Optional[str]:
    """What to pass torch-fidelity as ``feature_extractor_weights_path`` (DINOv2 finds its files in the hub cache)."""
    spec = WEIGHTS.get(extractor)
    if path is None or (spec is not None and spec.hub_repo):
        return None
    return str(path)


def hub_checkpoint_dir() -> Path:
    """torch's hub cache for weights files (``$TORCH_HOME/hub/checkpoints``, usually ``~/.cache/torch/...``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(extractor: str, path: Optional[str] = None, download: bool = False) -> Optional[Path]:
    """The local weights file of ``extractor`` (None for extractors that need none); fail clearly if absent.

    Looks at ``path`` when given, else at torch's hub cache (fd-digits: the shipped judge).
    ``download`` is False unless the user sets ``eval.download_weights=true``; only then is a
    missing hub-cache file fetched there first (the only way anything downloads).
    """
    if extractor == FD_DIGITS:

        judge = Path(os.path.expanduser(str(path))) if path else JUDGE_WEIGHTS
        if not judge.is_file():
            where = f"{judge} does not exist" if path else f"the shipped file {JUDGE_WEIGHTS} is missing"
            raise MissingWeightsError(f"digits judge weights (fd-digits) not found: {where}; they ship with "
                                      "transgan (recreate them with `python tools/train_digits_judge.py`)")
        return judge.resolve()
    spec = WEIGHTS.get(extractor)
    if spec is None:
        if path:
            raise MissingWeightsError(f"feature extractor {extractor!r} takes no weights file, but {path} was given")
        return None
    cached = hub_checkpoint_dir() / spec.file_name
    repo = Path(torch.hub.get_dir()) / spec.hub_repo if spec.hub_repo else None
    if path:
        if repo is not None:
            raise ConfigError(f"{extractor} takes no weights file ({path} was given): torch-fidelity loads it "
                              f"through torch.hub, from {cached} and {repo}")
        candidate = Path(os.path.expanduser(str(path)))
        if candidate.is_file():
            return candidate.resolve()
        looked = f"{candidate} (from {spec.config_key}) does not exist"
    else:
        missing = [p for p in (cached, repo) if p is not None and not p.exists()]
        if not missing:
            return cached
        if download:
            _download(extractor, spec, cached)
            return cached
        where = f"{spec.config_key} is not set and " if spec.config_key else ""
        looked = f"{where}torch's hub cache has no {' and no '.join(map(str, missing))}"
    put = f"put it at {cached} (torch's hub cache, $TORCH_HOME/hub/checkpoints)"
    if spec.config_key:
        put += f" or pass {spec.config_key}=<path to the file>"
    if repo is not None:
        put += f", with torch.hub's copy of the code at {repo}"
    raise MissingWeightsError(
        f"{spec.what} not found: {looked}. The file must be named {spec.file_name}: {put}. It is published at "
        f"{spec.url}; copy it from a machine with network access, or let transgan fetch it into the hub cache "
        "with eval.download_weights=true (see docs/evaluation.md).")


def _download(extractor: str, spec: WeightsFile, cached: Path) -> None:
    """Fetch a weights file into torch's hub cache (``eval.download_weights=true``); fail cleanly offline."""
    try:
        if spec.hub_repo:  # torch.hub fetches DINOv2's code and weights together

            torch.hub.load("facebookresearch/dinov2", MODEL_METADATA[extractor])
        else:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(spec.url, str(cached), progress=True)
    except (OSError, RuntimeError) as e:  # URLError and HTTPError are OSErrors
        raise WeightsDownloadError(
            f"eval.download_weights=true could not fetch {spec.what} from {spec.url} ({type(e).__name__}: {e}). "
            f"Without network access, copy {spec.file_name} to {cached} from a machine that has it.") from None


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) so a training loop hashes it once."""
    stat = os.stat(path)
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def verify_weights(extractor: str, path: Path, allow_unverified: bool = False) -> Optional[bool]:
    """Check a weights file against its published sha256: True if it matches, None if no digest is known.

    A mismatch raises :class:`WeightsMismatchError` unless ``allow_unverified``
    (``eval.allow_unverified_weights=true``), when it returns False for the protocol to record.
    """
    spec = WEIGHTS.get(extractor)
    if spec is None or not spec.sha256:
        return None
    digest = file_sha256(path)
    if digest.startswith(spec.sha256):
        return True
    if allow_unverified:
        return False
    raise WeightsMismatchError(
        f"{path} is not the published {spec.what}: its sha256 is {digest[:16]}..., the published file's begins "
        f"{spec.sha256[:16]}. Numbers computed with it would not be comparable to anyone's {extractor} numbers. "
        f"Replace it with {spec.file_name} from {spec.url}, or set eval.allow_unverified_weights=true to use it "
        "anyway (eval.json then records the weights as unverified).")


class FeatureExtractorDigits(torch_fidelity.FeatureExtractorBase):
    """The package's digits judge as a torch-fidelity extractor ("FD-digits").

    Input, as torch-fidelity feeds every extractor: uint8 [B, 3, H, W] (or [B, 1, H, W])
    in [0, 255], any size (the judge resizes to its own 16x16). Features: the judge's
    penultimate layer (``features``, used for FD/KID/precision-recall), its class
    logits (``logits``, used for an IS-style score) and the class logits of each channel judged
    alone (``channel_logits`` [B, 10 x C]: stacked digits' modes).
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: Optional[str] = None,
                 **kwargs) -> None:

        super().__init__(name, features_list)
        self.judge = load_digits_judge(device=torch.device("cpu"), path=feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return "features", "logits", "channel_logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features",
                "modes": "channel_logits"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"fd-digits expects uint8 images [B, 1 or 3, H, W], got {x.dtype} {tuple(x.shape)}")
        # The judge takes [-1, 1] at any size; it averages RGB (gray repeated) back to one channel.
        x = x.float() / 127.5 - 1
        out = {}
        if {"features", "logits"} & set(self.features_list):
            out["features"] = self.judge.features(x).float()
            out["logits"] = self.judge.head(out["features"]).float()
        if "channel_logits" in self.features_list:  # each channel a digit of its own (stacked digits), one batch
            B, C = x.shape[:2]
            out["channel_logits"] = self.judge(x.reshape(B * C, 1, *x.shape[2:])).float().view(B, C * 10)
        return tuple(out[name] for name in self.features_list)


def register_extractors() -> None:
    """Make transgan's extractors known to torch-fidelity (safe to call more than once)."""
    if FD_DIGITS not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(FD_DIGITS, FeatureExtractorDigits)


register_extractors()
