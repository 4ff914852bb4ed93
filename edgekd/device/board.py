"""An arm64 Linux board on this machine: a Debian arm64 userland run under qemu-user (binfmt_misc), with the
runtimes edgekd ships to devices installed in a venv there, served over ssh on 127.0.0.1 by its own sshd.

What runs there is real arm64 code: the runtimes' aarch64 kernels, and so the tokens a file generates on an
arm64 device. Its times are not: the board says it is emulated (/etc/edgekd-board.json, which board_facts.py
reads into every profile), and the job never calibrates on or judges a budget by an emulated time.

    board = build_board()                  # the slow part, cached: userland ~5 min, runtimes ~3 min on 2 cores
    with start_board() as b:               # its sshd on a free 127.0.0.1 port, /proc mounted (never /sys)
        profile_generation(path, b.url, **b.options())

Needs root (chroot, mount), binfmt_misc with qemu-aarch64 registered (qemu-user-static), mmdebstrap and the
network for Debian's mirror and PyPI; on an arm64 host no emulator is needed. `why_not` says in one line what
is missing. Cached under EDGEKD_BOARD_DIR, else CACHE/arm64-board (rootfs/, wheels/, keys/).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.settings import Settings

SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "openssh-server")
BOARD_PYTHON, BOARD_LIBC = "3.11", "glibc 2.36"   # bookworm's: the wheels are chosen for them
VENV = "/opt/edgekd"                               # the runtimes' venv on the board
MARKER = "etc/edgekd-board.json"                   # board_facts.BOARD_FILE
STAMP = "opt/edgekd/edgekd-runtimes.json"          # which runtimes the venv holds (device/setup.py writes it)
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
HOST_PACKAGES = ("qemu-user-static", "mmdebstrap")


class BoardUnavailable(EdgekdError):
    """The board cannot be built or served here (no root, no binfmt, no network, ...): one line saying why."""


def board_home(settings: Settings | None = None) -> Path:
    """Where the board lives: EDGEKD_BOARD_DIR, else CACHE/arm64-board."""
    settings = settings or Settings.from_env()
    return settings.board_dir or settings.cache_dir / "arm64-board"


def native() -> bool:
    """This machine runs arm64 code itself (no emulator needed)."""
    return platform.machine() in ("aarch64", "arm64")


def _binfmt_ready() -> bool:
    entry = BINFMT / "qemu-aarch64"
    return entry.is_file() and entry.read_text().startswith("enabled")


def _prepare_binfmt() -> None:
    """Mount binfmt_misc and register qemu-aarch64 (from qemu-user-static's binfmt.d file) where they are not."""
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True)
    if not (BINFMT / "qemu-aarch64").exists() and BINFMT_CONF.is_file() and (BINFMT / "register").exists():
        try:
            (BINFMT / "register").write_text(BINFMT_CONF.read_text().strip())
        except OSError:
            pass


