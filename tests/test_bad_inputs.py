"""Every bad input a user can give is one clean line and the right exit code, through the real CLI.

One row per case: the command line, the exit code (2: bad input, 1: the job ran and failed, 0: a
valid input with awkward paths that must simply work) and a substring the error line must hold.
Each failing case also proves it left nothing that looks complete: no config.json of a run that
never trained, no output file, no `.NAME.XXXX` temporary left behind, and no Traceback.

The cases of issue 24 say which contract each holds, in the comment above them: bounded reading and
sizing (item 1; /dev/zero and a FIFO bounded in time and in memory inside the test, under RLIMIT_AS with
the child's peak RSS measured), a run's identity includes its data and teacher (item 2), labels map
onto the teacher's classes (item 3), a user's file that cannot load is named with what to do (item 4),
target numbers lie in plausible ranges (item 5).

Most cases fail before any heavy import, so the module runs in a few minutes on two cores; the
fixtures (a tiny teacher, broken copies of it, data and target files, a small ONNX file, small
tmpfs mounts for a full and a read-only disk) are built once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ODD = "dir with 'quotes' $HOME; & spaces"  # shell metacharacters that must reach edgekd as they are


# --- fixtures ------------------------------------------------------------------------------------

def _mount_tmpfs(path: Path, opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _fill(path: Path) -> None:
    """Fill the file system holding `path` to the last block."""
    try:
        with open(path / "ballast", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass


def _tiny_onnx(path: Path, vocab: int = 32) -> None:
    """logits = W[input_ids]: a real, runnable ONNX file in milliseconds (no exporter)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((vocab, vocab)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["W", "input_ids"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "seq", vocab])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    path.with_name(path.name + ".json").write_text(json.dumps({"seq_len": 8, "vocab_size": vocab}))


