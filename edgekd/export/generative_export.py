"""export_generative: a KV-cache export built by the maintained builder, kept only if it generates like PyTorch.

litert-lm: litert-torch's export_hf writes a .litertlm bundle (prefill/decode signatures, tokenizer,
metadata) that the LiteRT-LM runtime loads. onnx-genai: onnxruntime-genai's model builder writes a
folder (model.onnx with past_key_values.* in and present.* out, genai_config.json, tokenizer files).
Both builders run in a child process whose output goes to the log, never the console.

Lengths: one prefill signature of 64 tokens and a KV cache of 192 = the profiler's default prompt (64)
plus decode (128) lengths; both are the smallest that serve that profile, since every extra prefill
length is another signature to convert (conversion time is most of a job's export step).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from edgekd.checks import generative_args, output_dir, output_file
from edgekd.checks import model_dir as check_model_dir
from edgekd.console import log_path
from edgekd.errors import EdgekdError, JobFailed
from edgekd.export import graph_runtime, parity
from edgekd.export.api import export_steps
from edgekd.formats import FORMATS
from edgekd.io import write_json
from edgekd.models.loading import read_config_dict
from edgekd.precision import precision_of

PREFILL_LENGTHS = (64,)
CACHE_LENGTH = 192
# Families each builder converts and whose float export generated PyTorch's greedy tokens exactly (tiny
# save_pretrained models of each, 2 layers, GQA, Gemma3 with a 64-token sliding window, on prompts of 12, 40
# and 100 tokens; the test suite keeps Llama, Qwen3 and Phi-3). onnx-genai 0.18's builder fails on
# Gemma3 (KeyError 'rope_type' in transformers 5's rope_parameters); neither takes GPT-2.
SUPPORTED = {
    "litert-lm": ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM",
                  "Gemma3ForCausalLM", "Phi3ForCausalLM"),
    "onnx-genai": ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM",
                   "Phi3ForCausalLM"),
}
# (format, quantize) -> (builder argument, what it does). litert-lm int4 is blockwise (block 32, what
# phones ship) where every weight's input size is a multiple of 32; the blockwise recipe refuses any
# other (the built-in teacher's 688-wide MLP), which then gets the per-channel int4 recipe
# (`recipe_for`). onnx-genai's MatMulNBits pads the last block.
LITERT_INT4_BLOCKWISE = ("dynamic_wi4b32_afp32", "dynamic_wi4b32_afp32: int4 weights in blocks of 32, activations "
                                                 "quantised at run time")
RECIPES = {
    ("litert-lm", "none"): ("none", "float32 weights and activations"),
    ("litert-lm", "int8"): ("dynamic_wi8_afp32", "dynamic_wi8_afp32: int8 per-channel weights, activations "
                                                 "quantised at run time"),
    ("litert-lm", "int4"): ("dynamic_wi4_afp32", "dynamic_wi4_afp32: int4 per-channel weights, activations "
                                                 "quantised at run time"),
    ("onnx-genai", "none"): ("fp32", "fp32"),
    ("onnx-genai", "int8"): ("int8", "int8 block_size=32 MatMulNBits accuracy_level=4 (int8 activations)"),
    ("onnx-genai", "int4"): ("int4", "int4 block_size=32 MatMulNBits accuracy_level=1 (float32 activations)"),
}


def og_accuracy_level(quantize: str) -> int:
    """MatMulNBits' accuracy_level for onnx-genai's `quantize` file: 4 (int8 activations) where
    formats.ExportFormat.int8_activations says so, else 1 (float32 activations: the same numbers on every ISA)."""
    return 4 if FORMATS["onnx-genai"].quantises_activations(quantize) else 1


def og_quant_options(quantize: str) -> list[str]:
    return ["block_size=32", f"accuracy_level={og_accuracy_level(quantize)}"]


def default_out(model_dir: Path, fmt: str, quantize: str) -> Path:
    """Beside MODEL_DIR in export/: NAME.litertlm, NAME.int4.litertlm, NAME-genai/, NAME-genai.int4/."""
    d = model_dir.resolve()
    tag = "" if quantize == "none" else f".{quantize}"
    f = FORMATS[fmt]
    return d.parent / "export" / (f"{d.name}{f.suffix}{tag}" if f.folder else f"{d.name}{tag}{f.suffix}")


def check_architecture(model_dir: Path, fmt: str) -> str:
    """The config's architecture, or one EdgekdError line naming what `fmt` supports (nothing converted yet)."""
    archs = read_config_dict(model_dir).get("architectures") or ["(none in config.json)"]
    if archs[0] not in SUPPORTED[fmt]:
        raise EdgekdError(f"{model_dir}: architecture {archs[0]} cannot be exported as {fmt}: supported are "
                          f"{', '.join(SUPPORTED[fmt])}")
    if not ((model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer.model").is_file()):
        raise EdgekdError(f"{model_dir} has no tokenizer (tokenizer.json): the {fmt} export bundles one; save it "
                          f"there with tokenizer.save_pretrained")
    if fmt == "litert-lm":
        check_stop_token(model_dir)
    return archs[0]


def check_stop_token(model_dir: Path) -> None:
    """LiteRT-LM opens no bundle without a stop token (its engine: "Stop tokens are required"), and litert-torch
    takes it from the model's generation config (generation_config.json where there is one, else made from
    config.json): one line before anything is built where that names no eos_token_id."""
    import json

    gen = model_dir / "generation_config.json"
    where = "generation_config.json" if gen.is_file() else "config.json"
    try:
        eos = json.loads(gen.read_text()).get("eos_token_id") if gen.is_file() else \
            read_config_dict(model_dir).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        eos = None
    if eos is None or eos == []:
        raise EdgekdError(f"{model_dir} names no end-of-sequence token (eos_token_id in its {where}): LiteRT-LM runs "
                          f"no bundle without a stop token; set eos_token_id there to the tokenizer's end token")


def recipe_for(fmt: str, quantize: str, config: dict) -> tuple[str, str]:
    """(builder argument, description) for MODEL's export: litert-lm int4 blockwise where the weights allow."""
    if (fmt, quantize) == ("litert-lm", "int4"):
        from edgekd.quant.fake_quant import BLOCK, unblocked_inputs

        bad = unblocked_inputs(config)
        if not bad:
            return LITERT_INT4_BLOCKWISE
        arg, what = RECIPES[(fmt, quantize)]
        return arg, f"{what} (not blockwise: a weight's input size of {next(iter(bad.values()))} is not a " \
                    f"multiple of the {BLOCK}-wide block)"
    return RECIPES[(fmt, quantize)]


def _builder_command(fmt: str, quantize: str, arg: str, model_dir: Path, work: Path,
                     cache_length: int) -> tuple[list, Path]:
    """The child process's command line (`arg`: the recipe's builder argument) and where its output lands."""
    if fmt == "litert-lm":
        import json

        options = {"prefill_lengths": list(PREFILL_LENGTHS), "cache_length": cache_length, "quantization_recipe": arg}
        return ([sys.executable, "-m", "edgekd.export.litert_lm_build", str(model_dir), str(work / "build"),
                 json.dumps(options)], work / "build" / "model.litertlm")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o", str(work / "genai"),
           "-p", arg, "-e", "cpu", "-c", str(work / "hf-cache")]
    if quantize != "none":
        cmd += ["--extra_options", *og_quant_options(quantize)]
    return cmd, work / "genai"


def _run_builder(cmd: list, produced: Path, work: Path, name: str) -> float:
    """Run the builder with its output appended to the log; its wall time, or JobFailed with its last error line."""
    log = log_path() or work / "build.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="2", TQDM_DISABLE="1")
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env).returncode
    seconds = time.perf_counter() - start
    if rc != 0 or not produced.exists():
        raise JobFailed(f"building {name} failed (exit {rc}): {_last_error(log)}; full output in {log}")
    return seconds


