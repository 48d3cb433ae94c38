"""uni_seg.weights: every route by which backbone weights reach a run, with no network.

Hub caches are built on disk in huggingface_hub's own layout (tests/offline_hub.py) and hold
random weights of the real architectures made by timm itself, so each test checks uni_seg's
loading against timm, not against uni_seg. Routes: a DinoBloom cache (both sizes of position
table), UNI's cache under both spellings of its name, local files and folders, and the
`fetch` command of a login node. The hub's answers (no network, no access, a server failure,
a download) are stand-ins patched into huggingface_hub: nothing here asks huggingface.co.
The ViT-L tests are slow-marked; ViT-G is only built on the "meta" device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
import types
from pathlib import Path

import pytest
import timm
import torch

from offline_hub import FAKE_TOKEN, REVISION, fill_hub_cache, go_offline, isolate_hub, save_weights, timm_config
from uni_seg import weights as W
from uni_seg.backbones import BACKBONES, create_backbone
from uni_seg.config import resolve_config
from uni_seg.model import build_model, parameter_counts_from_config

DINOBLOOM_S = "1aurent/vit_small_patch14_224.dinobloom"


@pytest.fixture(autouse=True)
def hub_cache(monkeypatch, tmp_path) -> Path:
    """An empty hub cache and no token for every test (a developer's login is never seen)."""
    return isolate_hub(monkeypatch, tmp_path)


@pytest.fixture
def no_download(monkeypatch):
    """Any download attempt fails the test: a route that must not touch the hub proves it does not."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("hf_hub_download was called")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


def timm_dinobloom_s(img_size: int = 224, seed: int = 1) -> torch.nn.Module:
    """DinoBloom-S's architecture as timm builds it (random weights), with a position table made for `img_size`."""
    torch.manual_seed(seed)
    return timm.create_model("vit_small_patch14_dinov2", img_size=img_size, num_classes=0)


def assert_backbone_holds(model: torch.nn.Module, state: dict[str, torch.Tensor], but: tuple[str, ...] = ()) -> None:
    """Every tensor of `model.backbone` equals the file's (`state`), apart from the keys in `but`."""
    own = model.backbone.state_dict()
    assert set(own) == set(state)
    for key, value in own.items():
        if key not in but:
            assert torch.equal(value, state[key]), key


def http_error(status: int):
    """A huggingface_hub HTTP error as the hub raises it for `status` (its __init__ wants a live response)."""
    from huggingface_hub.errors import HfHubHTTPError

    error = HfHubHTTPError.__new__(HfHubHTTPError)
    Exception.__init__(error, f"{status} Server Error for url https://huggingface.co/api/models/x")
    error.response = types.SimpleNamespace(status_code=status, headers={})
    return error


# ----- DinoBloom from a hub cache ------------------------------------------------------------
@pytest.mark.parametrize("table_size", [224, 518])
def test_dinobloom_s_loads_from_its_hub_cache_offline(hub_cache, monkeypatch, table_size, no_download, capsys):
    """Both sizes of position table load under HF_HUB_OFFLINE=1; the 518 one is resampled exactly as timm does."""
    reference = timm_dinobloom_s(table_size)
    state = reference.state_dict()
    snapshot = fill_hub_cache(hub_cache, DINOBLOOM_S, {"model.safetensors": state},
                              timm_config("vit_small_patch14_dinov2", 384, table_size))
    go_offline(monkeypatch)
    torch.manual_seed(0)
    model = build_model("dinobloom-s", "auto", decoder_channels=16)
    assert model.weights_source == "hub"
    line = capsys.readouterr().out
    assert f"hub (hf-hub:{DINOBLOOM_S}, revision {REVISION[:7]}, local cache" in line
    if table_size == 224:
        assert_backbone_holds(model, state)
    else:
        assert "position table resampled from 1370 to 257 tokens" in line
        assert_backbone_holds(model, state, but=("pos_embed",))
        timm_loaded = timm.create_model("vit_small_patch14_dinov2", img_size=224, num_classes=0, pretrained=True,
                                        pretrained_cfg_overlay=dict(file=str(snapshot / "model.safetensors")))
        assert torch.equal(model.backbone.pos_embed, timm_loaded.pos_embed)
    assert model.weights_provenance == dict(
        kind="hub", backbone="dinobloom-s", repo=DINOBLOOM_S, revision=REVISION, filename="model.safetensors",
        path=None, sha256=None, message=model.weights_message)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 48))["np"].shape == (1, 1, 64, 48)  # patch 14: input resized by 14/16


