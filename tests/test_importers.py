"""Checkpoint import: the real Ultralytics file against Ultralytics itself, the YOLOv9-repo and MIT YOLO
layouts round-tripped, pickled code never run, bad inputs refused with a fix, and the CLI's output."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_yolov9.cli import main as cli_main
from edge_yolov9.errors import ModelError
from edge_yolov9.preprocess import letterbox, load_image
from support.importers.mit_layout import build_mit_model, save_lightning_checkpoint, save_release_weights
from support.importers.official_layout import (ClassificationModel, RepNCSPELAN4, build_official_model,
                                               registered_as_repository_modules, save_official_checkpoint)
from support.importers.ultralytics_oracle import ultralytics_raw_outputs
from edge_yolov9.train.checkpoint import load_checkpoint
from edge_yolov9.train.importers import FORMATS, import_checkpoint, save_imported
from edge_yolov9.train.importers.cli import FORMAT_CHOICES, parse_names
from edge_yolov9.train.importers.unpickler import Placeholder, read_foreign_checkpoint

SHARED_KEYS_TSV = "keys.tsv"
# Both sides compute in float32 from the same fp16 weights widened exactly to float32, so only the order of
# float additions may differ (~1e-6 relative). Logits here reach ~20; 1e-3 absolute is ~1e-4 relative, well
# below the fp16 weights' own resolution (~1e-3), while any mis-mapped tensor moves outputs by O(0.1..10).
ORACLE_ATOL = 1e-3
# Independent float32 implementations of the same graph: summation order differs, nothing else.
LAYOUT_ATOL = 1e-4


@pytest.fixture(scope="module")
def real_image(coco128) -> np.ndarray:
    """A real COCO image, letterboxed to a non-square 256x320 input (1, 3, H, W) in [0, 1]."""
    path = sorted((coco128 / "images").rglob("*.jpg"))[0]
    canvas, _ = letterbox(load_image(path), (256, 320))
    return (canvas.transpose(2, 0, 1)[None] / 255.0).astype(np.float32)


@pytest.fixture(scope="module")
def imported_ultralytics(ultralytics_t_checkpoint):
    return import_checkpoint(ultralytics_t_checkpoint)


def _raw_maps(levels) -> list[torch.Tensor]:
    """Our LevelOutputs as the published heads' concatenated maps cat(box, cls)."""
    return [torch.cat((level.box, level.cls), 1) for level in levels]


def _mit_maps(levels) -> list[torch.Tensor]:
    """MIT's per-level (class logits, box bins) as the published heads' maps cat(box, cls)."""
    return [torch.cat((box, cls), 1) for cls, box in levels]


def _assert_maps_close(ours: list[torch.Tensor], theirs: list, atol: float) -> None:
    assert len(ours) == len(theirs) == 3
    for level, (got, want) in enumerate(zip(ours, theirs)):
        want = torch.as_tensor(want)
        assert got.shape == want.shape, f"level {level}"
        torch.testing.assert_close(got, want, rtol=0, atol=atol, msg=lambda m: f"level {level}: {m}")


# --- the real Ultralytics checkpoint -------------------------------------------------------------------------

def test_ultralytics_checkpoint_uses_every_tensor(imported_ultralytics, ultralytics_t_checkpoint):
    listed = [line.split("\t")[0] for line in
              (ultralytics_t_checkpoint.parent / SHARED_KEYS_TSV).read_text().splitlines() if line.strip()]
    result = imported_ultralytics
    assert sorted(result.used) == sorted(listed)
    assert "model.22.dfl.conv.weight" in result.used
    assert result.complete and result.load_report.summary() == "all keys matched"
    cfg = result.model.cfg
    assert (cfg.name, cfg.base_width, cfg.csp_depth, cfg.num_classes, cfg.aux) == ("gelan-t", 16, 3, 1, "none")
    assert (cfg.head.box_groups, cfg.head.cls_depthwise, cfg.head.reg_max) == (1, True, 16)
    assert result.names == ["ball"] and result.names_source == "checkpoint"
    assert result.format == "ultralytics"
    assert result.source_sha256.startswith("9d5338b0") and result.source_sha256.endswith("f97268")


