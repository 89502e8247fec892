"""Load time of each checkpoint layout through ``load_model`` (full-size ResNet-50 files).

Builds one fixture per layout with the real key names and shapes (random weights, from
``tests/layouts.py``), saves it, and prints the median of ``--repeats`` loads.
Usage: ``python benchmarks/load_times.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from simam_viz import build_model, load_model, save_checkpoint  # noqa: E402
from simam_viz.networks.preprocess import Preprocessing  # noqa: E402
from tests import layouts  # noqa: E402

FIXTURES = {
    "torchvision (.pth)": (layouts.torchvision_layout, "resnet50.pth"),
    "simam_official training file": (layouts.simam_official, "checkpoint.pth.tar"),
    "se_moskomule": (layouts.se_moskomule, "seresnet50.pkl"),
    "se_timm (.safetensors)": (layouts.se_timm, "model.safetensors"),
    "se_timm (.bin)": (layouts.se_timm, "pytorch_model.bin"),
    "se_legacy_v1": (layouts.se_legacy, "se_resnet50.pth"),
    "eca_official": (layouts.eca_official, "eca_resnet50_k3557.pth.tar"),
    "cbam_official": (layouts.cbam_official, "RESNET50_CBAM.pth"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, (builder, filename) in FIXTURES.items():
            ckpt, _ = builder()
            path = Path(tmp) / filename
            if path.suffix == ".safetensors":
                save_file({k: v.contiguous() for k, v in ckpt.items()}, str(path))
            else:
                torch.save(ckpt, path)
            paths[name] = path
        own = build_model("simam_resnet50")
        paths["simam_viz (own format)"] = save_checkpoint(
            own, Path(tmp) / "own", class_names=[str(i) for i in range(1000)],
            preprocessing=Preprocessing(),
        )
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        for name, path in paths.items():
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                load_model(path)
                times.append(time.perf_counter() - start)
            size = path.stat().st_size / 1e6
            print(f"  {name:32s} {size:6.1f} MB  {statistics.median(times):6.2f} s")


if __name__ == "__main__":
    main()
