"""What a device has (`edgekd device check`) and putting the runtimes there (`edgekd device setup`).

`device_facts` runs board_facts.py through the device's runner (the same runner that profiles it); `setup_device`
downloads this machine's runtime versions as wheels for the device's platform here (wheels.py) and installs them
into a venv on the device over ssh, so the device needs no network, only python3 with venv.
"""

from __future__ import annotations

import json
import shlex
import tempfile
from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.settings import Settings

# The generative runtimes a profile needs on a device: one of them at least.
GENERATIVE_RUNTIMES = ("onnxruntime-genai", "litert-lm-api")
DEFAULT_VENV = "~/.edgekd/venv"
STAMP = "edgekd-runtimes.json"  # in the venv: what setup_device installed there


def device_facts(device: str, settings: Settings | None = None, *, require_runtime: bool = True, **options) -> dict:
    """The device's machine, Python, C library, threads, runtimes and versions, and whether it is emulated (board_facts
    keys, and `device`). `require_runtime`: a device with neither generative runtime is one line (exit 2) naming
    `edgekd device setup`. `options`: the runner's (identity_file, known_hosts, remote_python, ...)."""
    from edgekd.profile import check_device

    runner = check_device(device, settings=settings, **options)
    facts = runner.facts()
    if require_runtime and facts.get("python") is not None and \
            not any((facts.get("runtimes") or {}).get(r) for r in GENERATIVE_RUNTIMES):
        python = getattr(runner, "remote_python", "python3")
        raise EdgekdError(f"{runner.describe()}: {python} there ({facts.get('machine')}, Python {facts.get('python')}) "
                          f"has no runtime edgekd runs (onnxruntime-genai, litert-lm-api): run `edgekd device setup "
                          f"{device}`, or pass --remote-python the python that has them")
    return facts


def setup_device(device: str, settings: Settings | None = None, *, venv: str = DEFAULT_VENV,
                 requirements: list[str] | None = None, wheels: Path | None = None, say=None, **options) -> dict:
    """Install the runtimes (this machine's versions: wheels.pinned) into VENV on an ssh device from wheels
    downloaded here for its machine, C library and Python (or found in `wheels`); the device's facts with that
    venv's python (`remote_python`, what --remote-python takes)."""
    from edgekd.device.wheels import download_wheels, pinned
    from edgekd.profile import check_device

    if not str(device).startswith("ssh://"):
        raise EdgekdError(f"edgekd device setup installs over ssh: give ssh://USER@HOST[:PORT], not {device!r}")
    options = {k: v for k, v in options.items() if k != "remote_python"}
    runner = check_device(device, settings=settings, **options)
    base = runner.facts()  # python3's (no venv yet): machine, libc, Python
    if base.get("system") != "Linux":
        raise EdgekdError(f"{device} runs {base.get('system')}: edgekd device setup installs Linux wheels")
    want = list(requirements or pinned())
    home = runner.shell("cd && pwd", 60).stdout.strip().splitlines()
    path = venv.replace("~", home[-1] if home else "~", 1) if venv.startswith("~") else venv
    if not path.startswith("/"):
        raise EdgekdError(f"--venv {venv}: give an absolute path on the device (or one starting with ~)")
    with tempfile.TemporaryDirectory(prefix="edgekd-wheels-") as tmp:
        found = download_wheels(Path(wheels or tmp), base["machine"], base.get("libc"), base["python"], want)
        if say:
            say(f"installing {len(found)} wheels for {base['machine']} Python {base['python']} into {path} on {device}")
        q = shlex.quote(path)
        made = runner.shell(f"{shlex.quote(runner.remote_python)} -m venv {q} && mkdir -p {q}/wheels", 900)
        if made.returncode != 0:
            raise EdgekdError(f"{device}: `{runner.remote_python} -m venv {path}` failed "
                              f"({(made.stderr.strip().splitlines() or ['no output'])[-1][:160]}): install python3-venv "
                              f"there (apt-get install python3-venv)")
        try:
            runner.upload(found, f"{path}/wheels")
            names = " ".join(shlex.quote(r) for r in want)
            got = runner.shell(f"{q}/bin/python -m pip install --no-index --find-links {q}/wheels "
                               f"--disable-pip-version-check -q {names}", 3600)
            if got.returncode != 0:
                raise EdgekdError(f"{device}: pip could not install the runtimes into {path} "
                                  f"({(got.stderr.strip().splitlines() or ['no output'])[-1][:200]}): see the line above")
        finally:
            runner.shell(f"rm -rf {q}/wheels", 120)
        stamp = json.dumps({"requirements": want, "machine": base["machine"], "python": base["python"]})
        runner.shell(f"printf %s {shlex.quote(stamp)} > {q}/{STAMP}", 60)
    python = f"{path}/bin/python"
    runtime = any(r.split("=")[0] in GENERATIVE_RUNTIMES for r in want)
    return device_facts(device, settings, require_runtime=runtime, remote_python=python, **options) | \
        {"remote_python": python, "venv": path, "installed": want}


__all__ = ["DEFAULT_VENV", "GENERATIVE_RUNTIMES", "device_facts", "setup_device"]
