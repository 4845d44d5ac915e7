"""mnv2.typed.strict_from_dict: the one strict dict → dataclass constructor behind every from_dict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from mnv2.data.preprocessing import Preprocessing
from mnv2.errors import ConfigError
from mnv2.models import MobileNetV2Config
from mnv2.typed import strict_from_dict


@dataclass(frozen=True)
class _Required:
    size: int
    name: str = "x"


def test_unknown_key_is_named_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in my source: colour, sise; known: name, size"):
        strict_from_dict(_Required, {"sise": 1, "colour": "red"}, "my source")


@pytest.mark.parametrize("values", [None, [("size", 1)], "size=1", 3])
def test_non_dict_is_refused(values):
    with pytest.raises(ConfigError, match="my source must be a mapping"):
        strict_from_dict(_Required, values, "my source")


def test_constructor_type_error_becomes_config_error_naming_the_source():
    with pytest.raises(ConfigError, match=r"my source: .*size") as info:
        strict_from_dict(_Required, {"name": "y"}, "my source")  # required field missing
    assert isinstance(info.value.__cause__, TypeError)


def test_valid_dict_builds_the_dataclass():
    assert strict_from_dict(_Required, {"size": 2}, "s") == _Required(2)


def test_model_config_round_trips_and_names_its_source():
    cfg = MobileNetV2Config(width_mult=0.35, num_classes=10)
    assert MobileNetV2Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in model config: widht_mult"):
        MobileNetV2Config.from_dict({"widht_mult": 0.5})
    with pytest.raises(ConfigError, match="checkpoint x"):
        MobileNetV2Config.from_dict({"bogus": 1}, source="checkpoint x")


def test_preprocessing_round_trips_and_names_its_source():
    pre = Preprocessing(input_size=160, crop_pct=1.0, interpolation="bicubic", grayscale=True)
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    # JSON metadata turns the tuples into lists; __post_init__ restores them
    assert Preprocessing.from_dict(dataclasses.asdict(pre) | {"mean": list(pre.mean)}) == pre
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in preprocessing: crop"):
        Preprocessing.from_dict({"crop": 0.9})


def test_field_validation_errors_pass_through_unchanged():
    with pytest.raises(ConfigError, match="crop_pct must be in"):
        Preprocessing.from_dict({"crop_pct": 2.0})