def test_ultralytics_import_reproduces_ultralytics_forward(imported_ultralytics, ultralytics_t_checkpoint,
                                                           real_image, tmp_path):
    theirs = ultralytics_raw_outputs(ultralytics_t_checkpoint, real_image, tmp_path)
    with torch.no_grad():
        ours = _raw_maps(imported_ultralytics.model.eval()(torch.from_numpy(real_image)).main)
    assert [t.shape[1] for t in theirs] == [65, 65, 65]  # 64 box bins + 1 class
    _assert_maps_close(ours, theirs, ORACLE_ATOL)


# --- the YOLOv9 repository's layouts --------------------------------------------------------------------------

@pytest.mark.parametrize("base_width, num_classes, aux, half, names_as_dict, variant", [
    (16, 40, True, False, True, "yolov9-t"),   # train_dual.py checkpoint: aux layers 22-28, DualDDetect at 29
    (32, 3, False, False, False, "gelan-s"),   # gelan-s: DDetect at 22
    (16, 3, False, True, True, "gelan-t"),     # yolov9-t-converted.pt: aux stripped, fp16, DDetect at 22
])
def test_yolov9_repository_layouts_round_trip(tmp_path, base_width, num_classes, aux, half, names_as_dict, variant):
    names = [f"thing{i}" for i in range(num_classes)]
    foreign = build_official_model(base_width, num_classes, aux=aux,
                                   names=dict(enumerate(names)) if names_as_dict else names)
    path = save_official_checkpoint(foreign, tmp_path / "official.pt", half=half)
    result = import_checkpoint(path)
    assert result.format == "yolov9" and result.model.cfg.name == variant
    assert result.weights_license() == {"license": "GPL-3.0", "source_format": "yolov9", "source_file": "official.pt"}
    assert result.complete and result.names == names
    expected_dfl = ["model.29.dfl.conv.weight", "model.29.dfl2.conv.weight"] if aux else ["model.22.dfl.conv.weight"]
    assert set(expected_dfl) <= set(result.used)
    assert len(result.used) == len(foreign.state_dict())
    head = result.model.cfg.head
    assert (head.box_groups, head.cls_depthwise) == (4, False)
    if num_classes == 40:  # only here do the width rules differ: the repository's 2 * 40 = 80, not max(64, 40)
        assert (head.cls_width_factor, head.cls_width_cap) == (2, 128)

    image = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = foreign.eval()(image)
        ours = result.model.eval()(image)
    _assert_maps_close(_raw_maps(ours.main), theirs[1] if aux else theirs, LAYOUT_ATOL)
    if aux:  # the auxiliary head runs in training mode; BatchNorm then uses batch statistics on both sides
        with torch.no_grad():
            theirs_aux = foreign.train()(image)[0]
            ours_aux = result.model.train()(image).aux
        _assert_maps_close(_raw_maps(ours_aux), theirs_aux, LAYOUT_ATOL)


def test_yolov9_repository_other_architectures_are_named(tmp_path):
    foreign = build_official_model(16, 2, aux=False)
    foreign.model[2] = RepNCSPELAN4(32, 32, 32, 16, 1)  # as yolov9-m/c/e have, where GELAN-T has an ELAN1
    path = save_official_checkpoint(foreign, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="layer 2 is a RepNCSPELAN4 where YOLOv9-T/S has a ELAN1") as err:
        import_checkpoint(path)
    assert "yolov9-m/c/e" in err.value.fix


def _official_with_activation(activation: type[torch.nn.Module], path: Path) -> torch.nn.Module:
    foreign = build_official_model(16, 2, aux=False)
    for module in foreign.modules():
        if isinstance(getattr(module, "act", None), torch.nn.SiLU):
            module.act = activation()
    save_official_checkpoint(foreign, path)
    return foreign


def test_relu6_models_import_with_relu6(tmp_path):
    """The activation is read from the pickled modules: edge fine-tunes swap SiLU for ReLU6."""
    foreign = _official_with_activation(torch.nn.ReLU6, tmp_path / "relu6.pt")
    result = import_checkpoint(tmp_path / "relu6.pt")
    assert result.model.cfg.activation == "relu6"
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        _assert_maps_close(_raw_maps(result.model(image).main), foreign(image), LAYOUT_ATOL)


