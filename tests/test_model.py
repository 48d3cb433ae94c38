"""uni_seg.model (with uni_seg.backbones and uni_seg.weights): registry, weights sources
(offline), pyramid shapes, phases, LoRA, config round trip.

Everything runs on vit_tiny with a small decoder on CPU; ViT-L and UNI2-h are only counted on
the "meta" device (no memory). Loading real architectures from hub caches and files, and the
`fetch` command, are in tests/test_weights.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
import types

import pytest
import timm
import torch
from offline_hub import FAKE_TOKEN, fill_hub_cache, isolate_hub

from uni_seg import model as M
from uni_seg import weights as W
from uni_seg.backbones import BACKBONES
from uni_seg.model import CellSegModel, build_model, count_parameters, parameter_counts_from_config

SMALL = dict(decoder_channels=32)


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch, tmp_path):
    """No token, an empty Hugging Face cache and home, so tests never see a developer's login."""
    isolate_hub(monkeypatch, tmp_path)


_BUILT: dict[str, CellSegModel] = {}


def tiny(**kw) -> CellSegModel:
    """A fresh vit_tiny model with random weights (seed 0); copies of a cached build, for speed."""
    key = json.dumps({**SMALL, **kw}, sort_keys=True)
    if key not in _BUILT:
        torch.manual_seed(0)
        _BUILT[key] = build_model("vit_tiny", "none", verbose=False, **{**SMALL, **kw})
    return copy.deepcopy(_BUILT[key])


def seg_loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v.float().square().mean() for v in out.values())


# ----- registry and shapes -------------------------------------------------------------------
def test_registry_names_taps_and_true_parameter_counts():
    assert set(BACKBONES) == {"uni", "uni2-h", "vit_large_imagenet", "vit_small", "vit_tiny",
                              "dinobloom-s", "dinobloom-b", "dinobloom-l", "dinobloom-g"}
    assert BACKBONES["uni"].taps == (5, 11, 17, 23) and BACKBONES["vit_tiny"].taps == (2, 5, 8, 11)
    for spec in BACKBONES.values():
        assert len(spec.taps) == 4 and spec.taps[-1] == spec.depth - 1 and list(spec.taps) == sorted(spec.taps)
    # LoRA on qkv: per block rank * (D in + 3D out). ViT-L: 24 * 4 * 4096 = 393,216 (not the seed's ~720K).
    for name, dim in [("uni", 1024), ("uni2-h", 1536), ("vit_tiny", 192)]:
        counts = parameter_counts_from_config(name, lora_rank=4, lora_alpha=8.0)
        assert counts["lora"] == BACKBONES[name].depth * 4 * (dim + 3 * dim)
        assert counts["total"] == counts["backbone"] + counts["lora"] + counts["decoder"]
    uni = parameter_counts_from_config("uni")
    assert 303_000_000 < uni["backbone"] < 304_000_000 and uni["lora"] == 0
    # the meta-device count is the count of the real model
    real = tiny(lora_rank=4, lora_alpha=8.0)
    assert count_parameters(real) == parameter_counts_from_config(**real.config)


@pytest.mark.parametrize("size", [(224, 224), (160, 96)])
def test_output_shapes(size):
    model = tiny(n_classes=5).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert set(out) == {"np", "hv", "nc"}
    assert out["np"].shape == (2, 1, *size) and out["hv"].shape == (2, 2, *size) and out["nc"].shape == (2, 5, *size)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in out.values())


def test_pyramid_strides_are_16_8_4_2():
    model = tiny().eval()
    taps = model._taps(torch.rand(1, 3, 224, 224))
    assert [t.shape[-1] for t in taps] == [14] * 4
    assert [r(t).shape[-1] for r, t in zip(model.reassemble, taps)] == [112, 56, 28, 14]


