"""Mobile DeepLabv3 segmentation (paper §6.3, issue 16): the model against Table 7, the data layouts and their
errors, the metrics and their DDP reduction, and the task end to end on real CamVid images."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnv2.data.preprocessing import TF_MEAN, TF_STD, Preprocessing
from mnv2.data.segmentation import (
    IGNORE_INDEX,
    SegmentationDataError,
    build_segmentation_data,
    median_frequency_weights,
    pad_collate,
    read_segmentation_data,
    voc_colormap,
)
from mnv2.engine.config import apply_overrides, load_recipe
from mnv2.models.deeplab import DeepLabConfig, DeepLabV3, feature_size
from mnv2.models.mobilenetv2 import MobileNetV2Config
from mnv2.tasks import get_task
from mnv2.tasks.segmentation import Evaluator, confusion_matrix, infer, init_from, loss

FIXTURES = Path(__file__).parent / "fixtures" / "segmentation"
CAMVID = FIXTURES / "camvid"
VOC = FIXTURES / "voc"
CAMVID_CLASSES = json.loads((CAMVID / "classes.json").read_text())["names"]
QUIET = {"log": lambda *_: None}


def tiny_model(num_classes=11, **head) -> DeepLabV3:
    return DeepLabV3(MobileNetV2Config(width_mult=0.35), DeepLabConfig(num_classes=num_classes, **head))


def camvid_copy(tmp_path) -> Path:
    dst = tmp_path / "camvid"
    shutil.copytree(CAMVID, dst)
    return dst


# ----------------------------------------------------------------------------------------------- model
def test_table7_parameter_counts_and_multiply_adds_at_512_for_21_classes():
    """Table 7: w/o ASPP 2.11M / 2.75B, with ASPP 4.52M / 5.8B. The parameters match exactly with *regular* 3x3
    atrous ASPP convs (TF's separable default gives 2.57M). The multiply-adds match TF's 513x513 crop (33x33 map):
    2.74B w/o ASPP; with ASPP 5.36B, 0.44B under the paper's 5.8B (unexplained: no breakdown is published)."""
    from mnv2.bench.profile import summarize

    counts = {}
    for name, head in {"mobile": {}, "aspp": {"aspp": True, "separable": False},
                       "aspp_separable": {"aspp": True}}.items():  # fmt: skip
        model = DeepLabV3(MobileNetV2Config(), DeepLabConfig(num_classes=21, **head))
        counts[name] = sum(p.numel() for p in model.parameters())
    assert counts == {"mobile": 2_113_557, "aspp": 4_523_541, "aspp_separable": 2_568_021}
    assert round(counts["mobile"] / 1e6, 2) == 2.11 and round(counts["aspp"] / 1e6, 2) == 4.52
    torch.set_num_threads(1)
    mobile = summarize(DeepLabV3(MobileNetV2Config(), DeepLabConfig(num_classes=21)), 513)
    assert mobile.params == counts["mobile"]
    assert mobile.madds == pytest.approx(2.75e9, rel=0.005)  # 2,741,... at 513; 2.604B at 512
    assert {r.module for r in mobile.layers} >= {"head.image_pooling.conv", "head.aspp0", "head.logits"}
    assert not any(r.module.startswith("backbone.head") for r in mobile.layers)  # ends at layer_18: no 1280 conv


@pytest.mark.parametrize("output_stride", [16, 8])
def test_feature_sizes_at_output_stride_8_and_16(output_stride):
    model = tiny_model(output_stride=output_stride, aspp=True).eval()
    x = torch.randn(2, 3, 96, 130)
    feats = model.forward_features(x)
    info = model.feature_info[0]
    assert (info.name, info.num_chs, info.reduction) == ("stage6", 112, output_stride)  # layer_18: 320 x 0.35
    assert feats.shape == (2, 112, feature_size(96, output_stride), feature_size(130, output_stride))
    assert feats.shape[-2:] == ((6, 9) if output_stride == 16 else (12, 17))
    assert model(x).shape == (2, 11, 96, 130)  # logits upsampled to the input size
    rates = [branch[0].conv.dilation[0] for branch in model.head.aspp]
    assert rates == ([6, 12, 18] if output_stride == 16 else [12, 24, 36])
    assert model.config.output_stride == output_stride and model.config.num_classes == 0
    assert model.head_config["dropout"] == 0.1 and isinstance(model.head.concat_projection.act, torch.nn.ReLU)


def test_the_task_supplies_every_part_and_its_recipe_is_tf_deeplabs():
    import dataclasses

    task = get_task("segmentation")
    assert all(getattr(task, f.name) is not None for f in dataclasses.fields(task) if f.default is not None)
    assert task.tta_modes == ("none", "flip", "ms_flip") and task.present.report_file == "iou.png"
    assert (Evaluator.best, Evaluator.columns) == ("mIoU", ("loss", "mIoU", "pixel_acc", "mean_class_acc"))
    c = load_recipe("segmentation")
    assert (c.task, c.width, c.optimizer, c.scaled_lr, c.batch_size, c.resolution, c.weight_decay, c.dropout) == (
        "segmentation", 1.0, "adamw", 0.0005, 8, 320, 4e-5, 0.1)  # fmt: skip
    assert (c.steps, c.warmup_steps, c.schedule) == (600, 30, "poly")
    model = task.build_model(c, [str(i) for i in range(21)])
    assert model.config.output_stride == 16 and not model.deeplab_config.aspp and model.config.num_classes == 0


def test_init_from_a_classifier_copies_the_backbone_only():
    from mnv2 import mobilenet_v2

    source = mobilenet_v2(width_mult=0.35, num_classes=7)
    model = tiny_model(5)
    fresh = init_from(model, source)
    assert fresh and all(k.startswith("head.") for k in fresh)
    assert torch.equal(model.backbone.blocks[6][0].project.conv.weight, source.blocks[6][0].project.conv.weight)
    assert torch.equal(model.backbone.stem.conv.weight, source.stem.conv.weight)


# ----------------------------------------------------------------------------------------------- metrics
def _scores(pred: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred, k).permute(0, 3, 1, 2).float() * 10


def test_miou_of_a_hand_made_confusion_with_ignore_pixels():
    # 3 classes on a 2x4 image; two ignored pixels that the model gets "wrong" must not count.
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, IGNORE_INDEX, IGNORE_INDEX]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 1, 2]]])
    ev = Evaluator(["a", "b", "c"])
    ev.update(_scores(pred, 3), target)
    m = ev.compute()
    # confusion (true rows): a: [1, 1, 0], b: [0, 2, 0], c: [1, 0, 1]
    assert m["confusion"].tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    iou = {"a": 1 / 3, "b": 2 / 3, "c": 1 / 2}  # TP / (TP + FP + FN)
    assert m["per_class_iou"] == pytest.approx(iou)
    assert m["mIoU"] == pytest.approx(sum(iou.values()) / 3)
    assert m["pixel_acc"] == pytest.approx(4 / 6) and m["mean_class_acc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["n"] == 1 and m["pixels"] == 6 and 0 < m["loss"] < 20
    # a class never present and never predicted has no IoU and stays out of the mean (TF's mean_iou)
    ev = Evaluator(["a", "b", "c", "d"])
    ev.update(_scores(pred, 4), target)
    m4 = ev.compute()
    assert m4["per_class_iou"]["d"] is None and m4["mIoU"] == pytest.approx(m["mIoU"])
    # the confusion ignores 255 but labels outside the classes are an error, not a silent miss
    with pytest.raises(Exception, match=r"label\(s\) \[5\] outside the model's 4 classes"):
        ev.update(_scores(pred, 4), torch.full_like(target, 5))


def test_evaluator_reduced_over_two_ranks_equals_one_over_all_data():
    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(4):
        scores = torch.randn(2, 5, 9, 7, generator=g)
        masks = torch.randint(0, 5, (2, 9, 7), generator=g)
        masks[torch.rand(2, 9, 7, generator=g) < 0.2] = IGNORE_INDEX
        batches.append((scores, masks))
    names = list("vwxyz")
    whole = Evaluator(names)
    ranks = [Evaluator(names), Evaluator(names)]
    for i, (s, m) in enumerate(batches):
        whole.update(s, m)
        ranks[i % 2].update(s, m)
    # a fake all_reduce: rank 1's tensors, in the order reduce() hands them over, summed into rank 0's
    other: list[torch.Tensor] = []
    ranks[1].reduce(lambda t: other.append(t.clone()) or t)
    ranks[0].reduce(lambda t: t.add_(other.pop(0)))
    assert not other
    a, b = ranks[0].compute(), whole.compute()
    assert torch.equal(a["confusion"], b["confusion"])
    for key in ("mIoU", "pixel_acc", "mean_class_acc", "loss", "n", "pixels"):
        assert a[key] == pytest.approx(b[key], rel=1e-12), key
    assert confusion_matrix(torch.tensor([1]), torch.tensor([IGNORE_INDEX]), 2).sum() == 0


# ----------------------------------------------------------------------------------------------- data
PRE = Preprocessing(input_size=64, crop_pct=1.0, mean=TF_MEAN, std=TF_STD)


def test_camvid_layout_class_file_and_ignore_index():
    d = read_segmentation_data(CAMVID)
    assert d.class_names == CAMVID_CLASSES and d.val_name == "val"
    assert (len(d.train), len(d.val)) == (3, 1) and (d.train[0].width, d.train[0].height) == (120, 90)
    bundle = build_segmentation_data(str(CAMVID), PRE, 3, 2, workers=0)
    x, y = next(iter(bundle.val.epoch(0)))
    assert x.shape == (1, 3, 90, 120) and y.shape == (1, 90, 120) and y.dtype == torch.long  # full resolution
    raw = np.asarray(Image.open(CAMVID / "valannot" / "0016E5_07959.png"))
    assert torch.equal(y[0] == IGNORE_INDEX, torch.from_numpy(raw == 11))  # CamVid's 11 leaves as 255
    x, y = next(iter(bundle.train.epoch(0)))
    assert x.shape == (3, 3, 64, 64) and y.shape == (3, 64, 64)
    assert set(y.unique().tolist()) <= set(range(11)) | {IGNORE_INDEX}
    x2, y2 = next(iter(bundle.train.epoch(0)))
    assert torch.equal(x, x2) and torch.equal(y, y2)  # epoch-seeded
    # eval batches of different sizes: padded bottom/right, the padding ignored
    images, masks = pad_collate([(torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.long)),
                                 (torch.ones(3, 6, 3), torch.ones(6, 3, dtype=torch.long))])  # fmt: skip
    assert images.shape == (2, 3, 6, 5) and images[0, :, 4:].abs().sum() == 0 and images[1, :, :, 3:].sum() == 0
    assert (masks[0, 4:] == IGNORE_INDEX).all() and (masks[1, :, 3:] == IGNORE_INDEX).all() and masks[1, 0, 0] == 1
    counts = np.stack([d.report.counts[r.label][:11] for r in d.train])
    weights = median_frequency_weights(counts)
    assert len(weights) == 11 and weights[3] < 1 < weights[2]  # road is common, poles are rare


