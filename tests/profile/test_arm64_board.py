"""Exports checked where they run: a tiny causal LM's litert-lm and onnx-genai files (float and int4), built and
checked here, deployed over ssh to the emulated arm64 board (edgekd.device.board: Debian arm64 under qemu-user,
the runtimes' aarch64 wheels), run there, and their greedy tokens compared with PyTorch's (transformers' own
generate, computed here independently of edgekd's reference).

The board's times mean nothing and nothing here reads them; its tokens are real arm64 ones.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow

PROMPTS = [[5, 17, 42, 99, 7, 150, 3, 88, 21, 64, 300, 12], list(range(30, 46)), list(range(200, 212)),
           [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
NEW = 16
VARIANTS = (("onnx-genai", "none", "t-genai"), ("onnx-genai", "int4", "t-genai.int4"),
            ("litert-lm", "none", "t.litertlm"), ("litert-lm", "int4", "t.int4.litertlm"))


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory):
    """A tiny Llama (vocabulary 384, 2 layers, 64 wide, trained briefly) exported four ways, each checked here."""
    from edgekd.distill.teacher import make_tiny_teacher
    from edgekd.export import export_generative

    d = tmp_path_factory.mktemp("arm64")
    model = make_tiny_teacher(d / "model", vocab_size=384, hidden_size=64, layers=2, heads=4, intermediate_size=128,
                              train_steps=40)
    return model, {(fmt, quant): export_generative(model, fmt, quant, out=d / name, prompts=PROMPTS, new_tokens=NEW,
                                                   show_progress=False) for fmt, quant, name in VARIANTS}


def _pytorch_tokens(model_dir) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for p in PROMPTS:
            ids = torch.tensor([p])
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW,
                                 eos_token_id=None, pad_token_id=0)
            out.append(seq[0, len(p):].tolist())
    return out


def test_the_board_is_an_emulated_arm64_device_with_this_machines_runtimes(arm64_board):
    from edgekd.device.setup import device_facts
    from edgekd.device.wheels import pinned

    facts = device_facts(arm64_board.url, **arm64_board.options())
    assert facts["machine"] == "aarch64" and facts["emulated"] and facts["system"] == "Linux"
    assert facts["python_path"] == arm64_board.remote_python and facts["threads"] >= 1
    assert {f"{d}=={v}" for d, v in facts["runtimes"].items() if v} >= {p for p in pinned() if "==" in p}


def test_exports_generate_on_arm64_and_are_judged_there(arm64_board, tiny_exports, record_property):
    """Each file's greedy tokens on the board, against transformers' directly: the parity record counts them right,
    float continues every prompt exactly, and a failed check is the one line the job fails with."""
    from edgekd.profile import profile_generation

    model, exports = tiny_exports
    truth = _pytorch_tokens(model)
    found = {}
    for (fmt, quant), rec in exports.items():
        stats = profile_generation(rec["path"], arm64_board.url, prompt_len=8, decode_len=8, runs=1, warmup=0,
                                   threads=1, **arm64_board.options())
        p = stats["parity"]
        assert (stats["machine"], stats["emulated"], p["machine"], p["emulated"]) == ("aarch64", True, "aarch64", True)
        assert len(p["tokens"]) == len(PROMPTS) and all(len(t) == NEW for t in p["tokens"])
        matched = [t == r for t, r in zip(p["tokens"], truth)]
        assert p["prompts_matched"] == sum(matched) and p["tokens_match_share"] == sum(matched) / len(PROMPTS)
        assert [f is None for f in p["first_divergence"]] == matched
        assert p["here"]["same_tokens_as_device"] == sum(a == b for a, b in zip(rec["generated"], p["tokens"]))
        assert p["here"]["machine"] == rec["run"]["machine"] and p["run"]["version"].split()[-1]
        if quant == "none":  # the bar a float file is held to, here and there: every token
            assert p["passed"] and all(matched), (fmt, p["first_divergence"])
        assert p["passed"] == ("error" not in p)
        found[f"{fmt}-{quant}"] = {"arm64_vs_pytorch": p["prompts_matched"], "x86_vs_pytorch": rec["prompts_matched"],
                                   "arm64_vs_x86": p["here"]["same_tokens_as_device"], "prompts": len(PROMPTS),
                                   "passed_on_arm64": p["passed"], "parity_s": round(p["run"]["seconds"], 1)}
    record_property("arm64_parity", json.dumps(found))
    print("\narm64 board parity:", json.dumps(found))


def test_cli_profile_on_the_board_reports_machine_emulation_and_parity(arm64_board, tiny_exports):
    _, exports = tiny_exports
    rec = exports[("onnx-genai", "int4")]
    b = arm64_board
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "profile", rec["path"], "--generative", "--device", b.url,
                           "--identity-file", b.identity_file, "--known-hosts", b.known_hosts, "--remote-python",
                           b.remote_python, "--runs", "1", "--warmup", "0", "--prompt-len", "8", "--decode-len", "8",
                           "--threads", "1", "--json"], capture_output=True, text=True, timeout=900)
    stats = json.loads(proc.stdout)
    assert stats["machine"] == "aarch64" and stats["emulated"] is True and stats["parity"]["machine"] == "aarch64"
    assert proc.returncode == (0 if stats["parity"]["passed"] else 1), proc.stderr
    if proc.returncode:
        assert proc.stderr.count("\n") == 1 and "failed generation parity on" in proc.stderr


def test_device_setup_installs_into_a_venv_there(arm64_board):
    from edgekd.device.setup import setup_device
    from edgekd.device.wheels import pinned

    numpy = next(p for p in pinned() if p.startswith("numpy"))
    b = arm64_board
    facts = setup_device(b.url, venv="/tmp/edgekd-test-venv", requirements=[numpy], identity_file=b.identity_file,
                         known_hosts=b.known_hosts)
    assert facts["remote_python"] == "/tmp/edgekd-test-venv/bin/python" == facts["python_path"]
    assert facts["runtimes"]["numpy"] == numpy.split("==")[1] and facts["runtimes"]["onnxruntime-genai"] is None
    from edgekd.profile import runner_for

    runner_for(b.url, identity_file=b.identity_file, known_hosts=b.known_hosts).shell("rm -rf /tmp/edgekd-test-venv")


def test_the_job_on_the_board(arm64_board, tiny_exports, tmp_path, monkeypatch, capsys):
    """`edgekd distill --target raspberry-pi-5 --device ssh://...` against the board: its device rows are marked
    emulated and never judged against the budget or calibrated on, and its files' parity was checked on arm64. The
    target file is the packaged one with budget lengths the tiny model holds; its threads are the Pi's 4, more than
    the board has (this machine's CPUs): an emulated board runs on its own CPUs and the report says so."""
    import os
    import re
    from pathlib import Path

    from edgekd.cli import main
    from tests.distill.helpers import write_text_dir

    model, _ = tiny_exports
    targets = tmp_path / "targets"
    targets.mkdir()
    pi = (Path(__file__).resolve().parents[2] / "targets" / "raspberry-pi-5.toml").read_text()
    pi = re.sub(r"prompt_len = \d+", "prompt_len = 16", re.sub(r"decode_len = \d+", "decode_len = 16", pi))
    (targets / "raspberry-pi-5.toml").write_text(pi)  # lengths within the tiny model's 128 positions
    for k, v in {"EDGEKD_TARGETS_DIR": targets, "EDGEKD_CACHE": tmp_path / "cache"}.items():
        monkeypatch.setenv(k, str(v))
    b, out = arm64_board, tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["edgekd", "distill", "--target", "raspberry-pi-5", "--teacher", str(model),
                                      "--data", str(write_text_dir(tmp_path / "data")), "--out", str(out),
                                      "--device", b.url, "--identity-file", b.identity_file, "--known-hosts",
                                      b.known_hosts, "--remote-python", b.remote_python, "--steps", "4", "--seq-len",
                                      "32", "--batch-size", "4", "--baselines", "none", "--quiet"])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    rep = json.loads((out / "report.json").read_text())
    gen = rep["generation"]
    on_board = [m for m in gen["measured"] if m["device"] == b.url]
    assert on_board and all(m["emulated"] and m["machine"] == "aarch64" and m["on_target"] is False for m in on_board)
    assert gen["measured_on_target"] is None and gen["meets_budget_measured"] is None  # emulated times judge nothing
    assert rep["search"]["attempts"][-1]["misses"] == [] and len(rep["search"]["attempts"]) == 1
    for m in on_board:
        p = m["parity"]
        assert p["checked"] and p["machine"] == "aarch64" and p["prompts"] == 8
        assert (p["passed"] or m["precision"] != "float32"), p
        assert json.loads((out / m["profile"]).read_text())["parity"]["tokens"]
    failed = [m for m in on_board if not m["parity"]["passed"]]
    assert code == (1 if failed else 0) and rep["status"] == ("failed" if failed else "complete")
    if failed:
        assert "failed generation parity on " + b.url in rep["error"]
    md = (out / "report.md").read_text()
    assert "EMULATED" in md and "Generation parity on the device" in md
    have = len(os.sched_getaffinity(0))  # the board has this machine's CPUs
    if have < 4:
        note = rep["latency"]["device_note"]
        assert f"emulated with {have} CPU" in note and "raspberry-pi-5's 4" in note and note in md
        assert all(m["threads"] == have for m in on_board)