def test_bad_input_raises_clearly():
    model = tiny()
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.rand(1, 3, 100, 96))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 96, 96))
    with pytest.raises(ValueError, match="not one of"):
        build_model("resnet50", "none")
    with pytest.raises(ValueError, match="weights="):
        build_model("vit_tiny", "pretrained")
    with pytest.raises(ValueError, match="hv_activation"):
        tiny(hv_activation="sigmoid")


def test_tanh_hv_is_bounded_and_linear_is_default():
    assert tiny().config["hv_activation"] == "linear"
    model = tiny(hv_activation="tanh").eval()
    torch.nn.init.constant_(model.heads["hv"].body[-1].bias, 50.0)
    with torch.no_grad():
        hv = model(torch.rand(1, 3, 64, 64))["hv"]
    assert hv.abs().max() <= 1.0


def test_image_skip_is_off_by_default_and_adds_only_its_own_keys():
    plain, skipped = tiny(), tiny(image_skip_channels=8)
    assert plain.config["image_skip_channels"] == 0 and plain.image_skip is None
    assert skipped.config["image_skip_channels"] == 8
    plain_keys, skipped_keys = set(plain.state_dict()), set(skipped.state_dict())
    assert plain_keys < skipped_keys and all(k.startswith("image_skip.") for k in skipped_keys - plain_keys)
    # its parameters are the decoder's: they train in phase 1, with the backbone frozen
    skipped.set_phase(1)
    assert all(p.requires_grad for p in skipped.image_skip.parameters())
    assert {id(p) for p in skipped.image_skip.parameters()} <= {id(p) for p in skipped.decoder_parameters()}
    # the config rebuilds it, and the meta-device count is the real one
    rebuilt = build_model(**skipped.config, weights="none", verbose=False)
    assert set(rebuilt.state_dict()) == skipped_keys
    assert {k: v for k, v in count_parameters(skipped).items() if k != "trainable"} == {
        k: v for k, v in parameter_counts_from_config(**skipped.config).items() if k != "trainable"}
    with pytest.raises(ValueError, match="image_skip_channels=-1"):
        tiny(image_skip_channels=-1)


def test_image_skip_feeds_the_finest_level_with_the_pixels():
    """The stem's map is added at stride 2: outputs keep their size, and with the stem's last
    convolution zeroed the model computes exactly what the same weights without it compute."""
    torch.manual_seed(0)
    skipped = tiny(image_skip_channels=8).eval()
    x = torch.rand(1, 3, 160, 96)
    assert skipped.image_skip(x).shape == (1, SMALL["decoder_channels"], 80, 48)
    with torch.no_grad():
        out = skipped(x)
        assert out["hv"].shape == (1, 2, 160, 96) and out["nc"].shape == (1, 4, 160, 96)
        torch.nn.init.zeros_(skipped.image_skip.body[-1].weight)
        plain = tiny()
        plain.load_state_dict({k: v for k, v in skipped.state_dict().items() if not k.startswith("image_skip.")})
        zeroed, without = skipped(x), plain.eval()(x)
    assert all(torch.equal(zeroed[k], without[k]) for k in without)
    assert not torch.equal(out["hv"], without["hv"])


def test_patch14_backbone_gets_the_same_token_grid():
    """UNI2-h cuts 14-pixel patches: the input is resized by 14/16, so taps stay at input/16."""
    spec = dataclasses.replace(BACKBONES["vit_tiny"], name="vit_tiny_p14")
    vit = timm.create_model("vit_tiny_patch16_224", patch_size=14, num_classes=0, dynamic_img_size=True)
    model = CellSegModel(vit, spec, decoder_channels=16).eval()
    skipped = CellSegModel(vit, spec, decoder_channels=16, image_skip_channels=4).eval()  # the stem reads the unresized image
    with torch.no_grad():
        for size in [(224, 224), (160, 96)]:
            assert model(torch.rand(1, 3, *size))["nc"].shape[-2:] == size
            assert skipped(torch.rand(1, 3, *size))["nc"].shape[-2:] == size
    taps = model._taps(torch.nn.functional.interpolate(torch.rand(1, 3, 160, 96), size=(140, 84)))
    assert taps[0].shape[-2:] == (10, 6)