def why_not(settings: Settings | None = None, *, install: bool = False, built: bool = False) -> str | None:
    """Why the board cannot be built (or, `built`, served) here, in one line; None when it can. `install`: install
    qemu-user-static and mmdebstrap with apt-get where they are missing, and register the emulator."""
    if platform.system() != "Linux":
        return "the arm64 board needs Linux (chroot, binfmt_misc)"
    if os.geteuid() != 0:
        return "the arm64 board needs root (chroot, mount /proc): run as root"
    if shutil.which("chroot") is None:
        return "chroot not found on PATH"
    if not native():
        missing = [p for p, exe in zip(HOST_PACKAGES, ("qemu-aarch64-static", "mmdebstrap"))
                   if shutil.which(exe) is None and not (built and p == "mmdebstrap")]
        if missing and install and shutil.which("apt-get"):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            r = subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
                subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env, capture_output=True)
            missing = [p for p, exe in zip(HOST_PACKAGES, ("qemu-aarch64-static", "mmdebstrap"))
                       if shutil.which(exe) is None and not (built and p == "mmdebstrap")]
        if missing:
            return f"{' and '.join(missing)} not installed: apt-get install {' '.join(missing)}"
        _prepare_binfmt()
        if not _binfmt_ready():
            return ("qemu-aarch64 is not registered with binfmt_misc: mount -t binfmt_misc binfmt_misc "
                    "/proc/sys/fs/binfmt_misc, then register /usr/lib/binfmt.d/qemu-aarch64.conf")
        flags = next((ln.split(":", 1)[1].strip() for ln in (BINFMT / "qemu-aarch64").read_text().splitlines()
                      if ln.startswith("flags:")), "")
        if "F" not in flags:  # the emulator must be opened when registered, or a chroot cannot find it
            return ("qemu-aarch64 is registered with binfmt_misc without the F flag (qemu-user-binfmt's): a chroot "
                    "cannot run arm64 programs; register qemu-user-static's /usr/lib/binfmt.d/qemu-aarch64.conf")
    elif shutil.which("mmdebstrap") is None and not built:
        return "mmdebstrap not installed: apt-get install mmdebstrap"
    return None


def is_built(settings: Settings | None = None) -> bool:
    """The board's userland and runtimes are in the cache (the runtimes at this machine's versions)."""
    root = board_home(settings) / "rootfs"
    try:
        return json.loads((root / STAMP).read_text()).get("requirements") == _wanted()
    except (OSError, ValueError):
        return False


def _wanted() -> list[str]:
    from edgekd.device.wheels import pinned

    return pinned()


def _log(say, text: str) -> None:
    if say:
        say(text)


def build_board(settings: Settings | None = None, *, install: bool = False, say=None) -> Path:
    """Build (or find cached) the board's userland (mmdebstrap) and its runtimes' venv; its root. Each part is
    written beside its final place and moved there when complete. BoardUnavailable says what is missing."""
    home = board_home(settings)
    reason = why_not(settings, install=install, built=(home / "rootfs" / MARKER).is_file())
    if reason:
        raise BoardUnavailable(f"cannot build the arm64 board: {reason}")
    root = home / "rootfs"
    timings = {}
    if not (root / MARKER).is_file():
        from edgekd.io import atomic_dir

        _log(say, f"building an arm64 Debian {SUITE} userland in {root} (mmdebstrap, about 5 minutes)")
        t0 = time.time()
        with atomic_dir(root) as tmp:
            r = subprocess.run(["mmdebstrap", "--arch=arm64", "--variant=apt", f"--include={','.join(PACKAGES)}",
                                SUITE, str(tmp)], capture_output=True, text=True)
            if r.returncode != 0:
                tail = (r.stderr.strip().splitlines() or ["mmdebstrap failed"])[-1][:200]
                raise BoardUnavailable(f"cannot build the arm64 board: mmdebstrap failed ({tail}): check the "
                                       f"network to Debian's mirror")
            _mark(tmp, {"userland_s": time.time() - t0})
        timings["userland_s"] = time.time() - t0
    if not is_built(settings):
        t0 = time.time()
        _install_runtimes(home, root, say)
        timings["runtimes_s"] = time.time() - t0
    if timings:
        _mark(root, timings)
    return root


def _mark(root: Path, timings: dict) -> None:
    """The board's own description (board_facts.py reads `emulated` from it) and its build times."""
    from edgekd.io import write_json

    try:
        old = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        old = {}
    write_json(root / MARKER, {
        "board": f"edgekd's arm64 board: Debian {SUITE} arm64 in a chroot", "venv": VENV,
        "emulated": None if native() else f"qemu-user aarch64 on {platform.machine()}: times mean nothing, tokens "
                                          f"are real",
        "build_s": {**old.get("build_s", {}), **timings}})


