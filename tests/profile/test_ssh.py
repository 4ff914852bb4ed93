"""The ssh runner against a real OpenSSH server started on 127.0.0.1 with throwaway keys."""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from edgekd.errors import EdgekdError
from edgekd.profile import STAT_KEYS, profile_model
from edgekd.profile.ssh import parse_ssh_url

from tests.profile.conftest import free_port, with_check_set

def _remote_dirs() -> set[str]:
    return set(glob.glob("/tmp/edgekd.*"))


def test_url_parsing():
    t = parse_ssh_url("ssh://pi@raspberrypi.local:2222")
    assert (t.user, t.host, t.port) == ("pi", "raspberrypi.local", 2222)
    t = parse_ssh_url("ssh://board")
    assert (t.user, t.host, t.port) == (None, "board", 22)
    assert "StrictHostKeyChecking=yes" in t.options() and "BatchMode=yes" in t.options()
    assert "StrictHostKeyChecking=no" in parse_ssh_url("ssh://a@b", insecure_host_key=True).options()
    with pytest.raises(EdgekdError, match="ssh://USER@HOST"):
        parse_ssh_url("ssh://")


@pytest.mark.slow
def test_profile_through_real_sshd(sshd, tiny_onnx):
    before = _remote_dirs()
    stats = profile_model(tiny_onnx, device=sshd["url"], runs=6, warmup=1, remote_python=sys.executable,
                          identity_file=sshd["key"], known_hosts=sshd["known_hosts"])
    assert set(STAT_KEYS) <= set(stats) and stats["device"] == sshd["url"] and stats["format"] == "onnx"
    assert stats["runs"] == 6 and stats["min_ms"] <= stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert {"MatMul", "Gather"} <= {r["op"] for r in stats["ops"]}
    assert _remote_dirs() == before  # the temporary directory on the "device" is gone


@pytest.mark.slow
def test_cli_profile_over_ssh_json(sshd, tiny_onnx):
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "profile", str(tiny_onnx), "--device", sshd["url"],
                           "--runs", "3", "--warmup", "0", "--remote-python", sys.executable, "--identity-file",
                           sshd["key"], "--known-hosts", sshd["known_hosts"], "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["device"] == sshd["url"]


def _expect(needle: str, **kw):
    t0 = time.time()
    with pytest.raises(EdgekdError) as e:
        profile_model(**kw)
    assert needle in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    return time.time() - t0


