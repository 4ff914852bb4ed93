"""Device-side generation parity judged on the host, device facts and their errors: no board needed.

A device's parity run (generative_runtime.parity_run: greedy tokens, teacher-forced argmax and losses) is checked
against the export's PyTorch reference rebuilt from its record (parity.check_device_run), by the same bar as the
export's own check here. The runs below are made from PyTorch's own outputs of the built-in teacher (transformers
directly), then changed where a device's kernels would change them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgekd.device.wheels import platform_tags
from edgekd.errors import EdgekdError
from edgekd.export.generative_runtime import scored_rows
from edgekd.export.parity import check_device_run
from edgekd.profile.board_facts import emulation

from tests.profile.conftest import free_port

TEACHER = Path(__file__).resolve().parents[2] / "edgekd" / "models" / "builtin_teacher"
PROMPTS = [[487, 289, 3652, 9, 89, 308, 11, 40, 41, 42, 43, 44], list(range(100, 116)), list(range(200, 212))]
NEW = 8


@pytest.fixture(scope="module")
def pytorch_run():
    """What a file that computes exactly as PyTorch would send back from a device (transformers, not edgekd)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TEACHER).eval()
    tokens, argmax, nll = [], [], []
    with torch.no_grad():
        for p in PROMPTS:
            ids = torch.tensor([p])
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW,
                                 eos_token_id=None, pad_token_id=0)
            tokens.append(seq[0, len(p):].tolist())
            a, n = scored_rows(model(ids).logits[0].numpy(), p)
            argmax.append(a)
            nll.append(n)
    return {"tokens": tokens, "argmax": argmax, "nll": nll, "runtime": "onnx-genai", "version": "test"}


def _record(quantize: str = "none", here=None) -> dict:
    return {"path": "/x/student-genai", "format": "onnx-genai", "quantize": quantize,
            "run": {"prompt_ids": PROMPTS, "machine": "x86_64"}, "prompts_matched": 3, "generated": here,
            "parity_reference": {"model_dir": str(TEACHER), "quant_aware": False, "float_model_dir": None,
                                 "new_tokens": NEW, "min_top1": None}}


DEVICE = {"device": "ssh://root@board", "machine": "aarch64", "emulated": True}


def test_a_run_that_computes_as_pytorch_passes(pytorch_run):
    rec = check_device_run(_record(here=pytorch_run["tokens"]), pytorch_run, DEVICE)
    assert rec["passed"] and rec["prompts_matched"] == 3 and rec["first_divergence"] == [None] * 3
    assert rec["ppl_ratio"] == pytest.approx(1.0, abs=1e-4) and rec["top1_agreement"] == 1.0
    assert (rec["machine"], rec["emulated"], rec["here"]["same_tokens_as_device"]) == ("aarch64", True, 3)


def test_a_float_file_that_diverges_on_the_device_fails_with_one_line(pytorch_run):
    run = {**pytorch_run, "tokens": [list(t) for t in pytorch_run["tokens"]]}
    run["tokens"][1][3] = (run["tokens"][1][3] + 1) % 4096  # the device's kernels chose another token at step 3
    rec = check_device_run(_record(here=pytorch_run["tokens"]), run, DEVICE)
    assert not rec["passed"] and rec["prompts_matched"] == 2 and rec["first_divergence"] == [None, 3, None]
    assert rec["here"]["same_tokens_as_device"] == 2
    line = rec["error"]
    assert "\n" not in line and "student-genai failed generation parity on ssh://root@board (aarch64, emulated)" in line
    assert "2 of 3 prompts" in line and "here on x86_64 it matched 3" in line
    # the quantised bar is top-1 agreement and perplexity: one changed continuation, the same logits, passes
    assert check_device_run(_record("int4"), run, DEVICE)["passed"]


def test_a_quantised_file_whose_logits_drift_fails(pytorch_run):
    run = {**pytorch_run, "nll": [[v + 0.5 for v in n] for n in pytorch_run["nll"]]}  # perplexity x e^0.5
    rec = check_device_run(_record("int4"), run, DEVICE)
    assert not rec["passed"] and rec["ppl_ratio"] == pytest.approx(1.6487, abs=1e-3)


def test_a_record_without_its_reference_is_one_line():
    with pytest.raises(EdgekdError, match="names no PyTorch reference"):
        check_device_run({"path": "old.litertlm", "run": {}}, {}, DEVICE)
    rec = _record()
    rec["parity_reference"]["model_dir"] = "/nonexistent/student"
    with pytest.raises(EdgekdError, match="is gone"):
        check_device_run(rec, {}, DEVICE)


def test_emulation_is_read_from_the_board_file_or_the_cpu(tmp_path):
    intel = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2\n"
    none = str(tmp_path / "absent.json")
    assert emulation("aarch64", intel, none) and emulation("x86_64", intel, none) is None
    assert emulation("aarch64", "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd\n", none) is None
    (tmp_path / "board.json").write_text('{"emulated": "qemu-user aarch64 on x86_64"}')
    assert emulation("aarch64", "", str(tmp_path / "board.json")) == "qemu-user aarch64 on x86_64"


def test_platform_tags():
    tags = platform_tags("aarch64", "glibc 2.36")
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_17_aarch64" in tags and "manylinux2014_aarch64" in tags
    with pytest.raises(EdgekdError, match="glibc"):
        platform_tags("aarch64", "musl 1.2")


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekd.cli", *args], capture_output=True, text=True, timeout=300)


def test_device_check_bad_input_is_one_line_exit_2(sshd):
    opts = ["--identity-file", sshd["key"], "--known-hosts", sshd["known_hosts"]]
    unreachable = _cli("device", "check", f"ssh://root@127.0.0.1:{free_port()}", *opts)
    no_python = _cli("device", "check", sshd["url"], "--remote-python", "/nonexistent/python3", *opts)
    for proc, words in ((unreachable, "connection refused"), (no_python, "has no /nonexistent/python3")):
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
        assert proc.stderr.startswith("edgekd: error: ")
    ok = _cli("device", "check", sshd["url"], "--remote-python", sys.executable, "--json", *opts)
    assert ok.returncode == 0, ok.stderr
    import json
    import platform

    facts = json.loads(ok.stdout)
    assert facts["machine"] == platform.machine() and facts["emulated"] is False
    assert facts["runtimes"]["onnxruntime-genai"] and facts["python_path"] == sys.executable
    bare = subprocess.run(["/usr/bin/python3", "-c", "import onnxruntime_genai"], capture_output=True)
    if bare.returncode != 0:  # the system python: a device without a runtime
        proc = _cli("device", "check", sshd["url"], "--remote-python", "/usr/bin/python3", *opts)
        assert proc.returncode == 2 and "has no runtime edgekd runs" in proc.stderr and "device setup" in proc.stderr


def test_a_file_built_from_a_quant_aware_student_is_held_to_that_student_on_the_device(pytorch_run):
    """The reference a quantised file's record names is the quantisation-aware student with the runtime's quantisers
    in place (here the built-in teacher stands for both students): the device's tokens are held to it, with the
    float student's figures beside them (`vs_float`) and the 7-of-8 prompts bound."""
    rec = _record("int4")
    rec["parity_reference"] |= {"quant_aware": True, "float_model_dir": str(TEACHER)}
    got = check_device_run(rec, pytorch_run, DEVICE)
    assert "tokens_match_share" in got["threshold"] and got["vs_float"]["prompts_matched"] == 3
    assert "quantisation-aware" in got["run"]["reference"]
    assert got["passed"] == (got["tokens_match_share"] >= 0.875 and got["ppl_ratio"] <= 1.1)