def test_activations_the_zoo_lacks_are_named(tmp_path):
    _official_with_activation(torch.nn.LeakyReLU, tmp_path / "leaky.pt")
    with pytest.raises(ModelError, match=r"uses the activation\(s\) \['LeakyReLU'\]"):
        import_checkpoint(tmp_path / "leaky.pt")


def test_a_classifier_is_not_a_detector(tmp_path):
    path = tmp_path / "classifier.pt"
    with registered_as_repository_modules():
        torch.save({"model": ClassificationModel(), "ema": None}, path)
    with pytest.raises(ModelError, match="holds a ClassificationModel, not a detection model"):
        import_checkpoint(path)


# --- MIT YOLO layouts -----------------------------------------------------------------------------------------

def test_mit_release_weights_round_trip(tmp_path):
    foreign = build_mit_model(16, 40)
    result = import_checkpoint(save_release_weights(foreign, tmp_path / "v9-t.pt"))
    assert result.format == "mit" and result.model.cfg.name == "yolov9-t"
    assert result.weights_license()["license"] == "MIT"
    assert result.complete and len(result.used) == len(foreign.model.state_dict())
    assert "22.heads.0.anc2vec.anc2vec.weight" in result.used and "30.heads.2.anc2vec.anc2vec.weight" in result.used
    assert result.names == [f"class{i}" for i in range(40)] and result.names_source == "default"
    # MIT's Detection uses the YOLOv9 repository's class width rule: 2 * 40 = 80 channels, not max(64, 40)
    assert (result.model.cfg.head.cls_width_factor, result.model.cfg.head.cls_width_cap) == (2, 128)

    image = torch.rand(1, 3, 96, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = foreign(image)
        ours_main = result.model.eval()(image).main
    _assert_maps_close(_raw_maps(ours_main), _mit_maps(theirs["Main"]), LAYOUT_ATOL)
    with torch.no_grad():
        theirs_aux = foreign.train()(image)["AUX"]
        ours_aux = result.model.train()(image).aux
    _assert_maps_close(_raw_maps(ours_aux), _mit_maps(theirs_aux), LAYOUT_ATOL)


def test_mit_lightning_checkpoint_imports_the_ema_copy(tmp_path):
    trained, ema = build_mit_model(32, 2, seed=3), build_mit_model(32, 2, seed=4)
    result = import_checkpoint(save_lightning_checkpoint(trained, ema, tmp_path / "last.ckpt"),
                               checkpoint_format="mit")
    assert result.model.cfg.name == "yolov9-s" and result.complete
    assert all(key.startswith("ema.model.") for key in result.used)
    assert any("skipped" in note and "model.model." in note for note in result.notes)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        theirs = _mit_maps(ema(image)["Main"])
        ours = result.model.eval()(image).main
    _assert_maps_close(_raw_maps(ours), theirs, LAYOUT_ATOL)


def test_incomplete_checkpoint_is_refused_unless_partial(tmp_path):
    state = build_mit_model(16, 2).model.state_dict()
    del state["21.conv4.conv.weight"]
    state["21.extra.weight"] = torch.zeros(3)
    state["18.conv4.bn.weight"] = torch.zeros(5)
    path = tmp_path / "incomplete.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"missing: layers\.21\.cv4\.conv\.weight; unexpected: 21\.extra\.weight; "
                                         r"shape mismatch: 18\.conv4\.bn\.weight \(5,\) -> \(96,\)") as err:
        import_checkpoint(path)
    assert "--partial" in err.value.fix
    result = import_checkpoint(path, partial=True)
    assert result.load_report.missing == ["layers.21.cv4.conv.weight"]
    assert result.load_report.unexpected == ["21.extra.weight"]
    assert "18.conv4.bn.weight" not in result.used and len(result.used) == len(state) - 2


def test_dfl_projection_must_be_the_fixed_one(tmp_path):
    state = build_mit_model(16, 2).model.state_dict()
    state["22.heads.1.anc2vec.anc2vec.weight"] = torch.ones(1, 16, 1, 1, 1)
    path = tmp_path / "odd-dfl.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match="22.heads.1.anc2vec.anc2vec.weight is not the fixed DFL projection"):
        import_checkpoint(path)


# --- pickled code is never run --------------------------------------------------------------------------------

