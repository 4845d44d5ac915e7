"""Generate the torchvision / timm interop fixtures under tests/fixtures/interop/.

torchvision and timm do not import with the CPU torch wheel mnv2 pins, so their reference outputs are produced here,
in a separate environment where they do run, and committed. Run it in such an environment (not the project .venv):

    python3 -m venv /tmp/genenv && /tmp/genenv/bin/pip install torch torchvision timm safetensors
    /tmp/genenv/bin/python scripts/make_interop_fixtures.py

For each model: real torchvision ``mobilenet_v2`` / timm ``mobilenetv2_*`` objects, randomly initialised with
randomised BatchNorm affine parameters and running statistics (so that BN eps and stats matter), small widths and
class counts so the files stay small. It writes the state dicts exactly as users save them (``torch.save`` of the
state dict; timm also as ``.safetensors``) and ``reference.safetensors`` holding inputs at odd and even resolutions
and the peer library's eval-mode outputs for them. ``manifest.json`` lists each model and the library versions.
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
import torchvision
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "interop"
# (input shape) pairs: even square and odd non-square resolutions, both >= 32 px.
RESOLUTIONS = ((2, 3, 96, 96), (1, 3, 75, 83))


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics, and the classifier unit gain.

    Running statistics are first measured on random batches (so activations stay well scaled through the depth and
    the outputs depend on the input), then perturbed, so that BN eps and statistics matter for parity.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):  # torchvision's N(0, 0.01) init gives near-constant logits
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.in_features**0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        model.train()
        for _ in range(3):
            model(torch.randn(8, 3, 64, 64, generator=gen))
        for m in bns:
            n = m.num_features
            m.running_mean.add_(torch.randn(n, generator=gen) * 0.1 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(n, generator=gen) * 0.7 + 0.7)
            m.momentum = 0.1
    model.eval()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(20180113)  # arXiv 1801.04381 submission date
    specs = [
        # name, builder, file format, width, classes
        ("tv_w025_c10", lambda: torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=10), "pth", 0.25, 10),
        ("tv_w030_c3", lambda: torchvision.models.mobilenet_v2(width_mult=0.3, num_classes=3), "pth", 0.3, 3),
        ("timm_035_c10", lambda: timm.create_model("mobilenetv2_035", num_classes=10), "pth", 0.35, 10),
        ("timm_050_c4", lambda: timm.create_model("mobilenetv2_050", num_classes=4), "safetensors", 0.5, 4),
    ]
    refs: dict[str, torch.Tensor] = {}
    manifest = {
        "generator": "scripts/make_interop_fixtures.py",
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__},
        "models": [],
    }
    for name, build, fmt, width, classes in specs:
        torch.manual_seed(len(name))
        model = build()
        randomize(model, gen)
        model.eval()
        state = model.state_dict()
        path = OUT / f"{name}.{fmt}"
        if fmt == "pth":
            torch.save(state, path)
        else:
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        entry = {"name": name, "file": path.name, "library": name.split("_")[0], "width": width, "classes": classes}
        entry["inputs"] = []
        for shape in RESOLUTIONS:
            x = torch.randn(*shape, generator=gen)
            with torch.no_grad():
                y = model(x)
            key = f"{name}/{shape[2]}x{shape[3]}"
            refs[f"{key}/input"], refs[f"{key}/logits"] = x, y
            entry["inputs"].append(
                {"key": key, "shape": list(shape), "logits_absmax": float(y.abs().max()), "logits_std": float(y.std())}
            )
        manifest["models"].append(entry)
        print(name, path.stat().st_size, [(e["logits_absmax"], e["logits_std"]) for e in entry["inputs"]])
    save_file(refs, str(OUT / "reference.safetensors"))
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
