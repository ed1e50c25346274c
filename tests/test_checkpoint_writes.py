"""Writing checkpoints and run results: full disks, kills during a save, folders as outputs, earlier runs kept.

A full disk is a real one for the process: ``RLIMIT_FSIZE`` in a subprocess (with SIGXFSZ ignored) makes
every write past the limit fail with EFBIG, as ENOSPC would, without root or a special file system.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_yolov9.cli import main
from support.importers.official_layout import build_official_model, save_official_checkpoint
from test_trainer import tiny_dataset
from edge_yolov9.train.checkpoint import file_sha256, read_checkpoint
from edge_yolov9.train.trainer import EpochResult, write_results

ROOT = Path(__file__).resolve().parents[1]


def cli(args: list[str], *, file_size_limit: int | None = None, **popen: object) -> subprocess.Popen:
    """``edge-yolov9 ARGS`` in a subprocess; with ``file_size_limit`` no file it writes may grow past it."""
    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.Popen([sys.executable, "-m", "edge_yolov9.cli", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=limit_writes if file_size_limit is not None else None, **popen)


def finished(process: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def foreign_checkpoint(tmp_path) -> Path:
    return save_official_checkpoint(build_official_model(16, 2, aux=False, names=["a", "b"]), tmp_path / "foreign.pt")


def train_args(data: Path, project: Path, *extra: str) -> list[str]:
    return ["train", "--model", "gelan-t", "--data", str(data), "--imgsz", "64", "--epochs", "1", "--batch", "4",
            "--nominal-batch", "4", "--workers", "0", "--device", "cpu", "--project", str(project), *extra]


# --- import ---------------------------------------------------------------------------------------------------

def test_import_into_a_folder_is_refused_before_writing(tmp_path, foreign_checkpoint, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["import", str(foreign_checkpoint), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"Cannot write the imported checkpoint to {out}: it is a folder" in err and str(out / "model.pt") in err
    assert list(out.iterdir()) == [] and "Traceback" not in err


def test_import_on_a_full_disk_is_a_clean_error_without_temp_files(tmp_path, foreign_checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    code, err = finished(cli(["import", str(foreign_checkpoint), "-o", str(out / "model.pt")],
                             file_size_limit=1 << 20))
    assert code == 2, err
    assert f"Cannot write the checkpoint to {out / 'model.pt'}: " in err and "Traceback" not in err
    assert list(out.iterdir()) == []


def test_import_into_a_path_under_a_file_is_a_clean_error(tmp_path, foreign_checkpoint, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["import", str(foreign_checkpoint), "-o", str(tmp_path / "file" / "model.pt")]) == 2
    assert f"{tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err


# --- train ----------------------------------------------------------------------------------------------------

def test_train_on_a_full_disk_is_a_clean_error_without_temp_files(tmp_path, coco128):
    data = tiny_dataset(coco128, tmp_path, count=4)
    code, err = finished(cli(train_args(data, tmp_path / "runs"), file_size_limit=1 << 20))
    assert code == 2, err
    run = tmp_path / "runs" / "exp"
    assert f"Cannot write the checkpoint to {run / 'best.pt'}: " in err and "Traceback" not in err
    assert list(run.iterdir()) == []


def test_results_on_a_full_disk_keep_the_previous_file(tmp_path):
    row = EpochResult(1, 0.01, 1.0, 2.0, 3.0, 0.1, 0.2, 10.0, 5.0)
    write_results([row], tmp_path)
    before = (tmp_path / "results.csv").read_text()
    code = (f"from pathlib import Path; from edge_yolov9.train.trainer import EpochResult, write_results; "
            f"write_results([EpochResult(*{tuple(vars(row).values())!r})] * 50, Path({str(tmp_path)!r}))")

    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 10, len(before) + 10))

    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          preexec_fn=limit_writes, timeout=120)
    assert done.returncode == 1 and f"OutputError: Cannot write the training results to {tmp_path}" in done.stderr
    assert (tmp_path / "results.csv").read_text() == before
    assert not (tmp_path / "results.tmp").exists()


def test_a_killed_save_keeps_best_consistent_and_the_next_start_cleans_up(tmp_path, coco128, caplog):
    data = tiny_dataset(coco128, tmp_path, count=4)
    run = tmp_path / "runs" / "exp"
    process = cli(train_args(data, tmp_path / "runs"))
    deadline = time.monotonic() + 120
    while not (run.is_dir() and any(p.name.startswith(".last.pt.") for p in run.iterdir())):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before saving last.pt"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # The kill came while last.pt was being written: best.pt, saved first, is complete and is that epoch's.
    assert not (run / "last.pt").exists() and [p for p in temp_files(run) if p.startswith(".last.pt.")]
    assert read_checkpoint(run / "best.pt")["meta"]["epoch"] == 0

    with caplog.at_level("WARNING", logger="edge_yolov9.train.trainer"):
        assert main(train_args(data, tmp_path / "runs", "--exist-ok")) == 0
    assert "Removed 1 temp file(s) of interrupted checkpoint saves: .last.pt." in caplog.text
    assert temp_files(run) == [] and read_checkpoint(run / "last.pt")["epoch"] == 0
    assert [p.name for p in run.parent.iterdir()] == ["exp"]  # --exist-ok reused the folder


def test_a_new_run_never_replaces_an_earlier_one(tmp_path, coco128, capsys):
    data = tiny_dataset(coco128, tmp_path, count=4)
    project = tmp_path / "runs"
    assert main(train_args(data, project)) == 0
    first = {p.name: file_sha256(p) for p in (project / "exp").iterdir()}
    weights = project / "exp" / "best.pt"
    assert main(train_args(data, project, "--seed", "1", "--weights", str(weights))) == 0
    assert "best checkpoint: " + str(project / "exp2" / "best.pt") in capsys.readouterr().out
    assert {p.name: file_sha256(p) for p in (project / "exp").iterdir()} == first
    config = read_checkpoint(project / "exp2" / "last.pt")["train_config"]
    assert config["name"] == "exp2" and config["weights"] == str(weights)  # plain text, as checkpoints hold



def test_a_checkpoint_is_readable_as_any_file_written_here(tmp_path):
    from edge_yolov9.train.checkpoint import save_checkpoint
    from edge_yolov9.train.models import create_model

    path = save_checkpoint(tmp_path / "model.pt", create_model("gelan-t", num_classes=1), ["ball"])
    previous = os.umask(0o022)
    try:
        other = save_checkpoint(tmp_path / "other.pt", create_model("gelan-t", num_classes=1), ["ball"])
    finally:
        os.umask(previous)
    assert other.stat().st_mode & 0o777 == 0o644  # not the temp file's private 0600
    assert path.stat().st_mode & 0o777 == 0o666 & ~previous
