"""Quantization-aware fine-tuning pieces: fake-quantize an mnv2 model the way ``mnv2 quantize`` will quantize it.

The simulated INT8 scheme mirrors the deployed one (``mnv2.deploy.quantize``): BatchNorm folded into each conv,
weights int8 symmetric per output channel, activations uint8 asymmetric per tensor after every conv (after its
ReLU6, so the (0, 6) range is learnt as is), on the residual sums and on the model input. BN statistics are frozen
(the folded form uses running statistics; γ and β still train), the usual last phase of QAT (Jacob et al. 2018
§3.2; torchvision's QAT recipe freezes BN stats after a few epochs), which keeps the small fine-tuning batches
from disturbing them.

Use: ``mnv2 train --qat --init CHECKPOINT`` (the engine wraps the model with :func:`prepare_qat`, validates the
simulated INT8 model and saves plain checkpoints through :func:`convert_qat`), then ``mnv2 quantize`` on the
result. From Python: ``qat = prepare_qat(model)``; fine-tune ``qat`` with the usual loss; ``model = convert_qat(qat)``
gives back a plain ``MobileNetV2`` with the fine-tuned weights, which ``mnv2.deploy.quantize.quantize`` then turns
into the INT8 ONNX file.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import (
    FakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    disable_observer,
    enable_observer,
)

from mnv2.models.fold import bn_scale_shift
from mnv2.models.layers import ConvNormAct
from mnv2.models.mobilenetv2 import InvertedResidual, MobileNetV2


def weight_fake_quant() -> FakeQuantize:
    """int8 symmetric per output channel, narrow range [-127, 127] as ONNX Runtime's QInt8 symmetric weights."""
    return FakeQuantize(
        observer=MovingAveragePerChannelMinMaxObserver,
        quant_min=-127,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )


def activation_fake_quant() -> FakeQuantize:
    """uint8 asymmetric per tensor (a zero point keeps the signed linear-bottleneck outputs, §3.2)."""
    return FakeQuantize(
        observer=MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )


class QATConvNormAct(nn.Module):
    """A ``ConvNormAct`` computing ``act(conv(x, fq(W·γ/σ)) + β − μ·γ/σ)`` then fake-quantizing its output."""

    def __init__(self, inner: ConvNormAct) -> None:
        super().__init__()
        self.inner = inner
        self.weight_fq = weight_fake_quant()
        self.out_fq = activation_fake_quant()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.inner
        conv, bn = m.conv, m.bn
        if isinstance(bn, nn.BatchNorm2d):
            # fold with gradients: frozen running statistics, trainable γ and β (Jacob et al. 2018 §3.2)
            scale, b = bn_scale_shift(bn)
            w = conv.weight * scale.reshape(-1, 1, 1, 1)
            if conv.bias is not None:
                b = b + conv.bias * scale
        else:  # already folded
            w, b = conv.weight, conv.bias
        y = F.conv2d(m.pad(x), self.weight_fq(w), b, conv.stride, conv.padding, conv.dilation, conv.groups)
        return self.out_fq(m.act(y))


def _wrap_convs(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, ConvNormAct):
            setattr(module, name, QATConvNormAct(child))
        else:
            _wrap_convs(child)


def _fq_output_hook(mod, inputs, output):
    return mod.qat_out_fq(output)


def _fq_input_hook(mod, inputs):
    return (mod.qat_in_fq(inputs[0]), *inputs[1:])


def prepare_qat(model: MobileNetV2) -> MobileNetV2:
    """A fake-quantized copy of ``model`` for quantization-aware fine-tuning (train mode, BN statistics frozen)."""
    if not isinstance(model, MobileNetV2):
        raise TypeError(f"prepare_qat expects an mnv2 MobileNetV2, got {type(model).__name__}")
    qat = copy.deepcopy(model)
    _wrap_convs(qat)
    qat.qat_in_fq = activation_fake_quant()
    qat.register_forward_pre_hook(_fq_input_hook)
    for m in qat.modules():
        if isinstance(m, InvertedResidual) and m.use_residual:
            m.qat_out_fq = activation_fake_quant()  # ORT quantizes the residual Add's output too
            m.register_forward_hook(_fq_output_hook)
    qat.train()
    return qat


def observe(model: nn.Module, enabled: bool) -> None:
    """Let the fake-quant observers update their ranges (training) or freeze them (validation).

    ``FakeQuantize`` observes whenever it runs, in eval mode too; without this, validating would fit the
    activation ranges to the validation images.
    """
    model.apply(enable_observer if enabled else disable_observer)


def convert_qat(qat: MobileNetV2) -> MobileNetV2:
    """The plain ``MobileNetV2`` (eval mode) with ``qat``'s fine-tuned weights; same state-dict keys as before."""
    model = MobileNetV2(qat.config)
    state = {}
    for k, v in qat.state_dict().items():
        if any(part.endswith("_fq") for part in k.split(".")):
            continue  # fake-quant observers and scales
        state[k.replace(".inner.", ".")] = v
    model.load_state_dict(state)
    if getattr(qat, "meta", None) is not None:
        model.meta = qat.meta
    return model.eval()
