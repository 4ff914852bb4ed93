"""A run's student exported four ways (ONNX and TFLite, float and int8), each checked against PyTorch, and
generatively (GENERATIVE_VARIANTS: litert-lm and onnx-genai, float and int4), each checked by greedy generation.

Export only: profiling those files is edgekd.profile.exports (a layer up), so export never imports
profile. The records carry `quantize` (the recipe) and `precision` (what the weights are), so no
one has to read the precision from a file name.
"""

from __future__ import annotations

from pathlib import Path

from edgekd import faults
from edgekd.errors import EdgekdError, JobFailed
from edgekd.export.api import export_model
from edgekd.formats import FORMATS
from edgekd.io import write_json
from edgekd.precision import precision_of

# (format, quantize, file): dynamic-range int8 (weights int8, activations quantised at run time) holds
# parity on causal LMs where full static int8 of the TFLite file did not.
VARIANTS = (("onnx", "none", "student.onnx"), ("onnx", "int8-dynamic", "student.int8.onnx"),
            ("tflite", "none", "student.tflite"), ("tflite", "int8-dynamic", "student.int8.tflite"))
# An image classifier's: its int8 TFLite is full-integer (input and output int8 too: NPUs, the Edge TPU,
# microcontrollers), calibrated on training images.
IMAGE_VARIANTS = VARIANTS[:3] + (("tflite", "int8-full", "student.int8.tflite"),)
# The generative (KV-cache) exports of a causal-LM student, named by format and precision.
_GENERATIVE_NAMES = {"litert-lm": "student{tag}.litertlm", "onnx-genai": "student-genai{tag}"}


def generative_variants(precisions=("float32", "int4")) -> tuple:
    """(format, quantize, name) of each generative format at each precision: the job exports float and the
    searched precision. The default, float and int4, leaves int8 out: it costs another full conversion
    (~30 s for litert-lm on 2 cores) and lies between the two."""
    from edgekd.precision import QUANTIZE

    quant = {precision_of(q): q for q in QUANTIZE}  # later wins: int8 -> "int8", the generative recipe word
    return tuple((fmt, quant[p], name.format(tag="" if p == "float32" else f".{quant[p]}"))
                 for fmt, name in _GENERATIVE_NAMES.items() for p in dict.fromkeys(precisions))


GENERATIVE_VARIANTS = generative_variants()


def export_key(fmt: str, precision: str) -> str:
    """report.json's `exports` key of a variant: "onnx", "tflite-int8", ..."""
    return fmt if precision == "float32" else f"{fmt}-{precision}"


def _generative_record(rec: dict) -> dict:
    keys = ("recipe", "tokens_match_share", "prompts_matched", "prompts", "mean_first_divergence", "ppl_ratio", "top1_agreement_decisive", "size_mb",
            "convert_s", "cache_length", "prefill_lengths")
    return {k: rec[k] for k in keys}


# The quality the file itself achieves in its runtime on the held-out text (parity.HeldoutText.compare: a
# generative export's on held-out blocks, a causal LM's logits file's on the held-out rows parity runs).
# `top1_agreement` stays the parity check's (the file's argmax against PyTorch's); the teacher's is
# `top1_agreement_teacher`.
QUALITY_KEYS = ("eval_loss", "perplexity", "top1_agreement_teacher", "top1_agreement_pytorch", "pytorch_float",
                "eval_loss_vs_pytorch", "quality_on", "accuracy", "macro_f1")  # the last two: a classifier's


# A file built from a quantisation-aware student: how it compares with the float student (parity's figures) and
# that student's own held-out quality in PyTorch on the same tokens.
QAD_KEYS = ("vs_float", "pytorch_quant_aware", "eval_loss_vs_quant_aware")


def _recipe(model_dir: Path, fmt: str, quant: str):
    """The edgekd.quant recipe a quantisation-aware student in MODEL_DIR was trained for and the builder applies."""
    from edgekd.models.loading import read_config_dict
    from edgekd.quant import recipe_for_export

    return recipe_for_export(fmt, quant, read_config_dict(model_dir))


def _ptq_baseline(run: Path, student: Path, fmt: str, quant: str, name: str, prompts, reference) -> dict:
    """The float student quantised after training (PTQ), exported to export/ptq/NAME and scored in its runtime
    like the shipped file: the baseline that shows what quantisation-aware distillation bought. Never fails the
    job: a failed check is its record's `error`."""
    from edgekd.export.generative_export import export_generative

    out = run / "export" / "ptq" / name
    try:
        rec = export_generative(student, fmt, quant, out=out, prompts=prompts, reference=reference)
    except (EdgekdError, JobFailed) as e:
        return {"path": str(out.relative_to(run)), "passed": False, "error": str(e)}
    keep = ("tokens_match_share", "prompts_matched", "prompts", "mean_first_divergence", "ppl_ratio", "top1_agreement_decisive",
            "size_mb", "convert_s") + QUALITY_KEYS
    return {"path": str(out.relative_to(run)), "passed": True, "recipe": rec["recipe"]} | \
        {k: rec[k] for k in keep if k in rec}