class _Exploit:
    """Unpickling this runs a shell command, as a malicious checkpoint would."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_payload_is_live_with_plain_pickle(tmp_path):
    """Control: the payload used below really runs code when unpickled without restrictions."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Exploit(marker)))
    assert marker.exists()


def test_malicious_checkpoint_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Exploit(marker), "weights": torch.zeros(2)}, path)
    with pytest.raises(ModelError, match=r"unknown checkpoint layout.*'model' is a \w+\.system"):
        import_checkpoint(path)
    assert not marker.exists()
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ModelError):
        import_checkpoint(plain)
    assert not marker.exists()


def test_malicious_object_inside_a_real_layout_is_inert(tmp_path):
    marker = tmp_path / "pwned"
    foreign = build_official_model(16, 1, aux=False, names=["ball"])
    path = save_official_checkpoint(foreign, tmp_path / "trojan.pt", opt=_Exploit(marker))
    result = import_checkpoint(path)
    assert result.complete and not marker.exists()
    recorded = read_foreign_checkpoint(path)["opt"]
    assert isinstance(recorded, Placeholder) and recorded.source.endswith(".system")
    assert recorded.args == (f"touch {marker}",)


# --- bad inputs -----------------------------------------------------------------------------------------------

def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _torchscript(path: Path) -> Path:
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path