def test_voc_layout_palette_pngs():
    d = read_segmentation_data(VOC)
    assert d.class_names == [str(i) for i in range(16)]  # numbered up to the largest label found (15)
    assert [Path(r.image).name for r in d.val] == ["synth_03.jpg"]
    bundle = build_segmentation_data(str(VOC), PRE, 2, 2, workers=0)
    _, y = next(iter(bundle.val.epoch(0)))
    assert set(y.unique().tolist()) == {0, 1, IGNORE_INDEX}
    model = get_task("segmentation").build_model(
        apply_overrides(load_recipe("segmentation"), {"data": str(VOC), "width": 0.35}), d.class_names
    )
    assert model.head_config["class_colors"][15] == list(voc_colormap()[15])


def test_a_mask_whose_size_differs_from_its_image_names_the_file(tmp_path):
    root = camvid_copy(tmp_path)
    label = root / "trainannot" / "0006R0_f02100.png"
    Image.open(label).resize((60, 45), Image.Resampling.NEAREST).save(label)
    with pytest.raises(SegmentationDataError, match=r"0006R0_f02100\.png' is 60x45 but its image .* is 120x90"):
        read_segmentation_data(root)


def test_labels_outside_the_class_range_name_the_file(tmp_path):
    root = camvid_copy(tmp_path)
    label = root / "valannot" / "0016E5_07959.png"
    a = np.asarray(Image.open(label)).copy()
    a[:3, :3] = 13  # 11 classes; 11 is the ignore index, 13 is nothing
    Image.fromarray(a).save(label)
    with pytest.raises(SegmentationDataError, match=r"0016E5_07959\.png' has label\(s\) \[13\] that are neither one"):
        read_segmentation_data(root)