def _install_runtimes(home: Path, root: Path, say) -> None:
    """The runtimes (this machine's versions, as aarch64 wheels downloaded here) into VENV on the board, the way
    any ssh device gets them: `edgekd device setup` over the board's own sshd."""
    from edgekd.device.setup import setup_device

    _log(say, f"installing the runtimes into {VENV} on the board over ssh (emulated pip: a few minutes)")
    (root / STAMP).unlink(missing_ok=True)  # written last by setup_device: the venv is complete only with it
    with _serve(home, root) as board:
        setup_device(board.url, venv=VENV, wheels=home / "wheels", say=say, identity_file=board.identity_file,
                     known_hosts=board.known_hosts)


class proc_mounted:
    """/proc mounted in the board while the block runs (never /sys: onnxruntime's cpuinfo crashes under qemu
    reading the host's CPU topology there; _cpu_lists gives the runtimes the little they need of it); left alone if
    it already was."""

    def __init__(self, root: Path):
        self.path, self.mounted = root / "proc", False

    def __enter__(self):
        if not os.path.ismount(self.path):
            r = subprocess.run(["mount", "-t", "proc", "proc", str(self.path)], capture_output=True, text=True)
            if r.returncode != 0:
                raise BoardUnavailable(f"cannot mount /proc in the arm64 board: {r.stderr.strip()[:200]}")
            self.mounted = True
        return self

    def __exit__(self, *exc):
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def _cpu_lists(root: Path) -> None:
    """The board's /sys/devices/system/cpu/{possible,present,online} as plain files naming the CPUs it may use (the
    host's /sys is never mounted there): LiteRT-LM's tcmalloc aborts without them, and with the host's whole CPU
    topology onnxruntime's cpuinfo crashes under qemu."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    listed = ",".join(str(c) for c in cpus)
    d = root / "sys" / "devices" / "system" / "cpu"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("possible", "present", "online"):
        (d / name).write_text(listed + "\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Board:
    """A served board: its ssh:// device and the options edgekd's ssh runner needs to reach it."""

    root: Path
    port: int
    identity_file: str
    known_hosts: str
    remote_python: str = f"{VENV}/bin/python"
    emulated: bool = True
    cpu: str | None = None     # the arm64 core qemu emulates (None: native)
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _proc_mount: proc_mounted | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"

    def options(self) -> dict:
        """The ssh runner's options (runner_for, profile_generation, JobConfig.profile) for this board."""
        return {"identity_file": self.identity_file, "known_hosts": self.known_hosts,
                "remote_python": self.remote_python}

    def command_line(self) -> str:
        """The same as edgekd's command-line options."""
        return (f"--device {self.url} --identity-file {self.identity_file} --known-hosts {self.known_hosts} "
                f"--remote-python {self.remote_python}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None
        if self._proc_mount is not None:
            self._proc_mount.__exit__(None, None, None)
            self._proc_mount = None

    def __enter__(self) -> "Board":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _keys(home: Path, root: Path) -> tuple[Path, Path]:
    """The board's host key (in its /etc/ssh) and the user's key (in the cache), made once."""
    keys = home / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "user_key"):
        if not (keys / name).is_file():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"edgekd-board-{name}", "-f",
                            str(keys / name)], check=True, capture_output=True)
    etc = root / "etc" / "ssh"
    shutil.copy(keys / "host_key", etc / "edgekd_host_key")
    os.chmod(etc / "edgekd_host_key", 0o600)
    (etc / "edgekd_authorized_keys").write_text((keys / "user_key.pub").read_text())
    return keys / "host_key", keys / "user_key"


# The arm64 core qemu emulates unless told otherwise: every feature it implements (dotprod, i8mm, SVE2, ...).
DEFAULT_CPU = "max"


def qemu_cpus() -> list[str]:
    """The arm64 cores this machine's qemu-aarch64 can emulate (`-cpu help`)."""
    exe = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if exe is None:
        return [DEFAULT_CPU]
    out = subprocess.run([exe, "-cpu", "help"], capture_output=True, text=True, timeout=30).stdout
    return [ln.split()[0] for ln in out.splitlines()[1:] if ln.strip()]


