"""The model zoo: published sizes, forward/backward on every variant, the deploy transform."""

from __future__ import annotations

import pytest
import torch

from edge_yolov9.train.models import STRIDES, create_model, list_models, model_config
from edge_yolov9.train.models.deploy import deploy_model
from edge_yolov9.train.models.profile import count_params, profile_model

PUBLISHED = {"gelan-t": (2.0e6, 7.7), "gelan-s": (7.1e6, 26.4), "yolov9-t": (2.0e6, 7.7), "yolov9-s": (7.1e6, 26.4)}


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give BatchNorm non-trivial statistics, as a trained model has, so folding is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)


def test_registry_lists_the_zoo():
    assert {"gelan-t", "gelan-s", "yolov9-t", "yolov9-s"} <= set(list_models())
    assert list_models("gelan-*") == ["gelan-s", "gelan-t"]
    with pytest.raises(KeyError, match="Known models"):
        model_config("gelan-x")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_deploy_size_matches_published_figures(name):
    params, gflops = PUBLISHED[name]
    profile = profile_model(deploy_model(create_model(name)), 640)
    assert profile.params == pytest.approx(params, rel=0.03)
    assert profile.gflops == pytest.approx(gflops, rel=0.03)


@pytest.mark.parametrize("name", ["gelan-t", "yolov9-t", "yolov9-s"])
def test_training_forward_backward_reaches_every_parameter(name):
    model = create_model(name, num_classes=5).train()
    out = model(torch.rand(2, 3, 128, 160))
    assert (out.aux is not None) == (model.cfg.aux != "none")
    levels = out.main + (out.aux or [])
    for level, stride in zip(out.main, STRIDES):
        assert level.box.shape == (2, 64, 128 // stride, 160 // stride)
        assert level.cls.shape == (2, 5, 128 // stride, 160 // stride)
    loss = sum(lvl.box.float().pow(2).mean() + lvl.cls.float().pow(2).mean() for lvl in levels)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(lvl.box).all() and torch.isfinite(lvl.cls).all() for lvl in levels)


def test_aux_branch_only_runs_in_training():
    model = create_model("yolov9-t", num_classes=2)
    assert model.eval()(torch.rand(1, 3, 64, 64)).aux is None


def test_reversible_aux_branch_option():
    model = create_model("yolov9-s", aux="reversible", num_classes=4).train()
    gelan = create_model("gelan-s", num_classes=4)
    assert count_params(model) > count_params(gelan) * 1.3
    out = model(torch.rand(1, 3, 96, 96))
    assert [lvl.cls.shape[-1] for lvl in out.aux] == [12, 6, 3]


@pytest.mark.parametrize("name,kwargs", [("yolov9-t", {}), ("gelan-s", {"activation": "relu6"}),
                                         ("yolov9-s", {"aux": "reversible"})])
@pytest.mark.parametrize("for_export", [False, True])
def test_deploy_transform_keeps_outputs(name, kwargs, for_export):
    model = create_model(name, num_classes=7, **kwargs)
    randomize_batchnorm(model)
    model.eval()
    image = torch.rand(1, 3, 160, 192)
    with torch.no_grad():
        before = model(image).main
        deployed = deploy_model(model, for_export=for_export)
        after = deployed(image).main
    assert deployed.aux_layers is None and deployed.cfg.aux == "none"
    assert not any("aux" in key for key in deployed.state_dict())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    for b, a in zip(before, after):
        torch.testing.assert_close(a.box, b.box, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.cls, b.cls, atol=1e-4, rtol=1e-4)
    if for_export:
        convs = [m for m in deployed.modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(c.groups == 1 or c.groups == c.in_channels for c in convs)
        assert not any(isinstance(m, torch.nn.SiLU) for m in deployed.modules())


def test_models_cli_prints_the_zoo_as_json(capsys):
    import json

    from edge_yolov9.cli import main

    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(PUBLISHED) <= set(rows)
    for name, (params, gflops) in PUBLISHED.items():
        assert rows[name]["params"] == pytest.approx(params, rel=0.03)
        assert rows[name]["gflops"] == pytest.approx(gflops, rel=0.03)
    assert rows["yolov9-t"]["train_params"] > rows["gelan-t"]["train_params"]  # the PGI branch trains too