def test_a_palette_png_with_colours_that_are_no_class_colour_names_the_file(tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(VOC, root)
    label = root / "SegmentationClass" / "synth_02.png"
    im = Image.open(label)
    palette = im.getpalette()
    palette[15 * 3 : 15 * 3 + 3] = [1, 2, 3]  # class 15's entry no longer VOC's colour
    im.putpalette(palette)
    im.save(label)
    with pytest.raises(SegmentationDataError, match=r"synth_02\.png' uses colour\(s\) .*index 15 = \(1, 2, 3\)"):
        read_segmentation_data(root)
    # a permuted palette still reads right: the class follows the colour, not the index
    im = Image.open(root / "SegmentationClass" / "synth_01.png")
    a = np.asarray(im).copy()
    a[a == 1] = 7
    out = Image.fromarray(a, mode="P")
    palette = list(im.getpalette())
    palette[7 * 3 : 7 * 3 + 3] = list(voc_colormap()[1])
    out.putpalette(palette)
    out.save(root / "SegmentationClass" / "synth_01.png")
    from mnv2.data.segmentation import label_spec, read_label

    assert set(np.unique(read_label(root / "SegmentationClass" / "synth_01.png", label_spec(root)))) == {0, 1, 255}


# ----------------------------------------------------------------------------------------------- training
def test_loss_is_finite_and_falls_on_real_camvid_images():
    torch.manual_seed(0)
    config = apply_overrides(load_recipe("segmentation"), {"label_smoothing": 0.0})
    bundle = build_segmentation_data(str(CAMVID), PRE, 3, 2, workers=0)
    x, y = next(iter(bundle.train.epoch(0)))
    model = tiny_model(11)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        value, parts = loss(model(x), y, config)
        assert torch.isfinite(value) and 0 <= float(parts["pixel_acc"]) <= 1
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert losses[0] > 1.5  # about log(11) at the start
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    # a crop of padding only is no NaN
    empty, _ = loss(model(x), torch.full_like(y, IGNORE_INDEX), config)
    assert empty.item() == 0.0


def test_test_time_augmentation_returns_log_probabilities_at_the_input_size():
    model = tiny_model(4)
    for m in model.modules():  # BN statistics of real activations (a fresh eval-mode model outputs ~0 everywhere)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        model.train()(x)
        model.eval()
        plain = infer(model, x, "none")
        flip = infer(model, x, "flip")
        ms = infer(model, x, "ms_flip")
        mirrored = infer(model, x.flip(-1), "ms_flip")
    assert plain.shape == flip.shape == ms.shape == (2, 4, 48, 64)
    for out in (flip, ms):
        assert torch.allclose(out.exp().sum(1), torch.ones(2, 48, 64), atol=1e-4)
    assert not torch.allclose(plain.log_softmax(1), flip, atol=1e-3) and not torch.allclose(flip, ms, atol=1e-3)
    # flip-averaged views are mirror-equivariant, up to stride-2 sampling not being mirror-symmetric
    assert (mirrored - ms.flip(-1)).abs().max() < 0.01 < (plain.log_softmax(1) - ms).abs().max()


def test_train_one_epoch_then_eval_and_predict_end_to_end(tmp_path):
    from mnv2.deploy.runtime.predict import predict
    from mnv2.engine.evaluate import evaluate_checkpoint
    from mnv2.engine.loop import train
    from mnv2.weights.checkpoint import load_checkpoint

    config = apply_overrides(load_recipe("default"), {
        "task": "segmentation", "data": str(CAMVID), "width": 0.35, "resolution": 64, "stem_stride": 2,
        "epochs": 1, "batch_size": 2, "lr": 0.01, "lr_batch": 2, "threads": 1, "workers": 0, "eval_batch_size": 2,
        "dropout": 0.1, "label_smoothing": 0.0,
    })  # fmt: skip
    result = train(config, tmp_path / "run", **QUIET)
    assert result["metric"] == "mIoU" and 0 <= result["best_mIoU"] <= 1
    run = tmp_path / "run"
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["epoch", "lr", "train_loss", "train_pixel_acc"] and "val_mIoU" in header
    assert (run / "iou.png").is_file()
    model = load_checkpoint(run / "best.safetensors")
    assert model.meta.task == "segmentation" and model.meta.class_names == CAMVID_CLASSES
    assert model.meta.head["class_colors"][3] == [128, 64, 128]  # road, from classes.json
    assert model.meta.image_size == [90, 120]  # the val images' one size: what `mnv2 export` defaults to

    m = evaluate_checkpoint(run / "best.safetensors", str(CAMVID), batch_size=2, workers=0)
    assert m["n"] == 1 and 0 <= m["mIoU"] <= 1 and 0 <= m["pixel_acc"] <= 1
    assert list(m["per_class_iou"]) == CAMVID_CLASSES and Path(m["confusion_png"]).name == "best.iou.png"
    json.dumps(m)  # eval --json prints it

    out = tmp_path / "pred"
    results = predict(run / "best.safetensors", [str(CAMVID / "val")], output_dir=out)
    (r,) = results
    assert (r["width"], r["height"]) == (120, 90) and sum(r["fractions"].values()) == pytest.approx(1, abs=1e-4)
    label = np.asarray(Image.open(r["label"]))
    assert label.shape == (90, 120) and label.max() < 11
    assert Image.open(r["color"]).mode == "RGB" and Image.open(r["overlay"]).size == (120, 90)
    assert sorted(p.name for p in out.iterdir()) == [f"0016E5_07959_{k}.png" for k in ("color", "label", "overlay")]
    assert get_task("segmentation").inference.format_line(r).startswith(str(CAMVID / "val" / "0016E5_07959.png"))


# ----------------------------------------------------------------------------------------------- deployment
def _segmenter_checkpoint(path: Path, config: dict | None = None) -> Path:
    """A tiny TF-padded segmenter with non-trivial BN statistics (fresh ones make every logit ~0: parity of zeros)."""
    from mnv2.weights.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    model = DeepLabV3(MobileNetV2Config(width_mult=0.35, padding="tf"), DeepLabConfig(num_classes=11))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.05, 0.5)
    pre = Preprocessing(input_size=64, crop_pct=1.0, mean=TF_MEAN, std=TF_STD)
    meta = CheckpointMeta(model.config, pre, CAMVID_CLASSES, task="segmentation", head=model.head_config, config=config)
    return save_checkpoint(path, model.eval(), meta)


