"""Lambda sweep and regime, checked against the analysis engine's own recordings.

``analyze(..., simam_lambda=...)`` records every block's 3-D weights and probabilities in its
own pass; ``record_simam`` records a block's SimAM input. The sweep's probabilities, weight
range and flat-channel shares must be those numbers, recomputed here with numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import hook_count, tiny_model

from simam_viz import AnalysisError, analyze
from simam_viz.engine.neuron import record_simam
from simam_viz.engine.simam_lambda import DEFAULT_LAMBDAS, lambda_regime, lambda_sweep
from simam_viz.networks.models import BLOCKS


@pytest.fixture(scope="module")
def model():
    return tiny_model("simam_resnet50", seed=2, width=0.25, num_classes=4, random_bn=True).eval()


def _image(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_sweep_matches_analyses_at_each_lambda(model) -> None:
    x = _image(1)
    lambdas = (1e-4, 0.1, 10.0)
    sweep = lambda_sweep(model, x, lambdas=lambdas)
    own = analyze(model, x)
    assert sweep.target == own.target and sweep.model_lambda == pytest.approx(0.1)
    for i, lam in enumerate(lambdas):
        result = analyze(model, x, blocks="all", simam_lambda=lam, target=sweep.target)
        assert sweep.prob[i] == pytest.approx(result.probabilities[sweep.target], abs=1e-6)
        fulls = [result.attention_weights(b)["full"] for b in BLOCKS]
        assert sweep.low[i] == pytest.approx(min(f.min() for f in fulls), abs=1e-6)
        assert sweep.high[i] == pytest.approx(max(f.max() for f in fulls), abs=1e-6)
    # a large lambda flattens: every weight tends to sigmoid(0.5)
    assert sweep.high[-1] - sweep.low[-1] < sweep.high[0] - sweep.low[0]
    assert len(DEFAULT_LAMBDAS) == 11 and DEFAULT_LAMBDAS[0] == pytest.approx(1e-4)
    assert DEFAULT_LAMBDAS[-1] == pytest.approx(10.0) and 0.1 in [round(v, 6) for v in
                                                                 DEFAULT_LAMBDAS]


def test_regime_is_the_share_of_channels_with_variance_below_lambda(model) -> None:
    x = _image(2)
    for lam in (1e-3, 0.5):
        regime = lambda_regime(model, x, simam_lambda=lam)
        assert regime.lam == lam and list(regime.share) == list(BLOCKS)
        for block in ("layer1.0", "layer3.4", "layer4.2"):
            values = record_simam(model, x, block=block, simam_lambda=lam).values  # C x h x w
            var = values.reshape(values.shape[0], -1).var(axis=1, ddof=1)
            expected = float(np.mean(lam / (var + lam) > 0.5))
            assert regime.share[block] == pytest.approx(expected)
    low, high = lambda_regime(model, x, simam_lambda=1e-4), lambda_regime(model, x,
                                                                           simam_lambda=10.0)
    assert high.mean_share >= low.mean_share


def test_errors_and_model_untouched(model) -> None:
    hooks = hook_count(model)
    lambdas = [m.e_lambda for m in model.modules() if hasattr(m, "e_lambda")]
    with pytest.raises(AnalysisError, match="positive"):
        lambda_sweep(model, _image(), lambdas=(0.1, -1.0))
    with pytest.raises(AnalysisError, match="no SimAM"):
        lambda_regime(tiny_model("se_resnet50", width=0.125), _image())
    lambda_sweep(model, _image(), lambdas=(5.0,))
    assert hook_count(model) == hooks
    assert [m.e_lambda for m in model.modules() if hasattr(m, "e_lambda")] == lambdas
