"""`uni_seg.backbones`: the registry. The ViT-Ti that the "cpu" profile trains takes the same
normalisation as its ImageNet hub weights (timm's pretrained config, read offline) and as the
pretrained file in ../shared/weights, whose README says it classifies with mean/std 0.5/0.5."""

from __future__ import annotations

import pytest
import timm

from uni_seg.backbones import BACKBONES, backbone_spec
from uni_seg.config import resolve_config


@pytest.mark.parametrize("name", [n for n, spec in BACKBONES.items() if spec.timm_name.startswith("vit_") and
                                  "dinov2" not in spec.timm_name and "uni" not in n])
def test_each_imagenet_vit_normalises_as_its_hub_weights_were_trained(name):
    spec = backbone_spec(name)
    hub = timm.models.get_pretrained_cfg(spec.imagenet_tag)  # timm's own table: no download
    assert hub is not None, f"{name}: timm knows no pretrained weights {spec.imagenet_tag!r}"
    assert tuple(spec.mean) == tuple(hub.mean) and tuple(spec.std) == tuple(hub.std), name


def test_the_cpu_profile_is_the_small_pretrained_vit():
    cfg = resolve_config("cpu")
    spec = backbone_spec(cfg.backbone)
    assert cfg.backbone == "vit_tiny" and cfg.weights == "imagenet" and cfg.n_gpus == 0
    assert spec.imagenet_tag == "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert tuple(spec.mean) == tuple(spec.std) == (0.5, 0.5, 0.5)
    # the recipe of docs/results.md, the one the sweep's grid varied around
    assert (cfg.working_scale, cfg.decoder_channels, cfg.epochs_phase1, cfg.epochs_phase2) == (0.5, 64, 40, 10)
    assert cfg.image_skip_channels == 32


def test_the_cpu_profile_trains_the_recipe_the_sweep_chose():
    """The cpu profile is the grid's chosen configuration (sweeps/vit_tiny_pretraining.json's
    `pretrained_stain_longer_image_skip`: base settings plus stronger stain jitter, 40 + 10 epochs
    under one cosine, the convolutional stem on the image), every training setting of it."""
    import json
    from pathlib import Path

    grid = json.loads((Path(__file__).resolve().parent.parent / "sweeps" / "vit_tiny_pretraining.json").read_text())
    chosen = {**grid["base"], **grid["configurations"]["pretrained_stain_longer_image_skip"]}
    not_recipe = {"PROFILE", "DATA_DIR", "WEIGHTS", "RUN_EXPORT", "EXTERNAL_EVAL_DIR"}  # where, not how
    cfg = resolve_config("cpu")
    differs = {name: (value, getattr(cfg, name.lower())) for name, value in chosen.items()
               if name not in not_recipe and getattr(cfg, name.lower()) != value}
    assert not differs, differs
