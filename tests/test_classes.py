"""Cell classes: the class schemes (§0), BBBC041's class boxes joined onto mask instances (§1),
the unknown class through targets and the NC loss (§2, §4), the per-class metrics and the
parasitemia (§9), and the scheme's names and colours in figures and exports (§8, §10)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from raw_smears import squares

from uni_seg import predict as predict_mod
from uni_seg import boxes as boxes_mod
from uni_seg import cache as cache_mod
from uni_seg import classes as classes_mod
from uni_seg import data as D
from uni_seg.classes import CLASS_SCHEMES, UNKNOWN_CLASS, UNKNOWN_COLOUR, ClassScheme, class_scheme
from uni_seg.config import resolve_config
from uni_seg.postproc import SplitPrediction

BBBC041 = CLASS_SCHEMES["bbbc041"]


# ---------------------------------------------------------------- §0: the schemes as parameters
def test_schemes_define_their_classes_and_the_config_derives_from_them():
    assert [CLASS_SCHEMES[n].n_classes for n in ("binary", "colour", "bbbc041", "bbbc041-stages")] == [2, 4, 4, 7]
    cfg = resolve_config("demo")
    assert cfg.class_scheme == "colour" and cfg.n_classes == 4 and cfg.class_weights == (0.05, 0.5, 5.0, 8.0)
    assert cfg.class_boxes is None
    cfg = resolve_config("full", class_scheme="bbbc041", data_dir="/data/bccd")
    assert cfg.n_classes == 4 and cfg.class_weights is None  # None: from the training split's cells (§4)
    assert cfg.class_boxes == Path("/data/bccd/classes")
    assert resolve_config("demo", class_scheme="bbbc041-stages", class_boxes="b.json").class_boxes == Path("b.json")
    assert resolve_config("demo", class_scheme="binary").n_classes == 2
    for kwargs, message in [({"class_scheme": "bbbc"}, "did you mean 'bbbc041'"),
                            ({"n_classes": 7}, "N_CLASSES=7 but CLASS_SCHEME='colour'"),
                            ({"class_boxes": "b.json"}, "takes no classes from boxes"),
                            ({"class_scheme": "bbbc041", "class_weights": [1, 2]}, "CLASS_WEIGHTS has 2 weights")]:
        with pytest.raises(ValueError, match=message):
            resolve_config("demo", **kwargs)


def test_a_scheme_survives_json_and_bad_schemes_are_refused():
    for scheme in CLASS_SCHEMES.values():
        assert class_scheme(json.loads(json.dumps(scheme.as_dict()))) == scheme
    assert BBBC041.class_of("ring") == BBBC041.class_of("gametocyte") == 2 and BBBC041.class_of("difficult") == -1
    with pytest.raises(ValueError, match="'platelet' is not one of class scheme 'bbbc041'"):
        BBBC041.class_of("platelet")
    assert BBBC041.name_of(UNKNOWN_CLASS) == "unknown" and tuple(BBBC041.colour_table()[UNKNOWN_CLASS]) == UNKNOWN_COLOUR
    assert BBBC041.parasitemia([0, 30, 10, 5]) == 0.25 and math.isnan(BBBC041.parasitemia([9, 0, 0, 3]))
    assert math.isnan(CLASS_SCHEMES["colour"].parasitemia([0, 10, 1, 1]))  # no infected class
    good = dict(name="x", names=("background", "a"), colours=((0, 0, 0), (1, 2, 3)), source="cell")
    ClassScheme(**good)
    for bad, message in [({"names": ("a", "b")}, "'background' first"), ({"colours": ((0, 0, 0),)}, "one RGB colour"),
                         ({"source": "boxes"}, "exactly when source is 'boxes'"),
                         ({"red_classes": (2,)}, "red_classes"), ({"default_weights": (1.0,)}, "default_weights")]:
        with pytest.raises(ValueError, match=message):
            ClassScheme(**{**good, **bad})


# ---------------------------------------------------------------- §1: synthetic smears with boxes, through the cache
def test_the_cache_stores_scheme_classes_reports_the_join_and_rebuilds_when_boxes_change(boxed_synthetic, tmp_path):
    root, boxes_path = boxed_synthetic
    out = tmp_path / "processed"
    args = dict(working_scale=0.5, val_fraction=0.25, seed=0, min_area=20, scheme="bbbc041", class_boxes=boxes_path)
    summary = cache_mod.build_processed_cache(root, out, **args)
    manifest = cache_mod.load_manifest(out)
    assert cache_mod.manifest_scheme(manifest) == BBBC041 and summary.no_class_boxes == []
    for split in D.SPLITS:
        for sample in cache_mod.load_processed(out, split):
            arrays, entry = sample.load(), manifest["samples"][split][sample.stem]
            assert arrays["cls"].dtype == np.int8 and set(np.unique(arrays["cls"])) <= {-1, 0, 1, 2, 3}
            counts, unknown = boxes_mod.instance_class_counts(arrays["inst"], arrays["cls"], 4)
            assert entry["class_counts"] == counts.tolist() and entry["unknown"] == unknown
            assert entry["join"]["instances"] >= entry["join"]["matched"] and entry["join"]["unknown"] > 0
    train_counts, train_unknown = cache_mod.split_class_counts(manifest, "train")
    assert train_counts[1] > train_counts[2] > 0 and train_unknown > 0
    assert "| train | 3 |" in cache_mod.class_count_table(manifest) and "boxes no instance matched" in cache_mod.join_table(manifest)
    assert cache_mod.build_processed_cache(root, out, **args).written == 0  # nothing changed
    # the same boxes elsewhere: no rebuild (the key is the content); other boxes or scheme: rebuild
    moved = tmp_path / "moved.json"
    moved.write_bytes(boxes_path.read_bytes())
    assert cache_mod.build_processed_cache(root, out, **{**args, "class_boxes": moved}).written == 0
    doc = json.loads(moved.read_text())
    dropped = doc.pop(0)["image"]["pathname"].rsplit("/", 1)[1][:-4]
    moved.write_text(json.dumps(doc))
    with pytest.warns(D.DataWarning, match=f"no class boxes for 1 image.*{dropped}"):
        summary = cache_mod.build_processed_cache(root, out, **{**args, "class_boxes": moved})
    assert summary.written == 6 and summary.no_class_boxes == [dropped]
    split = next(s for s in D.SPLITS if dropped in manifest["samples"][s])
    cls = cache_mod.open_processed(out / split / f"{dropped}.npy")["cls"]
    assert (cls[cls != 0] == UNKNOWN_CLASS).all()
    assert cache_mod.build_processed_cache(root, out, **{**args, "scheme": "bbbc041-stages"}).written == 6
    with pytest.raises(ValueError, match="takes classes from class boxes"):
        cache_mod.build_processed_cache(root, out, **{**args, "class_boxes": None})


# ---------------------------------------------------------------- §2 and §4: the unknown class in targets and the NC loss
def test_targets_and_augmentation_keep_the_unknown_class():
    from uni_seg.augment import CellAugmenter
    from uni_seg.targets import targets_from_instances

    inst = squares((64, 64), [(4, 4, 24, 24), (30, 30, 50, 50)])
    cls = np.where(inst == 1, 2, np.where(inst == 2, UNKNOWN_CLASS, 0)).astype(np.int8)
    nc = targets_from_instances(inst, cls)["nc"]
    assert nc.dtype == np.int64 and set(np.unique(nc[inst == 2])) == {-1} and set(np.unique(nc[inst == 1])) == {2}
    assert (nc[inst == 0] == 0).all()
    image = np.full((64, 64, 3), 128, np.uint8)
    _, inst_t, targets = CellAugmenter(32)(image, inst, cls, seed=(0, 0, 0))
    classes = {int(i): set(np.unique(targets["nc"][inst_t == i]).tolist()) for i in np.unique(inst_t) if i}
    assert all(v == ({2} if i == 1 else {-1}) for i, v in classes.items())


def test_the_nc_loss_ignores_pixels_of_unknown_class_value_and_gradient():
    from uni_seg.losses import CellSegLoss, nc_loss

    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 12, 12))
    target[:, 3:7, 3:9] = UNKNOWN_CLASS
    unknown = target == UNKNOWN_CLASS
    weights = torch.tensor([0.05, 0.5, 3.0, 10.0], dtype=torch.float64)
    logits = torch.randn(2, 4, 12, 12, dtype=torch.float64, requires_grad=True)
    ce, dice = nc_loss(logits, target, weights)
    (ce + dice).backward()
    assert logits.grad[unknown.unsqueeze(1).expand_as(logits)].abs().max() == 0  # no gradient at all there
    assert logits.grad[~unknown.unsqueeze(1).expand_as(logits)].abs().max() > 0
    # the value is the loss of the known pixels alone: any logits at the unknown pixels give the same
    other = logits.detach().clone()
    other[unknown.unsqueeze(1).expand_as(other)] = 1e3 * torch.randn(int(unknown.sum()) * 4, dtype=torch.float64)
    assert torch.allclose(torch.stack(nc_loss(other, target, weights)), torch.stack((ce, dice)).detach())
    # cross-entropy: weighted mean over the known pixels, as F.cross_entropy's mean is
    known = ~unknown
    per_pixel = torch.nn.functional.cross_entropy(logits.detach(), target.clamp(min=0), reduction="none")
    w = weights[target.clamp(min=0)]
    assert torch.isclose(ce, (per_pixel * w)[known].sum() / w[known].sum())
    # a batch without a single known pixel: finite zeros, not nan
    none_known = torch.full_like(target, UNKNOWN_CLASS)
    assert [v.item() for v in nc_loss(logits, none_known, weights)] == [0.0, 0.0]
    out = {"np": torch.randn(2, 1, 12, 12, requires_grad=True), "hv": torch.zeros(2, 2, 12, 12, requires_grad=True),
           "nc": logits.detach().float().requires_grad_()}
    batch = {"np": (target != 0).float()[:, None], "hv": torch.zeros(2, 2, 12, 12), "nc": target}
    total, parts = CellSegLoss(weights.tolist())(out, batch)
    total.backward()
    assert torch.isfinite(total) and out["np"].grad[unknown.unsqueeze(1)].abs().sum() > 0  # NP still learns them


def test_class_weights_from_the_training_split(tmp_path, boxed_synthetic):
    from uni_seg.losses import class_weights_from_counts, nc_class_weights

    assert class_weights_from_counts([0, 4442, 133, 2]) == pytest.approx(
        (0.05, 0.5, 0.5 * math.sqrt(4442 / 133), 10.0))  # the leukocytes' sqrt(2221) = 47 hits the cap of 20x
    assert class_weights_from_counts([0, 100, 25, 0]) == pytest.approx((0.05, 0.5, 1.0, 10.0))
    assert class_weights_from_counts([0, 50]) == (0.05, 0.5)
    assert nc_class_weights("colour", tmp_path) == (0.05, 0.5, 5.0, 8.0)  # the scheme's own: no cache needed
    assert nc_class_weights("bbbc041", tmp_path, [1, 2, 3, 4]) == (1.0, 2.0, 3.0, 4.0)
    root, boxes = boxed_synthetic
    out = tmp_path / "processed"
    cache_mod.build_processed_cache(root, out, 0.5, 0.25, 0, 20, scheme="bbbc041", class_boxes=boxes)
    counts, _ = cache_mod.split_class_counts(cache_mod.load_manifest(out), "train")
    assert nc_class_weights("bbbc041", out) == class_weights_from_counts(counts)
    with pytest.raises(ValueError, match="built with class scheme 'bbbc041', not 'bbbc041-stages'"):
        nc_class_weights("bbbc041-stages", out)
    with pytest.raises(ValueError, match="3 class weights for the 4 classes"):
        nc_class_weights("bbbc041", out, [1, 2, 3])


# ---------------------------------------------------------------- §9: per-class metrics by hand
def hand_case() -> tuple[SplitPrediction, SplitPrediction]:
    """Two images under the bbbc041 scheme (1 uninfected, 2 infected, 3 leukocyte).

    Image "a": true cells t1 (1), t2 (1), t3 (2), t4 (2), t5 (3), t6 (unknown); predictions
    p1 = t1 as 1, p2 = t2 as 2 (misclassified), p3 = t3 as 2, t4 missed, p4 = 80 % of t5 as 3
    (IoU 0.8), p5 = t6 as 1, p6 on background as 2. Image "b": t1 (1) found as 1, a spurious
    leukocyte beside it.
    """
    cells = [(0, 0, 10, 10), (0, 20, 10, 30), (0, 40, 10, 50), (0, 60, 10, 70), (0, 80, 10, 90), (0, 100, 10, 110)]
    true_a = squares((12, 140), cells)
    pred_a = squares((12, 140), [cells[0], cells[1], cells[2], (0, 80, 8, 90), cells[5], (0, 120, 10, 130)])
    a = SplitPrediction("a", None, true_a, np.array([0, 1, 1, 2, 2, 3, UNKNOWN_CLASS]), pred_a,
                        np.array([0, 1, 2, 2, 3, 1, 2]), None, np.array([0, .9, .9, .9, .9, .9, .9]), None)
    true_b = squares((12, 140), [cells[0]])
    pred_b = squares((12, 140), [cells[0], cells[3]])
    b = SplitPrediction("b", None, true_b, np.array([0, 1]), pred_b, np.array([0, 1, 3]), None, np.array([0, .9, .5]), None)
    return a, b


def test_per_class_metrics_on_a_hand_computed_case():
    from uni_seg.evaluation import evaluate_split

    a, _ = hand_case()
    doc = evaluate_split([a], 4, scheme=BBBC041)
    d = doc["dataset"]
    assert (d["tp"], d["fp"], d["fn"]) == (5, 1, 1)  # class-agnostic: the unknown cell is a cell
    per = d["per_class_pq"]
    uninfected, infected, leukocyte = per["uninfected RBC"], per["infected RBC"], per["leukocyte"]
    # uninfected: t1 found; t2 called infected (a miss of its class); p5 matched the unknown cell: no false positive
    assert (uninfected["tp"], uninfected["fp"], uninfected["fn"]) == (1, 0, 1)
    assert uninfected["precision"] == 1.0 and uninfected["recall"] == 0.5 and uninfected["f1"] == pytest.approx(2 / 3)
    assert uninfected["pq"] == pytest.approx(2 / 3) and uninfected["fc"] == pytest.approx(2 / (2 + 2 * 1))
    # infected: t3 found; p2 (true uninfected) and the spurious p6 are false positives; t4 missed
    assert (infected["tp"], infected["fp"], infected["fn"]) == (1, 2, 1)
    assert infected["precision"] == pytest.approx(1 / 3) and infected["recall"] == 0.5
    assert infected["pq"] == pytest.approx(0.4) and infected["fc"] == pytest.approx(2 / (2 + 2 * 1 + 1 + 1))
    assert leukocyte["sq"] == pytest.approx(0.8) and leukocyte["pq"] == pytest.approx(0.8) and leukocyte["fc"] == 1.0
    assert d["mpq"] == pytest.approx((2 / 3 + 0.4 + 0.8) / 3)
    # counts of the class: the uninfected predictions include p5, matched to the unknown cell
    assert [(per[c]["true_count"], per[c]["pred_count"]) for c in per] == [(2, 2), (2, 3), (1, 1)]
    assert d["instance_confusion"] == {
        "uninfected RBC": {"uninfected RBC": 1, "infected RBC": 1, "leukocyte": 0},
        "infected RBC": {"uninfected RBC": 0, "infected RBC": 1, "leukocyte": 0},
        "leukocyte": {"uninfected RBC": 0, "infected RBC": 0, "leukocyte": 1},
        "unknown": {"uninfected RBC": 1, "infected RBC": 0, "leukocyte": 0}}
    assert d["unknown_count"] == 1 and d["unknown_matched"] == 1
    # parasitemia: true 2 infected of 4 red; predicted 3 of 4 (the unknown cell and p5, matched to it, are in neither)
    assert d["parasitemia"] == {"true": 0.5, "pred": 0.75}
    record = doc["per_image"][0]
    assert record["unknown_count"] == 1 and record["true_count_per_class"]["infected RBC"] == 2
    assert record["parasitemia_true"] == 0.5 and record["parasitemia_pred"] == 0.75
    assert record["pred_count_per_class"] == {"uninfected RBC": 2, "infected RBC": 3, "leukocyte": 1}  # p5 counted
    # pixels of the unknown cell count nowhere: uninfected pixel IoU is t1 over t1 + t2, not also p5
    assert d["pixel_iou"]["uninfected RBC"] == pytest.approx(0.5)


def test_pannuke_mpq_and_the_parasitemia_error_over_images(tmp_path):
    from uni_seg.evaluation import evaluate_split
    from uni_seg.metrics_file import METRICS_SCHEMA, confusion_table, metrics_table, per_class_table, write_metrics_json

    a, b = hand_case()
    doc = evaluate_split([a, b], 4, scheme=BBBC041)
    rec_a, rec_b = doc["per_image"]
    # PanNuke: a class with no true cell in an image has no PQ there, even with a prediction of it
    assert rec_b["pq_per_class"]["uninfected RBC"] == 1.0
    assert math.isnan(rec_b["pq_per_class"]["infected RBC"]) and math.isnan(rec_b["pq_per_class"]["leukocyte"])
    assert rec_b["mpq"] == 1.0 and rec_a["mpq"] == pytest.approx((2 / 3 + 0.4 + 0.8) / 3)
    m = doc["per_image_mean"]
    assert m["mpq"] == pytest.approx((rec_a["mpq"] + 1.0) / 2)
    assert m["per_class_pq"]["leukocyte"] == pytest.approx(0.8)  # image b has no true leukocyte
    assert m["per_class_pq"]["uninfected RBC"] == pytest.approx((2 / 3 + 1.0) / 2)
    # pooled, the spurious leukocyte of image b is a false positive: PQ 0.8 * 1 / 1.5
    assert doc["dataset"]["per_class_pq"]["leukocyte"]["pq"] == pytest.approx(0.8 / 1.5)
    assert rec_b["parasitemia_true"] == 0.0 and rec_b["parasitemia_pred"] == 0.0
    assert m["parasitemia_mae"] == pytest.approx((0.25 + 0.0) / 2) and m["parasitemia_images"] == 2
    # pooled, p5 of image a (matched to the unknown cell) is left out as per image
    assert doc["dataset"]["parasitemia"] == {"true": pytest.approx(2 / 5), "pred": pytest.approx(3 / 5)}
    written = write_metrics_json(tmp_path / "metrics.json", doc, backbone="vit_tiny", weights="none",
                                 postproc_params={}, split_sizes={"test": 2})
    assert written["class_scheme"]["name"] == "bbbc041" and written["schema"] == METRICS_SCHEMA
    assert "parasitemia true / predicted | 40.00 % / 60.00 %" in metrics_table(written)
    assert "mean absolute error 12.50 %" in metrics_table(written)
    assert "| leukocyte | 1 | 2 |" in per_class_table(written)
    assert "| unknown | 1 | 0 | 0 |" in confusion_table(written)


def test_metrics_without_a_scheme_and_without_unknown_cells_are_as_before():
    from uni_seg.evaluation import evaluate_split

    a, _ = hand_case()
    known = SplitPrediction(a.stem, None, a.true_inst, np.where(a.true_cls < 0, 1, a.true_cls), a.pred_inst, a.classes,
                            None, a.scores, None)
    doc = evaluate_split([known], 4)
    assert doc["class_names"] == ["background", "RBC", "WBC", "Platelet"] and doc["class_scheme"] is None
    rbc = doc["dataset"]["per_class_pq"]["RBC"]
    assert (rbc["tp"], rbc["fp"], rbc["fn"]) == (2, 0, 1)  # t6 is now an RBC found as one
    assert all(math.isnan(v) for v in doc["dataset"]["parasitemia"].values())  # no infected class without a scheme
    with pytest.raises(ValueError, match="classes outside 0..3"):
        evaluate_split([SplitPrediction("x", None, a.true_inst, a.true_cls, a.pred_inst, a.classes - 1, None, a.scores,
                                        None)], 4)


# ---------------------------------------------------------------- §8, §10: names and colours of the scheme
def test_class_maps_and_figures_use_the_scheme_and_show_unknown_cells(tmp_path):
    from uni_seg import viz

    cls = np.array([[0, 1, 2], [3, UNKNOWN_CLASS, 9]])
    rgb = viz.class_map_rgb(cls, BBBC041.colours)
    assert tuple(rgb[0, 2]) == BBBC041.colours[2] and tuple(rgb[1, 1]) == UNKNOWN_COLOUR
    assert tuple(rgb[1, 2]) == classes_mod.OTHER_CLASS_COLOUR
    assert tuple(viz.class_map_rgb(cls)[0, 2]) == CLASS_SCHEMES["colour"].colours[2]
    a, b = hand_case()
    path = viz.plot_parasitemia_scatter([0.5, 0.0, math.nan], [0.6, 0.0, 0.1], tmp_path / "p.png", labels=["a", "b", "c"])
    assert path.stat().st_size > 5000
    true_inst, pred_inst = np.pad(a.true_inst, ((0, 60), (0, 0))), np.pad(a.pred_inst, ((0, 60), (0, 0)))
    image = np.zeros((*true_inst.shape, 3), np.uint8)
    out = viz.plot_sample_figure(image, true_inst, pred_inst, np.zeros(true_inst.shape, np.float32),
                                 np.zeros((2, *true_inst.shape), np.float32), a.true_cls[true_inst],
                                 a.classes[pred_inst], tmp_path / "s.png", class_names=BBBC041.names,
                                 class_colours=BBBC041.colours)
    assert out.stat().st_size > 5000
    viz.plot_count_scatter([a.true_inst], [a.pred_inst], tmp_path / "c.png", [a.true_cls], [a.classes],
                           class_names=BBBC041.names, class_colours=BBBC041.colours)


def test_folder_summary_counts_the_scheme_classes_and_the_parasitemia(tmp_path):
    import cv2

    from uni_seg import export, infer

    class Fixed(torch.nn.Module):
        """Cells where channel 0 is bright; their class from channel 1 (bright: infected)."""

        def __init__(self) -> None:
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            fg, infected = x[:, :1] > 0.5, x[:, 1:2] > 0.5
            nc = torch.cat([~fg, fg & ~infected, fg & infected, torch.zeros_like(fg)], dim=1).float() * 10
            return {"np": (fg.float() * 2 - 1) * 10 + self.dummy, "hv": torch.zeros_like(x[:, :2]), "nc": nc}

    folder = tmp_path / "in"
    folder.mkdir()
    image = np.zeros((96, 96, 3), np.uint8)
    inst = squares((96, 96), [(8, 8, 28, 28), (8, 50, 28, 70), (50, 8, 70, 28), (50, 50, 70, 70)])
    image[inst > 0, 0] = 255
    image[inst == 4, 1] = 255  # one of four red cells infected
    cv2.imwrite(str(folder / "smear.png"), image[..., ::-1])
    report = infer.run_folder_inference(Fixed(), folder, tmp_path / "out", predict_mod.InferenceSettings(tile_size=96, overlap=0),
                                        progress=False, scheme=BBBC041)
    with open(report.summary_path) as f:
        row = next(csv.DictReader(f))
    assert (row["n_uninfected RBC"], row["n_infected RBC"], row["n_leukocyte"]) == ("3", "1", "0")
    assert float(row["parasitemia"]) == 0.25
    geo = json.loads((tmp_path / "out" / "smear_cells.geojson").read_text())
    infected = [f for f in geo["features"] if f["properties"]["classification"]["name"] == "infected RBC"]
    assert len(infected) == 1 and infected[0]["properties"]["classification"]["color"] == list(BBBC041.colours[2])
    overlay = export.draw_overlay(image, inst, np.array([0, 1, 1, 1, 2]), colours=BBBC041.colours)
    assert tuple(overlay[50, 60]) == BBBC041.colours[2]


# ---------------------------------------------------------------- §5: the scheme travels with the checkpoints
def test_a_checkpoint_of_another_scheme_is_refused():
    from uni_seg.checkpoints import CheckpointError, check_compatible

    ckpt = {"phase": 1, "working_scale": 0.5, "model_config": {"n_classes": 4}, "class_scheme": BBBC041.as_dict()}
    check_compatible(ckpt, "c.pth", phase=1, model_config={"n_classes": 4}, working_scale=0.5, class_scheme="bbbc041")
    with pytest.raises(CheckpointError, match="class_scheme: checkpoint 'bbbc041', this run 'colour'"):
        check_compatible(ckpt, "c.pth", phase=1, model_config={"n_classes": 4}, working_scale=0.5, class_scheme="colour")
    older = {k: v for k, v in ckpt.items() if k != "class_scheme"}  # before schemes: every run was "colour"
    check_compatible(older, "c.pth", phase=1, model_config={"n_classes": 4}, working_scale=0.5, class_scheme="colour")
    with pytest.raises(CheckpointError, match="checkpoint 'colour', this run 'bbbc041'"):
        check_compatible(older, "c.pth", phase=1, model_config={"n_classes": 4}, working_scale=0.5, class_scheme="bbbc041")


def test_spec_from_config_carries_the_scheme_and_its_weights(boxed_synthetic, tmp_path):
    from uni_seg.losses import nc_class_weights
    from uni_seg.train import spec_from_config, spec_from_json, spec_to_json

    root, boxes = boxed_synthetic
    cfg = resolve_config("demo", data_dir=str(root), processed_dir=str(tmp_path / "p"), class_scheme="bbbc041",
                         class_boxes=str(boxes), checkpoint_dir=str(tmp_path / "c"), results_dir=str(tmp_path / "r"))
    cache_mod.build_processed_cache(cfg.data_dir, cfg.processed_dir, 0.5, 0.25, 0, 20, scheme="bbbc041", class_boxes=boxes)
    spec = spec_from_config(cfg, 1)
    assert spec.class_scheme == BBBC041.as_dict()
    assert spec.loss.kwargs["class_weights"] == list(nc_class_weights(BBBC041, cfg.processed_dir))
    assert spec_from_json(spec_to_json(spec)).class_scheme == json.loads(json.dumps(BBBC041.as_dict()))
