"""The environment is read once, into Settings, and handed down: torchrun's variables, the kernel switch and
the fault hook included (nothing below the edge reads os.environ for them)."""

import pytest

from edgekd import faults, kernels
from edgekd.distill import apply_settings
from edgekd.errors import EdgekdError
from edgekd.settings import Settings


def test_torchrun_variables_are_read_once_into_settings():
    s = Settings.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (s.rank, s.world_size, s.local_rank) == (3, 4, 1)
    assert (Settings.from_env({}).rank, Settings.from_env({}).world_size) == (0, 1)
    with pytest.raises(EdgekdError, match="WORLD_SIZE='two' is not an integer"):
        Settings.from_env({"WORLD_SIZE": "two"})


def test_the_kernel_switch_comes_from_the_settings_an_edge_hands_over(monkeypatch):
    monkeypatch.setenv("EDGEKD_KERNEL", "reference")  # read by Settings.from_env, not by the kernels
    fused = kernels.backend("cpu")
    try:
        apply_settings(Settings.from_env())
        assert kernels.backend("cpu") == "reference"
        apply_settings(Settings.from_env({}))
        assert kernels.backend("cpu") == fused
    finally:
        apply_settings(Settings.from_env({}))


def test_the_fault_hook_is_armed_by_the_edge_alone(monkeypatch):
    killed = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: killed.append(sig))
    monkeypatch.setenv("EDGEKD_FAULT", "kill:export")
    faults.point("export")
    assert killed == []  # the environment alone arms nothing: an edge hands Settings.fault over
    try:
        apply_settings(Settings.from_env())
        faults.point("search")
        faults.point("export")
        assert len(killed) == 1
    finally:
        faults.arm(None)
