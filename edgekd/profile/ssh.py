"""Profiles on a Linux board over OpenSSH: copy the model and the timer scripts to a temp dir there, run, always
clean up."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.profile.common import (FACTS_FILES, GENBENCH_FILES, TIMER_FILES, Runner, genbench_args, last_line, parse_runner_json,
                                   run_child, timer_args)
from edgekd.settings import Settings


class SshRunner(Runner):
    """`ssh://USER@HOST[:PORT]`: a Linux board over OpenSSH, running the board timer with its python3."""

    scheme = "ssh"
    usage = "ssh://USER@HOST[:PORT]"

    def __init__(self, device: str, settings: Settings | None = None, *, identity_file: str | None = None,
                 known_hosts: str | None = None, insecure_host_key: bool = False, connect_timeout: int = 10,
                 remote_python: str = "python3", **options):
        super().__init__(device)
        self.target = parse_ssh_url(device, settings, identity_file=identity_file, known_hosts=known_hosts,
                                    insecure_host_key=insecure_host_key, connect_timeout=connect_timeout)
        self.remote_python = remote_python

    def describe(self) -> str:
        return self.target.label

    def check(self) -> None:
        probe_ssh(self.target)

    def profile(self, model: Path, runs: int, warmup: int, threads: int | None, seq_len: int, vocab: int | None,
                timeout: float = 1800.0, parity: Path | None = None) -> dict:
        return run_remote(self.target, model, list(TIMER_FILES),
                          timer_args(runs, warmup, threads, seq_len, vocab, parity.name if parity else None),
                          self.remote_python, timeout, data=[parity] if parity else [])

    def profile_generation(self, path: Path, fmt: str, prompt_len: int, decode_len: int, runs: int, warmup: int,
                           threads: int | None, timeout: float = 1800.0, parity: dict | None = None) -> dict:
        return run_remote(self.target, path, list(GENBENCH_FILES),
                          genbench_args(prompt_len, decode_len, runs, warmup, threads, parity), self.remote_python,
                          timeout)

    def facts(self, timeout: float = 300.0) -> dict:
        return run_remote(self.target, None, list(FACTS_FILES), [], self.remote_python, timeout) | \
            {"device": self.device}

    def shell(self, command: str, timeout: float = 600.0) -> subprocess.CompletedProcess:
        """One shell command on the device (text output); ssh's own failures are one EdgekdError line."""
        return _run(self.target.ssh_cmd(command), self.target, timeout)

    def upload(self, files: list[Path], remote_dir: str, timeout: float = 1800.0) -> None:
        """Files and folders into REMOTE_DIR (which exists) on the device, as one tar stream."""
        _upload(self.target, files, remote_dir, timeout)


_URL = re.compile(r"^ssh://(?:(?P<user>[^@/:]+)@)?(?P<host>\[[^\]]+\]|[^:/@]+)(?::(?P<port>\d+))?/?$")


@dataclass
class SshTarget:
    host: str
    user: str | None = None
    port: int = 22
    identity_file: str | None = None
    known_hosts: str | None = None
    insecure_host_key: bool = False
    connect_timeout: int = 10
    extra_options: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        who = f"{self.user}@" if self.user else ""
        return f"ssh://{who}{self.host}" + (f":{self.port}" if self.port != 22 else "")

    def options(self) -> list[str]:
        """Key auth only, no prompts, bounded connect, and the host key checked unless opted out."""
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR"]
        if self.insecure_host_key:
            opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        else:
            opts += ["-o", "StrictHostKeyChecking=yes"]
            if self.known_hosts:
                opts += ["-o", f"UserKnownHostsFile={ssh_path(self.known_hosts)}"]
        if self.identity_file:
            opts += ["-o", f"IdentityFile={ssh_path(self.identity_file)}", "-o", "IdentitiesOnly=yes"]
        return opts + self.extra_options

    @property
    def dest(self) -> str:
        host = self.host.strip("[]")
        return f"{self.user}@{host}" if self.user else host

    def ssh_cmd(self, remote: str) -> list[str]:
        """`--` ends ssh's options: nothing in the destination can be read as one."""
        return ["ssh", *self.options(), "-p", str(self.port), "--", self.dest, remote]

    def upload_cmd(self, remote_path: str) -> list[str]:
        """Stream a file through `cat`: works where sshd has no sftp subsystem (scp's default now)."""
        return self.ssh_cmd(f"cat > {shlex.quote(remote_path)}")


