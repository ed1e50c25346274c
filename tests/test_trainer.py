"""Training: optimisation steps, exact resume, and a tiny end-to-end run on real coco128 images."""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from edge_yolov9.errors import DatasetError, EdgeYoloError, ModelError
from edge_yolov9.preprocess import letterbox, load_image
from edge_yolov9.train.checkpoint import load_checkpoint, read_checkpoint
from edge_yolov9.train.loss import DetectionLoss
from edge_yolov9.train.models import STRIDES, create_model
from edge_yolov9.train.trainer import (AUTO_SGD_MIN_STEPS, TrainConfig, Trainer, build_optimizer, choose_optimizer, collate,
                           resume)


def tiny_dataset(coco128: Path, tmp_path: Path, count: int = 8) -> Path:
    """A data.yaml over the first ``count`` coco128 images (train and val), as an image list."""
    images = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:count]
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(str(p) for p in images) + "\n")
    names = (coco128 / "data.yaml").read_text().split("names:", 1)[1]
    data = tmp_path / "data.yaml"
    data.write_text(f"path: {tmp_path}\ntrain: images.txt\nval: images.txt\nnames:{names}")
    return data


def config(data: Path, tmp_path: Path, **changes) -> TrainConfig:
    base = TrainConfig(model="yolov9-t", data=str(data), imgsz=128, epochs=2, batch=4, workers=0,
                       device="cpu", warmup_epochs=0.5, close_mosaic=1, project=str(tmp_path / "runs"),
                       name="run")
    return replace(base, **changes)


@pytest.mark.parametrize("name, lr", [("sgd", 0.01), ("adamw", 0.002)])
def test_optimizer_steps_reduce_the_loss_on_a_fixed_batch(coco128, tmp_path, name, lr):
    cfg = config(tiny_dataset(coco128, tmp_path), tmp_path, optimizer=name, lr0=lr)
    trainer = Trainer(cfg)
    batch = collate([trainer.dataset[i] for i in range(4)])
    images, targets = batch[0].float() / 255, batch[1]
    assert len(targets), "the fixed batch must hold objects"
    torch.manual_seed(0)
    model = create_model("yolov9-t", num_classes=80).train()
    optimizer = build_optimizer(model, cfg, cfg.weight_decay)
    assert type(optimizer).__name__.lower() == name
    loss = DetectionLoss(STRIDES)
    first = loss(model(images), targets)[0].item()
    for _ in range(30):
        optimizer.zero_grad()
        loss(model(images), targets)[0].backward()
        optimizer.step()
    assert loss(model(images), targets)[0].item() < first * 0.6