def test_uni2h_architecture_on_meta_device():
    spec = BACKBONES["uni2-h"]
    with torch.device("meta"):
        model = CellSegModel(M.create_backbone(spec), spec, decoder_channels=32)
        out = model(torch.empty(1, 3, 224, 160))
    assert model.patch_size == 14 and out["np"].shape == (1, 1, 224, 160)


def _source_and_line(*args, **kwargs) -> tuple[str, str]:
    """`load_backbone_weights(*args, **kwargs)`: what it loaded and its one-line report."""
    loaded = W.load_backbone_weights(*args, **kwargs)
    return loaded.source, loaded.message


# ----- weights sources -----------------------------------------------------------------------
def test_fake_token_without_network_falls_back_to_none(monkeypatch, capsys):
    import huggingface_hub

    def unreachable(*args, **kwargs):  # what a node without a network answers, whatever this machine has
        raise ConnectionError("Failed to resolve 'huggingface.co' (Name or service not known)")

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(huggingface_hub, "auth_check", unreachable)
    loaded = W.load_backbone_weights(torch.nn.Identity(), BACKBONES["uni"], "auto", hub_timeout=5)
    source, line = loaded.source, loaded.message
    assert source == "none" and "RANDOM INIT" in line
    assert "hub: no network" in line and "imagenet: no network" in line
    assert FAKE_TOKEN not in line and FAKE_TOKEN not in capsys.readouterr().out


def test_no_token_is_named():
    source, line = _source_and_line(torch.nn.Identity(), BACKBONES["uni"], "auto", hub_timeout=5)
    assert source == "none" and "hub: no token" in line


def test_no_access_is_named(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(repo_id, **kw):
        error = GatedRepoError.__new__(GatedRepoError)  # its __init__ wants a live HTTP response
        Exception.__init__(error, f"Access to model {repo_id} is restricted.")
        raise error

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(huggingface_hub, "auth_check", gated)
    source, line = _source_and_line(torch.nn.Identity(), BACKBONES["uni"], "auto", hub_timeout=5)
    assert source == "none" and "hub: no access" in line and "imagenet: no access" in line


def test_a_hanging_hub_is_cut_off(monkeypatch):
    import huggingface_hub

    release = threading.Event()
    waits: list[float | None] = []

    class DeadlineThread(threading.Thread):
        """An injected clock: each bounded wait (`join(timeout)`) is recorded and ends at once as
        if its deadline had passed, so the test needs no wall clock and never waits."""

        def join(self, timeout: float | None = None) -> None:
            waits.append(timeout)

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(huggingface_hub, "auth_check", lambda *a, **k: release.wait(60))
    monkeypatch.setattr(W, "threading", types.SimpleNamespace(Thread=DeadlineThread))
    source, line = _source_and_line(torch.nn.Identity(), BACKBONES["uni"], "auto", hub_timeout=0.5)
    release.set()
    assert sum(waits) < 5 and waits == [0.5]  # one deadline, not one per source
    assert source == "none" and "gave no answer within 0.5 s" in line


def test_explicit_sources_that_cannot_load_raise():
    with pytest.raises(W.WeightsUnavailable, match="no token"):
        W.load_backbone_weights(torch.nn.Identity(), BACKBONES["uni"], "hub", hub_timeout=5)
    with pytest.raises(W.WeightsUnavailable, match="no hub checkpoint"):
        W.load_backbone_weights(torch.nn.Identity(), BACKBONES["vit_tiny"], "hub")
    with pytest.raises(W.WeightsUnavailable, match="no ImageNet checkpoint"):
        W.load_backbone_weights(torch.nn.Identity(), BACKBONES["uni2-h"], "imagenet")


def test_weights_none_says_so(capsys):
    model = build_model("vit_tiny", "none", **SMALL)
    assert model.weights_source == "none"
    assert "none (random init, as asked" in capsys.readouterr().out


def _fake_cached_imagenet(tmp_path, tag: str, state: dict[str, torch.Tensor]) -> None:
    """Lay `state` out as the Hugging Face cache would hold timm's `tag` checkpoint."""
    import huggingface_hub.constants as constants

    fill_hub_cache(tmp_path / "hub", timm.models.get_pretrained_cfg(tag).hf_hub_id, {"model.safetensors": state},
                   revision="0" * 40)
    assert constants.HF_HUB_CACHE == str(tmp_path / "hub")


def test_cached_imagenet_weights_load_offline(tmp_path, capsys):
    torch.manual_seed(1)
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=1000)  # with a classifier head
    _fake_cached_imagenet(tmp_path, BACKBONES["vit_tiny"].imagenet_tag, reference.state_dict())
    model = build_model("vit_tiny", "auto", **SMALL)
    assert model.weights_source == "imagenet"
    assert "imagenet (timm vit_tiny_patch16_224.augreg_in21k_ft_in1k, local cache); not loaded: hub: no hub" in (
        capsys.readouterr().out
    )
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key
    assert model.pixel_mean.flatten().tolist() == [0.5, 0.5, 0.5]


