import json
import subprocess
import sys

import pytest

from mnv2.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mnv2.cli", *args], capture_output=True, text=True, timeout=300)


def test_summary_json(capsys):
    assert main(["summary", "--width", "1.0", "--resolution", "224", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["params"] == 3_504_872 and d["madds"] == 300_774_272
    assert d["params_no_bn"] == 3_470_760
    assert d["layers"][0]["module"] == "stem" and d["layers"][-1]["module"] == "classifier"
    assert d["config"]["width_mult"] == 1.0


def test_summary_table_1001_classes(capsys):
    assert main(["summary", "--width", "0.35", "--resolution", "96", "--num-classes", "1001"]) == 0
    out = capsys.readouterr().out
    assert "blocks.5.0.expand" in out and "MAdds 11," in out


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)]
    assert names == [
        "mobilenetv2_035",
        "mobilenetv2_050",
        "mobilenetv2_075",
        "mobilenetv2_100",
        "mobilenetv2_130",
        "mobilenetv2_140",
    ]


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--width", "0"], "0.0"), (["--width", "-2"], "-2.0"), (["--resolution", "31"], "31x31"),
     (["--model", "resnet50"], "'resnet50'"), (["--padding", "valid"], "'valid'")],
)  # fmt: skip
def test_cli_errors_are_one_line_without_traceback(args, needle):
    r = run_cli("summary", *args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("mnv2: error:") and needle in r.stderr
    assert r.stderr.count("\n") == 1  # one line (tests/test_reliability.py holds the whole catalogue)
