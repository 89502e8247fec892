"""The same analysis on CUDA as on the CPU (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import DEMO_ARCHS

from simam_viz import build_model
from simam_viz.devices import DeviceError, prepare_model, resolve_device
from simam_viz.engine.analysis import analyze

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_resolve_device_without_gpu_is_clear() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    # "auto" is the GPU exactly when there is one
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("arch", DEMO_ARCHS)
def test_cuda_matches_cpu(arch: str) -> None:
    torch.manual_seed(0)
    cpu_model = build_model(arch, num_classes=10)
    cpu_model.simam_viz.class_names = [str(i) for i in range(10)]
    gpu_model = build_model(arch, num_classes=10)
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.simam_viz.class_names = cpu_model.simam_viz.class_names
    gpu_model = prepare_model(gpu_model, torch.device("cuda"))
    x = torch.randn(1, 3, 224, 224)
    a = analyze(cpu_model, x, blocks="all", target=3)
    b = analyze(gpu_model, x.cuda(), blocks="all", target=3)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)
    for block in a.blocks:
        for where in a.wheres(block):
            np.testing.assert_allclose(a.cam(block, where), b.cam(block, where), atol=1e-3)