def _last_error(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln.split(":")[0] or ln.startswith(("ValueError", "RuntimeError"))]
    return ((errors or lines or ["no output"])[-1])[:300]


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def export_generative(model_dir, fmt: str, quantize: str = "none", out=None, prompts=None,
                      new_tokens: int = parity.GEN_NEW_TOKENS,
                      min_top1: float | None = None, *, show_progress: bool = True,
                      reference: "parity.GenerationReference | None" = None,
                      float_reference: "parity.GenerationReference | None" = None) -> dict:
    """Export MODEL_DIR as a generative `fmt` model at OUT, check greedy generation against PyTorch, return the record.

    The record is also written to OUT.json. A failed check (or build) leaves nothing at OUT, writes
    OUT.json with passed=false and the numbers, and raises JobFailed. `prompts`: held-out token-id lists
    (default: windows of the built-in corpus's validation files in the model's own tokenizer).
    `min_top1`: the quantised exports' least teacher-forced top-1 agreement (default parity.GEN_MIN_TOP1).
    `reference`: PyTorch's continuations of MODEL_DIR already computed (a job shares one among its exports);
    by default computed here from MODEL_DIR and `prompts`. `float_reference`: MODEL_DIR is a quantisation-aware
    student on this recipe's grid and that is its float student's (parity.GenerationReference.check).
    """
    generative_args(fmt, quantize, new_tokens, min_top1, out)
    model_dir = check_model_dir(model_dir, "model directory")
    architecture = check_architecture(model_dir, fmt)
    recipe = recipe_for(fmt, quantize, read_config_dict(model_dir))
    out = Path(out or default_out(model_dir, fmt, quantize))
    out = output_file(out) if fmt == "litert-lm" else output_dir(out)
    with export_steps(show_progress, f"export {model_dir.name} -> {out.name}", ["load", "build", "parity"]) as step:
        if reference is None or reference.new_tokens != new_tokens:
            reference = parity.GenerationReference.load(model_dir, prompts, new_tokens)
        cache_length = min(CACHE_LENGTH, reference.max_len)
        limit = cache_length if fmt == "litert-lm" else reference.max_len
        longest = max(len(p) for p in reference.prompts) + new_tokens
        if longest > limit:
            raise EdgekdError(f"the longest prompt plus {new_tokens} new tokens is {longest} tokens, more than the "
                              f"{fmt} export's {limit}: pass shorter prompts or fewer --new-tokens")
        step("build")
        out.parent.mkdir(parents=True, exist_ok=True)
        import tempfile

        with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
            cmd, produced = _builder_command(fmt, quantize, recipe[0], model_dir, Path(tmp), cache_length)
            try:
                seconds = _run_builder(cmd, produced, Path(tmp), out.name)
            except JobFailed as e:
                _remove(out)
                write_json(out.with_name(out.name + ".json"), {"path": str(out), "format": fmt, "quantize": quantize,
                                                               "passed": False, "error": str(e)})
                raise
            step("parity")
            check = reference.check(str(produced), quantized=quantize != "none", min_top1=min_top1,
                                    float_reference=float_reference)
            record = {"path": str(out), "format": fmt, "quantize": quantize, "precision": precision_of(quantize),
                      "recipe": recipe[1], "builder_argument": recipe[0],
                      "prefill_lengths": list(PREFILL_LENGTHS) if fmt == "litert-lm" else None,
                      "cache_length": cache_length if fmt == "litert-lm" else check["run"]["context_length"],
                      "size_mb": graph_runtime.size_mb(str(produced)), "convert_s": seconds, **check,
                      "model_dir": str(model_dir), "architecture": architecture,
                      # what a device's run of the file is checked against (parity.reference_of_record)
                      "parity_reference": {"model_dir": reference.model_dir or str(model_dir),
                                           "quant_aware": float_reference is not None,
                                           "float_model_dir": None if float_reference is None
                                           else float_reference.model_dir,
                                           "new_tokens": new_tokens, "min_top1": min_top1},
                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            _remove(out)
            if record["passed"]:
                os.replace(produced, out)
    write_json(out.with_name(out.name + ".json"), record)
    if not record["passed"]:
        raise JobFailed(parity.generation_failure_line(out.name, record))
    return record