def _target(src: str, dest: Path, name: str | None = None, **changes) -> Path:
    """A copy of a shipped target file with `changes` ("key": "new line", None removes the line)."""
    lines = (ROOT / "targets" / f"{src}.toml").read_text().splitlines()
    out = []
    for line in lines:
        key = line.split("=")[0].strip()
        if key == "name":
            line = f'name = "{name or dest.stem}"'
        if key in changes:
            if changes[key] is None:
                continue
            line = f"{key} = {changes[key]}"
        out.append(line)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(out) + "\n")
    return dest


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Paths the case table refers to as {name}; built once for the module."""
    from tests.distill.helpers import small_texts, write_text_dir

    from edgekd.data.tokenizer import train_tokenizer
    from edgekd.distill.teacher import make_tiny_teacher

    root = tmp_path_factory.mktemp("bad-inputs")
    p: dict[str, Path | str] = {"root": root}
    odd = root / ODD
    teacher = make_tiny_teacher(odd / "teacher", small_texts(6), vocab_size=300, hidden_size=32, layers=2, heads=2,
                                intermediate_size=64, max_positions=64, train_steps=0)
    p["teacher"] = teacher
    p["texts"] = write_text_dir(odd / "texts", 4)

    def variant(name: str) -> Path:
        d = root / "models" / name
        shutil.copytree(teacher, d)
        return d

    d = variant("truncated")
    st = d / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    p["truncated"] = d
    d = variant("header-cut")
    st = d / "model.safetensors"
    st.write_bytes(st.read_bytes()[:40])
    p["header_cut"] = d
    d = variant("bad-config")
    (d / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    p["bad_config"] = d
    d = variant("no-config")
    (d / "config.json").unlink()
    p["no_config"] = d
    d = variant("no-weights")
    (d / "model.safetensors").unlink()
    p["no_weights"] = d
    d = variant("binary-config")
    (d / "config.json").write_bytes(b"\xff\xfe\x00garbage\x80")
    p["binary_config"] = d

    # a tokenizer larger than the model's embedding (the IndexError of the sweep)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    d = variant("big-tokenizer")
    cfg = AutoConfig.from_pretrained(d)
    cfg.vocab_size = 200
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    p["big_tokenizer"] = d

    # teachers whose config.json is nonsense: refused before anything is allocated, named as the teacher
    for name, change in {"layers-1m": {"num_hidden_layers": 1000000}, "layers-0": {"num_hidden_layers": 0},
                         "layers-str": {"num_hidden_layers": "2"}, "layers-float": {"num_hidden_layers": 2.0},
                         "vocab-0": {"vocab_size": 0}, "heads-negative": {"num_attention_heads": -2},
                         "hidden-31": {"hidden_size": 31, "head_dim": None},
                         "auto-map": {"auto_map": {"AutoModelForCausalLM": "modeling_x.X"}},
                         "vocab-beyond-weights": {"vocab_size": 100000}}.items():
        d = variant(f"cfg-{name}")
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, **change}))
        p[f"cfg_{name.replace('-', '_')}"] = d

    # a two-class classifier teacher (classes neg, pos) and labelled data that does not fit it
    from transformers import BertConfig, BertForSequenceClassification

    d = root / "models" / "classifier"
    BertForSequenceClassification(BertConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=64, pad_token_id=1, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1},
    )).save_pretrained(d)
    for f in teacher.glob("tokenizer*"):
        shutil.copy(f, d / f.name)
    p["classifier"] = d
    for name, labels in {"names": ["neg", "POS"], "three": [0, 1, 2], "one": [1, 1], "float": [0.5, 1.0],
                         "bool": [True, False]}.items():
        rows = [{"text": f"review number {i} of {name}", "label": labels[i % len(labels)]} for i in range(24)]
        (root / f"labels-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        p[f"labels_{name}"] = root / f"labels-{name}.jsonl"

    # compressed JSON lines: a whole one reads as a corpus, a cut one is one line
    import gzip

    gz = gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in small_texts(6)).encode())
    p["jsonl_gz"] = root / "corpus.jsonl.gz"
    p["jsonl_gz"].write_bytes(gz)
    p["jsonl_gz_cut"] = root / "cut.jsonl.gz"
    p["short_corpus"] = root / "short.jsonl"  # a few dozen tokens: fewer than one sequence of 60
    p["short_corpus"].write_text("".join(json.dumps({"text": f"line {i} is short"}) + "\n" for i in range(4)))
    p["jsonl_gz_cut"].write_bytes(gz[: len(gz) // 2])
    p["fifo"] = root / "fifo"
    os.mkfifo(p["fifo"])
    # a .litertlm whose header promises more bytes than the file holds (a copy cut short)
    p["cut_litertlm"] = root / "cut.litertlm"
    p["cut_litertlm"].write_bytes(b"LITERTLM" + bytes(16) + (4096).to_bytes(8, "little") + os.urandom(200))

    # a student folder whose tokenizer maps tokens to other ids than the teacher's
    d = root / "models" / "other-tokenizer"
    d.mkdir(parents=True)
    shutil.copy(teacher / "config.json", d / "config.json")
    train_tokenizer([t[::-1] for t in small_texts(6)], vocab_size=300).save_pretrained(str(d))
    p["other_tokenizer"] = d

    js = root / "students"
    js.mkdir()
    for name, obj in {"hidden7": {"hidden_size": 7}, "layers0": {"num_hidden_layers": 0},
                      "vocab": {"vocab_size": 123}, "kv3": {"num_attention_heads": 2, "num_key_value_heads": 3},
                      "list": [1, 2], "negffn": {"intermediate_size": -8}}.items():
        (js / f"{name}.json").write_text(json.dumps(obj))
    (js / "broken.json").write_text('{"hidden_size": 16,')
    p["students"] = js

    data = root / "data"
    data.mkdir()
    (data / "empty.txt").write_text("")
    (data / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (data / "bad.jsonl").write_text('{"text": "fine"}\n{not json\n')
    (data / "one.txt").write_text("a single short record")
    p["data"] = data

    tg = root / "targets"
    p["tg_bad_toml"] = tg / "bad-toml.toml"
    tg.mkdir()
    p["tg_bad_toml"].write_text('name = "bad-toml"\n[cpu\ncores = 4\n')
    p["tg_latin1"] = tg / "latin1.toml"
    p["tg_latin1"].write_bytes(b'name = "latin1"\ndescription = "caf\xe9"\n')
    p["tg_inf"] = _target("raspberry-pi-5", tg / "inf-peak.toml", peak_gflops_fp32="inf")
    p["tg_nan"] = _target("raspberry-pi-5", tg / "nan-budget.toml", latency_ms="nan")
    p["tg_neg"] = _target("raspberry-pi-5", tg / "neg-cores.toml", cores="-4")
    p["tg_zero_bw"] = _target("raspberry-pi-5", tg / "zero-bw.toml", bandwidth_gbs="0.0")
    p["tg_missing"] = _target("raspberry-pi-5", tg / "missing-key.toml", clock_ghz=None)
    p["tg_enum"] = _target("raspberry-pi-5", tg / "bad-format.toml", preferred_format='"pt"')
    p["tg_wrong_name"] = _target("raspberry-pi-5", tg / "wrong-name.toml", name="other")
    p["tg_dir"] = tg / "folder.toml"
    p["tg_dir"].mkdir()
    p["tg_dirname"] = tg  # EDGEKD_TARGETS_DIR holding the broken files
    p["tg_good"] = _target("raspberry-pi-5", odd / "targets" / "my pi.toml")
    p["tg_huge_cores"] = _target("raspberry-pi-5", tg / "huge-cores.toml", cores="1000000000000", big_cores="4")
    p["tg_slow_clock"] = _target("raspberry-pi-5", tg / "slow-clock.toml", clock_ghz="0.001")
    p["tg_huge_bw"] = _target("raspberry-pi-5", tg / "huge-bw.toml", bandwidth_gbs="1e9")
    p["tg_tiny_ram"] = _target("raspberry-pi-5", tg / "tiny-ram.toml", ram_mb="1")

    p["onnx"] = odd / "model.onnx"
    _tiny_onnx(p["onnx"])
    p["garbage_onnx"] = root / "garbage.onnx"
    p["garbage_onnx"].write_bytes(os.urandom(2048))
    p["fake_tflite"] = root / "fake.tflite"
    shutil.copy(p["onnx"], p["fake_tflite"])
    p["txt_model"] = root / "model.txt"
    p["txt_model"].write_text("not a model")
    p["a_file"] = root / "a-file"
    p["a_file"].write_text("x")
    p["onnx_dir"] = root / "folder.onnx"
    p["onnx_dir"].mkdir()
    p["json_dir"] = root / "folder.json"
    p["json_dir"].mkdir()
    p["known_hosts"] = odd / "known hosts"
    p["known_hosts"].write_text("")
    p["key"] = odd / "id key"
    p["key"].write_text("")

    # a fake adb: no phone attached, or the named one is not there
    bin_dir = root / "bin"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text('#!/bin/sh\nif [ "$1" = "-s" ]; then echo "error: device \'$2\' not found" >&2; exit 1; fi\n'
                   'echo "error: no devices/emulators found" >&2; exit 1\n')
    adb.chmod(0o755)
    p["bin"] = bin_dir

    mounts = []
    ro, full, small = root / "ro", root / "full", root / "small"
    try:
        if _mount_tmpfs(ro, "ro,size=1m"):
            mounts.append(ro)
        else:  # not root: a folder without write permission says the same (root ignores permissions)
            ro.chmod(0o555)
        if _mount_tmpfs(full, "size=256k"):
            mounts.append(full)
            _fill(full)
            p["full"] = full
        if _mount_tmpfs(small, "size=320k"):
            mounts.append(small)
            p["small"] = small
        p["ro"] = ro
        p["cache"] = root / "cache"
        yield p
    finally:
        for m in mounts:
            subprocess.run(["umount", "-l", str(m)], capture_output=True)
        ro.chmod(0o755)


# --- the cases -----------------------------------------------------------------------------------
# {name} in an argument is a fixture path; {out} a folder and {outfile} a file of the case's own that
# must not exist afterwards (no config.json, no output) unless the case succeeds.

T, D = "{teacher}", "{texts}"
TRAIN = ["--teacher", T, "--data", D, "--steps", "2", "--seq-len", "16", "--batch-size", "2", "--quiet"]
DISTILL = ["distill", *TRAIN, "--out", "{out}"]
JOB = ["distill", "--teacher", T, "--data", D, "--out", "{out}", "--quiet"]
EXPORT = ["export", T, "--format", "onnx", "--seq-len", "8"]
PROFILE = ["profile", "{onnx}", "--runs", "2", "--warmup", "0"]
BENCH = ["kernel", "bench", "--rows", "4", "--vocab", "16", "--dtype", "float32", "--repeats", "1", "--no-compile"]
S = "{students}"

CASES = [
    # -- distill: numbers, checked before anything is loaded or written
    ("lr-negative", [*DISTILL, "--lr", "-1"], 2, "--lr must be a number > 0"),
    ("lr-nan", [*DISTILL, "--lr", "nan"], 2, "--lr must be a number > 0, got nan"),
    ("lr-inf", [*DISTILL, "--lr", "inf"], 2, "--lr"),
    ("lr-zero", [*DISTILL, "--lr", "0"], 2, "--lr"),
    ("lr-text", [*DISTILL, "--lr", "fast"], 2, "--lr"),
    ("alpha-above-1", [*DISTILL, "--alpha", "1.5"], 2, "--alpha must be a number in [0, 1]"),
    ("alpha-nan", [*DISTILL, "--alpha", "nan"], 2, "--alpha"),
    ("temperature-zero", [*DISTILL, "--temperature", "0"], 2, "--temperature"),
    ("temperature-nan", [*DISTILL, "--temperature", "nan"], 2, "--temperature"),
    ("temperature-minus-inf", [*DISTILL, "--temperature=-inf"], 2, "--temperature"),
    ("temperature-word", [*DISTILL, "--temperature", "hot"], 2, "--temperature must be a number or 'auto'"),
    ("steps-zero", [*DISTILL, "--steps", "0"], 2, "--steps must be an integer >= 1"),
    ("steps-negative", [*DISTILL, "--steps=-5"], 2, "--steps"),
    ("batch-size-zero", [*DISTILL, "--batch-size", "0"], 2, "--batch-size"),
    ("seq-len-one", [*DISTILL, "--seq-len", "1"], 2, "--seq-len must be an integer >= 2"),
    ("seed-negative", [*DISTILL, "--seed=-1"], 2, "--seed"),
    ("budget-nan", [*JOB, "--target", "android-arm64", "--latency-budget", "nan"], 2, "--latency-budget"),
    ("budget-negative", [*JOB, "--target", "android-arm64", "--latency-budget=-3"], 2, "--latency-budget"),
    ("budget-inf", [*JOB, "--target", "android-arm64", "--latency-budget", "inf"], 2, "--latency-budget"),
    ("loss-skew-zero", [*DISTILL, "--loss", '[{{"name": "kd", "divergence": "skew_kl", "skew": 0}}]'], 2,
     "skew must be a number in (0, 1]"),
    ("scheme-on-policy-lmbda", [*DISTILL, "--scheme", "on_policy", "--scheme-config", '{{"lmbda": 2}}'], 2,
     "lmbda must be a number in [0, 1]"),
    ("scheme-unknown", [*DISTILL, "--scheme", "telepathy"], 2, "unknown scheme"),
    ("scheme-config-malformed", [*DISTILL, "--scheme-config", "[1"], 2, "--scheme-config"),
    # -- distill: the run folder
    ("out-is-a-file", [*DISTILL[:-1], "{a_file}"], 2, "is a file, not a folder"),
    ("out-under-a-file", [*DISTILL[:-1], "{a_file}/run"], 2, "is a file, not a folder"),
    ("out-read-only", [*DISTILL[:-1], "{ro}/run"], 2, "not writable"),
    ("out-full-disk", [*DISTILL[:-1], "{full}/run"], 2, "no space left"),
    ("resume-nothing", [*DISTILL, "--resume"], 2, "nothing to resume"),
    # -- distill: teacher, student and data files
    ("teacher-missing", [*DISTILL, "--teacher", "{root}/no-such-model"], 2, "does not exist"),
    ("teacher-not-a-folder", [*DISTILL, "--teacher", "{a_file}"], 2, "is not a folder"),
    ("teacher-no-config", [*DISTILL, "--teacher", "{no_config}"], 2, "has no config.json"),
    ("teacher-corrupt-config", [*DISTILL, "--teacher", "{bad_config}"], 2, "is not valid JSON"),
    ("teacher-binary-config", [*DISTILL, "--teacher", "{binary_config}"], 2, "not UTF-8"),
    ("teacher-truncated-weights", [*DISTILL, "--teacher", "{truncated}"], 2, "truncated"),
    ("teacher-header-cut", [*DISTILL, "--teacher", "{header_cut}"], 2, "truncated"),
    ("teacher-no-weights", [*DISTILL, "--teacher", "{no_weights}"], 2, "no model weights"),
    ("teacher-tokenizer-beyond-embedding", [*DISTILL, "--teacher", "{big_tokenizer}"], 2, "embedding has 200 rows"),
    ("student-hidden-7", [*DISTILL, "--student", f"{S}/hidden7.json"], 2, "hidden_size 7 is not a multiple"),
    ("student-zero-layers", [*DISTILL, "--student", f"{S}/layers0.json"], 2, "num_hidden_layers must be"),
    ("student-negative-ffn", [*DISTILL, "--student", f"{S}/negffn.json"], 2, "intermediate_size must be"),
    ("student-heads-kv", [*DISTILL, "--student", f"{S}/kv3.json"], 2, "not a multiple of num_key_value_heads"),
    ("student-vocab-mismatch", [*DISTILL, "--student", f"{S}/vocab.json"], 2, "vocab_size 123 differs"),
    ("student-not-an-object", [*DISTILL, "--student", f"{S}/list.json"], 2, "must be a JSON object"),
    ("student-broken-json", [*DISTILL, "--student", f"{S}/broken.json"], 2, "not valid JSON"),
    ("student-missing", [*DISTILL, "--student", f"{S}/nope.json"], 2, "does not exist"),
    ("student-other-tokenizer", [*DISTILL, "--student", "{other_tokenizer}"], 2, "tokenizer differs"),
    ("data-missing", [*DISTILL, "--data", "{data}/nope.txt"], 2, "does not exist"),
    ("data-empty-file", [*DISTILL, "--data", "{data}/empty.txt"], 2, "empty"),
    ("data-binary", [*DISTILL, "--data", "{data}/binary.txt"], 2, "not UTF-8"),
    ("data-malformed-jsonl", [*DISTILL, "--data", "{data}/bad.jsonl"], 2, "bad.jsonl:2 is not valid JSON"),
    ("data-one-record", [*DISTILL, "--data", "{data}/one.txt"], 2, ("need at least 2", "add data")),
    # -- issue 24 item 1, bounded reading: a device node or a file over EDGEKD_MAX_READ_BYTES is one line naming
    #    the limit and how to raise it (/dev/zero and a FIFO, bounded in time and memory: test_unbounded_inputs_*)
    ("data-over-the-limit", [*DISTILL, "--data", "{texts}"], 2, "EDGEKD_MAX_READ_BYTES",
     {"env": {"EDGEKD_MAX_READ_BYTES": "100"}}),
    ("data-limit-not-a-size", [*DISTILL, "--seed", "1"], 2, "EDGEKD_MAX_READ_BYTES='lots' is not a size",
     {"env": {"EDGEKD_MAX_READ_BYTES": "lots"}}),
    ("data-jsonl-gz-cut", [*DISTILL, "--data", "{jsonl_gz_cut}"], 2, "cut off"),
    #    ... model configs checked for sane sizes before anything is allocated, in edgekd's words, as the teacher
    ("teacher-layers-million", [*DISTILL, "--teacher", "{cfg_layers_1m}"], 2,
     "the teacher's config", {"max_s": 30}),
    ("teacher-layers-zero", [*DISTILL, "--teacher", "{cfg_layers_0}"], 2, "teacher's config"),
    ("teacher-layers-string", [*DISTILL, "--teacher", "{cfg_layers_str}"], 2, "num_hidden_layers is '2', not a whole"),
    ("teacher-layers-float", [*DISTILL, "--teacher", "{cfg_layers_float}"], 2, "num_hidden_layers is 2.0, not a whole"),
    ("teacher-vocab-zero", [*DISTILL, "--teacher", "{cfg_vocab_0}"], 2, "vocab_size is 0, outside"),
    ("teacher-heads-negative", [*DISTILL, "--teacher", "{cfg_heads_negative}"], 2, "num_attention_heads is -2"),
    ("teacher-hidden-not-heads", [*DISTILL, "--teacher", "{cfg_hidden_31}"], 2,
     "teacher's config", {"also": "hidden_size 31 is not a multiple of num_attention_heads 2"}),
    ("teacher-auto-map", [*DISTILL, "--teacher", "{cfg_auto_map}"], 2, "never runs"),
    ("teacher-vocab-beyond-weights", [*DISTILL, "--teacher", "{cfg_vocab_beyond_weights}"], 2,
     "weights in", {"also": "do not fit its config.json"}),
    ("export-layers-million", ["export", "{cfg_layers_1m}", "--format", "onnx", "--out", "{outfile}"], 2,
     "num_hidden_layers is 1000000"),
    #    ... --seq-len beyond the teacher's window refused, never silently changed
    ("seq-len-beyond-window", [*DISTILL, "--seq-len", "100"], 2, "reads at most 64 positions"),
    #    ... and beyond the corpus: refused with the count, never padded or cut silently
    ("seq-len-beyond-corpus", [*DISTILL, "--data", "{short_corpus}", "--seq-len", "60"], 2,
     "fewer than one sequence of --seq-len 60"),
    #    ... a real .jsonl.gz is a causal-LM corpus (it used to be "not UTF-8")
    ("works-jsonl-gz-corpus", [*DISTILL, "--data", "{jsonl_gz}"], 0, "", {"creates": "{out}/report.json"}),
    # -- issue 24 item 3: labels map onto the teacher's classes, by name or id; anything else names the value
    ("labels-three-for-two", [*DISTILL, "--teacher", "{classifier}", "--data", "{labels_three}"], 2,
     "label 2 in", {"also": "not one of the teacher's 2 classes"}),
    ("labels-one-class", [*DISTILL, "--teacher", "{classifier}", "--data", "{labels_one}"], 2, "one class only"),
    ("labels-float", [*DISTILL, "--teacher", "{classifier}", "--data", "{labels_float}"], 2, "label 0.5"),
    ("labels-bool", [*DISTILL, "--teacher", "{classifier}", "--data", "{labels_bool}"], 2, "is a bool"),
    ("labels-text-column", [*DISTILL, "--teacher", "{classifier}", "--data", "{labels_names}", "--label-column",
                            "text"], 2, "label 'review number", {"also": "pass the right --label-column"}),
    ("works-labels-by-name", [*DISTILL, "--teacher", "{classifier}", "--data", "{labels_names}"], 0, "",
     {"creates": "{out}/report.json"}),
    # -- issue 24 item 4: a user's file that cannot load names the file and what to do (resume cases:
    #    test_resume_refuses_*)
    ("profile-generative-cut-litertlm", ["profile", "{cut_litertlm}", "--generative", "--runs", "1", "--warmup", "0"],
     2, "not a complete .litertlm bundle"),
    # -- issue 24 item 5: target numbers within a plausible range, the range in the message
    ("targets-show-cores-huge", ["targets", "show", "{tg_huge_cores}"], 2, "'cpu.cores' is 1000000000000, outside"),
    ("targets-show-clock-slow", ["targets", "show", "{tg_slow_clock}"], 2, "'cpu.clock_ghz' is 0.001, outside"),
    ("targets-show-bandwidth-huge", ["targets", "show", "{tg_huge_bw}"], 2, "plausible range 0.1 to 10000"),
    ("target-ram-tiny", [*JOB, "--target", "{tg_tiny_ram}"], 2, "'memory.ram_mb' is 1, outside"),
    # -- distill: targets and devices (the device is probed before any training)
    ("target-unknown", [*JOB, "--target", "no-such-board"], 2, "unknown target 'no-such-board'"),
    ("target-malformed", [*JOB, "--target", "{tg_bad_toml}"], 2, "not valid TOML"),
    ("target-not-utf8", [*JOB, "--target", "{tg_latin1}"], 2, "not UTF-8"),
    ("target-inf-peak", [*JOB, "--target", "{tg_inf}"], 2, "'cpu.peak_gflops_fp32' must be a finite positive number"),
    ("device-unknown", [*JOB, "--target", "android-arm64", "--device", "bluetooth"], 2, "unknown device"),
    ("device-ssh-refused", [*JOB, "--target", "raspberry-pi-5", "--device", "ssh://pi@127.0.0.1:1",
                            "--identity-file", "{key}"], 2, "connection refused"),
    ("device-ssh-dash-host", [*JOB, "--target", "raspberry-pi-5", "--device", "ssh://-oProxyCommand=touch%20x"],
     2, "cannot start with '-'"),
    ("device-ssh-dash-user", [*JOB, "--target", "raspberry-pi-5", "--device", "ssh://-oProxyCommand=x@host"],
     2, "cannot start with '-'"),
    ("device-ssh-port-0", [*JOB, "--target", "raspberry-pi-5", "--device", "ssh://pi@host:0"], 2, "port"),
    ("device-ssh-missing-key", [*JOB, "--target", "raspberry-pi-5", "--device", "ssh://pi@127.0.0.1:1",
                                "--identity-file", "{root}/no key"], 2, "--identity-file"),
    ("device-ssh-key-and-insecure", [*JOB, "--target", "raspberry-pi-5", "--device", "ssh://pi@127.0.0.1:1",
                                     "--known-hosts", "{known_hosts}", "--insecure-host-key"], 2, "contradict"),
    ("device-adb-absent", [*JOB, "--target", "android-arm64", "--device", "adb:R58M123"], 2, "not found"),
    # -- export
    ("export-missing", ["export", "{root}/nope", "--format", "onnx"], 2, "does not exist"),
    ("export-no-config", ["export", "{no_config}", "--format", "onnx", "--out", "{outfile}"], 2, "no config.json"),
    ("export-corrupt-config", ["export", "{bad_config}", "--format", "onnx", "--out", "{outfile}"], 2,
     "not valid JSON"),
    ("export-truncated", ["export", "{truncated}", "--format", "onnx", "--out", "{outfile}"], 2, "truncated"),
    ("export-no-weights", ["export", "{no_weights}", "--format", "onnx", "--out", "{outfile}"], 2, "no model weights"),
    ("export-format", ["export", T, "--format", "pt"], 2, "unknown format 'pt'"),
    ("export-quantize", [*EXPORT, "--quantize", "int3"], 2, "unknown quantisation"),
    ("export-seq-len-zero", ["export", T, "--format", "onnx", "--seq-len", "0"], 2, "--seq-len must be"),
    ("export-seq-len-nan", ["export", T, "--format", "onnx", "--seq-len", "nan"], 2, "--seq-len"),
    ("export-min-top1-nan", [*EXPORT, "--min-top1", "nan"], 2, "--min-top1"),
    ("export-min-top1-zero", [*EXPORT, "--min-top1", "0"], 2, "--min-top1"),
    ("export-out-onnx-folder", [*EXPORT, "--out", "{onnx_dir}"], 2, "is a folder, not a file"),
    ("export-out-suffix", [*EXPORT, "--out", "{root}/model.tflite"], 2, "must end in .onnx"),
    ("export-out-read-only", [*EXPORT, "--out", "{ro}/m.onnx"], 2, "not writable"),
    ("export-out-full-disk", [*EXPORT, "--out", "{full}/m.onnx"], 2, "no space left"),
    ("export-out-under-a-file", [*EXPORT, "--out", "{a_file}/m.onnx"], 2, "is a file, not a folder"),
    # -- profile
    ("profile-missing", ["profile", "{root}/nope.onnx"], 2, "does not exist"),
    ("profile-suffix", ["profile", "{txt_model}"], 2, "neither .onnx nor .tflite"),
    ("profile-garbage-onnx", ["profile", "{garbage_onnx}", "--runs", "1", "--warmup", "0"], 2, "cannot load"),
    ("profile-onnx-named-tflite", ["profile", "{fake_tflite}", "--runs", "1", "--warmup", "0"], 2,
     "not a TFLite flatbuffer"),
    ("profile-runs-zero", [*PROFILE[:2], "--runs", "0"], 2, "--runs must be an integer >= 1"),
    ("profile-warmup-negative", [*PROFILE[:2], "--warmup=-1"], 2, "--warmup"),
    ("profile-threads-zero", [*PROFILE, "--threads", "0"], 2, "--threads"),
    ("profile-threads-huge", [*PROFILE, "--threads", "100000"], 2, "cores available"),
    ("profile-seq-len-zero", [*PROFILE, "--seq-len", "0"], 2, "--seq-len must be an integer >= 1, got 0"),
    ("profile-seq-len-negative", [*PROFILE, "--seq-len=-3"], 2, "--seq-len"),
    ("profile-target-unknown", [*PROFILE, "--target", "nope"], 2, "unknown target"),
    ("profile-target-nan", [*PROFILE, "--target", "{tg_nan}"], 2,
     "'budget.latency_ms' must be a finite positive number"),
    ("profile-device-unknown", [*PROFILE, "--device", "usb"], 2, "unknown device"),
    ("profile-device-bad-url", [*PROFILE, "--device", "ssh://"], 2, "bad device"),
    ("profile-ssh-dash-host", [*PROFILE, "--device", "ssh://-oProxyCommand=x"], 2, "cannot start with '-'"),
    ("profile-ssh-refused", [*PROFILE, "--device", "ssh://pi@127.0.0.1:1", "--known-hosts", "{known_hosts}"], 2,
     "connection refused"),
    ("profile-ssh-known-hosts-missing", [*PROFILE, "--device", "ssh://pi@127.0.0.1:1", "--known-hosts",
                                         "{root}/no such file"], 2, "--known-hosts"),
    ("profile-adb-no-phone", ["profile", "{fake_tflite}", "--device", "adb"], 2, "no devices"),
    ("profile-adb-binary-missing", ["profile", "{fake_tflite}", "--device", "adb", "--benchmark-binary",
                                    "{root}/benchmark_model"], 2, "--benchmark-binary"),
    # -- device
    ("device-check-refused", ["device", "check", "ssh://pi@127.0.0.1:1", "--known-hosts", "{known_hosts}"], 2,
     "connection refused"),
    ("device-check-bad-url", ["device", "check", "ssh://"], 2, "bad device"),
    ("device-check-unknown", ["device", "check", "usb"], 2, "unknown device"),
    ("device-setup-not-ssh", ["device", "setup", "adb"], 2, "installs over ssh"),
    ("device-setup-refused", ["device", "setup", "ssh://pi@127.0.0.1:1", "--known-hosts", "{known_hosts}"], 2,
     "connection refused"),
    ("distill-runtime-without-target", ["distill", "--runtime", "onnx-genai", "--steps", "1"], 2, "--runtime goes with --target"),
    # -- targets
    ("targets-show-unknown", ["targets", "show", "nope"], 2, "unknown target 'nope'; known targets:"),
    ("targets-show-malformed", ["targets", "show", "{tg_bad_toml}"], 2, "not valid TOML"),
    ("targets-show-not-utf8", ["targets", "show", "{tg_latin1}"], 2, "not UTF-8"),
    ("targets-show-inf", ["targets", "show", "{tg_inf}"], 2, "must be a finite positive number, got inf"),
    ("targets-show-negative", ["targets", "show", "{tg_neg}"], 2, "'cpu.cores' must be a finite positive number"),
    ("targets-show-zero", ["targets", "show", "{tg_zero_bw}"], 2, "'memory.bandwidth_gbs'"),
    ("targets-show-missing-key", ["targets", "show", "{tg_missing}"], 2, "missing key 'cpu.clock_ghz'"),
    ("targets-show-bad-enum", ["targets", "show", "{tg_enum}"], 2, "unknown value 'pt'"),
    ("targets-show-wrong-name", ["targets", "show", "{tg_wrong_name}"], 2, "key 'name'"),
    ("targets-show-folder", ["targets", "show", "{tg_dir}"], 2, "is a folder"),
    ("targets-show-missing-file", ["targets", "show", "{root}/nope.toml"], 2, "target file not found"),
    ("targets-dir-malformed", ["targets", "show", "bad-toml"], 2, "not valid TOML",
     {"env": {"EDGEKD_TARGETS_DIR": "{tg_dirname}"}}),
    ("targets-list-malformed", ["targets", "list"], 2, "bad-format.toml",
     {"env": {"EDGEKD_TARGETS_DIR": "{tg_dirname}"}}),
    # -- kernel bench
    ("bench-rows-zero", ["kernel", "bench", "--rows", "0", "--out", "{outjson}"], 2, "--rows must be an integer >= 1"),
    ("bench-repeats-zero", ["kernel", "bench", "--repeats", "0", "--out", "{outjson}"], 2, "--repeats"),
    ("bench-vocab-negative", ["kernel", "bench", "--vocab=-4", "--out", "{outjson}"], 2, "--vocab"),
    ("bench-dtype", [*BENCH[:-5], "--dtype", "int4", "--out", "{outjson}"], 2, "--dtype 'int4'"),
    ("bench-device", ["kernel", "bench", "--device", "tpu", "--out", "{outjson}"], 2, "--device 'tpu'"),
    ("bench-out-folder", [*BENCH, "--out", "{json_dir}"], 2, "is a folder, not a file"),
    ("bench-out-read-only", [*BENCH, "--out", "{ro}/bench.json"], 2, "not writable"),
    ("bench-out-full-disk", [*BENCH, "--out", "{full}/bench.json"], 2, "no space left"),
    # -- teacher train (each fails before the minutes of training)
    ("teacher-train-steps-zero", ["teacher", "train", "--steps", "0", "--out", "{out}"], 2, "--steps"),
    ("teacher-train-seed-negative", ["teacher", "train", "--seed=-2", "--out", "{out}"], 2, "--seed"),
    ("teacher-train-out-file", ["teacher", "train", "--out", "{a_file}"], 2, "is a file, not a folder"),
    ("teacher-train-out-read-only", ["teacher", "train", "--out", "{ro}/t"], 2, "not writable"),
    # -- usage
    ("unknown-command", ["distil"], 2, "No such command"),
    ("unknown-option", ["export", T, "--format", "onnx", "--frobnicate"], 2, "No such option"),
    ("missing-argument", ["export", "--format", "onnx"], 2, "Missing argument"),
    # -- awkward but valid: these must work
    ("works-export-odd-path", [*EXPORT, "--out", "{outfile}"], 0, "wrote", {"creates": "{outfile}"}),
    ("works-profile-odd-path", [*PROFILE, "--threads", "1", "--json"], 0, '"p50_ms"'),
    ("works-targets-show-odd-path", ["targets", "show", "{tg_good}"], 0, "my pi"),
    ("works-bench-odd-path", [*BENCH, "--out", "{outjson}"], 0, "wrote", {"creates": "{outjson}"}),
    ("works-distill-odd-path", DISTILL, 0, "", {"creates": "{out}/report.json"}),
    # -- a disk that fills up mid-run (at the second checkpoint): one line, no report, no temporaries; the
    #    first checkpoint and config.json stay, so the run continues with --resume once there is space
    ("disk-fills-mid-run", [*DISTILL[:-1], "{small}/run"], 2, "no space left", {"needs": "small"}),
]

FAST = {"lr-", "alpha", "temperature", "steps", "batch", "seq-len", "seed", "budget", "out-", "teacher-missing",
        "teacher-no", "teacher-corrupt", "teacher-trunc", "student-hidden", "student-zero", "device-"}


def _fmt(arg: str, p: dict, case_dir: Path) -> str:
    return arg.format(**{k: str(v) for k, v in p.items()}, out=str(case_dir / "out"),
                      outfile=str(case_dir / ODD / "out file.onnx"), outjson=str(case_dir / ODD / "bench.json"))


def _leftovers(d: Path) -> list[str]:
    """Temporaries (`.NAME.XXXX`, `*.tmp`) and half-runs under `d`."""
    bad = []
    if not d.exists():
        return bad
    for q in d.rglob("*"):
        if q.name.startswith(".") and q.name != ".lock" or q.name.endswith(".tmp"):
            bad.append(str(q.relative_to(d)))
    return bad


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, fx):
    name, args, code, needle, *rest = case
    opts = rest[0] if rest else {}
    if opts.get("needs") and opts["needs"] not in fx:
        pytest.skip(f"needs a small tmpfs ({opts['needs']}): mounting one needs root")
    if any(a.startswith("{full}") for a in args) and "full" not in fx:
        pytest.skip("needs a full tmpfs: mounting one needs root")
    case_dir = fx["root"] / "cases" / name
    (case_dir / ODD).mkdir(parents=True)
    argv = [_fmt(a, fx, case_dir) for a in args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKD_")}
    env.update({"EDGEKD_CACHE": str(fx["cache"]), "PATH": f"{fx['bin']}{os.pathsep}{env.get('PATH', '')}",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)})
    env.update({k: _fmt(v, fx, case_dir) for k, v in opts.get("env", {}).items()})
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "edgekd.cli", *argv], capture_output=True, text=True, env=env,
                         cwd=case_dir, timeout=300)
    took = time.time() - t0
    both = res.stdout + res.stderr
    assert "Traceback" not in both, both
    assert res.returncode == code, f"exit {res.returncode}, wanted {code}:\n{both}"
    err = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    if code:
        assert 1 <= len(err) <= 2, f"{len(err)} lines on stderr:\n{res.stderr}"
        assert err[-1].startswith("edgekd: error: "), res.stderr
        needles = needle if isinstance(needle, tuple) else (needle,)
        assert any(n.lower() in err[-1].lower() for n in needles), f"{needle!r} not in {err[-1]!r}"
        assert opts.get("also", "") in err[-1], f"{opts['also']!r} not in {err[-1]!r}"
        assert took < opts.get("max_s", 300), f"{name} took {took:.0f}s"
        assert "internal error" not in err[-1], err[-1]
        assert not list(case_dir.rglob("config.json")) or name == "disk-fills-mid-run", "a run folder was left"
        assert not (case_dir / ODD / "out file.onnx").exists() and not (case_dir / ODD / "bench.json").exists()
        assert not list(case_dir.rglob("report.json")), "a failed run left a report that looks complete"
        if any(name.startswith(f) for f in FAST):
            assert took < 60, f"{name} took {took:.0f}s: it should fail before any work"
    else:
        assert needle in res.stdout, both
        if "creates" in opts:
            assert Path(_fmt(opts["creates"], fx, case_dir)).exists()
    for place in (case_dir, fx["root"] / "ro", fx.get("full"), fx.get("small")):
        if place is not None:
            assert not _leftovers(Path(place)), f"temporaries left in {place}: {_leftovers(Path(place))}"
    if opts.get("needs") == "small":  # give the next case its space back
        for q in Path(fx["small"]).iterdir():
            shutil.rmtree(q) if q.is_dir() else q.unlink()


def test_cases_are_many_and_distinct():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)
    assert len({tuple(c[1]) for c in CASES}) == len(CASES)


def test_explicit_known_hosts_beats_the_insecure_environment(fx, tmp_path):
    """EDGEKD_SSH_INSECURE_HOST_KEY=1 must not switch off the check of an explicit --known-hosts: a note says so."""
    env = {**os.environ, "EDGEKD_CACHE": str(fx["cache"]), "EDGEKD_SSH_INSECURE_HOST_KEY": "1"}
    res = subprocess.run([sys.executable, "-m", "edgekd.cli", "profile", str(fx["onnx"]), "--device",
                          "ssh://pi@127.0.0.1:1", "--known-hosts", str(fx["known_hosts"])],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and "EDGEKD_SSH_INSECURE_HOST_KEY is ignored" in lines[0], res.stderr
    from edgekd.profile.ssh import parse_ssh_url

    os.environ["EDGEKD_SSH_INSECURE_HOST_KEY"] = "1"
    try:
        t = parse_ssh_url("ssh://pi@board", known_hosts=str(fx["known_hosts"]))
    finally:
        del os.environ["EDGEKD_SSH_INSECURE_HOST_KEY"]
    assert not t.insecure_host_key and "StrictHostKeyChecking=yes" in t.options()


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_ssh_reads_odd_paths_whole(fx):
    """ssh itself (`ssh -G`) sees the known_hosts and key paths whole: spaces, quotes, '%' and all."""
    from edgekd.profile.ssh import SshTarget

    odd = Path(fx["root"]) / "ssh 'odd' %d \"q\"" / "known hosts"
    odd.parent.mkdir(exist_ok=True)
    odd.write_text("")
    key = odd.with_name("id key")
    key.write_text("")
    t = SshTarget(host="board", user="pi", known_hosts=str(odd), identity_file=str(key))
    cmd = t.ssh_cmd("true")
    assert cmd[-3:] == ["--", "pi@board", "true"]
    res = subprocess.run(["ssh", "-G", *cmd[1:-3], "pi@board"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    conf = dict(line.split(" ", 1) for line in res.stdout.splitlines() if " " in line)
    assert conf.get("userknownhostsfile") == str(odd), res.stdout + res.stderr


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killing_edgekd_kills_the_runner(fx, tmp_path, sig="SIGKILL"):
    """The profiling child (profile/board_timer.py) dies with edgekd, even when edgekd gets no chance to clean up."""
    import signal

    env = {**os.environ, "EDGEKD_CACHE": str(fx["cache"])}
    proc = subprocess.Popen([sys.executable, "-m", "edgekd.cli", "profile", str(fx["onnx"]), "--runs", "100000000",
                             "--warmup", "0", "--threads", "1"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids: list[int] = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not kids:
            time.sleep(0.2)
            kids = _children(proc.pid)
        assert kids, "the runner never started"
        os.kill(proc.pid, getattr(signal, sig))
        proc.wait(timeout=30)
        deadline = time.time() + 15
        while time.time() < deadline and any(Path(f"/proc/{k}").exists() for k in kids):
            time.sleep(0.2)
        alive = [k for k in kids if Path(f"/proc/{k}").exists()
                 and "board_timer.py" in Path(f"/proc/{k}/cmdline").read_text(errors="replace")]
        assert not alive, f"runner {alive} outlived edgekd"
    finally:
        if proc.poll() is None:
            proc.kill()
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except OSError:
                pass


# --- issue 24: bounded work, a run's identity ---------------------------------------------------------

def _bounded(args: list, fx, cwd: Path, env: dict | None = None, address_space: int = 6 << 30,
             timeout: int = 60) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, wall seconds, peak RSS in MiB) of the CLI run by a fresh intermediate interpreter, whose only child
    it is (so RUSAGE_CHILDREN is edgekd's alone), under RLIMIT_AS `address_space` and a timeout: a regression
    that reads without bound fails the test instead of taking the machine."""
    wrapper = ("import json, resource, subprocess, sys\n"
               "lim = int(sys.argv[1])\n"
               "cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (lim, lim))\n"
               "r = subprocess.run(sys.argv[2:], preexec_fn=cap, capture_output=True, text=True)\n"
               "sys.stderr.write(r.stderr); sys.stdout.write(r.stdout)\n"
               "print(json.dumps({'rc': r.returncode, 'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n")
    e = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKD_")}
    e.update({"EDGEKD_CACHE": str(fx["cache"]), "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)},
             **(env or {}))
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", wrapper, str(address_space), sys.executable, "-m", "edgekd.cli",
                          *map(str, args)], capture_output=True, text=True, env=e, cwd=cwd, timeout=timeout)
    took = time.time() - t0
    info = json.loads(res.stdout.strip().splitlines()[-1])
    res.returncode = info["rc"]
    return res, took, info["maxrss_kb"] / 1024


