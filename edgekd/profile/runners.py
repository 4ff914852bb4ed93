"""The device runners by the scheme of the device string: "local", "ssh://USER@HOST[:PORT]", "adb[:SERIAL]".

A new kind of device is a Runner subclass (profile/common.py) in its own module and one entry here.
"""

from __future__ import annotations

from edgekd.errors import EdgekdError
from edgekd.profile.adb import AdbRunner
from edgekd.profile.common import Runner
from edgekd.profile.local import LocalRunner
from edgekd.profile.ssh import SshRunner
from edgekd.settings import Settings

RUNNERS: dict[str, type[Runner]] = {cls.scheme: cls for cls in (LocalRunner, SshRunner, AdbRunner)}


def runner_for(device: str | Runner, settings: Settings | None = None, **options) -> Runner:
    """The runner of DEVICE, made from the options its kind reads (ssh: identity_file, known_hosts,
    insecure_host_key, connect_timeout, remote_python; adb: benchmark_binary; the others are ignored) and
    checked without contacting the device; `runner.check()` probes it. A runner already made (probed once by
    the job) is itself. `settings`: the CLI's (ssh reads EDGEKD_SSH_* from them), else the environment's."""
    if isinstance(device, Runner):
        return device
    cls = RUNNERS.get(str(device).split(":", 1)[0])
    if cls is None:
        usages = [c.usage for c in RUNNERS.values()]
        raise EdgekdError(f"unknown device {device!r}: use {', '.join(usages[:-1])} or {usages[-1]}")
    return cls(device, settings=settings, **options)
