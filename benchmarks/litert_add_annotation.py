"""Repro for litert-torch 0.10 under torch 2.13: residual adds are left float in INT8 TFLite files.

litert-torch's PT2E quantizer finds ``add`` (and ``mul``, ``cat``, pools) through the FX ``source_fn_stack``
metadata, which ``torch.export`` in torch 2.13 no longer records. The adds go unannotated, and the converter writes
``DEQUANTIZE`` → ``ADD`` → ``QUANTIZE``. mnv2's ``quantize._litert_quantizer`` annotates the aten add itself
(BENCHMARKS.md, Deployment, "Speed, engines timed in blocks"). Prints each op with its input dtypes, for both
quantizers, on a toy graph with two residual adds:

    python benchmarks/litert_add_annotation.py
"""

import contextlib
import io
import tempfile
from pathlib import Path

import litert_torch
import torch
from ai_edge_litert.interpreter import Interpreter
from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
from litert_torch.quantize.quant_config import QuantConfig
from torch import nn
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

from mnv2.deploy.quantize import _litert_quantizer


class TwoResiduals(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b, self.head = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.a(x)
        x = x + self.b(x)
        return self.head(x)


def ops(quantizer) -> list[str]:
    torch.manual_seed(0)
    model, example = TwoResiduals().eval(), (torch.randn(1, 3, 8, 8),)
    with contextlib.redirect_stdout(io.StringIO()):
        prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
        for _ in range(4):
            prepared(torch.randn(1, 3, 8, 8))
        edge = litert_torch.convert(
            convert_pt2e(prepared, fold_quantize=False), example, quant_config=QuantConfig(pt2e_quantizer=quantizer)
        )
    with tempfile.TemporaryDirectory() as d:
        edge.export(str(Path(d) / "toy.tflite"))
        interp = Interpreter(str(Path(d) / "toy.tflite"))
    dtypes = {t["index"]: t["dtype"].__name__ for t in interp.get_tensor_details()}
    return [f"{o['op_name']}({', '.join(dtypes[i] for i in o['inputs'] if i >= 0)})" for o in interp._get_ops_details()]


config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
print("litert-torch's quantizer:", ", ".join(ops(PT2EQuantizer().set_global(config))))
print("mnv2's quantizer:        ", ", ".join(ops(_litert_quantizer(config))))