def test_imagenet_weights_into_a_layerscale_vit_set_layerscale_to_one():
    """UNI's shape has LayerScale; ImageNet ViT-L has none: gamma = 1 makes the copy exact."""
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=1000, dynamic_img_size=True).eval()
    scaled = timm.create_model("vit_tiny_patch16_224", num_classes=0, init_values=1e-5, dynamic_img_size=True).eval()
    W._load_into_backbone(scaled, plain.state_dict(), "imagenet")
    assert torch.all(scaled.blocks[3].ls1.gamma == 1.0)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(scaled.forward_features(x), plain.forward_features(x), atol=1e-6)
    with pytest.raises(RuntimeError, match="do not fit"):
        W._load_into_backbone(scaled, plain.state_dict(), "hub")  # hub weights must match exactly


# ----- phases --------------------------------------------------------------------------------
def _record_backbone_grad_mode(model: CellSegModel) -> list[bool]:
    seen: list[bool] = []
    model.backbone.blocks[0].register_forward_hook(
        lambda module, inputs, output: seen.append(torch.is_grad_enabled() or output.requires_grad)
    )
    return seen


def test_phase1_backbone_gets_no_gradient_and_no_graph():
    model = tiny()
    groups = model.param_groups(1, lr_decoder=1e-3, weight_decay=1e-4)
    assert [g["name"] for g in groups] == ["decoder"] and groups[0]["lr"] == 1e-3
    assert model.backbone_frozen()
    seen = _record_backbone_grad_mode(model)
    seg_loss(model(torch.rand(2, 3, 64, 64))).backward()
    assert seen == [False]  # the backbone ran under no_grad
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.decoder_parameters())
    assert sum(p.grad.abs().sum() for p in model.decoder_parameters()) > 0


def test_phase2_trains_only_lora_and_decoder():
    model = tiny()
    model.add_lora(rank=4, alpha=8.0)
    groups = model.param_groups(2, lr_decoder=1e-4, lr_lora=1e-5, weight_decay=1e-4)
    assert [(g["name"], g["lr"]) for g in groups] == [("lora", 1e-5), ("decoder", 1e-4)]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    lora = {name for name, _ in model.named_parameters() if "lora_" in name}
    decoder = {name for name, _ in model.named_parameters() if not name.startswith("backbone.")}
    assert len(lora) == 2 * 12 and trainable == lora | decoder
    assert sum(p.numel() for g in groups for p in g["params"]) == model.parameter_counts()["trainable"]
    seen = _record_backbone_grad_mode(model)
    seg_loss(model(torch.rand(2, 3, 64, 64))).backward()
    assert seen == [True]
    for name, p in model.backbone.named_parameters():
        if "lora_B" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name  # B = 0, so A's first gradient is 0
        elif "lora_" not in name:
            assert p.grad is None, name
    assert all(p.grad is not None for p in model.decoder_parameters())