@pytest.mark.parametrize("source", ["/dev/zero", "fifo"])
def test_unbounded_inputs_end_at_once(fx, tmp_path, source):
    """Issue 24 item 1: `--data /dev/zero` (which once read 23 GB until the OOM killer came) and a FIFO (which
    hung) are one line and exit 2 within seconds and a few hundred MB, measured here."""
    data = fx["fifo"] if source == "fifo" else source
    if not Path(data).exists():
        pytest.skip(f"{data} does not exist here")
    res, took, rss = _bounded(["distill", "--teacher", fx["teacher"], "--data", data, "--steps", "2", "--quiet",
                               "--out", tmp_path / "run"], fx, tmp_path)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert err[-1].startswith("edgekd: error: ") and "not a regular file" in err[-1], res.stderr
    assert took < 30 and rss < 1024, f"{source}: {took:.1f} s, peak RSS {rss:.0f} MiB"
    print(f"{source}: exit 2 in {took:.1f} s, peak RSS {rss:.0f} MiB")


def test_huge_batch_is_refused_by_the_memory_estimate(fx, tmp_path):
    """Issue 24 item 1: `--batch-size 100000` (once 7 GB of RSS, then the allocator's crash) is one line naming
    the estimate and what to lower, before the first batch is built. RLIMIT_AS (6 GiB) stands for a small
    machine; the estimate (26 GiB of activations) exceeds any machine's free memory less than that."""
    res, took, rss = _bounded(["distill", "--teacher", fx["teacher"], "--data", fx["texts"], "--steps", "2",
                               "--seq-len", "64", "--batch-size", "100000", "--quiet", "--out", tmp_path / "run"],
                              fx, tmp_path)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert "this run needs about" in err[-1] and "lower --batch-size or --seq-len" in err[-1], err[-1]
    assert took < 60 and rss < 1536, f"{took:.1f} s, peak RSS {rss:.0f} MiB"
    assert not (tmp_path / "run" / "config.json").exists()
    print(f"batch 100000: exit 2 in {took:.1f} s, peak RSS {rss:.0f} MiB")


