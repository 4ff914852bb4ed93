"""The runner registry: a device string becomes one runner by its scheme; a new kind is one class and one entry."""

from __future__ import annotations

import pytest

from edgekd.errors import EdgekdError
from edgekd.profile import RUNNERS, Runner, check_device, profile_model, runner_for
from edgekd.profile.adb import AdbRunner
from edgekd.profile.local import LocalRunner
from edgekd.profile.ssh import SshRunner


def test_each_scheme_has_its_runner():
    assert isinstance(runner_for("local"), LocalRunner)
    ssh = runner_for("ssh://pi@board:2222", insecure_host_key=True, benchmark_binary=None)  # adb's option ignored
    assert isinstance(ssh, SshRunner) and ssh.describe() == "ssh://pi@board:2222" and ssh.target.port == 2222
    assert runner_for("ssh://pi@board:22", insecure_host_key=True).describe() == "ssh://pi@board"
    adb = runner_for("adb:R5CX", identity_file="ignored")  # ssh's option ignored
    assert isinstance(adb, AdbRunner) and adb.serial == "R5CX" and adb.describe() == "adb:R5CX"
    assert runner_for("adb").describe() == "adb"


@pytest.mark.parametrize("device, message", [
    ("usb", "unknown device 'usb': use local, ssh://USER@HOST[:PORT] or adb[:SERIAL]"),
    ("bluetooth://x", "unknown device"), ("local:x", "bad device 'local:x'"), ("ssh://", "bad device"),
    ("adb:", "bad device 'adb:'")])
def test_malformed_devices_are_one_line(device, message):
    with pytest.raises(EdgekdError, match=message.replace("[", r"\[").replace("]", r"\]")):
        runner_for(device)


def test_local_needs_no_probe():
    assert isinstance(check_device("local"), LocalRunner)  # nothing to contact


def test_a_new_kind_is_one_class_and_one_entry(tmp_path, monkeypatch):
    """profile_model reaches a registered runner by its scheme and keeps DESIGN's keys from what it returns."""
    calls = []

    class FakeRunner(Runner):
        scheme, usage = "fake", "fake:NAME"

        def profile(self, model, runs, warmup, threads, seq_len, vocab, timeout, parity=None):
            calls.append((model.name, runs, warmup, threads, seq_len, vocab))
            return {"device": self.device, "format": "onnx", "runs": runs, "threads": 1, "p50_ms": 1.0}

    monkeypatch.setitem(RUNNERS, "fake", FakeRunner)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x" * 2000)
    (tmp_path / "m.onnx.json").write_text('{"seq_len": 12, "vocab_size": 99}')  # the export's parity record
    stats = profile_model(model, device="fake:one", runs=4, warmup=0)
    assert calls == [("m.onnx", 4, 0, None, 12, 99)]
    assert stats["device"] == "fake:one" and stats["p50_ms"] == 1.0 and stats["size_mb"] == 2000 / 1e6
    assert list(stats)[:3] == ["device", "format", "runs"]  # STAT_KEYS first, in their order
    probed = FakeRunner("fake:two")  # a runner made (and probed) once by the caller is used as it is
    assert runner_for(probed) is probed and profile_model(model, device=probed, runs=1)["device"] == "fake:two"
    with pytest.raises(EdgekdError, match=r"use local, ssh://USER@HOST\[:PORT\], adb\[:SERIAL\] or fake:NAME"):
        runner_for("nfc")