def test_training_is_repeatable_and_resume_continues_exactly(coco128, tmp_path, monkeypatch):
    data = tiny_dataset(coco128, tmp_path)
    full = Trainer(config(data, tmp_path, name="full"))
    full.fit()

    # The same run killed during its second epoch, then resumed from last.pt.
    train_epoch = Trainer.train_epoch

    def crash_in_second_epoch(self, epoch):
        if epoch == 1:
            raise RuntimeError("simulated crash")
        return train_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_second_epoch)
    crashed = Trainer(config(data, tmp_path, name="crashed"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit()
    monkeypatch.undo()
    state = read_checkpoint(crashed.run_dir / "last.pt")
    assert state["epoch"] == 0 and state["ema_updates"] > 0
    resume(crashed.run_dir / "last.pt")

    a = read_checkpoint(full.run_dir / "last.pt")
    b = read_checkpoint(crashed.run_dir / "last.pt")
    assert a["epoch"] == b["epoch"] == 1 and a["ema_updates"] == b["ema_updates"]
    for part in ("model", "train_model"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], atol=1e-5, rtol=1e-4)
    rows = list(csv.DictReader(open(crashed.run_dir / "results.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]


def test_end_to_end_train_and_val_on_coco128(coco128, tmp_path):
    cfg = config(tiny_dataset(coco128, tmp_path, count=8), tmp_path, epochs=1)
    best = Trainer(cfg).fit()
    model, names, meta = load_checkpoint(best)
    assert names[0] == "person" and model.num_classes == 80 and model.cfg.input_size == (128, 128)
    assert 0.0 <= meta["map50_95"] <= meta["map50"] <= 1.0
    run = cfg.run_dir()
    assert {"last.pt", "best.pt", "results.csv", "loss.png", "map.png"} <= {p.name for p in run.iterdir()}


def test_fine_tuning_to_other_classes_keeps_all_but_class_layers(coco128, tmp_path, caplog):
    data = tiny_dataset(coco128, tmp_path)
    source = tmp_path / "source.pt"
    from edge_yolov9.train.checkpoint import save_checkpoint

    donor = create_model("gelan-t", num_classes=3)
    origin = {"license": "GPL-3.0", "source_format": "yolov9", "source_file": "gelan-t.pt"}
    save_checkpoint(source, donor, ["a", "b", "c"], meta={"weights_license": origin})
    with caplog.at_level(logging.INFO):
        trainer = Trainer(config(data, tmp_path, weights=str(source), freeze_backbone=True, epochs=1))
    model = trainer.model
    assert "--model yolov9-t adds the PGI auxiliary branch" in caplog.text
    fresh = re.search(r"tensors kept, (\d+) start fresh \((.*)\)$", caplog.text, re.MULTILINE)
    reasons = dict((why, int(n)) for n, why in re.findall(r"(\d+) (in the [^,]*)", fresh[2]))
    assert set(reasons) == {"in the class branch (3 -> 80 classes)", "in the added auxiliary branch"}
    assert int(fresh[1]) == sum(reasons.values()) and "Partial weight load" not in caplog.text
    torch.testing.assert_close(model.layers[4].cv4.conv.weight, donor.layers[4].cv4.conv.weight)
    torch.testing.assert_close(model.head.box[0][0].conv.weight, donor.head.box[0][0].conv.weight)
    assert model.head.cls[0][-1].weight.shape[0] == 80
    assert not any(p.requires_grad for p in model.layers[:9].parameters())
    assert all(p.requires_grad for p in model.layers[9:].parameters())
    # the foreign weights' license goes with every checkpoint made from them
    trainer.fit()
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(trainer.run_dir / name)[2]["weights_license"] == origin


def person_dataset(coco128: Path, tmp_path: Path, count: int = 8) -> Path:
    """A 1-class data.yaml over the first ``count`` coco128 images, their person labels only."""
    root = tmp_path / "person"
    images, labels = root / "images" / "train", root / "labels" / "train"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for image in sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:count]:
        (images / image.name).symlink_to(image)
        rows = (coco128 / "labels" / "train2017" / f"{image.stem}.txt").read_text().splitlines()
        (labels / f"{image.stem}.txt").write_text("".join(f"{row}\n" for row in rows if row.split()[:1] == ["0"]))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames: [person]\n")
    return root / "data.yaml"


def test_a_foreign_checkpoint_fine_tunes_as_it_is(coco128, tmp_path, ultralytics_t_checkpoint, caplog):
    """The real Ultralytics yolov9t (1 class) straight to --weights on 1-class data, without --model: its own
    architecture (Ultralytics' depthwise class branch), every tensor kept, its license carried; then one short
    fine-tune on real images, and the run's checkpoints keep that architecture."""
    from edge_yolov9.train.importers.core import import_checkpoint

    with caplog.at_level(logging.INFO):
        trainer = Trainer(config(person_dataset(coco128, tmp_path), tmp_path, model=None, epochs=1,
                                 weights=str(ultralytics_t_checkpoint)))
    imported = import_checkpoint(ultralytics_t_checkpoint).model
    assert trainer.model.cfg == imported.cfg.replace(input_size=(128, 128)) and trainer.model.cfg.head.cls_depthwise
    state = trainer.model.state_dict()
    for key, value in imported.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    assert f"Fine-tuning gelan-t from {ultralytics_t_checkpoint}: {len(state)} tensors kept, 0 start fresh" in caplog.text
    assert "Partial weight load" not in caplog.text and trainer.weights_license["license"] == "AGPL-3.0"
    model, names, meta = load_checkpoint(trainer.fit())
    assert names == ["person"] and model.cfg.head == imported.cfg.head and meta["weights_license"]["license"] == "AGPL-3.0"


def test_a_class_subset_keeps_its_pretrained_scores(coco128, tmp_path, caplog):
    """An 80-class model cut down to [car, person, forklift]: before any training, the new model's car and person
    scores are exactly the source's (its class branch keeps its width and their rows), its boxes too; forklift,
    a new name, starts fresh. --classes gives the same rows by id."""
    from edge_yolov9.train.checkpoint import save_checkpoint
    from support.conversions import trained_like

    coco_names = (coco128 / "data.yaml").read_text().split("names:", 1)[1]
    names80 = [line.split(":", 1)[1].strip() for line in coco_names.strip().splitlines()]
    source_model = trained_like(sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:4]).eval()
    source = tmp_path / "coco.pt"
    save_checkpoint(source, source_model, names80)
    data = person_dataset(coco128, tmp_path)
    data.write_text(data.read_text().replace("names: [person]", "names: [car, person, forklift]"))
    canvas, _ = letterbox(load_image(sorted((coco128 / "images" / "train2017").glob("*.jpg"))[5]), (256, 320))
    image = torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = source_model(image).main
    for classes in (None, ["2", "0", "forklift"]):
        with caplog.at_level(logging.INFO):
            trainer = Trainer(config(data, tmp_path, model=None, weights=str(source), classes=classes))
        model = trainer.model.eval().to(memory_format=torch.contiguous_format)  # the source's kernels, for exactness
        assert model.cfg.num_classes == 3 and model.head.cls[0][-1].in_channels == source_model.head.cls[0][-1].in_channels
        with torch.no_grad():
            found = model(image).main
        for ours, theirs in zip(found, expected):
            torch.testing.assert_close(ours.cls[:, :2], theirs.cls[:, [2, 0]], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ours.box, theirs.box, rtol=0, atol=0)
            assert not torch.allclose(ours.cls[:, 2], theirs.cls[:, 0], atol=1e-3)  # forklift is no copy
        assert "Class branch: car from car (2), person from person (0), forklift new" in caplog.text
        caplog.clear()
    with pytest.raises(ModelError, match="--classes is about the checkpoint to fine-tune, and no --weights"):
        Trainer(config(data, tmp_path, model=None, classes=["car", "person", "x"]))
    with pytest.raises(ModelError, match="--classes lists 2 classes but the data has 3"):
        Trainer(config(data, tmp_path, model=None, weights=str(source), classes=["car", "person"]))
    with pytest.raises(ModelError, match="--classes 80: .*coco.pt has 80 classes"):
        Trainer(config(data, tmp_path, model=None, weights=str(source), classes=["80", "0", "1"]))


def test_another_architecture_is_an_error_unless_a_partial_load_is_asked_for(coco128, tmp_path):
    from edge_yolov9.train.checkpoint import save_checkpoint

    data = tiny_dataset(coco128, tmp_path)
    source = tmp_path / "small.pt"
    save_checkpoint(source, create_model("gelan-t", num_classes=80), [f"c{i}" for i in range(80)])
    with pytest.raises(ModelError, match=r"--model gelan-s \(base width 32, depth 3\) is another architecture than "
                                         r".*small.pt \(gelan-t: base width 16, depth 3\)") as err:
        Trainer(config(data, tmp_path, model="gelan-s", weights=str(source)))
    assert "--partial-load" in err.value.fix
    assert Trainer(config(data, tmp_path, model="gelan-s", weights=str(source), partial_load=True)).model.cfg.base_width == 32


def test_unreadable_training_image_is_a_dataset_error(coco128, tmp_path):
    data = tiny_dataset(coco128, tmp_path, count=3)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not an image")
    listing = tmp_path / "images.txt"
    listing.write_text(listing.read_text() + f"{broken}\n")
    with pytest.raises(DatasetError, match="broken.jpg"):
        Trainer(config(data, tmp_path))


def test_auto_optimizer_is_adamw_for_short_runs_and_sgd_for_long_ones():
    assert choose_optimizer(TrainConfig(), AUTO_SGD_MIN_STEPS - 1) == "adamw"
    assert choose_optimizer(TrainConfig(), AUTO_SGD_MIN_STEPS) == "sgd"
    assert choose_optimizer(TrainConfig(optimizer="sgd"), 10) == "sgd"
    with pytest.raises(EdgeYoloError, match="adam"):
        choose_optimizer(TrainConfig(optimizer="adam"), 10)


def test_time_budget_fits_the_epoch_count_and_the_choice_is_stored(coco128, tmp_path):
    data = tiny_dataset(coco128, tmp_path, count=4)
    trainer = Trainer(config(data, tmp_path, epochs=5, time_budget=1e-4))
    trainer.fit()  # the first epoch alone overruns a 6 ms budget
    state = read_checkpoint(trainer.run_dir / "last.pt")
    assert state["epoch"] == 0 and state["train_config"]["epochs"] == 1
    assert state["train_config"]["optimizer"] == "adamw" and state["train_config"]["lr0"] == 0.002

    trainer.cfg.time_budget = 3.0  # 1.5 min spent in 3 epochs: 1.5 min left, 3 more epochs
    trainer.history = [replace(trainer.history[0], seconds=30.0) for _ in range(3)]
    trainer._fit_epochs_to_budget(3)
    assert trainer.cfg.epochs == 6


def test_patience_ends_a_run_whose_map_stopped_rising_and_resume_keeps_it_ended(coco128, tmp_path, monkeypatch,
                                                                                 caplog):
    """Validation mAP 0.10, 0.20, 0.15, 0.18 with --patience 2: the best is two epochs old after epoch 4, so the
    run ends there (of 6); its stored config says so, and a resume adds no epoch."""
    from edge_yolov9.train.evaluate import Metrics

    scores = iter([0.10, 0.20, 0.15, 0.18, 0.5, 0.5])
    monkeypatch.setattr(Trainer, "validate", lambda self: Metrics(next(scores), 0.5, {}, {}, 8, 10))
    cfg = config(tiny_dataset(coco128, tmp_path, count=4), tmp_path, epochs=6, patience=2)
    with caplog.at_level(logging.INFO):
        Trainer(cfg).fit()
    assert "No better mAP for 2 epochs (best: epoch 2, mAP50-95 0.2000): stopping at epoch 4 of 6" in caplog.text
    rows = list(csv.DictReader(open(cfg.run_dir() / "results.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    state = read_checkpoint(cfg.run_dir() / "last.pt")
    assert state["train_config"]["epochs"] == 4 and load_checkpoint(cfg.run_dir() / "best.pt")[2]["epoch"] == 1
    resume(cfg.run_dir())
    assert len(list(csv.DictReader(open(cfg.run_dir() / "results.csv")))) == 4
