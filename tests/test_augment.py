"""Augmentations keep boxes on their objects; the synthetic dataset is valid and repeatable."""

from __future__ import annotations

import numpy as np

from edge_yolov9.train.augment import Annotated, AugmentConfig, flip_horizontal, mosaic, random_affine, warp_boxes
from edge_yolov9.train.data import list_split, load_data_config
from edge_yolov9.train.synthetic import CLASSES, generate_shapes_dataset


def white_square_scene(size=100, box=(20, 30, 50, 70)) -> Annotated:
    image = np.zeros((size, size, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return Annotated(image, np.array([box], np.float32), np.array([3]))


def box_of_white_pixels(image: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(image[..., 0] > 200)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_flip_moves_box_with_pixels():
    flipped = flip_horizontal(white_square_scene())
    np.testing.assert_allclose(flipped.boxes[0], box_of_white_pixels(flipped.image), atol=0.5)


def test_affine_box_tracks_the_object():
    rng = np.random.default_rng(3)
    out = random_affine(white_square_scene(), rng, AugmentConfig(degrees=0, scale=0.3, translate=0.1), (120, 120))
    assert len(out.boxes) == 1 and out.classes.tolist() == [3]
    np.testing.assert_allclose(out.boxes[0], box_of_white_pixels(out.image), atol=2.0)


def test_warp_boxes_is_exact_for_a_pure_translation():
    matrix = np.array([[1, 0, 5], [0, 1, -3], [0, 0, 1]], np.float64)
    out = warp_boxes(np.array([[10, 10, 20, 30]], np.float32), matrix, (100, 100))
    np.testing.assert_allclose(out, [[15, 7, 25, 27]])


def test_mosaic_keeps_every_visible_object():
    tiles = [white_square_scene(size=60, box=(10, 10, 50, 50)) for _ in range(4)]
    out = mosaic(tiles, 60, np.random.default_rng(0))
    assert out.image.shape == (120, 120, 3)
    for box in out.boxes.astype(int):
        x1, y1, x2, y2 = box
        assert out.image[y1:y2, x1:x2, 0].mean() > 200  # every kept box covers white pixels
    assert 1 <= len(out.boxes) <= 4


def test_synthetic_dataset_is_valid_and_repeatable(tmp_path):
    first = generate_shapes_dataset(tmp_path / "a", num_train=12, num_val=4, image_size=96, seed=7)
    generate_shapes_dataset(tmp_path / "b", num_train=12, num_val=4, image_size=96, seed=7)
    cfg = load_data_config(first)
    assert cfg.names == CLASSES
    train = list_split(cfg, "train")  # raises on any invalid label
    assert len(train) == 12 and sum(len(s.labels) for s in train) >= 12
    for a, b in zip(sorted((tmp_path / "a" / "labels").rglob("*.txt")), sorted((tmp_path / "b" / "labels").rglob("*.txt"))):
        assert a.read_text() == b.read_text()
    # An existing dataset with the same parameters is reused, not regenerated.
    stamp = (tmp_path / "a" / "generator.json").stat().st_mtime_ns
    generate_shapes_dataset(tmp_path / "a", num_train=12, num_val=4, image_size=96, seed=7)
    assert (tmp_path / "a" / "generator.json").stat().st_mtime_ns == stamp


def test_augment_pipeline_output_is_square_and_in_bounds(tmp_path):
    data = generate_shapes_dataset(tmp_path / "s", num_train=6, num_val=1, image_size=64, seed=1)
    samples = list_split(load_data_config(data), "train")
    from edge_yolov9.train.trainer import TrainDataset

    dataset = TrainDataset(samples, 64, AugmentConfig(), seed=0, cache=True)
    for index in range(len(dataset)):
        image, targets = dataset[index]
        assert image.shape == (3, 64, 64)
        assert (targets[:, 1:] >= 0).all() and (targets[:, 1:] <= 64).all()
        assert (targets[:, 3] > targets[:, 1]).all() and (targets[:, 4] > targets[:, 2]).all()
    again = TrainDataset(samples, 64, AugmentConfig(), seed=0, cache=False)
    assert np.array_equal(dataset[2][0].numpy(), again[2][0].numpy())