def test_a_graph_file_timed_on_the_board_says_where_it_ran(arm64_board, tiny_onnx, tmp_path):
    """A graph file's parity rows run on arm64 against logits computed here with numpy, by the float bar."""
    from edgekd.profile import profile_model

    from tests.profile.conftest import with_check_set

    model, _, _ = with_check_set(tiny_onnx, tmp_path / "m.onnx")
    stats = profile_model(model, device=arm64_board.url, runs=2, warmup=0, threads=1, **arm64_board.options())
    assert (stats["machine"], stats["emulated"]) == ("aarch64", True) and stats["format"] == "onnx"
    p = stats["parity"]
    assert p["checked"] and p["passed"] and p["machine"] == "aarch64" and p["emulated"] and p["rows"] == 3


def test_onnx_genai_quantised_matmuls_compute_on_arm64_what_the_student_computes(arm64_board, tmp_path):
    """MatMulNBits (int4, block 32) at the accuracy level the onnx-genai export builds, run on the board: the
    quantisation-aware Linear's output to float rounding, as on x86; at the builder's default level 4 the aarch64
    kernels quantise the activations their own way (the int4 file then continued 4 of 8 prompts on arm64)."""
    import numpy as np

    from edgekd.export.generative_export import og_accuracy_level
    from edgekd.profile import runner_for
    from edgekd.quant import RECIPES, quant_aware
    from tests.quant.matmulnbits import matmulnbits_model

    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 64, bias=False)
    x = torch.randn(4, 256) * torch.linspace(0.1, 3.0, 256)
    level = og_accuracy_level("int4")
    for acc in (level, 4):
        (tmp_path / f"mm{acc}.onnx").write_bytes(matmulnbits_model(lin, 4, 4, acc).SerializeToString())
    np.save(tmp_path / "x.npy", x.numpy())
    (tmp_path / "run.py").write_text(
        "import json, sys, numpy as np, onnxruntime as ort\n"
        "x = np.load('x.npy')\n"
        "print(json.dumps({a: ort.InferenceSession(f'mm{a}.onnx', providers=['CPUExecutionProvider'])"
        ".run(None, {'x': x})[0].tolist() for a in sys.argv[1:]}))\n")
    runner = runner_for(arm64_board.url, **arm64_board.options())
    runner.shell("rm -rf /tmp/edgekd-mm && mkdir -p /tmp/edgekd-mm")
    runner.upload([tmp_path / n for n in (f"mm{level}.onnx", "mm4.onnx", "x.npy", "run.py")], "/tmp/edgekd-mm")
    proc = runner.shell(f"cd /tmp/edgekd-mm && {arm64_board.remote_python} run.py {level} 4 2>/dev/null")
    on_arm = {int(a): np.array(y) for a, y in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    with torch.no_grad():
        ours = quant_aware(torch.nn.Sequential(lin), RECIPES[("onnx-genai", "int4")])(x).numpy()
    assert np.abs(on_arm[level] - ours).max() < 1e-5 < np.abs(on_arm[4] - ours).max()


def test_the_board_emulates_the_core_it_is_given(arm64_board):
    """The runtimes choose kernels by the core's features (onnxruntime's int8 MatMulNBits path exists on a Pi 5's
    cortex-a76, not on a Pi 4's cortex-a72): the board serves the core it is given, and its facts say which."""
    from edgekd.device.board import start_board
    from edgekd.device.setup import device_facts

    with start_board(cpu="cortex-a72") as a72:
        facts = device_facts(a72.url, **a72.options())
    assert facts["cpu_features"] == ["asimd"] and facts["emulated_by"].endswith("emulated core: cortex-a72")
    default = device_facts(arm64_board.url, **arm64_board.options())
    assert {"asimd", "dotprod", "i8mm"} <= set(default["cpu_features"])
    assert default["emulated_by"].endswith("emulated core: max")


def test_an_unknown_core_is_one_line(arm64_board):
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "device", "board", "--cpu", "cortex-a99"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--cpu cortex-a99: qemu emulates" in proc.stderr and "cortex-a76" in proc.stderr
