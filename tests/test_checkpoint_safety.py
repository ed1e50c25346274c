"""Crafted and damaged checkpoints are refused quickly, without unbounded work or memory, with one clear error."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from edge_yolov9.cli import main
from edge_yolov9.errors import ModelError
from support.importers.official_layout import build_official_model, save_official_checkpoint
from edge_yolov9.train.checkpoint import (MAX_COMPRESSION_RATIO, MAX_UNCOMPRESSED_BYTES, RATIO_CHECKED_FROM_BYTES,
                              load_checkpoint, read_checkpoint, save_checkpoint)
from edge_yolov9.train.importers import import_checkpoint
from edge_yolov9.train.models import create_model

ROOT = Path(__file__).resolve().parents[1]
# A run that must not build a multi-GB model gets this much address space; torch alone maps ~2 GB.
MEMORY_CAP = 6 << 30


def run_cli(args: list[str], memory_cap: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``edge-yolov9 ARGS`` in a subprocess, optionally under an address-space limit (a regression then
    fails with MemoryError instead of exhausting the machine)."""
    limit = "" if memory_cap is None else (
        f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({memory_cap}, {memory_cap})); ")
    code = f"{limit}import sys; from edge_yolov9.cli import main; sys.exit(main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def deflated_copy(source: Path, target: Path) -> Path:
    """``source`` (a torch zip) with every entry deflate-compressed: torch.load still reads it."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    return target


# --- import: module trees that share children -----------------------------------------------------------------

def test_shared_submodules_are_walked_once(tmp_path):
    """Every module of a 60-level chain holds the next one twice: 2**60 paths, 60 modules."""
    foreign = build_official_model(16, 2, aux=False, names=["a", "b"])
    chain = nn.Module()
    foreign.model[0].extra = chain
    for _ in range(60):
        child = nn.Module()
        chain.left, chain.right = child, child
        chain = child
    path = save_official_checkpoint(foreign, tmp_path / "shared.pt")
    assert path.stat().st_size < 10 << 20
    done = run_cli(["import", str(path), "-o", str(tmp_path / "out.pt")], timeout=90)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(tmp_path / "out.pt")[1] == ["a", "b"]


# --- compressed zip entries -----------------------------------------------------------------------------------

def test_highly_compressed_storage_is_refused_before_reading(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.zeros(16 << 20)}}, plain)  # 64 MiB of zeros: deflates ~1000x
    bomb = deflated_copy(plain, tmp_path / "bomb.pt")
    assert bomb.stat().st_size * MAX_COMPRESSION_RATIO < plain.stat().st_size
    assert torch.load(bomb, weights_only=True)["model"]["w"].numel() == 16 << 20  # a real, loadable archive
    with pytest.raises(ModelError, match=r"bomb\.pt: the entry .*data/0 expands") as err:
        import_checkpoint(bomb)
    assert "crafted" in err.value.fix

    ours = tmp_path / "ours.pt"
    save_checkpoint(ours, create_model("gelan-t", num_classes=1), ["a"], meta={"pad": torch.zeros(16 << 20)})
    with pytest.raises(ModelError, match="expands"):
        read_checkpoint(deflated_copy(ours, tmp_path / "ours-bomb.pt"))


def test_archives_claiming_more_than_the_limit_are_refused(tmp_path):
    """Entries each under the ratio check, together over the size limit (never read by torch)."""
    entry = RATIO_CHECKED_FROM_BYTES
    count = MAX_UNCOMPRESSED_BYTES // entry + 1
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(4)}, path)
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for index in range(count):
            with archive.open(f"big/padding/{index}", "w") as handle:
                for _ in range(entry // len(chunk)):
                    handle.write(chunk)
    assert path.stat().st_size < 100 << 20
    with pytest.raises(ModelError, match=r"would decompress to 2\.\d GiB"):
        import_checkpoint(path)


# --- our own format -------------------------------------------------------------------------------------------

@pytest.fixture
def own_checkpoint(tmp_path) -> dict:
    path = save_checkpoint(tmp_path / "model.pt", create_model("gelan-t", num_classes=2), ["a", "b"])
    return torch.load(path, weights_only=True)


def test_absurd_config_is_refused_before_building(tmp_path, own_checkpoint, coco128):
    own_checkpoint["config"]["base_width"] = 4096  # a 20 GB model
    path = tmp_path / "wide.pt"
    torch.save(own_checkpoint, path)
    done = run_cli(["val", "--model", str(path), "--data", str(coco128)], memory_cap=MEMORY_CAP)
    assert done.returncode == 2, done.stderr
    assert "parameters" in done.stderr and "base_width 4096" in done.stderr and "fix:" in done.stderr
    assert "Traceback" not in done.stderr


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, own_checkpoint):
    own_checkpoint["config"]["csp_depth"] = 1
    path = tmp_path / "shallow.pt"
    torch.save(own_checkpoint, path)
    with pytest.raises(ModelError, match="does not hold a loadable edge-yolov9 detector: .*unexpected"):
        load_checkpoint(path)


def _set(key, value):
    def change(payload):
        payload[key] = value
    return change


def _delete(key):
    def change(payload):
        del payload[key]
    return change


def _half_training_state(payload):
    payload["optimizer"] = {}


@pytest.mark.parametrize("change, key, problem", [
    (_delete("names"), "names", "is missing"),
    (_delete("config"), "config", "is missing"),
    (_delete("model"), "model", "is missing"),
    (_set("version", "1"), "version", "'1', not a format version"),
    (_set("version", True), "version", "True, not a format version"),
    (_set("model", []), "model", "is a list, not a dict"),
    (_set("names", []), "names", "non-empty strings"),
    (_set("names", ["a", None]), "names", "non-empty strings"),
    (_set("names", ["a", "b", "c"]), "names", "lists 3 classes but the model has 2"),
    (_set("config", {"name": "x", "base_width": "16"}), "config", "base_width must be an integer"),
    (_set("config", {"name": "x", "depth": 3}), "config", "Unknown model config keys"),
    (_set("meta", None), "meta", "is a NoneType"),
    (_set("model", {"w": [1.0]}), "model", "to tensors"),
    (_half_training_state, "train_model", "is missing"),
])
def test_damaged_structure_names_the_key(tmp_path, own_checkpoint, change, key, problem):
    change(own_checkpoint)
    path = tmp_path / "damaged.pt"
    torch.save(own_checkpoint, path)
    with pytest.raises(ModelError) as err:
        read_checkpoint(path)
    assert f"'{key}' " in err.value.problem and problem in err.value.problem
    assert "re-create it" in err.value.fix


def test_every_command_reports_a_damaged_checkpoint_cleanly(tmp_path, own_checkpoint, coco128, capsys):
    own_checkpoint["version"] = "1"
    path = tmp_path / "damaged.pt"
    torch.save(own_checkpoint, path)
    for argv in (["val", "--model", str(path), "--data", str(coco128)],
                 ["train", "--weights", str(path), "--data", str(coco128), "--project", str(tmp_path)],
                 ["train", "--resume", str(path)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "'version' is '1'" in err and "Traceback" not in err, argv


def test_foreign_checkpoint_points_to_import_without_pytorch_advice(ultralytics_t_checkpoint, coco128, capsys):
    assert main(["val", "--model", str(ultralytics_t_checkpoint), "--data", str(coco128)]) == 2
    err = capsys.readouterr().err
    assert "is not an edge-yolov9 checkpoint" in err and f"edge-yolov9 import {ultralytics_t_checkpoint}" in err
    assert "\x1b" not in err and "weights_only" not in err.lower() and "weights only" not in err.lower()


def test_text_file_as_checkpoint_says_what_it_is(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("epochs: 10\n")
    with pytest.raises(ModelError, match="is not an edge-yolov9 checkpoint: it looks like a text file"):
        read_checkpoint(path)