@pytest.fixture(scope="module")
def killed_run(fx, tmp_path_factory):
    """A run killed mid-distillation (a checkpoint on disk), with its own copies of the teacher and the data."""
    root = tmp_path_factory.mktemp("killed")
    teacher, data = root / "teacher", root / "data"
    shutil.copytree(fx["teacher"], teacher)
    shutil.copytree(fx["texts"], data)
    args = ["distill", "--teacher", teacher, "--data", data, "--steps", "8", "--seq-len", "16", "--batch-size", "2",
            "--quiet", "--out", root / "run"]
    env = {**os.environ, "EDGEKD_CACHE": str(fx["cache"]), "EDGEKD_FAULT": "kill:distill", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "edgekd.cli", *map(str, args)], env=env, capture_output=True, timeout=300)
    assert list((root / "run" / "checkpoints").rglob("step_*/model.safetensors")), "the run left no checkpoint"
    return {"root": root, "teacher": teacher, "data": data, "args": args}


def _resume(killed_run, tmp_path, change) -> str:
    """Resume a copy of the killed run (its folder; the teacher and data are the run's own, restored after)
    after `change(run, teacher, data)`; its one error line (exit 2)."""
    run, teacher, data = tmp_path / "run", killed_run["teacher"], killed_run["data"]
    shutil.copytree(killed_run["root"] / "run", run)
    saved = {f: f.read_bytes() for d in (teacher, data) for f in d.iterdir() if f.is_file()}
    try:
        change(run, teacher, data)
        args = [*killed_run["args"][:-1], run, "--resume"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKD_")}
        env.update({"EDGEKD_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)})
        res = subprocess.run([sys.executable, "-m", "edgekd.cli", *map(str, args)], env=env, capture_output=True,
                             text=True, timeout=300)
    finally:
        for f, b in saved.items():
            f.write_bytes(b)
    assert "Traceback" not in res.stderr and res.returncode == 2, res.stderr
    return res.stderr.strip().splitlines()[-1]


def _checkpoint(run: Path) -> Path:
    return sorted((run / "checkpoints").rglob("step_*"))[-1]


def test_resume_refuses_changed_data(killed_run, tmp_path):
    """Issue 24 item 2: a run's identity includes its data; new content under the same path is refused by name."""
    line = _resume(killed_run, tmp_path, lambda run, t, data: next(data.iterdir()).write_text("other text " * 50))
    assert "the content of --data" in line and "changed" in line, line


def test_resume_refuses_a_changed_teacher(killed_run, tmp_path):
    """Issue 24 item 2: ... and its teacher's weights (their content hash is in config.json)."""
    def change(run, teacher, data):
        st = teacher / "model.safetensors"
        b = bytearray(st.read_bytes())
        b[-4] ^= 1  # the last weight changes in its lowest bit: the same file size, other content
        st.write_bytes(bytes(b))
    line = _resume(killed_run, tmp_path, change)
    assert "the teacher" in line and "changed" in line, line


def test_resume_truncated_checkpoint_names_the_file(killed_run, tmp_path):
    """Issue 24 item 4: a truncated checkpoint model.safetensors is one line naming it and what to do."""
    def change(run, teacher, data):
        st = _checkpoint(run) / "model.safetensors"
        st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    line = _resume(killed_run, tmp_path, change)
    assert "model.safetensors is unreadable" in line and "delete the folder" in line, line


def test_resume_pickled_optimizer_is_never_unpickled(killed_run, tmp_path):
    """Issue 24 item 4: a pickle over optimizer.pt is refused without running it, and the line never advises
    weights_only=False (the unsafe way round)."""
    marker = tmp_path / "pwned"

    def change(run, teacher, data):
        import pickle

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))
        (_checkpoint(run) / "optimizer.pt").write_bytes(pickle.dumps({"state": Evil()}))
    line = _resume(killed_run, tmp_path, change)
    assert "optimizer.pt is unreadable" in line and "weights_only" not in line, line
    assert not marker.exists()
