"""Small real model files for the runners: an ONNX graph built with onnx.helper and a converted .tflite."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest
import torch

VOCAB, HIDDEN, SEQ = 64, 32, 8


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """Gather -> MatMul -> Relu -> MatMul over int64 token ids with a dynamic sequence axis."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32), "emb")
    w1 = numpy_helper.from_array(rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((HIDDEN, VOCAB)).astype(np.float32), "w2")
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["h0"]),
             helper.make_node("MatMul", ["h0", "w1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]),
             helper.make_node("MatMul", ["h2", "w2"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "seq", VOCAB])],
                              initializer=[emb, w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("profile") / "tiny.onnx"
    onnx.save(model, str(path))
    path.with_name(path.name + ".json").write_text(json.dumps({"seq_len": SEQ, "vocab_size": VOCAB}))
    return path


def with_check_set(onnx_path, copy_to, rows: int = 3, write: bool = True):
    """A copy of tiny_onnx (and its record) at `copy_to`, token rows, and their logits computed from its weights
    with numpy (Gather, MatMul, Relu, MatMul: a reference independent of any runtime); with `write`, its device
    check set (export.parity.write_device_check, the float bar) beside it. (path, rows, reference)."""
    import shutil

    import onnx
    from onnx import numpy_helper

    from edgekd.export.parity import write_device_check

    shutil.copy(onnx_path, copy_to)
    shutil.copy(onnx_path.with_name(onnx_path.name + ".json"), copy_to.with_name(copy_to.name + ".json"))
    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_path)).graph.initializer}
    ids = torch.randint(0, VOCAB, (rows, SEQ), generator=torch.Generator().manual_seed(0))
    ref = [(np.maximum(w["emb"][ids[i:i + 1].numpy()] @ w["w1"], 0) @ w["w2"]).astype(np.float32) for i in range(rows)]
    if write:
        write_device_check(copy_to, {"input_ids": ids}, ref, False, None, labels=False)
    return copy_to, ids, ref


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, HIDDEN)
        self.out = torch.nn.Linear(HIDDEN, VOCAB)

    def forward(self, input_ids):
        return self.out(torch.relu(self.emb(input_ids)))


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory):
    from edgekd.export.tflite_export import export_tflite

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("profile") / "tiny.tflite"
    export_tflite(_Tiny().eval(), {"input_ids": torch.zeros(1, SEQ, dtype=torch.long)}, path)
    return path


@pytest.fixture()
def corrupt_onnx(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x08\x07this is not a protobuf model" * 10)
    return path


# --- a real OpenSSH server on 127.0.0.1 with throwaway keys (the ssh runners' tests) ---

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_sshd() -> None:
    if os.path.exists(SSHD):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("sshd missing and not root with apt-get: apt-get install openssh-server to run this test")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    r = subprocess.run(["apt-get", "install", "-y", "-q", "openssh-server"], env=env, capture_output=True, timeout=600)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", "openssh-server"], env=env, capture_output=True,
                       timeout=600)
    if not os.path.exists(SSHD):
        pytest.skip("could not install openssh-server")


def _keygen(path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    _ensure_sshd()
    d = tmp_path_factory.mktemp("sshd")
    _keygen(d / "host_key")
    _keygen(d / "user_key")
    _keygen(d / "other_key")
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    port = free_port()
    from edgekd.device.board import sshd_config

    (d / "sshd_config").write_text(sshd_config(f"{d}/host_key", f"{d}/sshd.pid", f"{d}/authorized_keys"))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config"), "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "w"))
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {(d / 'sshd.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    (d / "empty_known_hosts").write_text("")
    info = {"dir": d, "port": port, "url": f"ssh://{getpass.getuser()}@127.0.0.1:{port}",
            "key": str(d / "user_key"), "known_hosts": str(d / "known_hosts")}
    yield info
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


# --- the emulated arm64 board (edgekd.device.board), served over ssh on 127.0.0.1 ---

# "cached" (the default): use the board only if it is already built (CI's .ci/run builds it before the tests);
# "build": build it first when it can be (4-6 minutes on 2 cores, root and the network); "off": skip its tests.
BOARD_ENV = "EDGEKD_TEST_BOARD"


@pytest.fixture(scope="session")
def arm64_board():
    """The arm64 board, built here when it is not cached (about 4 minutes on 2 cores: the Debian userland, then the
    runtimes over its own ssh) with EDGEKD_TEST_BOARD=build; its tests skip with one line when it is not built or
    cannot be."""
    from edgekd.device.board import BoardUnavailable, board_home, build_board, is_built, start_board

    mode = os.environ.get(BOARD_ENV, "cached")
    if mode == "off":
        pytest.skip(f"{BOARD_ENV}=off: the arm64 board's tests are off")
    if not is_built():
        if mode == "cached":
            pytest.skip(f"the arm64 board is not built in {board_home()}: build it once with `edgekd device board "
                        f"--build-only` (root, about 4 minutes) or run the tests with {BOARD_ENV}=build")
        started = time.time()
        try:
            build_board(install=True)
        except BoardUnavailable as e:
            pytest.skip(str(e))
        print(f"\nbuilt the arm64 board in {time.time() - started:.0f} s")
    try:
        board = start_board()
    except BoardUnavailable as e:
        pytest.skip(str(e))
    yield board
    board.stop()
