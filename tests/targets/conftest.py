"""Every targets test gets its own cache dir, so saved calibrations and host facts never leak."""

import pytest


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def fake_host(monkeypatch):
    """The host's measured facts faked, so tests of the `host` target stay fast and deterministic."""
    fake = {"cpu.cores": 2, "cpu.big_cores": 2, "cpu.clock_ghz": 2.5, "cpu.arch": "x86_64", "cpu.simd_width_bits": 256,
            "cpu.peak_gflops_fp32": 50.0, "cpu.peak_gops_int8": 100.0, "memory.bandwidth_gbs": 20.0,
            "memory.ram_mb": 8192, "runtime.default_threads": 2}
    monkeypatch.setattr("edgekd.targets.hostbench.host_facts", lambda refresh=False, settings=None: dict(fake))
