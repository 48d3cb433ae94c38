"""uni_seg.losses: Sobel orientation, MSGE focus, finiteness on empty/single-class crops, gradcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from uni_seg.losses import CellSegLoss, hv_loss, nc_loss, np_loss, sobel_gradients, sobel_kernels


def ramps(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(x-ramp, y-ramp), each (1, 1, size, size): values increase left to right / top to bottom."""
    x = torch.arange(size, dtype=torch.float32).repeat(size, 1)[None, None]
    return x, x.transpose(-1, -2).contiguous()


def disc_batch(size: int = 32, classes: tuple[int, ...] = (1, 2)) -> dict[str, torch.Tensor]:
    """Two discs with true HV maps and the given classes; B = 1."""
    r = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    np_t, hv, nc = torch.zeros(1, size, size), torch.zeros(2, size, size), torch.zeros(size, size, dtype=torch.long)
    for (cy, cx, r), k in zip([(8, 9, 6), (21, 20, 8)], classes):
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        np_t[0][m], nc[m] = 1.0, k
        hv[0][m], hv[1][m] = (xx[m] - cx) / r, (yy[m] - cy) / r
    return {"np": np_t[None], "hv": hv[None], "nc": nc[None]}


def outputs_like(batch: dict[str, torch.Tensor], n_classes: int = 4, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = batch["np"].shape
    return {
        "np": torch.randn(b, 1, h, w, generator=g, dtype=dtype),
        "hv": torch.randn(b, 2, h, w, generator=g, dtype=dtype) * 0.5,
        "nc": torch.randn(b, n_classes, h, w, generator=g, dtype=dtype),
    }


# ----- Sobel: the orientation trap ------------------------------------------------------------
def test_horizontal_gradient_sees_x_ramps_only_and_vertical_y_ramps_only():
    x_ramp, y_ramp = ramps()
    inner = (..., slice(2, -2), slice(2, -2))
    gx, gy = sobel_gradients(x_ramp)
    assert torch.all(gx[inner] > 1) and torch.allclose(gx[inner], gx[inner].mean().expand_as(gx[inner]))
    assert gy.abs().max() < 1e-5  # zero up to float32 rounding
    gx, gy = sobel_gradients(y_ramp)
    assert torch.all(gy[inner] > 1)
    assert gx.abs().max() < 1e-5


def test_kernels_are_antisymmetric_and_transposed():
    kh, kv = sobel_kernels(5)
    assert torch.equal(kv, kh.T)
    assert torch.equal(kh, -kh.flip(1)) and torch.all(kh[:, 3:] > 0)  # positive to the right of centre
    assert kh[2, 2] == 0
    with pytest.raises(ValueError, match="odd"):
        sobel_kernels(4)


def test_constant_map_has_zero_gradient_including_borders():
    gx, gy = sobel_gradients(torch.full((2, 3, 9, 7), 0.7))
    assert gx.abs().max() < 1e-6 and gy.abs().max() < 1e-6


# ----- parts and weighting -------------------------------------------------------------------
def test_total_is_weighted_sum_of_unweighted_parts():
    batch = disc_batch()
    loss_fn = CellSegLoss([0.05, 0.5, 5.0, 8.0], np_weight=1.5, hv_weight=2.0, nc_weight=3.0)
    total, parts = loss_fn({k: v.requires_grad_() for k, v in outputs_like(batch).items()}, batch)
    assert {"np", "hv", "nc", "np_bce", "np_dice", "hv_mse", "hv_msge", "nc_ce", "nc_dice"} <= set(parts)
    assert torch.isclose(total, 1.5 * parts["np"] + 2.0 * parts["hv"] + 3.0 * parts["nc"])
    assert torch.isclose(parts["np"], parts["np_bce"] + parts["np_dice"])
    assert torch.isclose(parts["hv"], parts["hv_mse"] + parts["hv_msge"])
    assert torch.isclose(parts["nc"], parts["nc_ce"] + parts["nc_dice"])
    assert total.requires_grad and not any(p.requires_grad for p in parts.values())


def test_default_weights_are_the_corrected_seed_values():
    loss_fn = CellSegLoss()
    assert loss_fn.class_weights.tolist() == pytest.approx([0.05, 0.5, 5.0, 8.0])
    assert (loss_fn.np_weight, loss_fn.hv_weight, loss_fn.nc_weight) == (1.0, 2.0, 2.0)


def test_cross_entropy_is_class_weighted():
    batch = disc_batch()
    out = outputs_like(batch)
    weights = torch.tensor([0.05, 0.5, 5.0, 8.0])
    ce, _ = nc_loss(out["nc"], batch["nc"], weights)
    per_pixel = F.cross_entropy(out["nc"], batch["nc"], reduction="none")
    w = weights[batch["nc"]]
    assert torch.isclose(ce, (per_pixel * w).sum() / w.sum())


def test_perfect_predictions_give_small_losses():
    batch = disc_batch()
    nc_logits = F.one_hot(batch["nc"], 4).permute(0, 3, 1, 2) * 30.0
    out = {"np": (batch["np"] * 2 - 1) * 30, "hv": batch["hv"].clone(), "nc": nc_logits}
    _, parts = CellSegLoss()(out, batch)
    assert parts["hv"] == 0 and parts["np_bce"] < 1e-6 and parts["nc_ce"] < 1e-6
    assert parts["np_dice"] < 0.01 and parts["nc_dice"] < 0.01


def test_msge_counts_foreground_pixels_only():
    batch = disc_batch()
    pred = batch["hv"].clone()
    far = F.max_pool2d(batch["np"], 9, stride=1, padding=4) == 0  # > 4 px from any cell
    pred[far.expand_as(pred)] += torch.randn(int(far.sum()) * 2)
    mse, msge = hv_loss(pred, batch["hv"], batch["np"])
    assert mse > 0 and msge == 0


# ----- robustness ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["empty", "single_class", "all_foreground"])
def test_finite_loss_and_gradients_on_degenerate_crops(case):
    size = 24
    if case == "empty":
        batch = {"np": torch.zeros(2, 1, size, size), "hv": torch.zeros(2, 2, size, size),
                 "nc": torch.zeros(2, size, size, dtype=torch.long)}
    elif case == "single_class":
        batch = disc_batch(size, classes=(1, 1))
    else:
        batch = {"np": torch.ones(1, 1, size, size), "hv": torch.zeros(1, 2, size, size),
                 "nc": torch.full((1, size, size), 3, dtype=torch.long)}
    out = {k: v.requires_grad_() for k, v in outputs_like(batch).items()}
    total, parts = CellSegLoss()(out, batch)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    assert all(torch.isfinite(v.grad).all() for v in out.values())
    if case == "empty":
        assert parts["hv_msge"] == 0


def test_targets_without_channel_axis_and_half_precision_outputs():
    batch = disc_batch()
    batch2 = {**batch, "np": batch["np"][:, 0]}
    out = outputs_like(batch)
    t1, _ = CellSegLoss()(out, batch)
    t2, _ = CellSegLoss()({k: v.bfloat16() for k, v in out.items()}, batch2)
    assert t2.dtype == torch.float32 and torch.isclose(t1, t2, rtol=2e-2)


def test_bad_shapes_and_weights_raise():
    batch = disc_batch()
    with pytest.raises(ValueError, match="nc logits"):
        CellSegLoss([1.0, 1.0, 1.0])(outputs_like(batch), batch)
    with pytest.raises(ValueError, match="disagree"):
        CellSegLoss()(outputs_like(batch), {**batch, "hv": batch["hv"][:, :1]})
    with pytest.raises(ValueError, match="class_weights"):
        CellSegLoss([1.0, -1.0])


def test_gradients_match_finite_differences():
    """torch.autograd.gradcheck in float64 on a 1x6x6 crop through every term."""
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in disc_batch(12).items()}
    batch = {"np": batch["np"][..., 3:9, 3:9], "hv": batch["hv"][..., 3:9, 3:9], "nc": batch["nc"][..., 3:9, 3:9]}
    out = {k: v.requires_grad_() for k, v in outputs_like(batch, dtype=torch.float64).items()}
    loss_fn = CellSegLoss().double()

    def total(np_logits, hv, nc_logits):
        return loss_fn({"np": np_logits, "hv": hv, "nc": nc_logits}, batch)[0]

    assert batch["np"].sum() > 0 and batch["np"].sum() < 36
    assert torch.autograd.gradcheck(total, (out["np"], out["hv"], out["nc"]), eps=1e-6, atol=1e-5)
    # each head's terms separately too, so that a wrong term cannot hide behind a larger one
    assert torch.autograd.gradcheck(lambda h: torch.stack(hv_loss(h, batch["hv"], batch["np"])), (out["hv"],))
    assert torch.autograd.gradcheck(lambda p: torch.stack(np_loss(p, batch["np"])), (out["np"],))


def test_loss_on_model_outputs_backpropagates_to_decoder():
    from uni_seg.model import build_model

    torch.manual_seed(0)
    model = build_model("vit_tiny", "none", decoder_channels=16, verbose=False)
    model.set_phase(1)
    batch = disc_batch(32)
    total, _ = CellSegLoss()(model(torch.rand(1, 3, 32, 32)), batch)
    total.backward()
    assert torch.isfinite(total) and model.heads["hv"].body[-1].weight.grad.abs().sum() > 0
