"""Training on several processes (DistributedDataParallel over gloo on the CPU) and mixed precision."""

from __future__ import annotations

import csv
import os
import socket
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing

from edge_yolov9.errors import EdgeYoloError
from edge_yolov9.train import distributed
from edge_yolov9.train.checkpoint import read_checkpoint
from edge_yolov9.train.trainer import TrainConfig, Trainer, amp_dtype, resume
from test_trainer import config, tiny_dataset

SIMULATED_CRASH = "simulated crash at the second epoch"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_main(rank: int, size: int, port: int, cfg: dict, out: str) -> None:
    """One process of a run as torchrun starts it (its place in the environment), stopped at the start of
    the second epoch; its weights are saved for comparison."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(TrainConfig.from_dict(cfg))
    train_epoch = trainer.train_epoch

    def stop_at_second_epoch(epoch: int):
        if epoch == 1:
            raise RuntimeError(SIMULATED_CRASH)
        return train_epoch(epoch)

    trainer.train_epoch = stop_at_second_epoch
    try:
        trainer.fit()
    except RuntimeError as err:
        if SIMULATED_CRASH not in str(err):
            raise
    torch.save({"model": trainer.model.state_dict(), "ema": trainer.ema.ema.state_dict()},
               Path(out) / f"rank{rank}.pt")
    distributed.leave_group(trainer.world)


def _one_process_run(cfg: TrainConfig) -> list[dict]:
    trainer = Trainer(cfg)
    trainer.train_epoch = lambda epoch, run=trainer.train_epoch: run(epoch) if epoch == 0 else (_ for _ in ()).throw(
        RuntimeError(SIMULATED_CRASH))
    with pytest.raises(RuntimeError, match=SIMULATED_CRASH):
        trainer.fit()
    return list(csv.DictReader(open(trainer.run_dir / "results.csv")))


def test_two_process_gloo_run_matches_one_process_and_resumes_on_one(coco128, tmp_path, monkeypatch):
    """Two processes (gloo, CPU), global batch 4 as 2 x 2, one epoch on 8 real coco128 images: one run folder
    with one checkpoint pair and one results.csv, the same weights and EMA on both ranks, the loss of a
    one-process run with the same global batch and seed within 5 % (the same images and weights at every step;
    what differs is each rank's BatchNorm batch statistics over 2 images, not 4, and the loss normalization per
    rank: 0.8-3.3 % here); the run then resumes on one process and finishes its second epoch."""
    for variable in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(variable, raising=False)
    data = tiny_dataset(coco128, tmp_path, count=8)
    cfg = config(data, tmp_path, epochs=2, batch=4, nominal_batch=4, name="ddp")
    out = tmp_path / "ranks"
    out.mkdir()
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), asdict(cfg), str(out)), nprocs=2)

    runs = list((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["ddp"]
    assert {p.name for p in runs[0].iterdir()} == {"last.pt", "best.pt", "results.csv", "loss.png", "map.png"}
    rows = list(csv.DictReader(open(runs[0] / "results.csv")))
    assert [int(r["epoch"]) for r in rows] == [1]

    first, second = (torch.load(out / f"rank{rank}.pt") for rank in (0, 1))
    for part in ("model", "ema"):
        assert first[part].keys() == second[part].keys()
        assert [k for k in first[part] if not torch.equal(first[part][k], second[part][k])] == []
    saved = read_checkpoint(runs[0] / "last.pt")
    assert all(torch.equal(saved["model"][k], first["ema"][k]) for k in saved["model"])

    reference = _one_process_run(replace(cfg, name="one"))[0]
    for term in ("box_loss", "dfl_loss", "cls_loss"):
        assert float(rows[0][term]) == pytest.approx(float(reference[term]), rel=0.05), term

    resume(runs[0] / "last.pt")  # on one process: the global batch is the same
    rows = list(csv.DictReader(open(runs[0] / "results.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and read_checkpoint(runs[0] / "last.pt")["epoch"] == 1


def test_each_rank_takes_its_share_of_the_same_global_batches():
    """The global batches are a one-process run's, in order; each rank's share of each is contiguous; a last
    batch that does not split evenly is filled up from the start, so every rank takes as many steps."""
    def order(length: int, rank: int = 0, size: int = 1, epoch: int = 0) -> list[int]:
        sampler = distributed.GlobalBatchSampler(length, 4, distributed.World(rank, rank, size), seed=3)
        sampler.set_epoch(epoch)
        assert len(sampler) == len(list(sampler))
        return list(sampler)

    one = order(10)
    assert sorted(one) == list(range(10)) and order(10, epoch=1) != one
    first, second = order(10, 0, 2), order(10, 1, 2)
    assert first[0:2] + second[0:2] == one[0:4] and first[2:4] + second[2:4] == one[4:8]
    assert first[4:] + second[4:] == one[8:10]
    first, second = order(9, 0, 2), order(9, 1, 2)  # the last global batch holds one image: filled up
    assert len(first) == len(second) == 5 and first[4] == order(9)[8] and second[4] == order(9)[0]


def test_a_global_batch_that_does_not_split_says_which_would():
    with pytest.raises(EdgeYoloError, match="--batch 6 .* does not split over 4 processes") as err:
        distributed.local_batch(6, distributed.World(0, 0, 4))
    assert "--batch 8" in err.value.fix


def test_device_list_runs_torchrun_with_each_process_on_its_own_gpu():
    command, env = distributed.launch_command([0, 1], ["train", "--data", "d.yaml", "--device", "0,1", "--epochs",
                                                       "3"])
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert command[6:] == ["edge_yolov9.cli", "train", "--data", "d.yaml", "--device=cuda", "--epochs", "3"]
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_amp_is_bfloat16_or_float16_on_cuda_and_asked_for_on_the_cpu():
    cpu = torch.device("cpu")
    assert amp_dtype(cpu, None) is None and amp_dtype(cpu, False) is None and amp_dtype(cpu, True) == torch.bfloat16
    if torch.cuda.is_available():
        assert amp_dtype(torch.device("cuda"), None) in (torch.bfloat16, torch.float16)


def test_mixed_precision_training_runs_the_network_in_bfloat16(coco128, tmp_path):
    """--amp on the CPU: the convolutions run in bfloat16 under autocast, the loss stays float32 and finite,
    and the run validates and saves as any other."""
    cfg = config(tiny_dataset(coco128, tmp_path, count=4), tmp_path, epochs=1, amp=True)
    trainer = Trainer(cfg)
    seen = set()
    trainer.model.layers[0].register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
    trainer.fit()
    assert torch.bfloat16 in seen  # the training forward passes (validation runs the EMA copy in float32)
    rows = list(csv.DictReader(open(trainer.run_dir / "results.csv")))
    assert len(rows) == 1 and all(0 < float(rows[0][t]) < 100 for t in ("box_loss", "dfl_loss", "cls_loss"))
    assert read_checkpoint(trainer.run_dir / "last.pt")["train_config"]["amp"] is True


def test_torchrun_runs_the_cli_on_two_processes(coco128, tmp_path, monkeypatch):
    """The README's command on the CPU: `torchrun --nproc_per_node 2 -m edge_yolov9.cli train --device cpu`:
    one run folder, one results row per epoch, one 'best checkpoint' line (rank 0's)."""
    import subprocess
    import sys

    for variable in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(variable, raising=False)
    data = tiny_dataset(coco128, tmp_path, count=4)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "edge_yolov9.cli",
         "train", "--data", str(data), "--model", "gelan-t", "--imgsz", "96", "--epochs", "1", "--batch", "4",
         "--workers", "0", "--device", "cpu", "--project", str(tmp_path / "runs"), "--name", "cli"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best checkpoint:") == 1 and str(tmp_path / "runs" / "cli" / "best.pt") in done.stdout
    assert "2 processes (cpu, batch 2 each)" in done.stderr
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["cli"]
    assert len(list(csv.DictReader(open(tmp_path / "runs" / "cli" / "results.csv")))) == 1


def test_a_device_list_without_cuda_says_how_to_train_on_cpus(monkeypatch, capsys):
    from edge_yolov9.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "--device", "0,1", "--epochs", "1"]) != 0
    err = capsys.readouterr().err
    assert "--device 0,1 names CUDA devices, but CUDA is not available" in err and "torchrun --nproc_per_node" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert main(["train", "--device", "0,gpu1", "--epochs", "1"]) != 0
    assert "write e.g. --device 0,1" in capsys.readouterr().err
