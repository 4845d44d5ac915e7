import pytest
import torch
import torch.nn.functional as F

from mnv2.errors import ConfigError
from mnv2.models.layers import (
    BN_MOMENTUM_KERAS,
    BN_MOMENTUM_TF_SLIM,
    ConvNormAct,
    make_divisible,
    same_padding,
    tf_decay_to_torch_momentum,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(32 * 0.35, 16), (16 * 0.35, 8), (24 * 0.35, 8), (32 * 0.5, 16), (24 * 0.75, 24), (96 * 0.35, 32),
     (160 * 0.35, 56), (320 * 1.4, 448), (1280 * 1.3, 1664), (32 * 1.3, 40), (3.0, 8), (4.0, 8)],
)  # fmt: skip
def test_make_divisible(value, expected):
    assert make_divisible(value) == expected
    assert make_divisible(value) % 8 == 0
    assert make_divisible(value) >= 0.9 * value


def test_bn_decay_conversion():
    assert pytest.approx(0.003) == BN_MOMENTUM_TF_SLIM
    assert pytest.approx(0.001) == BN_MOMENTUM_KERAS
    with pytest.raises(ConfigError, match=r"1\.5"):
        tf_decay_to_torch_momentum(1.5)


@pytest.mark.parametrize(
    ("size", "stride", "expected"), [(224, 2, (0, 1)), (225, 2, (1, 1)), (7, 1, (1, 1)), (8, 2, (0, 1))]
)
def test_same_padding_formula(size, stride, expected):
    assert same_padding(size, 3, stride) == expected


def _tf_reference(x, conv, stride, dilation):
    """TF SAME written out: explicit asymmetric zero pad, then a 'valid' convolution."""
    k = conv.kernel_size[0]
    total_h = max((-(-x.shape[2] // stride) - 1) * stride + (k - 1) * dilation + 1 - x.shape[2], 0)
    total_w = max((-(-x.shape[3] // stride) - 1) * stride + (k - 1) * dilation + 1 - x.shape[3], 0)
    x = F.pad(x, (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2))
    return F.conv2d(x, conv.weight, None, stride, 0, dilation, conv.groups)


@pytest.mark.parametrize("size", [15, 16, 33, 34])
@pytest.mark.parametrize(
    ("kernel", "stride", "dilation", "groups"), [(3, 2, 1, 8), (3, 1, 1, 8), (3, 1, 2, 8), (3, 2, 1, 1), (1, 1, 1, 1)]
)
def test_tf_padding_matches_explicit_pad_and_valid_conv(size, kernel, stride, dilation, groups):
    layer = ConvNormAct(8, 8, kernel, stride, dilation, groups, padding="tf", act=False).eval()
    x = torch.randn(2, 8, size, size + 1)  # odd and even at once
    ref = layer.bn(_tf_reference(x, layer.conv, stride, dilation))
    out = layer(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref)


def test_torch_padding_is_symmetric():
    layer = ConvNormAct(4, 4, 3, 2, padding="torch", act=False).eval()
    x = torch.randn(1, 4, 16, 16)
    torch.testing.assert_close(layer(x), layer.bn(F.conv2d(x, layer.conv.weight, None, 2, 1)))
    # on even inputs TF SAME differs (0 before, 1 after): the mode matters for ported weights
    tf = ConvNormAct(4, 4, 3, 2, padding="tf", act=False).eval()
    tf.load_state_dict(layer.state_dict())
    assert not torch.allclose(tf(x), layer(x))


def test_unknown_padding_mode():
    with pytest.raises(ConfigError, match="'same'"):
        ConvNormAct(3, 8, 3, padding="same")