@pytest.mark.parametrize("make, problem, fix", [
    (lambda tmp, real, jpg: jpg, "looks like a JPEG image", "PyTorch checkpoint"),
    (lambda tmp, real, jpg: _write(tmp / "notes.txt", b"epochs: 10\n"), "looks like a text file", "torch.save"),
    (lambda tmp, real, jpg: _write(tmp / "empty.pt", b""), "is empty", "PyTorch checkpoint"),
    (lambda tmp, real, jpg: _write(tmp / "cut.pt", real.read_bytes()[: real.stat().st_size // 2]),
     "truncated or damaged", "download or copy"),
    (lambda tmp, real, jpg: tmp / "absent.pt", "Checkpoint not found", "check the path"),
    (lambda tmp, real, jpg: _torchscript(tmp / "scripted.pt"), "TorchScript archive", "training checkpoint"),
])
def test_bad_inputs_name_the_file_and_the_fix(tmp_path, ultralytics_t_checkpoint, coco128, make, problem, fix):
    jpg = sorted((coco128 / "images").rglob("*.jpg"))[0]
    path = make(tmp_path, ultralytics_t_checkpoint, jpg)
    with pytest.raises(ModelError) as err:
        import_checkpoint(path)
    assert str(path) in err.value.problem and problem in err.value.problem
    assert fix in err.value.fix


def test_zip_damaged_inside_is_refused(tmp_path, ultralytics_t_checkpoint):
    """A zip whose directory is intact but whose pickle is cut: torch's own reader fails, we explain."""
    path = tmp_path / "damaged.pt"
    with zipfile.ZipFile(ultralytics_t_checkpoint) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[: len(data) // 2] if info.filename.endswith("data.pkl") else data)
    with pytest.raises(ModelError, match="could not be read as a PyTorch checkpoint") as err:
        import_checkpoint(path)
    assert str(path) in err.value.problem


def test_unknown_layouts_list_the_supported_ones(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"backbone.conv.weight": torch.zeros(2)}, path)
    with pytest.raises(ModelError, match="unknown checkpoint layout") as err:
        import_checkpoint(path)
    for layout in ("ultralytics:", "yolov9:", "mit:"):
        assert layout in err.value.problem
    assert "open an issue" in err.value.fix


def test_explicit_format_must_match(ultralytics_t_checkpoint):
    assert set(FORMAT_CHOICES) == {"auto", *FORMATS}
    with pytest.raises(ModelError, match="is not a mit checkpoint"):
        import_checkpoint(ultralytics_t_checkpoint, checkpoint_format="mit")


def test_own_checkpoint_needs_no_import(tmp_path, imported_ultralytics):
    path = save_imported(imported_ultralytics, tmp_path / "ours.pt")
    with pytest.raises(ModelError, match="already an edge-yolov9 checkpoint"):
        import_checkpoint(path)


# --- the CLI --------------------------------------------------------------------------------------------------

def test_cli_writes_a_weights_only_checkpoint(tmp_path, capsys, ultralytics_t_checkpoint, real_image,
                                              imported_ultralytics):
    output = tmp_path / "out" / "model.pt"
    assert cli_main(["import", str(ultralytics_t_checkpoint), "-o", str(output), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"used": 1375, "missing": 0, "unexpected": 0, "shape_mismatch": 0}
    assert (report["format"], report["variant"], report["names"]) == ("ultralytics", "gelan-t", ["ball"])

    raw = torch.load(output, map_location="cpu", weights_only=True)
    assert raw["meta"]["source_sha256"] == imported_ultralytics.source_sha256
    assert raw["meta"]["source_format"] == "ultralytics"
    assert raw["meta"]["imported_from"] == str(ultralytics_t_checkpoint)
    model, names, meta = load_checkpoint(output)
    assert names == ["ball"] and meta["import_report"]["counts"]["used"] == 1375
    assert meta["weights_license"] == report["weights_license"] == {
        "license": "AGPL-3.0", "source_format": "ultralytics", "source_file": ultralytics_t_checkpoint.name}
    image = torch.from_numpy(real_image)
    with torch.no_grad():
        _assert_maps_close(_raw_maps(model(image).main), _raw_maps(imported_ultralytics.model.eval()(image).main), 0)


def test_cli_text_report(tmp_path, capsys, ultralytics_t_checkpoint):
    assert cli_main(["import", str(ultralytics_t_checkpoint), "-o", str(tmp_path / "m.pt")]) == 0
    text = capsys.readouterr().out
    for expected in ("format    ultralytics", "variant   gelan-t", "1 from checkpoint: ball",
                     "1375 used, 0 missing, 0 unexpected",
                     f"license   weights from {ultralytics_t_checkpoint.name} (ultralytics) are licensed AGPL-3.0: "
                     "a model made from them is a work based on AGPL-3.0 weights"):
        assert expected in text


@pytest.mark.parametrize("spec_kind", ["list", "txt", "yaml"])
def test_cli_names_override(tmp_path, capsys, ultralytics_t_checkpoint, spec_kind):
    specs = {"list": "sports ball",
             "txt": (tmp_path / "names.txt", "sports ball\n"),
             "yaml": (tmp_path / "data.yaml", "names:\n  0: sports ball\n")}
    spec = specs[spec_kind]
    if isinstance(spec, tuple):
        spec[0].write_text(spec[1])
        spec = str(spec[0])
    output = tmp_path / "m.pt"
    assert cli_main(["import", str(ultralytics_t_checkpoint), "-o", str(output), "--names", spec, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["names_from"] == "--names"
    assert load_checkpoint(output)[1] == ["sports ball"]


def test_names_file_with_a_byte_order_mark(tmp_path):
    (tmp_path / "names.txt").write_bytes("\ufeffsports ball\nbat\n".encode("utf-8"))
    assert parse_names(str(tmp_path / "names.txt")) == ["sports ball", "bat"]


def test_cli_errors_without_traceback(tmp_path, capsys, ultralytics_t_checkpoint, coco128):
    jpg = sorted((coco128 / "images").rglob("*.jpg"))[0]
    assert cli_main(["import", str(jpg), "-o", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(jpg) in err and "fix:" in err and "Traceback" not in err
    assert cli_main(["import", str(ultralytics_t_checkpoint), "-o", str(tmp_path / "m.pt"), "--names", "a,b"]) == 2
    assert "2 class names given for a model with 1 classes" in capsys.readouterr().err
    assert cli_main(["import", str(ultralytics_t_checkpoint), "-o", str(ultralytics_t_checkpoint)]) == 2
    assert "is the checkpoint being imported" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_saved_import_round_trips_through_our_format(tmp_path):
    foreign = build_official_model(16, 2, aux=True, names=["a", "b"])
    result = import_checkpoint(save_official_checkpoint(foreign, tmp_path / "yolov9-t.pt"))
    path = save_imported(result, tmp_path / "ours.pt")
    model, names, meta = load_checkpoint(path)
    assert model.cfg == result.model.cfg and names == ["a", "b"]
    assert meta["import_report"]["variant"] == "yolov9-t" and meta["source_format"] == "yolov9"
    state = result.model.state_dict()
    assert all(torch.equal(tensor, state[key]) for key, tensor in model.state_dict().items())