def export_run(run_dir, seq_len: int = 64, calib_inputs=None, min_top1: float = 0.9, variants=VARIANTS,
               prompts=None, heldout=None, teacher_top1=None, labelled=None, quant_aware=None) -> dict[str, dict]:
    """Fill RUN/export (files, parity records, export.json); return report.json's `exports`.

    `variants`: (format, quantize, name) rows of VARIANTS and GENERATIVE_VARIANTS. Each record: path
    (relative to RUN), format, quantize, precision, size_mb, passed, the parity numbers (max_abs_diff
    and top1_agreement; the generative ones add recipe, tokens_match_share, mean_first_divergence,
    ppl_ratio) and `error` when it failed. A variant that fails its check is recorded with its error and
    the others go on; the caller decides what a failure means for the job. `prompts`: the generative
    parity's held-out token ids (default: built-in held-out text). `heldout`: a parity.HeldoutText on which
    each generative export's own quality is measured in its runtime (QUALITY_KEYS; none without it);
    `teacher_top1`: the teacher's argmax at each position of a causal LM's `calib_inputs` rows, for the logits
    files' (measured on those rows); `labelled`: a classifier's labelled held-out sentences
    (parity.HeldoutSentences), on which each of its files' accuracy and macro-F1 are measured. `quant_aware`:
    {export key: directory} of the quantisation-aware students (RunResult.quant_aware): such a variant is built
    from its student, checked against it (and figured against the float student), and the float student
    quantised after training is exported beside it in export/ptq/ as the baseline (its record under the
    variant's `ptq`).
    """
    run = Path(run_dir)
    student = run / "student"
    if not (student / "config.json").is_file():
        raise EdgekdError(f"{run} has no student/ model to export: run `edgekd distill` first")
    exports, files, floats = {}, {}, {}
    quant_aware = {k: Path(v) for k, v in (quant_aware or {}).items()}
    references = {}  # PyTorch's greedy continuations of each source model, computed once and shared by its exports

    def reference(src: Path, recipe=None):
        from edgekd.export.parity import GEN_NEW_TOKENS, GenerationReference

        if src not in references:
            references[src] = GenerationReference.load(src, prompts, GEN_NEW_TOKENS, heldout, recipe)
        return references[src]

    for fmt, quant, name in variants:
        out = run / "export" / name
        base = {"path": str(out.relative_to(run)), "format": fmt, "quantize": quant, "precision": precision_of(quant)}
        key = export_key(fmt, base["precision"])
        generative = FORMATS[fmt].generative
        try:
            if generative:
                from edgekd.export.generative_export import export_generative

                qad = quant_aware.get(key)
                if qad is not None:
                    base["ptq"] = _ptq_baseline(run, student, fmt, quant, name, prompts, reference(student))
                    base["model_dir"] = str(qad.relative_to(run)) if qad.is_relative_to(run) else str(qad)
                own = reference(student) if qad is None else reference(qad, _recipe(qad, fmt, quant))
                rec = export_generative(qad or student, fmt, quant, out=out, prompts=prompts, reference=own,
                                        float_reference=None if qad is None else reference(student))
            else:
                rec = export_model(student, fmt, quant, seq_len=seq_len, out=out, calib_inputs=calib_inputs,
                                   min_top1=min_top1, float_file=floats.get(fmt),  # int8 from the float file
                                   teacher_top1=teacher_top1, labelled=labelled)
                if quant == "none":
                    floats[fmt] = out
        except (EdgekdError, JobFailed) as e:
            exports[key] = base | {"passed": False, "error": str(e)}
            files[key] = exports[key]
            continue
        numbers = _generative_record(rec) if generative else {"max_abs_diff": rec["max_abs_diff"], "size_mb": rec["size_mb"]}
        numbers |= {k: rec[k] for k in QUALITY_KEYS + QAD_KEYS if k in rec}
        exports[key] = base | {"top1_agreement": rec["top1_agreement"], **numbers, "passed": True}
        files[key] = exports[key] | {"record": base["path"] + ".json"}
        faults.point("export")
    write_json(run / "export" / "export.json", {"seq_len": seq_len, "files": files})
    return exports