def ssh_path(path: str) -> str:
    """A file path as one ssh config value: quoted (ssh splits UserKnownHostsFile on spaces), with its
    quotes, backslashes and '%' (ssh's tokens) escaped."""
    if "${" in path:
        raise EdgekdError(f"ssh would expand '${{...}}' in {path}: copy the file to a path without it")
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def parse_ssh_url(device: str, settings: Settings | None = None, **kw) -> SshTarget:
    """An ssh:// device and its options; explicit options win over the EDGEKD_SSH_* settings
    (`settings`: the CLI's, else read from the environment now)."""
    settings = settings or Settings.from_env()
    m = _URL.match(device)
    if not m:
        raise EdgekdError(f"bad device {device!r}: write ssh://USER@HOST[:PORT]")
    user, host = m.group("user"), m.group("host")
    if host.strip("[]").startswith("-") or (user or "").startswith("-"):
        raise EdgekdError(f"bad device {device!r}: a user or host name cannot start with '-'")
    port = int(m.group("port") or 22)
    if not 1 <= port <= 65535:
        raise EdgekdError(f"bad device {device!r}: the port must be within 1-65535, got {port}")
    if kw.get("known_hosts") and kw.get("insecure_host_key"):
        raise EdgekdError("--known-hosts and --insecure-host-key contradict each other: give one")
    env_insecure = settings.ssh_insecure_host_key
    kh_from = "--known-hosts" if kw.get("known_hosts") else "EDGEKD_SSH_KNOWN_HOSTS"
    key_from = "--identity-file" if kw.get("identity_file") else "EDGEKD_SSH_KEY"
    if kw.get("known_hosts") is None:
        kw["known_hosts"] = settings.ssh_known_hosts
        kw["insecure_host_key"] = bool(kw.get("insecure_host_key")) or (env_insecure and kw["known_hosts"] is None)
    elif env_insecure:
        from edgekd.console import note

        note("edgekd: note: --known-hosts given, so EDGEKD_SSH_INSECURE_HOST_KEY is ignored: the host key is checked")
    if kw.get("identity_file") is None:
        kw["identity_file"] = settings.ssh_key
    from edgekd.checks import input_file

    input_file(kw["known_hosts"], kh_from)
    input_file(kw["identity_file"], key_from)
    return SshTarget(host=host, user=user, port=port, **{k: v for k, v in kw.items() if v is not None})


_probed: set = set()


def probe_ssh(target: SshTarget, timeout: float | None = None) -> None:
    """One trivial command on the device (key auth only, short connect timeout): unreachable, refused or
    unknown is one line now, not after minutes of work. A success is remembered for this process."""
    key = tuple(target.ssh_cmd("true"))
    if key in _probed:
        return
    if shutil.which("ssh") is None:
        raise EdgekdError("ssh not found on PATH: install the OpenSSH client (apt-get install openssh-client)")
    probe = SshTarget(**{**target.__dict__, "connect_timeout": min(target.connect_timeout, 5)})
    proc = _run(probe.ssh_cmd("true"), target, timeout or probe.connect_timeout + 10)
    if proc.returncode != 0:
        raise EdgekdError(f"{target.label}: the device answered but `true` failed (exit {proc.returncode}): "
                          f"{last_line(proc.stderr)[:200]}")
    _probed.add(key)


