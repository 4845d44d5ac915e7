"""Loading never runs code from a file; damaged or foreign files give one clear error."""

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mnv2.cli import main
from mnv2.weights.convert import ConvertError, convert

FIXTURES = Path(__file__).parent / "fixtures" / "interop"
MARKER = "mnv2-test-pickle-ran"


class Payload:
    """Unpickling this calls os.system: a file that needs arbitrary code to load."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def test_pickles_that_need_code_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.0.weight": torch.zeros(1), "extra": Payload()}, evil)
    with pytest.raises(ConvertError, match=r"refusing .*arbitrary code.*weights_only=True"):
        convert(evil)
    assert not (tmp_path / MARKER).exists()
    whole_module = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), whole_module)  # a pickled nn.Module, not a state dict
    with pytest.raises(ConvertError, match="arbitrary code"):
        convert(whole_module)


@pytest.mark.parametrize("name", ["tv_w025_c10.pth", "timm_050_c4.safetensors"])
def test_truncated_files_give_one_clear_error(name, tmp_path):
    data = (FIXTURES / name).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConvertError, match="truncated"):
        convert(cut)


def test_foreign_files_are_reported(tmp_path, capsys):
    junk = tmp_path / "notes.pth"
    junk.write_text("hello, these are not weights\n")
    with pytest.raises(ConvertError, match="neither a safetensors nor a PyTorch"):
        convert(junk)
    other = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}, str(other))
    with pytest.raises(ConvertError, match=r"match no known MobileNetV2 format.*conv1\.weight"):
        convert(other)
    with pytest.raises(ConvertError, match="does not exist"):
        convert(tmp_path / "missing.h5")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ConvertError, match="without a Hugging Face"):
        convert(tmp_path / "empty_dir")
    # The CLI prints the same error as one line, no traceback, exit status 2.
    assert main(["convert", str(junk), "--out", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnv2: error:") and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "o.safetensors").exists()