@pytest.mark.slow
def test_device_without_runtime(sshd, tiny_onnx):
    probe = subprocess.run(["/usr/bin/python3", "-c", "import numpy, onnxruntime"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("the system python3 has numpy and onnxruntime, so it is not a device without a runtime")
    before = _remote_dirs()
    _expect("has no runtime", model_file=tiny_onnx, device=sshd["url"], runs=2, remote_python="/usr/bin/python3",
            identity_file=sshd["key"], known_hosts=sshd["known_hosts"])
    assert _remote_dirs() == before


def test_device_without_python(sshd, tiny_onnx):
    _expect("device has no /nonexistent/python3", model_file=tiny_onnx, device=sshd["url"], runs=2,
            remote_python="/nonexistent/python3", identity_file=sshd["key"], known_hosts=sshd["known_hosts"])


def test_refused_key(sshd, tiny_onnx):
    _expect("key refused", model_file=tiny_onnx, device=sshd["url"], identity_file=str(sshd["dir"] / "other_key"),
            known_hosts=sshd["known_hosts"])


def test_unknown_host_key(sshd, tiny_onnx):
    _expect("host key", model_file=tiny_onnx, device=sshd["url"], identity_file=sshd["key"],
            known_hosts=str(sshd["dir"] / "empty_known_hosts"))


def test_unreachable_port_fails_fast(sshd, tiny_onnx):
    port = free_port()
    took = _expect("connection refused", model_file=tiny_onnx, device=f"ssh://nobody@127.0.0.1:{port}",
                   identity_file=sshd["key"], known_hosts=sshd["known_hosts"], connect_timeout=3)
    assert took < 30


def test_unroutable_host_is_bounded(sshd, tiny_onnx):
    took = _expect("ssh://nobody@10.255.255.1", model_file=tiny_onnx, device="ssh://nobody@10.255.255.1",
                   identity_file=sshd["key"], known_hosts=sshd["known_hosts"], connect_timeout=2)
    assert took < 40


@pytest.mark.slow
def test_corrupt_model_over_ssh(sshd, corrupt_onnx):
    _expect("could not run corrupt.onnx", model_file=corrupt_onnx, device=sshd["url"], runs=2,
            remote_python=sys.executable, identity_file=sshd["key"], known_hosts=sshd["known_hosts"])


def test_odd_key_and_known_hosts_paths_work(sshd, tmp_path):
    """Spaces, quotes, '%' and shell metacharacters in --known-hosts / --identity-file reach ssh whole."""
    from edgekd.profile import check_device

    odd = tmp_path / "keys 'q' \"dq\" %h $HOME; &"
    odd.mkdir()
    kh, key = odd / "known hosts", odd / "id key"
    shutil.copy(sshd["known_hosts"], kh)
    shutil.copy(sshd["key"], key)
    key.chmod(0o600)
    check_device(sshd["url"], identity_file=str(key), known_hosts=str(kh))  # the probe: `true` on the device


def test_explicit_known_hosts_wins_over_the_insecure_environment(sshd, monkeypatch):
    """EDGEKD_SSH_INSECURE_HOST_KEY=1 does not switch off the check of an explicit --known-hosts."""
    from edgekd.profile import check_device

    monkeypatch.setenv("EDGEKD_SSH_INSECURE_HOST_KEY", "1")
    with pytest.raises(EdgekdError, match="host key"):
        check_device(sshd["url"], identity_file=sshd["key"], known_hosts=str(sshd["dir"] / "empty_known_hosts"))
    check_device(sshd["url"], identity_file=sshd["key"])  # no explicit file: the environment's opt-out holds


def test_graph_file_parity_checked_on_the_device(sshd, tiny_onnx, tmp_path):
    """Over ssh the file's parity rows run on the device against PyTorch's logits by the bar it passed when it
    was exported (its check set beside it); a file whose logits differ there fails in one line, and the CLI exits 1;
    a file without a check set says why it was not checked."""
    from edgekd.export.parity import write_device_check

    kw = dict(device=sshd["url"], runs=2, warmup=0, remote_python=sys.executable, identity_file=sshd["key"],
              known_hosts=sshd["known_hosts"])
    model, ids, ref = with_check_set(tiny_onnx, tmp_path / "m.onnx", write=False)
    assert profile_model(model, **kw)["parity"] == {
        "checked": False, "why": "no parity check set beside the file (m.onnx.parity.npz): export it with edgekd "
                                 "export to check it on the device"}
    assert write_device_check(model, {"input_ids": ids}, ref, False, None, labels=False)["rows"] == 3
    p = profile_model(model, **kw)["parity"]
    assert p["checked"] and p["passed"] and p["rows"] == 3 and p["top1_agreement"] == 1.0
    assert p["machine"] and p["runtime"].startswith("onnxruntime")
    ref[1] = ref[1] + 0.5 * np.abs(ref[1]).max()  # as if the device's kernels computed row 1 differently
    write_device_check(model, {"input_ids": ids}, ref, False, None, labels=False)
    p = profile_model(model, **kw)["parity"]
    assert not p["passed"] and "\n" not in p["error"]
    assert p["error"].startswith(f"m.onnx failed parity on {sshd['url']} (") and "max abs diff" in p["error"]
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "profile", str(model), "--device", sshd["url"],
                           "--runs", "1", "--warmup", "0", "--remote-python", sys.executable, "--identity-file",
                           sshd["key"], "--known-hosts", sshd["known_hosts"], "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "m.onnx failed parity on" in proc.stderr.strip().splitlines()[-1]


def test_a_job_on_a_device_with_fewer_cpus_than_the_target_threads_is_one_line_before_any_work(sshd, tmp_path,
                                                                                                 monkeypatch):
    """A real (not emulated) device with fewer CPUs than the target's threads: the job stops at its start with one
    line naming both, not after the training when the profile is refused."""
    import os
    import re
    from pathlib import Path

    have = len(os.sched_getaffinity(0))  # the sshd here is this machine: its CPUs are the device's
    pi = (Path(__file__).resolve().parents[2] / "targets" / "raspberry-pi-5.toml").read_text()
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "raspberry-pi-5.toml").write_text(re.sub(r"default_threads = \d+", f"default_threads = {have + 1}", pi))
    monkeypatch.setenv("EDGEKD_TARGETS_DIR", str(targets))
    out = tmp_path / "run"
    started = time.time()
    res = subprocess.run([sys.executable, "-m", "edgekd.cli", "distill", "--target", "raspberry-pi-5", "--out",
                          str(out), "--device", sshd["url"], "--identity-file", sshd["key"], "--known-hosts",
                          sshd["known_hosts"], "--remote-python", sys.executable, "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith("edgekd: error: ")
    assert f"has {have} CPU" in line and f"runs on {have + 1} threads" in line and "default_threads" in line
    assert time.time() - started < 120 and not (out / "checkpoints").exists()  # before any training