def test_a_segmenter_exports_at_its_images_size_and_answers_as_torch(tmp_path, capsys):
    from mnv2.cli import main
    from mnv2.deploy.runtime.predict import predict
    from mnv2.deploy.runtime.predict import predict as engine_predict

    ckpt = _segmenter_checkpoint(tmp_path / "seg.safetensors")
    torch_out = predict(ckpt, [str(CAMVID / "val")], output_dir=tmp_path / "torch")
    assert len(set(torch_out[0]["fractions"].values())) > 2  # logits that differ, so the comparison means something
    # CamVid's own size (written WIDTHxHEIGHT): TF padding fixes the graph to it; the same pixels as torch's
    onnx = tmp_path / "seg.onnx"
    assert main(["export", str(ckpt), "--out", str(onnx), "--input-size", "120x90", "--static-batch", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_shape"] == [1, 3, 90, 120] and report["parity_max_abs"] <= 1e-4
    (r,) = engine_predict(onnx, [str(CAMVID / "val")], "onnxruntime", output_dir=tmp_path / "onnx")
    assert r["fractions"] == pytest.approx(torch_out[0]["fractions"], abs=2e-3)
    same = np.asarray(Image.open(r["label"])) == np.asarray(Image.open(torch_out[0]["label"]))
    assert same.mean() > 0.995
    # another size: images are resized to the graph's and the logits back, so masks keep the image's size
    small = tmp_path / "small.onnx"
    assert main(["export", str(ckpt), "--out", str(small), "--input-size", "64x48", "--static-batch"]) == 0
    (r,) = engine_predict(small, [str(CAMVID / "val")], "onnxruntime", output_dir=tmp_path / "small")
    assert (r["width"], r["height"]) == (120, 90) and np.asarray(Image.open(r["label"])).shape == (90, 120)
    assert sum(r["fractions"].values()) == pytest.approx(1, abs=1e-4)
    # sizes that cannot be: a bad spelling, a non-square classifier or detector, baked uint8 input for a segmenter
    with pytest.raises(SystemExit) as bad:  # argparse's own error exit
        main(["export", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--input-size", "120x"])
    assert bad.value.code == 2
    assert main(["export", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--bake-preprocessing"]) == 2
    err = capsys.readouterr().err
    assert "'120x' is not a size" in err and "bake_preprocessing" in err and "is for classifiers" in err
    assert not (tmp_path / "x.onnx").exists()


def test_quantize_a_segmenter_reports_the_miou_drop_and_the_int8_file_predicts(tmp_path, capsys):
    """`mnv2 quantize` of a segmenter: INT8 QDQ ONNX at the eval images' size (120x90 here), calibrated on the train
    split, mIoU and pixel accuracy of fp32 and INT8 in the report; the file segments in `mnv2 predict`."""
    from mnv2.cli import main

    # data without a classes.json, as ../shared/data/camvid: the labels are read with the run's --ignore-index 11
    data = camvid_copy(tmp_path)
    (data / "classes.json").unlink()
    ckpt = _segmenter_checkpoint(tmp_path / "seg.safetensors", config={"ignore_index": 11})
    out = tmp_path / "seg-int8.onnx"
    argv = ["quantize", str(ckpt), "--calibration", str(data), "--out", str(out), "--method", "minmax"]
    assert main([*argv, "--workers", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "segmentation" and report["metric"] == "mIoU" and report["input_hw"] == [90, 120]
    assert (report["n_calibration"], report["n_eval"], report["method"]) == (3, 1, "minmax")
    for m in (report["fp32"], report["int8"]):
        assert set(m) == {"mIoU", "pixel_acc"} and all(0 <= v <= 1 for v in m.values())
    assert report["drops"]["mIoU"] == pytest.approx(100 * (report["fp32"]["mIoU"] - report["int8"]["mIoU"]), abs=0.01)
    assert main(["predict", "--out", str(tmp_path / "drawn"), str(out), str(CAMVID / "val"), "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)
    assert (r["width"], r["height"]) == (120, 90) and sum(r["fractions"].values()) == pytest.approx(1, abs=1e-4)


# ----------------------------------------------------------------------------------------------- no silent failure
def test_a_degenerate_run_is_flagged_at_its_first_evaluation_and_in_its_last_line(tmp_path, capsys):
    """Train labels made constant (every pixel class 0) while val has a second class: the model answers class 0
    everywhere. The run says so at epoch 1, the checkpoint records it, the last line is no "done", and `mnv2 eval`
    warns too (issue 24, 3: CrackForest's run ended "successfully" with every pixel background)."""
    from mnv2.cli import main

    rng = np.random.default_rng(0)
    data = tmp_path / "constant"
    for split, n in (("train", 4), ("val", 2)):
        (data / split).mkdir(parents=True)
        (data / f"{split}annot").mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / split / f"{i}.png")
            mask = np.zeros((64, 64), np.uint8)
            if split == "val":
                mask[16:40, 16:40] = 1
            Image.fromarray(mask).save(data / f"{split}annot" / f"{i}.png")
    run = tmp_path / "run"
    args = ["train", "--task", "segmentation", "--data", str(data), "--out", str(run), "--width", "0.35",
            "--resolution", "64", "--epochs", "2", "--batch-size", "2", "--optimizer", "adamw", "--lr", "0.01",
            "--threads", "1", "--workers", "0", "--precise-bn", "0"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    warnings = [line for line in out if line.startswith("warning: epoch")]
    assert warnings and warnings[0].startswith("warning: epoch 1:") and "'0' for 100.0 % of the pixels" in warnings[0]
    assert out[-1].startswith("finished, but the best checkpoint is degenerate:") and "class_weights" in out[-1]
    assert main(["eval", str(run / "best.safetensors"), "--data", str(data), "--confusion", str(tmp_path)]) == 0
    assert "mnv2: warning: the evaluated model answers '0'" in capsys.readouterr().err


def test_a_useful_model_is_not_called_degenerate():
    from mnv2.tasks.base import confusion_diagnosis

    names = ["road", "crack"]
    assert confusion_diagnosis(torch.tensor([[900, 10], [5, 85]]), names, "pixel", "") is None
    one_class = confusion_diagnosis(torch.tensor([[984, 0], [16, 0]]), names, "pixel", "try X")
    assert "'road' for 100.0 % of the pixels" in one_class and one_class.endswith("try X")
    chance = confusion_diagnosis(torch.tensor([[970, 10], [20, 0]]), names, "pixel", "")
    assert "is at chance (50.0 % for 2 classes)" in chance
    # CrackForest at crack weight 3 (epoch 32): pixel accuracy under the 98.5 % majority, and a useful model
    useful = torch.tensor([[97_500, 1_500], [400, 1_100]])
    assert float(useful.diag().sum() / useful.sum()) < 0.985 and confusion_diagnosis(useful, names, "pixel", "") is None


def _crack_set(data: Path) -> Path:
    """A CamVid-layout set of 100x50 images whose class 1 is a thin crack: 2 % of the pixels."""
    for split, n in (("train", 2), ("val", 1)):
        (data / split).mkdir(parents=True)
        (data / f"{split}annot").mkdir()
        for i in range(n):
            Image.new("RGB", (100, 50), (90, 90, 90)).save(data / split / f"{i}.png")
            mask = np.zeros((50, 100), np.uint8)
            mask[:, :2] = 1
            Image.fromarray(mask).save(data / f"{split}annot" / f"{i}.png")
    return data


def test_the_data_report_gives_class_shares_and_names_the_rare_class(tmp_path):
    from mnv2.engine.config import apply_overrides, load_recipe

    data = _crack_set(tmp_path / "cracks")
    config = apply_overrides(load_recipe("segmentation"), {"data": str(data), "width": 0.35, "workers": 0})
    task = get_task("segmentation")
    bundle = task.build_data(config, task.default_preprocessing(config))
    text = task.data_report(bundle, None, config)
    assert "train: 2 images (100x50); labelled pixels: 0 98.0 %, 1 2.0 %" in text
    assert "rare classes (under 5 % of the train pixels): 1 (2.0 %); no class weights are set" in text


def test_eval_where_every_pixel_is_ignored_reports_undefined_metrics(tmp_path, capsys):
    from mnv2.cli import main

    data = tmp_path / "ignored"
    for split in ("train", "val"):
        (data / split).mkdir(parents=True)
        (data / f"{split}annot").mkdir()
        Image.new("RGB", (64, 48), (90, 90, 90)).save(data / split / "0.png")
        Image.fromarray(np.full((48, 64), 255, np.uint8)).save(data / f"{split}annot" / "0.png")
    ckpt = _segmenter_checkpoint(tmp_path / "seg.safetensors")
    args = ["eval", str(ckpt), "--data", str(data), "--split", "val", "--confusion", str(tmp_path)]
    assert main([*args, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["mIoU"] is None and r["pixel_acc"] is None and r["mean_class_acc"] is None
    assert main(args) == 0
    assert "mIoU n/a pixel-acc n/a class-acc n/a" in capsys.readouterr().out


def test_a_rare_class_gets_loss_weights_from_the_data_written_into_the_runs_config(tmp_path, capsys):
    """Issue 24, 2: CrackForest's crack (1.7 % of the pixels) was never answered without class weights; the
    default now weights a rare class by sqrt(largest share / its share), said in the log, saved in config.yaml,
    and ``--class-weighting none`` turns it off."""
    import yaml

    from mnv2.cli import main
    from mnv2.tasks.segmentation import auto_class_weights

    assert auto_class_weights(np.array([0.98, 0.02])) == [1.0, 7.0]
    assert auto_class_weights(np.array([0.6, 0.4])) is None  # nothing rare: no weights
    assert auto_class_weights(np.array([0.99999, 0.00001])) == [1.0, 10.0]  # capped
    data = _crack_set(tmp_path / "cracks")
    base = ["train", "--task", "segmentation", "--data", str(data), "--width", "0.35", "--resolution", "64",
            "--epochs", "1", "--batch-size", "2", "--threads", "1", "--workers", "0", "--precise-bn", "0"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "auto")]) == 0
    assert "adapted to the data: class weights from the data (a class is rare): 0 1, 1 7" in capsys.readouterr().out
    # the task's own options (config.yaml's options: segmentation's SegmentationOptions)
    assert yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["options"]["class_weights"] == [1.0, 7.0]
    assert main([*base, "--out", str(tmp_path / "none"), "--class-weighting", "none"]) == 0
    assert "adapted to the data" not in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "none" / "config.yaml").read_text())["options"]["class_weights"] is None


def test_resize_argmax_in_bands_equals_the_dense_bilinear_resize():
    from mnv2 import ops

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 37, 53)).astype(np.float32)
    for size in [(100, 80), (37, 53), (20, 30), (999, 7)]:
        dense = ops.resize_bilinear(x, size).argmax(0)
        assert np.array_equal(ops.resize_argmax(x, size, band_bytes=5 * 4 * size[1] * 3), dense), size


def test_a_large_image_is_segmented_at_the_work_size_and_labelled_at_its_own(monkeypatch):
    """Issue 28, 13: a free-size segmenter ran a 12-megapixel upload at full size (3.6 GB, 13.7 s). Above
    WORK_PIXELS the image is scaled down for the model and its logits resized back in bands: the engine sees the
    work size, the mask has the photo's size and matches the labels of the photo at its own size."""
    from mnv2.deploy.runtime.predict import Predictor
    from mnv2.tasks.infer import segmentation as seg

    model = Path(__file__).parents[1] / "examples" / "models" / "camvid_deeplabv3_mnv2.safetensors"
    photo = Image.open(Path(__file__).parent / "fixtures" / "segmentation" / "camvid" / "val" / "0016E5_07959.png")
    photo = photo.convert("RGB").resize((480, 360), Image.BILINEAR)  # the fixture is a 120x90 thumbnail
    p = Predictor.open(model, threads=1)
    small = p.predict_images([photo])[0]["mask"]  # 480x360: under the limit, run as it is
    monkeypatch.setattr(seg, "WORK_PIXELS", 480 * 360)
    seen = []
    run = p.run
    monkeypatch.setattr(p, "run", lambda inputs: seen.append(inputs[0].shape) or run(inputs))
    big = p.predict_images([photo.resize((960, 720), Image.BILINEAR)])[0]
    assert seen == [(3, 360, 480)] and big["mask"].shape == (720, 960)
    assert (big["mask"][::2, ::2] == small).mean() > 0.95
