"""Target files: every shipped one validates, and each kind of mistake names the file and the key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edgekd.errors import EdgekdError
from edgekd.targets import spec
from edgekd.targets import measure_target
from edgekd.targets.spec import known_targets, load_target, parse_target

REPO = Path(__file__).resolve().parents[2]
GOOD = (REPO / "targets" / "raspberry-pi-5.toml").read_text()


pytestmark = pytest.mark.usefixtures("fake_host")  # tests/targets/conftest.py


def write(tmp_path: Path, text: str, name: str = "raspberry-pi-5") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


def test_shipped_targets_all_validate():
    names = known_targets()
    for required in ("android-arm64", "android-arm64-low", "raspberry-pi-5", "raspberry-pi-4", "jetson-orin-nano", "host"):
        assert required in names
    for n in names:
        t = measure_target(load_target(n))
        assert t.cpu["peak_gflops_fp32"] > 0 and t.memory["bandwidth_gbs"] > 0
        assert t.data["sources"], f"{n} names no sources"
    assert "gpu" in load_target("jetson-orin-nano").data


def test_host_declares_measured_numbers():
    raw = tomllib.loads((REPO / "targets" / "host.toml").read_text())
    assert "cpu.peak_gflops_fp32" in raw["measured"] and "memory.bandwidth_gbs" in raw["measured"]
    t = load_target("host")  # parsing never measures: the measured keys wait for measure_target
    assert "cpu.peak_gflops_fp32" in t.unmeasured and "peak_gflops_fp32" not in t.cpu
    t = measure_target(t)
    assert not t.unmeasured and t["cpu.peak_gflops_fp32"] == 50.0 and t.access["method"] == "local"
    assert measure_target(load_target("raspberry-pi-5")) == load_target("raspberry-pi-5")


@pytest.mark.parametrize("edit, key, problem", [
    (lambda s: s.replace("bandwidth_gbs = 17.1\n", ""), "memory.bandwidth_gbs", "missing"),
    (lambda s: s.replace("cores = 4\nbig", 'cores = "four"\nbig'), "cpu.cores", "must be a"),
    (lambda s: s.replace("peak_gflops_fp32 = 153.6", "peak_gflops_fp32 = -1.0"), "cpu.peak_gflops_fp32", "positive"),
    (lambda s: s.replace('method = "ssh"', 'method = "telnet"'), "access.method", "unknown value"),
    (lambda s: s.replace('preferred_format = "tflite"', 'preferred_format = "coreml"'), "runtime.preferred_format",
     "unknown value"),
    (lambda s: s.replace("default_threads = 4", "default_threads = true"), "runtime.default_threads", "must be a"),
])
def test_validation_errors_name_file_and_key(tmp_path, edit, key, problem):
    p = write(tmp_path, edit(GOOD))
    with pytest.raises(EdgekdError) as e:
        parse_target(p)
    msg = str(e.value)
    assert str(p) in msg and key in msg and problem in msg
    assert "\n" not in msg


def test_missing_table_and_bad_toml(tmp_path):
    p = write(tmp_path, GOOD.split("[budget]")[0] + "[access]\nmethod = \"ssh\"\n")
    with pytest.raises(EdgekdError, match=r"raspberry-pi-5\.toml: missing table \[budget\]"):
        parse_target(p)
    p = write(tmp_path, "name = \n")
    with pytest.raises(EdgekdError, match="not valid TOML"):
        parse_target(p)


def test_unknown_target_lists_known_ones():
    with pytest.raises(EdgekdError) as e:
        load_target("pixel-99")
    assert "pixel-99" in str(e.value) and "android-arm64" in str(e.value) and "raspberry-pi-5" in str(e.value)


def test_installed_layout_is_found(tmp_path, monkeypatch):
    """EDGEKD_TARGETS_DIR (and the wheel's targets_data) are searched besides the checkout."""
    d = tmp_path / "extra"
    d.mkdir()
    (d / "my-board.toml").write_text(GOOD.replace('name = "raspberry-pi-5"', 'name = "my-board"'))
    monkeypatch.setenv("EDGEKD_TARGETS_DIR", str(d))
    assert "my-board" in known_targets()
    assert load_target("my-board").cpu["cores"] == 4
    assert spec.targets_dirs()[0] == d


def test_cli_list_and_show_and_unknown():
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": "/tmp/edgekd-test-cache-cli"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "edgekd.cli", "targets", *a], capture_output=True,  # noqa: E731
                                    text=True, cwd=REPO, env=env, timeout=120)
    r = run("show", "jetson-orin-nano")
    assert r.returncode == 0, r.stderr
    assert "peak_gflops_fp32" in r.stdout and "nvidia" in r.stdout.lower()
    r = run("show", "nope")
    assert r.returncode == 2 and "unknown target 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = run("list")
    assert r.returncode == 0 and "raspberry-pi-4" in r.stdout


def test_host_measurement_is_cached(tmp_path, monkeypatch):
    """Measured once, then read back from $XDG_CACHE_HOME/edgekd/host.toml; a corrupt cache re-measures."""
    from edgekd.targets import hostbench

    monkeypatch.undo()  # the real host_facts, with a fake microbenchmark
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []
    fake = {"cpu.cores": 4, "cpu.big_cores": 4, "cpu.clock_ghz": 3.0, "cpu.arch": "x86_64", "cpu.simd_width_bits": 256,
            "cpu.peak_gflops_fp32": 123.0, "cpu.peak_gops_int8": 456.0, "memory.bandwidth_gbs": 7.5,
            "memory.ram_mb": 1024, "runtime.default_threads": 4}
    monkeypatch.setattr(hostbench, "measure_host", lambda: calls.append(1) or dict(fake))
    assert load_target("host").unmeasured and not calls  # parsing the file measures nothing
    assert hostbench.host_facts()["cpu.peak_gflops_fp32"] == 123.0
    assert hostbench.host_cache_file().is_file() and len(calls) == 1
    t = measure_target(load_target("host"))
    assert t["cpu.peak_gops_int8"] == 456.0 and t["cpu.arch"] == "x86_64" and len(calls) == 1
    hostbench.host_cache_file().write_text("this is [not toml")
    assert hostbench.host_facts()["memory.bandwidth_gbs"] == 7.5 and len(calls) == 2