def check_cpu(cpu: str) -> str:
    """CPU if qemu emulates that core, else one line naming the ones it does (and the targets' cores)."""
    if native():
        raise EdgekdError(f"--cpu {cpu}: this host runs arm64 natively, nothing is emulated: leave --cpu out")
    known = qemu_cpus()
    if cpu not in known:
        raise EdgekdError(f"--cpu {cpu}: qemu emulates {', '.join(known)}: pick the target's core (raspberry-pi-5: "
                          f"cortex-a76, raspberry-pi-4: cortex-a72; {DEFAULT_CPU}: every feature qemu has)")
    return cpu


def start_board(settings: Settings | None = None, *, port: int | None = None, timeout: float = 120.0,
                cpu: str | None = None) -> Board:
    """Serve the built board over ssh on 127.0.0.1:`port` (a free one by default): its own sshd in the chroot,
    root by key only, every program there run by qemu as the arm64 core `cpu` (DEFAULT_CPU by default: the
    runtimes choose their kernels by the core's features, so a target's own core takes the target's paths).
    BoardUnavailable if it is not built (build_board) or cannot run here."""
    if cpu is not None:
        check_cpu(cpu)
    home = board_home(settings)
    if not is_built(settings):
        raise BoardUnavailable(f"the arm64 board is not built in {home}: run `edgekd device board` (builds it, about "
                               f"10 minutes, once) or build_board()")
    reason = why_not(settings, built=True)
    if reason:
        raise BoardUnavailable(f"cannot serve the arm64 board: {reason}")
    return _serve(home, home / "rootfs", port, timeout, None if native() else (cpu or DEFAULT_CPU))


def sshd_config(host_key: str, pid_file: str, authorized_keys: str) -> str:
    """An sshd_config serving 127.0.0.1 to one authorised key only (no passwords, no PAM): the board's, and the
    tests' sshd on this machine."""
    return (f"ListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {pid_file}\nAuthorizedKeysFile {authorized_keys}\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nLogLevel ERROR\n")


def _serve(home: Path, root: Path, port: int | None = None, timeout: float = 120.0, cpu: str | None = None) -> Board:
    host_key, user_key = _keys(home, root)
    _cpu_lists(root)
    port = port or _free_port()
    (root / "run" / "sshd").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "ssh" / "edgekd_sshd_config").write_text(
        sshd_config("/etc/ssh/edgekd_host_key", "none", "/etc/ssh/edgekd_authorized_keys") + "UseDNS no\n"
        + (f"SetEnv QEMU_CPU={cpu}\n" if cpu else ""))  # qemu reads it at every program's start, sshd's sessions too
    known = home / "keys" / f"known_hosts_{port}"
    pub = (host_key.with_suffix(".pub")).read_text().split()
    known.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    mount = proc_mounted(root).__enter__()
    log = open(home / "sshd.log", "w")
    from edgekd.profile.common import die_with_parent

    proc = subprocess.Popen(["chroot", str(root), "/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/edgekd_sshd_config",
                             "-p", str(port)], stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                            env=os.environ | ({"QEMU_CPU": cpu} if cpu else {}),
                            preexec_fn=die_with_parent())  # never outlives edgekd, however edgekd ends
    board = Board(root=root, port=port, identity_file=str(user_key), known_hosts=str(known), emulated=not native(),
                  cpu=cpu, _proc=proc, _proc_mount=mount)
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            board.stop()
            raise BoardUnavailable(f"the arm64 board's sshd exited: {(home / 'sshd.log').read_text().strip()[-200:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                board.stop()
                raise BoardUnavailable(f"the arm64 board's sshd did not listen on 127.0.0.1:{port} in {timeout:.0f}s")
            time.sleep(0.3)
    return board


__all__ = ["DEFAULT_CPU", "Board", "BoardUnavailable", "board_home", "build_board", "check_cpu", "is_built",
           "qemu_cpus", "sshd_config", "start_board", "why_not"]