def test_dinobloom_is_public_no_token_needed_and_falls_back_to_dinov2(monkeypatch, capsys):
    """Without a cache and without network: 'no network' for both sources, never 'no token'."""
    import huggingface_hub

    asked = []

    def unreachable(repo_id, token=None, **kwargs):
        asked.append((repo_id, token))
        raise ConnectionError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub, "auth_check", unreachable)
    model = build_model("dinobloom-s", "auto", decoder_channels=16)
    line = capsys.readouterr().out
    assert model.weights_source == "none" and "hub: no network" in line and "no token" not in line
    assert asked == [(DINOBLOOM_S, False)]  # public: asked anonymously; the verdict is then remembered
    assert BACKBONES["dinobloom-s"].imagenet_tag == "vit_small_patch14_dinov2.lvd142m"


# ----- UNI under both spellings of its name --------------------------------------------------
@pytest.mark.parametrize("spelling", ["MahmoodLab/UNI", "MahmoodLab/uni"])
def test_a_uni_cache_under_either_spelling_is_found(hub_cache, monkeypatch, spelling, no_download):
    """The card now says MahmoodLab/UNI; caches filled as MahmoodLab/uni load too (folder names are case-sensitive).

    The architecture is vit_tiny's here (seconds); the slow test below does the same with UNI's ViT-L."""
    spec = dataclasses.replace(BACKBONES["vit_tiny"], hub_id="MahmoodLab/UNI", gated=True)
    torch.manual_seed(1)
    state = timm.create_model("vit_tiny_patch16_224", num_classes=0).state_dict()
    fill_hub_cache(hub_cache, spelling, {"pytorch_model.bin": state}, blobs=True)
    go_offline(monkeypatch)
    backbone = create_backbone(spec)
    loaded = W.load_backbone_weights(backbone, spec, "auto")
    assert loaded.source == "hub" and "local cache" in loaded.message
    assert loaded.provenance["repo"] == "MahmoodLab/UNI" and loaded.provenance["revision"] == REVISION
    assert all(torch.equal(v, state[k]) for k, v in backbone.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("spelling", ["MahmoodLab/UNI", "MahmoodLab/uni"])
def test_uni_vit_large_loads_from_pytorch_model_bin_offline(hub_cache, monkeypatch, spelling, no_download):
    """UNI's real architecture, as its card builds it with timm, from a cache under either spelling."""
    torch.manual_seed(1)
    reference = timm.create_model("vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5,
                                  num_classes=0, dynamic_img_size=True)
    state = reference.state_dict()
    fill_hub_cache(hub_cache, spelling, {"pytorch_model.bin": state}, blobs=True)
    del reference
    go_offline(monkeypatch)
    model = build_model("uni", "hub", decoder_channels=16, verbose=False)
    assert model.weights_source == "hub" and model.weights_provenance["revision"] == REVISION
    assert_backbone_holds(model, state)


@pytest.mark.parametrize("name", [name for name, spec in BACKBONES.items() if spec.hub_id])
def test_every_hub_backbone_reads_its_filled_cache_offline(hub_cache, monkeypatch, name, no_download):
    """Under HF_HUB_OFFLINE=1 each hub backbone finds its cache and reads it (here a stand-in file,
    which the strict check then refuses: the architectures are built on the "meta" device)."""
    spec = BACKBONES[name]
    filename = "model.safetensors" if name.startswith("dinobloom") else "pytorch_model.bin"
    snapshot = fill_hub_cache(hub_cache, spec.hub_id, {filename: {"stand_in": torch.zeros(2)}})
    go_offline(monkeypatch)
    assert W._cached_weights_file(spec.hub_id) == str(snapshot / filename)
    with torch.device("meta"):
        backbone = create_backbone(spec)
    with pytest.raises(W.WeightsMismatch, match=rf"hub weights of hf-hub:{spec.hub_id} for backbone '{name}' .*"
                                                r"1 unexpected \(first: stand_in\)"):
        W.load_backbone_weights(backbone, spec, "hub")


# ----- local files and folders ---------------------------------------------------------------
@pytest.mark.parametrize("layout", ["model.safetensors", "pytorch_model.bin", "uni.pth", "folder", "folder of one .pth"])
def test_a_local_weights_file_or_folder_loads_and_is_fingerprinted(tmp_path, layout, no_download, capsys):
    torch.manual_seed(1)
    state = timm.create_model("vit_tiny_patch16_224", num_classes=0).state_dict()
    if layout.startswith("folder"):  # as hf_hub_download(..., local_dir=...) leaves it
        folder = tmp_path / "weights"
        file = save_weights(state, folder / ("pytorch_model.bin" if layout == "folder" else "vit_tiny.pth"))
        (folder / ".cache" / "huggingface").mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        setting = str(folder)
    else:
        file = save_weights(state, tmp_path / layout)
        setting = str(file)
    torch.manual_seed(0)
    model = build_model("vit_tiny", setting, decoder_channels=16)
    assert model.weights_source == "file"
    assert_backbone_holds(model, state)
    sha256 = hashlib.sha256(file.read_bytes()).hexdigest()
    assert model.weights_provenance == dict(kind="file", backbone="vit_tiny", repo=None, revision=None, filename=None,
                                            path=str(file.absolute()), sha256=sha256, message=model.weights_message)
    assert f"file ({file.absolute()}, sha256 {sha256[:12]})" in capsys.readouterr().out
    assert resolve_config("demo", weights=setting).weights == setting  # the notebook parameter takes it too


def test_a_file_for_another_architecture_is_one_line_naming_file_backbone_and_differences(tmp_path):
    """A DinoBloom-B file given to dinobloom-s; a ViT-S/16 file (same width, other patch) too: never silently adapted."""
    with torch.device("meta"):
        base = timm.create_model("vit_base_patch14_dinov2", img_size=224, num_classes=0)
    base_file = save_weights(base.to_empty(device="cpu").state_dict(), tmp_path / "dinobloom-b.safetensors")
    with pytest.raises(W.WeightsMismatch) as caught:
        build_model("dinobloom-s", str(base_file), verbose=False)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 1000
    assert str(base_file) in message and "'dinobloom-s' (vit_small_patch14_dinov2)" in message
    assert "174 key(s) of another shape (first: cls_token (1, 1, 768) in the file, (1, 1, 384) in the backbone" in message

    torch.manual_seed(1)
    vit_s16 = save_weights(timm.create_model("vit_small_patch16_224", num_classes=0).state_dict(), tmp_path / "s16.bin")
    with pytest.raises(W.WeightsMismatch, match=r"1 key\(s\) of another shape \(first: patch_embed.proj.weight "
                                                r"\(384, 3, 16, 16\) in the file, \(384, 3, 14, 14\) in the backbone\); "
                                                r"24 missing \(first: blocks.0.ls1.gamma"):
        build_model("dinobloom-s", str(vit_s16), verbose=False)


@pytest.mark.parametrize("content, expected", [
    (b"not a weights file at all", "is not a readable weights file"),
    ("pickle", "is not a readable weights file"),  # a pickle that would run code is refused unread
    ("wrapped", "holds a dict (keys ['teacher', 'student']), not a state dict of tensors"),
])
def test_a_file_that_is_not_a_state_dict_is_one_line(tmp_path, content, expected):
    path = tmp_path / "weights.pth"
    if content == "pickle":
        torch.save({"blocks": threading.Lock}, path)  # an arbitrary object: weights_only refuses it
    elif content == "wrapped":
        torch.save({"teacher": {"w": torch.zeros(1)}, "student": {}}, path)  # a training checkpoint, not weights
    else:
        path.write_bytes(content)
    with pytest.raises(W.WeightsUnavailable, match=re.escape(expected)) as caught:
        build_model("vit_tiny", str(path), verbose=False)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_folder_with_no_or_several_weights_files_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(W.WeightsUnavailable, match="holds no weights file"):
        W.resolve_weights_path(tmp_path / "empty")
    for name in ("a.pth", "b.pth"):
        save_weights({"w": torch.zeros(1)}, tmp_path / "two" / name)
    with pytest.raises(W.WeightsUnavailable, match=r"holds 2 weights files \(a.pth, b.pth\)"):
        W.resolve_weights_path(tmp_path / "two")
    with pytest.raises(ValueError, match="WEIGHTS='/no/such/weights.bin' is not one of"):
        resolve_config("demo", weights="/no/such/weights.bin")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file but not a weights file"):
        resolve_config("demo", weights=str(tmp_path / "notes.txt"))


# ----- the hub's answers ---------------------------------------------------------------------
def test_a_server_failure_is_reported_as_one_without_retries(monkeypatch, no_download):
    """An HTTP 500 is the hub's failure, named as such at once (no download, so no minutes of retries)."""
    import huggingface_hub

    def failing(repo_id, **kwargs):
        raise http_error(500)

    monkeypatch.setattr(huggingface_hub, "auth_check", failing)
    loaded = W.load_backbone_weights(torch.nn.Identity(), BACKBONES["dinobloom-s"], "auto")
    assert loaded.source == "none"
    assert "hub: server failure (huggingface.co answered HTTP 500; try again later)" in loaded.message
    assert "imagenet: server failure" in loaded.message and "holds neither" not in loaded.message


def test_a_server_failure_during_the_download_is_not_a_missing_file(monkeypatch):
    """hf_hub_download wraps a 500 in 'not in the local cache' (LocalEntryNotFoundError): the 500 is what is said."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def download(*args, **kwargs):
        try:
            raise http_error(503)
        except Exception as cause:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub") from cause

    monkeypatch.setattr(huggingface_hub, "auth_check", lambda repo_id, **kwargs: None)
    monkeypatch.setattr(huggingface_hub, "model_info", lambda repo_id, **kwargs: types.SimpleNamespace(
        sha=REVISION, siblings=[types.SimpleNamespace(rfilename="model.safetensors")]))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(W.WeightsUnavailable, match=r"download failed: server failure \(huggingface.co answered HTTP 503"):
        W.load_backbone_weights(torch.nn.Identity(), BACKBONES["dinobloom-s"], "hub")


# ----- `fetch` on a login node ---------------------------------------------------------------
@pytest.fixture
def fake_hub(monkeypatch, hub_cache):
    """A hub that grants access and serves DinoBloom-S weights made by timm; returns their state dict."""
    import huggingface_hub

    state = timm_dinobloom_s().state_dict()

    def download(repo_id, filename, revision=None, token=None, local_dir=None, **kwargs):
        assert (repo_id, filename, revision, token) == (DINOBLOOM_S, "model.safetensors", REVISION, False)
        if local_dir is not None:
            return str(save_weights(state, Path(local_dir) / filename))
        return str(fill_hub_cache(hub_cache, repo_id, {filename: state}, blobs=True) / filename)

    monkeypatch.setattr(huggingface_hub, "auth_check", lambda repo_id, **kwargs: None)
    monkeypatch.setattr(huggingface_hub, "model_info", lambda repo_id, **kwargs: types.SimpleNamespace(
        sha=REVISION, siblings=[types.SimpleNamespace(rfilename=n) for n in ("config.json", "model.safetensors")]))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return state


def setting(lines: str, name: str) -> str:
    """The value of the `  NAME=value` line `fetch` prints."""
    return next(line.split("=", 1)[1] for line in lines.splitlines() if line.strip().startswith(f"{name}="))


def test_fetch_to_a_folder_prints_the_weights_setting_that_loads_offline(fake_hub, tmp_path, monkeypatch, capsys):
    W.main(["fetch", "dinobloom-s", "--to", str(tmp_path / "weights")])
    out = capsys.readouterr().out
    path = tmp_path / "weights" / "model.safetensors"
    assert f"Fetched hf-hub:{DINOBLOOM_S} (revision {REVISION}, model.safetensors" in out
    assert "every key and shape fits 'dinobloom-s' (vit_small_patch14_dinov2)" in out
    assert setting(out, "BACKBONE") == "dinobloom-s" and setting(out, "WEIGHTS") == str(path)
    assert f"sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}" in out
    go_offline(monkeypatch)  # the compute node
    model = build_model("dinobloom-s", setting(out, "WEIGHTS"), decoder_channels=16, verbose=False)
    assert_backbone_holds(model, fake_hub)


def test_fetch_into_the_cache_prints_the_offline_hub_setting_that_loads(fake_hub, monkeypatch, capsys):
    W.main(["fetch", "dinobloom-s"])
    out = capsys.readouterr().out
    assert "export HF_HUB_OFFLINE=1" in out and setting(out, "WEIGHTS") == "hub"
    go_offline(monkeypatch)
    model = build_model("dinobloom-s", "hub", decoder_channels=16, verbose=False)
    assert_backbone_holds(model, fake_hub)
    W.main(["check", "dinobloom-s", "--weights", "hub"])  # what a compute node runs before a long job
    assert f"hub (hf-hub:{DINOBLOOM_S}, revision {REVISION[:7]}, local cache)" in capsys.readouterr().out


def _unreachable(repo_id, **kwargs):
    raise ConnectionError("[Errno -3] Temporary failure in name resolution")


def _gated(repo_id, **kwargs):
    from huggingface_hub.errors import GatedRepoError

    error = GatedRepoError.__new__(GatedRepoError)  # its __init__ wants a live HTTP response
    Exception.__init__(error, f"Access to model {repo_id} is restricted.")
    raise error


def _server_failure(repo_id, **kwargs):
    raise http_error(502)


@pytest.mark.parametrize("backbone, hub, token, offline, expected", [
    ("dinobloom-s", _unreachable, None, False, "no network (ConnectionError: [Errno -3] Temporary failure"),
    ("uni", _gated, FAKE_TOKEN, False, "no access (this token's account is not approved for MahmoodLab/UNI"),
    ("uni2-h", None, None, False, "no token (set HF_TOKEN or run `hf auth login`)"),
    ("dinobloom-g", _server_failure, None, False, "server failure (huggingface.co answered HTTP 502"),
    ("dinobloom-s", None, None, True, "no network (HF_HUB_OFFLINE is set"),
])
def test_fetch_without_network_or_access_says_which_in_one_line(monkeypatch, capsys, no_download, backbone, hub, token,
                                                                offline, expected):
    import huggingface_hub

    if hub is not None:
        monkeypatch.setattr(huggingface_hub, "auth_check", hub)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    if offline:
        go_offline(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        W.main(["fetch", backbone], prog="uni-seg weights")
    captured = capsys.readouterr()
    assert exit_.value.code == 1 and captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"uni-seg weights fetch {backbone}: {expected}")


def test_fetch_gives_up_on_a_silent_hub_at_its_deadline(monkeypatch, capsys, no_download):
    """A hub that never answers: fetch returns at its deadline while the request is still hanging."""
    import huggingface_hub

    release = threading.Event()
    monkeypatch.setattr(huggingface_hub, "auth_check", lambda *a, **k: release.wait(120))
    with pytest.raises(SystemExit):
        W.main(["fetch", "dinobloom-s", "--timeout", "0.2"])
    still_hanging = not release.is_set()
    release.set()
    assert still_hanging
    assert "no network (huggingface.co gave no answer within 0.2 s)" in capsys.readouterr().err


def test_a_planted_token_never_appears_in_any_output(hub_cache, monkeypatch, tmp_path, capfd):
    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    (tmp_path / "token").write_text(FAKE_TOKEN)  # the cached login too
    leaky = f"proxy refused https://user:{FAKE_TOKEN}@huggingface.co"
    monkeypatch.setattr(huggingface_hub, "auth_check", lambda repo_id, **kwargs: (_ for _ in ()).throw(OSError(leaky)))
    texts = []
    for backbone in ("uni", "dinobloom-s"):
        with pytest.raises(SystemExit):
            W.main(["fetch", backbone])
        texts.append(build_model(backbone, "auto", decoder_channels=16).weights_message)
    fill_hub_cache(hub_cache, DINOBLOOM_S, {"model.safetensors": timm_dinobloom_s().state_dict()})
    model = build_model("dinobloom-s", "hub", decoder_channels=16)
    texts += [json.dumps(model.weights_provenance), json.dumps(model.config)]
    captured = capfd.readouterr()
    assert "***" in captured.err  # the leaky error was printed, scrubbed
    assert all(FAKE_TOKEN not in text for text in texts + [captured.out, captured.err])


def test_uni_seg_weights_is_a_command():
    from uni_seg.cli import COMMANDS, usage

    assert COMMANDS["weights"][0] == "uni_seg.weights" and "weights" in usage()


# ----- every DinoBloom size: taps, LoRA, phases, counts ---------------------------------------
@pytest.mark.parametrize("name, depth, dim", [("dinobloom-s", 12, 384), ("dinobloom-b", 12, 768),
                                              ("dinobloom-l", 24, 1024), ("dinobloom-g", 40, 1536)])
def test_every_dinobloom_size_builds_with_lora_phases_and_counts(name, depth, dim):
    """On the "meta" device (shapes only), so that ViT-G costs no memory."""
    spec = BACKBONES[name]
    assert spec.depth == depth and spec.taps == tuple(round((i + 1) * depth / 4) - 1 for i in range(4))
    assert spec.taps[-1] == depth - 1 and not spec.gated
    with torch.device("meta"):
        model = build_model(name, "none", decoder_channels=32, lora_rank=4, lora_alpha=8.0, verbose=False)
        out = model(torch.empty(1, 3, 64, 48))
    assert model.patch_size == 14 and model.backbone.embed_dim == dim and out["hv"].shape == (1, 2, 64, 48)
    groups = model.param_groups(2, lr_decoder=1e-4, lr_lora=1e-5)
    assert [g["name"] for g in groups] == ["lora", "decoder"] and len(groups[0]["params"]) == 2 * depth
    counts = parameter_counts_from_config(**model.config)
    assert counts["lora"] == depth * 4 * (dim + 3 * dim) and counts == model.parameter_counts()


# ----- vit_tiny with pretrained weights (issue 25): timm's hub tag and the file of ../shared/weights ----
SHARED_VIT_TINY = Path(__file__).resolve().parents[2] / "shared" / "weights" / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.pth"


def test_vit_tiny_imagenet_is_timms_augreg_tag_normalised_with_one_half(monkeypatch, tmp_path):
    """WEIGHTS=imagenet for vit_tiny loads timm's vit_tiny_patch16_224.augreg_in21k_ft_in1k, whose
    pixel statistics (0.5/0.5) the model normalises with; from the hub cache, offline."""
    spec = BACKBONES["vit_tiny"]
    assert spec.imagenet_tag == "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    pretrained = timm.models.get_pretrained_cfg(spec.imagenet_tag)
    assert tuple(pretrained.mean) == tuple(pretrained.std) == spec.mean == spec.std == (0.5, 0.5, 0.5)
    cache = isolate_hub(monkeypatch, tmp_path)
    state = timm.create_model("vit_tiny_patch16_224").state_dict()  # classifier head included, as timm's file
    fill_hub_cache(cache, pretrained.hf_hub_id, {"model.safetensors": state})
    go_offline(monkeypatch)
    model = build_model("vit_tiny", "imagenet", decoder_channels=16, verbose=False)
    assert model.weights_source == "imagenet"
    assert model.weights_provenance["repo"] == "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert model.pixel_mean.flatten().tolist() == model.pixel_std.flatten().tolist() == [0.5, 0.5, 0.5]
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


def test_the_shared_vit_tiny_file_loads_with_the_same_normalisation():
    if not SHARED_VIT_TINY.is_file():
        pytest.skip(f"{SHARED_VIT_TINY} is absent (a copy of timm's vit_tiny augreg weights, never committed)")
    assert W.file_sha256(SHARED_VIT_TINY) == "047f28c9caf3e2821385172e99dab100ed5bdb774f712f3ab2b3bfcd84e075d5"
    model = build_model("vit_tiny", str(SHARED_VIT_TINY), decoder_channels=16, verbose=False)
    assert model.weights_source == "file"
    assert model.pixel_mean.flatten().tolist() == model.pixel_std.flatten().tolist() == [0.5, 0.5, 0.5]