def test_phase2_without_lora_and_bad_phase_raise():
    model = tiny()
    with pytest.raises(ValueError, match="add_lora"):
        model.param_groups(2, lr_decoder=1e-4, lr_lora=1e-5)
    with pytest.raises(ValueError, match="phase=3"):
        model.set_phase(3)
    model.add_lora()
    with pytest.raises(ValueError, match="lr_lora"):
        model.param_groups(2, lr_decoder=1e-4)
    with pytest.raises(ValueError, match="already"):
        model.add_lora()


# ----- LoRA ----------------------------------------------------------------------------------
def test_lora_injection_is_bit_identical():
    model = tiny().eval()
    x = torch.rand(2, 3, 96, 64)
    with torch.no_grad():
        before = model(x)
        model.add_lora(rank=4, alpha=8.0)
        after = model(x)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.all(p == 0) for name, p in model.backbone.named_parameters() if "lora_B" in name)
    assert model.config["lora_rank"] == 4 and model.config["lora_alpha"] == 8.0


def _perturb_lora(model: CellSegModel) -> None:
    with torch.no_grad():
        for p in model.lora_parameters():
            p.normal_(0, 0.05)


def test_lora_adapters_save_load_and_merge():
    torch.manual_seed(0)
    model = tiny(lora_rank=4, lora_alpha=8.0).eval()
    _perturb_lora(model)
    adapters = model.lora_state_dict()
    assert len(adapters) == 24 and all("lora_" in k for k in adapters)
    other = tiny(lora_rank=4, lora_alpha=8.0).eval()
    other.load_state_dict({k: v for k, v in model.state_dict().items() if "lora_" not in k}, strict=False)
    other.load_lora_state_dict(adapters)
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        reference = model(x)
        assert all(torch.equal(reference[k], other(x)[k]) for k in reference)
        model.merge_lora()
        merged = model(x)
    assert all(torch.allclose(reference[k], merged[k], atol=1e-5) for k in reference)
    assert model.config["lora_rank"] is None and not model.lora_parameters()
    assert set(model.state_dict()) == set(tiny().state_dict())
    with pytest.raises(ValueError, match="does not fit"):
        other.load_lora_state_dict({k: v for k, v in list(adapters.items())[1:]})


@pytest.mark.parametrize("lora_rank", [None, 4])
def test_config_round_trip_rebuilds_the_same_keys(lora_rank):
    model = tiny(lora_rank=lora_rank, lora_alpha=6.0 if lora_rank else None, n_classes=3).eval()
    if lora_rank:
        _perturb_lora(model)
    config = json.loads(json.dumps(model.config))  # what a checkpoint stores
    rebuilt = build_model(**config, weights="none", verbose=False).eval()
    rebuilt.load_state_dict(model.state_dict())  # strict: same keys, same shapes
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        assert all(torch.equal(model(x)[k], rebuilt(x)[k]) for k in ("np", "hv", "nc"))
    assert "pixel_mean" in model.state_dict()


def test_token_is_never_in_config_state_or_message(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    model = build_model("vit_tiny", "auto", verbose=False, **SMALL)
    assert FAKE_TOKEN not in json.dumps(model.config) + model.weights_message
    assert not any(FAKE_TOKEN in k for k in model.state_dict())


def test_bf16_autocast_forward_runs():
    model = tiny().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(1, 3, 64, 64))
    assert out["np"].shape == (1, 1, 64, 64) and torch.isfinite(out["hv"].float()).all()


def test_grad_checkpointing_keeps_phase2_gradients():
    model = tiny(lora_rank=2, lora_alpha=4.0)
    model.set_phase(2)
    model.set_grad_checkpointing(True)
    seg_loss(model(torch.rand(1, 3, 32, 32))).backward()
    assert all(p.grad is not None for p in model.lora_parameters())
