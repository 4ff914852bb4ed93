"""report.json's keys, written down in code: DESIGN.md's contract and what edgekd adds to it.

`SCHEMA_VERSION` goes into every report.json; raise it when a key changes meaning or goes (adding a
key does not). The nested dicts name each key's own keys; None is a leaf (a number, a string, a list).
`missing_keys` lets tests and readers check a report against this without copying the list.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

_MODEL = {"params": None, "eval_loss": None, "size_mb": None, "top1_agreement": None}

# What the engine (`edgekd distill` without --target) writes.
ENGINE_KEYS: dict = {
    "schema_version": None,
    "status": None,                      # complete | incomplete | failed | interrupted
    "kind": None,                        # causal-lm | classifier | seq2seq
    "target": None,                      # None without --target
    "latency_budget_ms": None,
    "teacher": _MODEL,
    "student": {**_MODEL, "config": None, "init": None},
    "scratch": _MODEL,
    "ce_only": _MODEL,                   # the same student from the same start on hard labels alone
    "latency": {"predicted_ms": None, "measured": None},
    "exports": None,                     # {} from the engine alone
    "distillation": {"loss": None, "temperature": None, "alpha": None, "scheme": None, "steps": None,
                     "skipped_steps": None, "student_beats_scratch": None, "kd_vs_ce_only": None,
                     "eval_curves": None,        # {student, ce_only, scratch: [{step, eval_loss}]}
                     "continuations": None},     # causal LMs: [{prompt, reference, teacher, student, ce_only}]
    "timings_s": None,
}

# What the one-command job (`edgekd distill --target`) adds or fills in.
JOB_KEYS: dict = {
    "student": {"precision_deployed": None},
    "latency": {"predicted_ms": None, "format": None, "runtime": None, "precision": None, "seq_len": None,
                "threads": None, "calibrated": None, "meets_budget_predicted": None, "measured_on_target_ms": None,
                "meets_budget_measured": None, "measured": None},  # optional: device_error, shrink_stopped, device_note
    "exports": None,                     # onnx, onnx-int8, tflite, tflite-int8: path, format, quantize, precision, ...
    # A kept generative export (litert-lm*, onnx-genai*) also holds its own quality, run in its runtime on the
    # held-out text (export/run_dir.py QUALITY_KEYS): eval_loss, perplexity, top1_agreement_teacher,
    # top1_agreement_pytorch, pytorch_float {eval_loss, perplexity, top1_agreement_teacher} on the same tokens,
    # eval_loss_vs_pytorch, quality_on {blocks, window, tokens, source, runtime, seconds}. Its `top1_agreement`
    # stays the parity check's (against PyTorch float on the parity prompts). A classifier's kept ONNX/TFLite file
    # holds accuracy, macro_f1, eval_loss, top1_agreement_pytorch (labels as PyTorch's), pytorch_float {eval_loss,
    # accuracy, macro_f1}, eval_loss_vs_pytorch and quality_on {sentences, source, runtime, seconds}, measured on
    # labelled held-out sentences (export.parity.HeldoutSentences).
    "search": {"table": None, "json": None, "plot": None, "choice": None, "predicted_ms": None, "params": None,
               "calibrated": None, "candidates": None, "attempts": None,
               # the weight recipe of the chosen student's quantised file and why (blockwise or per channel):
               # {format, quantize, recipe, blockwise, grain, why}; None for float32 or ONNX/TFLite
               "quant_recipe": None,
               # what the candidates varied (search.spaces): "transformer" (layers, width, heads, FFN) or "image"
               # (choice: depth and width shares of the teacher's blocks and channels, `student` the family's fields)
               "space": None,
               # the largest student the budget allowed that this machine's free memory could not train beside the
               # teacher (search/candidates.csv `train_memory`): {params, student (in words)}; None where none
               "held_back_by_memory": None},
    # When the student ships quantised (a generative job, QAD on), distillation.quant_aware (report/job.py
    # quant_aware_files): precision, recipe, steps, float / ptq / qad {path, eval_loss, perplexity, prompts_matched,
    # passed}, qad_saved, gap_closed, measured_in, shipped, by_export {KEY: the same per quantised export, with
    # the engine's record of its QAD training}. A QAD-built export's record adds model_dir, vs_float,
    # pytorch_quant_aware, eval_loss_vs_quant_aware and `ptq` (the baseline file's record).
    "calibration": {"source": None, "path": None, "values": None},   # which calibration the search started from
    "budget_source": None,               # options | built-in teacher's demo budget | target file
    "disk_mb": {"run": None, "checkpoints": None, "export": None},  # the run directory's size at the end
    "target_facts": {"name": None, "path": None, "facts": None, "measured": None},  # the device facts used
    "timings_s": {"job": None},
}
# What a classifier's report (kind "classifier") adds: held-out accuracy and macro-F1 of every model (for a
# causal LM, the models carry perplexity and next_token_accuracy instead).
_CLASSIFIER_MODEL = {"accuracy": None, "macro_f1": None}
# ... and the confusion matrix (rows: the true class, columns: the predicted one) of the teacher and students,
# plotted in plots/confusion.png.
_CLASSIFIER_MODEL = _CLASSIFIER_MODEL | {"confusion": None}
# An image classifier's report also holds distillation.teacher_right_student_wrong (how many held-out images),
# shown in plots/mistakes.png.
CLASSIFIER_KEYS: dict = {name: _CLASSIFIER_MODEL for name in ("teacher", "student", "ce_only", "scratch")}

# What a seq2seq report (kind "seq2seq") adds: chrF (sacrebleu) of greedy translations of held-out sentences by
# every model, beside the teacher-forced held-out loss, perplexity and token accuracy of the decoder;
# distillation.kd_vs_ce_only.chrf_gained and distillation.translations ([{source, reference, teacher, student, ce_only}]).
SEQ2SEQ_KEYS: dict = {name: {"chrf": None, "perplexity": None} for name in ("teacher", "student", "ce_only", "scratch")}

# A measured entry (latency.measured, generation.measured) timed through board_genbench.py also holds the device's
# `machine` (uname -m) and `emulated`, and, on a device other than this machine, `parity`: {checked, passed,
# prompts_matched, prompts, first_divergence, tokens_match_share, top1_agreement_decisive, ppl_ratio, threshold,
# machine, emulated, emulated_by (with the emulated core), cpu_features (an arm64 device's: dotprod, i8mm, sve, ...),
# same_tokens_as_here, here_machine, here_prompts_matched, runtime, error} or {checked: false,
# why} (over adb); a graph file's (.onnx, .tflite: latency.measured) `parity` is {checked, passed, rows,
# top1_agreement, max_abs_diff, threshold, machine, emulated, emulated_by, cpu_features, runtime, error}, its parity
# rows run there against PyTorch's logits (the check set FILE.parity.npz beside the export, its record's device_check); an emulated device's
# entries have on_target false. generation.runtime_choice: {device: {ship,
# why, decode_tok_s}} where both LLM runtimes' files at the deployed precision were measured.
# Present only in some reports: "error" (failed/interrupted), latency.device_error, latency.shrink_stopped,
# latency.device_note (an emulated board with fewer CPUs than the target's threads: the threads its files ran on),
# distillation.stages (progressive), distillation.sequence, distillation.teacher_cache, distillation.on_policy.


def missing_keys(rep: dict, schema: dict) -> list[str]:
    """The dotted keys of `schema` that `rep` lacks (nested dicts checked where the report has a dict)."""
    out = []
    for k, sub in schema.items():
        if k not in rep:
            out.append(k)
        elif isinstance(sub, dict) and isinstance(rep[k], dict):
            out += [f"{k}.{m}" for m in missing_keys(rep[k], sub)]
    return out
