"""The model a training run starts from: an ImageNet backbone with fresh FPN, SSH and heads, or a
detector checkpoint of the configured architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from detector.config import ModelConfig, get_preset
from detector.model import RetinaFace
from detector.training.config import TrainConfig
from detector.weights import load_backbone_weights, load_model

__all__ = ["architecture", "build_training_model"]


def build_training_model(
    config: TrainConfig, *, init_backbone: str | Path | None = None, init: str | Path | None = None
) -> RetinaFace:
    """The model a run starts from, on CPU, in train mode.

    Args:
        init_backbone: ImageNet backbone checkpoint (e.g. ``mobilenetV1X0.25_imagenet_pretrain.tar``,
            ``module.``-prefixed keys); FPN, SSH and heads are freshly initialised from ``config.seed``.
        init: a detector checkpoint (biubug6 ``.pth`` or ours); its architecture must be
            ``config.model``'s.
    """
    if (init_backbone is None) == (init is None):
        raise ValueError("give exactly one of init_backbone and init")
    expected = get_preset(config.model)
    if init is not None:
        model = load_model(init)
        if architecture(model.config) != architecture(expected):
            raise ValueError(
                f"{init} holds a {model.config.name!r} model but the run is configured for {config.model!r}; "
                "pass a matching model preset"
            )
        return model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = RetinaFace(expected)
    load_backbone_weights(model, init_backbone)
    return model.train()


def architecture(config: ModelConfig) -> dict[str, Any]:
    """The fields of ``config`` that define the network (all but ``name`` and ``train_image_size``):
    two configs with equal architectures load each other's weights."""
    data = config.to_dict()
    data.pop("name")
    data.pop("train_image_size")
    return data
