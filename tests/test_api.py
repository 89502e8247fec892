"""The library as a user imports it: top-level names, usable fresh models, engine state."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import simam_viz
from simam_viz import Analysis, AnalysisError, analyze, build_model
from simam_viz.networks.models import attention_module
from simam_viz.networks.preprocess import Preprocessing, imagenet_classes

IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))


def test_top_level_names_are_the_submodules_objects() -> None:
    import simam_viz.engine.analysis as engine

    assert analyze is engine.analyze and Analysis is engine.Analysis
    assert AnalysisError is engine.AnalysisError
    for name in ("analyze", "Analysis", "AnalysisError", "build_model", "load_model",
                 "save_checkpoint", "identify_checkpoint", "SimAM", "SE", "ECA", "CBAM",
                 "CheckpointError", "__version__"):
        assert name in simam_viz.__all__ and getattr(simam_viz, name) is not None


def test_fresh_models_take_integer_and_name_targets() -> None:
    torch.manual_seed(0)
    imagenet = build_model("simam_resnet50", width=0.125)
    names = imagenet.simam_viz.class_names
    assert names == list(imagenet_classes()) and len(names) == 1000
    result = analyze(imagenet, IMAGE, target=440)
    assert result.target == 440 and result.target_name == names[440]
    assert analyze(imagenet, IMAGE, target=names[7]).target == 7
    small = build_model("resnet50", num_classes=3, width=0.125)
    assert small.simam_viz.class_names == ["class 0", "class 1", "class 2"]
    assert analyze(small, IMAGE, target="class 2").target == 2


def test_analyze_restores_every_submodules_mode() -> None:
    torch.manual_seed(0)
    model = build_model("simam_resnet50", num_classes=3, width=0.125)
    model.train()
    model.layer1.eval()
    model.layer3[2].bn1.eval()
    model.layer2.requires_grad_(False)
    model.fc.bias.requires_grad_(False)
    attention_module(model, "layer4.2").e_lambda = 0.25  # one block's lambda differs
    seen = []
    handle = model.layer3.register_forward_hook(lambda *_: seen.append(1))

    def state() -> tuple:
        return ({name: m.training for name, m in model.named_modules()},
                {name: p.requires_grad for name, p in model.named_parameters()},
                {name: m.e_lambda for name, m in model.named_modules()
                 if isinstance(m, simam_viz.SimAM)},
                {name: (len(m._forward_hooks), len(m._forward_pre_hooks),
                        len(m._backward_hooks), len(m._backward_pre_hooks))
                 for name, m in model.named_modules()})

    before = state()
    modes, grads, lambdas, _ = before
    assert not all(modes.values()) and any(modes.values())  # really mixed
    assert not all(grads.values()) and any(grads.values())
    assert set(lambdas.values()) == {model.simam_viz.simam_lambda, 0.25}
    analyze(model, IMAGE, blocks="all", simam_lambda=2.0)
    assert state() == before
    assert seen == [1]  # the caller's own hook stayed and ran once, in the one forward
    handle.remove()


def test_load_model_takes_the_lambda_the_weights_were_trained_with(tmp_path) -> None:
    """An official SimAM file has no sidecar; the registry's lambda is passed in instead."""
    from simam_viz import SimAM, load_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("simam_resnet50", num_classes=3, width=0.125, simam_lambda=0.1)
    save_checkpoint(model, tmp_path / "m", class_names=["a", "b", "c"],
                    preprocessing=Preprocessing(resize=64, crop=64))
    loaded = load_model(tmp_path / "m.safetensors", simam_lambda=0.5)
    assert loaded.simam_viz.simam_lambda == 0.5
    assert {m.e_lambda for m in loaded.modules() if isinstance(m, SimAM)} == {0.5}
    assert load_model(tmp_path / "m.safetensors").simam_viz.simam_lambda == 0.1  # sidecar's


def test_the_library_logs_and_never_prints(tmp_path, capsys, caplog) -> None:
    """Loading, analysing and exporting write nothing to stdout/stderr; records go to logs."""
    from simam_viz import load_model
    from simam_viz.rendering.export import ExportRequest, analyze_all, write_exports
    from simam_viz.weights import catalog

    with caplog.at_level("DEBUG", logger="simam_viz"):
        items = catalog.available_demo()
        model = load_model(items[0].path)
        results = analyze_all([model], IMAGE, ExportRequest(figures=("1",), dpi=40))
        files = write_exports(results, [model], ExportRequest(figures=("1",), dpi=40),
                              tmp_path, "x", "0" * 64)
    assert capsys.readouterr() == ("", "")
    messages = [(r.name, r.getMessage()) for r in caplog.records]
    assert ("simam_viz.weights.checkpoints",
            f"loaded {items[0].path}: resnet50, layout simam_viz, 12 classes, ResNet v1.5, "
            "on cpu") in messages
    wrote = f"wrote {len(files)} files for x to {tmp_path}"
    assert ("simam_viz.rendering.export", wrote) in messages
    assert any(name == "simam_viz.engine.analysis"
               and text.startswith("analysed resnet50.safetensors: gradcam")
               for name, text in messages)


def test_trust_and_neuron_functions_at_the_top_level() -> None:
    import simam_viz.engine.neuron
    import simam_viz.engine.trust

    assert simam_viz.faithfulness is simam_viz.engine.trust.faithfulness
    assert simam_viz.sanity_check is simam_viz.engine.trust.sanity_check
    assert simam_viz.explain_neuron is simam_viz.engine.neuron.explain_neuron
