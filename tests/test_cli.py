"""The CLI's own parsing: options reach the Python API unchanged; bad ones exit 2 with one line."""

import json
import os

from typer.testing import CliRunner

import edgekd.distill
from edgekd.cli import app


def test_scheme_config_reaches_the_run(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(edgekd.distill, "run", lambda cfg, **kw: seen.__setitem__("cfg", cfg))
    cfg_file = tmp_path / "scheme.json"
    cfg_file.write_text(json.dumps({"sizes": [{"num_hidden_layers": 3}]}))
    res = CliRunner().invoke(app, ["distill", "--scheme", "progressive", "--scheme-config", str(cfg_file)])
    assert res.exit_code == 0, res.output
    assert seen["cfg"].scheme_config == {"sizes": [{"num_hidden_layers": 3}]}
    res = CliRunner().invoke(app, ["distill", "--scheme-config", '{"cache": "c", "cache_k": 8}'])
    assert seen["cfg"].scheme_config == {"cache": os.path.abspath("c"), "cache_k": 8}  # paths resolved at the edge


def test_bad_scheme_config_is_one_line_exit_2():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "edgekd.cli", "distill", "--scheme-config", "[1"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--scheme-config" in lines[0] and "Traceback" not in res.stderr