def _ssh_failure(target: SshTarget, stderr: str) -> EdgekdError:
    """Map OpenSSH's stderr to what the user should do about it."""
    s = stderr.lower()
    where = target.label
    if "host key verification failed" in s or "remote host identification has changed" in s:
        return EdgekdError(f"{where}: host key not in known_hosts or changed: add it (ssh-keyscan -p {target.port} "
                           f"{target.host} >> ~/.ssh/known_hosts) or pass --insecure-host-key")
    if "permission denied" in s:
        return EdgekdError(f"{where}: key refused (Permission denied): install your public key in the device's "
                           f"authorized_keys or pass the right key with --identity-file (or EDGEKD_SSH_KEY)")
    if "connection refused" in s:
        return EdgekdError(f"{where}: connection refused: is sshd running and is the port right?")
    if "timed out" in s or "no route to host" in s or "network is unreachable" in s:
        return EdgekdError(f"{where}: device unreachable ({stderr.strip().splitlines()[-1]}): check the address "
                           f"and network")
    if "could not resolve hostname" in s or "name or service not known" in s:
        return EdgekdError(f"{where}: unknown host name {target.host}: check the address")
    return EdgekdError(f"{where}: ssh failed: {last_line(stderr, 'ssh failed')}")


def _run(cmd: list[str], target: SshTarget, timeout: float, upload: Path | None = None) -> subprocess.CompletedProcess:
    try:
        if upload is None:
            proc = run_child(cmd, timeout, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        else:
            with open(upload, "rb") as f:
                proc = run_child(cmd, timeout, capture_output=True, stdin=f)
            proc.stdout, proc.stderr = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        raise EdgekdError(f"{target.label}: no answer within {timeout:.0f}s: check the device and network") from e
    if proc.returncode == 255:
        raise _ssh_failure(target, proc.stderr)
    return proc


def _upload(target: SshTarget, files: list[Path], remote_dir: str, timeout: float) -> None:
    """Files and folders (an onnxruntime-genai model) as one tar stream unpacked there: one connection."""
    import tarfile
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".tar") as tmp:
        with tarfile.open(tmp.name, "w") as tar:
            for local in files:
                tar.add(local, arcname=local.name)
        copied = _run(target.ssh_cmd(f"tar -xf - -C {shlex.quote(remote_dir)}"), target, timeout, upload=Path(tmp.name))
    if copied.returncode != 0:
        raise EdgekdError(f"{target.label}: copying {', '.join(f.name for f in files)} failed: "
                          f"{copied.stderr.strip()[-300:]}")


def run_remote(target: SshTarget, model: Path | None, scripts: list[Path], args: list[str],
               remote_python: str = "python3", timeout: float = 1800.0, data: list[Path] = ()) -> dict:
    """Copy the model (if any), the scripts and `data` files to a temp dir on the board, run the last script (on the
    model) with `args`, parse its JSON, and always remove the temp dir."""
    if shutil.which("ssh") is None:
        raise EdgekdError("ssh not found on PATH: install the OpenSSH client (apt-get install openssh-client)")
    step = target.connect_timeout + 20
    made = _run(target.ssh_cmd("mktemp -d /tmp/edgekd.XXXXXX"), target, step)
    remote_dir = made.stdout.strip().splitlines()[-1] if made.returncode == 0 and made.stdout.strip() else ""
    if not remote_dir.startswith("/tmp/edgekd."):
        raise EdgekdError(f"{target.label}: cannot make a temporary directory on the device: "
                          f"{(made.stderr.strip() or 'mktemp failed')}")
    what = Path(model.name if model is not None else scripts[-1].name)
    try:
        _upload(target, [*scripts, *([model] if model is not None else []), *data], remote_dir, timeout)
        argv = [remote_python, f"{remote_dir}/{scripts[-1].name}",
                *([f"{remote_dir}/{model.name}"] if model is not None else []), *args]
        ran = _run(target.ssh_cmd(" ".join(shlex.quote(a) for a in argv)), target, timeout)
        if ran.returncode == 127:
            raise EdgekdError(f"{target.label}: device has no {remote_python}: install Python 3 there or pass "
                              f"--remote-python PATH")
        if ran.returncode not in (0, 3, 4):
            raise EdgekdError(f"{target.label}: runner failed (exit {ran.returncode}): {last_line(ran.stderr)}")
        stats = parse_runner_json(ran.stdout, target.label, what)
    finally:
        try:
            _run(target.ssh_cmd(f"rm -rf {shlex.quote(remote_dir)}"), target, step)
        except EdgekdError:
            pass
    return stats
