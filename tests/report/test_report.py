import json
import math

import pytest

from edgekd.report import ENGINE_KEYS, SCHEMA_VERSION, build_report, missing_keys, render_markdown, write_run_report


def _hist(base):
    return [{"step": i, "loss": base - 0.01 * i, "ce": base - 0.01 * i, "tokens": 64} for i in range(30)]


def test_report_files_hold_the_design_keys_and_the_verdict(tmp_path):
    evals = {"teacher": {"eval_loss": 2.0, "perplexity": 7.39, "top1_agreement": 1.0},
             "student": {"eval_loss": 2.5, "perplexity": 12.2, "top1_agreement": 0.6},
             "scratch": {"eval_loss": 3.1, "perplexity": 22.2, "top1_agreement": 0.3},
             "ce_only": {"eval_loss": 2.8, "perplexity": 16.4, "top1_agreement": 0.5}}
    sizes = {"teacher": {"params": 1000, "size_mb": 0.004}, "student": {"params": 300, "size_mb": 0.0012},
             "scratch": {"params": 300, "size_mb": 0.0012}, "ce_only": {"params": 300, "size_mb": 0.0012}}
    hist = {"distilled": _hist(3.0), "scratch": _hist(3.5)}
    hist["scratch"][4]["skipped"] = True
    temps = [{"position": 3, "context": "def f", "tokens": ["a", "b", "c"],
              "probs": {"1.0": [0.7, 0.2, 0.1], "4.0": [0.4, 0.3, 0.3]}, "entropy": {"1.0": 0.8, "4.0": 1.1}}]
    rep = build_report(config={"target": "rpi5", "latency_budget_ms": 12.5, "temperature": 2.0, "alpha": 0.5,
                               "scheme": "offline", "steps": 30}, evals=evals, sizes=sizes, histories=hist,
                       temperature_examples=temps, init_info={"method": "teacher", "layers": [0, 2]},
                       student_config={"hidden_size": 8})
    write_run_report(tmp_path, rep, hist, temps)
    loaded = json.loads((tmp_path / "report.json").read_text())
    assert {"target", "latency_budget_ms", "teacher", "student", "scratch", "latency", "exports"} <= loaded.keys()
    assert loaded["schema_version"] == SCHEMA_VERSION
    assert missing_keys(loaded, ENGINE_KEYS) == ["kind"]  # the engine sets kind after build_report
    assert loaded["student"]["config"] == {"hidden_size": 8} and loaded["scratch"]["top1_agreement"] == 0.3
    assert loaded["distillation"]["student_beats_scratch"] is True
    assert loaded["distillation"]["skipped_steps"]["scratch"] == [4]
    md = (tmp_path / "report.md").read_text()
    assert "is below the scratch" in md and "| distilled student | 300 |" in md and "[4]" in md
    # KD against ce_only, by independent arithmetic: 0.3 of the 0.8 ce_only -> teacher gap
    kd = loaded["distillation"]["kd_vs_ce_only"]
    assert kd["loss_saved"] == pytest.approx(0.3) and kd["gap_closed"] == pytest.approx(0.3 / 0.8)
    assert kd["perplexity_ratio"] == pytest.approx(math.exp(-0.3)) and kd["top1_agreement_gained"] == pytest.approx(0.1)
    assert "| ce_only baseline | 300 |" in md and f"closed **{kd['gap_closed']:.0%}**" in md
    for png in ("loss_curves.png", "temperature.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_says_when_distillation_lost():
    rep = {"teacher": {}, "student": {"eval_loss": 3.0}, "scratch": {"eval_loss": 2.0}, "distillation": {}}
    assert "NOT below" in render_markdown(rep)


def test_job_report_fills_every_job_key_and_says_why_it_failed(tmp_path):
    from edgekd.report import JOB_KEYS, JobFacts, build_job_report, failure_message
    from edgekd.search import SearchResult

    row = {"num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 2,
           "head_dim": 4, "intermediate_size": 16, "precision": "int8", "params": 300, "predicted_ms": 1.5,
           "chosen": True, "fits": True}
    res = SearchResult(choice={k: row[k] for k in ("num_hidden_layers", "hidden_size", "precision")}, table=[row],
                       target="rpi5", latency_budget_ms=2.0, predicted_ms=1.5, calibrated=False)
    engine = {"student": {"params": 300}, "scratch": {}, "timings_s": {"distill": 1.0}, "status": "incomplete"}
    exports = {"tflite": {"path": "export/student.tflite", "passed": True},
               "tflite-int8": {"path": "export/student.int8.tflite", "passed": False, "error": "top-1 0.5"}}
    facts = JobFacts(target="rpi5", search=res, attempts=[{"attempt": 0, "params": 300, "measured_ms": None}],
                     fmt="tflite", runtime="litert", seq_len=64, threads=4, exports=exports, measured=[],
                     timings={"search": {"wall_s": 1, "cpu_s": 1}}, calibration={"source": "priors", "path": None,
                     "values": None}, target_facts={"name": "rpi5", "path": "x", "facts": {}, "measured": {}},
                     extra={"budget_source": "target file",  # the pipeline's (its options, the run's size)
                            "disk_mb": {"run": 1.0, "checkpoints": 0.5, "export": 0.2}})
    rep = build_job_report(engine, facts)
    assert missing_keys(rep, JOB_KEYS) == []
    assert rep["timings_s"] == {"distill": 1.0, "job": facts.timings} and rep["student"]["precision_deployed"] == "int8"
    assert rep["search"]["quant_recipe"] is None  # tflite int8: the converter's own, no recipe of edgekd's to state
    assert rep["status"] == "failed" and "tflite-int8: top-1 0.5" in rep["error"]
    assert failure_message(rep, tmp_path) == f"{rep['error']}; the run {tmp_path} records the numbers"
    assert engine["status"] == "incomplete"  # the job's report is a new dict: the engine's part is left as it was
    unreachable = {**rep, "latency": {**rep["latency"], "device_error": "ssh: no route to host"}}
    assert failure_message(unreachable, tmp_path).endswith(f"the run {tmp_path} holds the local results")
    assert failure_message(build_job_report(engine, facts.__class__(**{**facts.__dict__, "exports": {}})), tmp_path) is None


def test_the_report_says_when_this_machines_memory_not_the_budget_bounded_the_student():
    from edgekd.report import JobFacts, build_job_report
    from edgekd.report.job import render_target_section
    from edgekd.search import SearchResult, describe

    def row(layers, params, fails="", chosen=False):
        return {"num_hidden_layers": layers, "hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 2,
                "head_dim": 4, "intermediate_size": 16, "precision": "int8", "params": params, "predicted_ms": 1.0,
                "chosen": chosen, "fits": not fails, "fails": fails}

    table = [row(4, 900, "latency,train_memory"), row(3, 700, "train_memory"), row(2, 500, "train_memory"),
             row(1, 300, chosen=True)]
    choice = {k: table[3][k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                       "num_key_value_heads", "head_dim", "intermediate_size", "precision")}
    res = SearchResult(choice=choice, table=table, target="rpi5",
                       latency_budget_ms=2.0, predicted_ms=1.0, calibrated=False)
    assert res.held_back["params"] == 700  # the largest within the budget: 900 misses the latency too
    facts = JobFacts(target="rpi5", search=res, attempts=[{"attempt": 0, "params": 300, "measured_ms": None}],
                     fmt="tflite", runtime="litert", seq_len=64, threads=4, exports={}, measured=[],
                     timings={}, calibration={"source": "priors", "path": None, "values": None},
                     target_facts={"name": "rpi5", "path": "x", "facts": {}, "measured": {}}, extra={})
    rep = build_job_report({"student": {"params": 300}, "status": "complete"}, facts)
    assert rep["search"]["held_back_by_memory"] == {"params": 700, "student": describe(table[1])}
    md = render_target_section(rep)
    assert "this machine's free memory cannot train them beside the teacher" in md and "3 layers" in md
    # nothing held back: no such sentence
    free = SearchResult(choice=choice, table=[row(2, 500, "latency"), row(1, 300, chosen=True)], target="rpi5",
                        latency_budget_ms=2.0, predicted_ms=1.0, calibrated=False)
    rep = build_job_report({"student": {"params": 300}, "status": "complete"}, facts.__class__(
        **{**facts.__dict__, "search": free}))
    assert free.held_back is None and rep["search"]["held_back_by_memory"] is None
    assert "free memory" not in render_target_section(rep)


def test_markdown_says_when_ce_only_already_reaches_the_teacher():
    evals = {"teacher": {"eval_loss": 4.19}, "student": {"eval_loss": 4.13}, "ce_only": {"eval_loss": 4.18},
             "scratch": {"eval_loss": 5.2}}
    rep = build_report(config={}, evals=evals, sizes={}, histories={}, temperature_examples=[], init_info={},
                       student_config={})
    assert rep["distillation"]["kd_vs_ce_only"]["gap_closed"] is None
    assert "no gap to close" in render_markdown(rep)


def test_a_part_adds_its_section_without_editing_the_renderer():
    from edgekd.report.sections import SECTIONS, register_section

    rep = {"teacher": {}, "student": {"eval_loss": 3.0}, "scratch": {"eval_loss": 2.0},
           "distillation": {"my_scheme": {"rounds": 3}}}
    before = render_markdown(rep)
    try:
        @register_section("my_scheme", 75)  # between the progressive stages (70) and sequence KD (80)
        def _mine(r, kind):
            return [f"My scheme ran {r['distillation']['my_scheme']['rounds']} rounds.", ""] \
                if r["distillation"].get("my_scheme") else []

        after = render_markdown(rep)
        assert after.replace("My scheme ran 3 rounds.\n\n", "") == before
        assert after.index("My scheme ran 3 rounds.") < after.index("## Plots")
        assert after.index("| model | params") < after.index("My scheme ran 3 rounds.")
        assert "My scheme" not in render_markdown({**rep, "distillation": {}})  # nothing recorded, nothing rendered
    finally:
        SECTIONS.pop("my_scheme", None)


def test_the_schemes_sections_render_what_their_runs_record():
    import edgekd.distill  # noqa: F401  (registers every scheme's section)

    d = {"stages": [{"stage": 1, "config": {"num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 32},
                     "params": 500, "steps": 10, "eval_loss": 3.6}],
         "sequence": {"num_sequences": 5, "generated_tokens": 50, "train_tokens": 80},
         "on_policy": {"on_policy_steps": 3, "steps": 6, "lmbda": 0.5, "max_new_tokens": 8, "prompt_len": 4,
                       "sample_temperature": 1.0},
         "teacher_cache": {"path": "/c", "built": False}}
    md = render_markdown({"teacher": {}, "student": {}, "scratch": {}, "distillation": d})
    order = ["| 1 | 2 | 16 | 32 | 500 | 10 | 3.6000 |", "continuations of 5 training prompts",
             "3 of 6 steps (λ = 0.5)", "Teacher top-k cache: `/c` (reused)", "## Plots"]
    assert [md.index(s) for s in order] == sorted(md.index(s) for s in order)


def test_each_model_kind_shows_its_registered_quality_columns():
    rep = {"teacher": {"perplexity": 7.0, "accuracy": 0.9, "macro_f1": 0.85, "chrf": 51.0}, "student": {},
           "scratch": {}, "distillation": {}}
    assert "| held-out loss | perplexity | top-1" in render_markdown(rep, "causal-lm")
    assert "| held-out loss | chrf | top-1" in render_markdown(rep, "seq2seq")
    md = render_markdown(rep, "classifier")
    assert "| held-out loss | accuracy | macro-F1 | top-1" in md and "| 0.900 | 0.850 |" in md


def _file(fmt: str, precision: str, loss: float, agree: float, path: str) -> dict:
    """An export record as export_run writes it for a kept generative export whose quality was measured."""
    pytorch = {"eval_loss": 2.5, "perplexity": math.exp(2.5), "top1_agreement_teacher": 0.6}
    return {"path": path, "format": fmt, "precision": precision, "passed": True, "size_mb": 1.0, "top1_agreement": 0.97,
            "eval_loss": loss, "perplexity": math.exp(loss), "top1_agreement_teacher": agree,
            "top1_agreement_pytorch": 0.95, "pytorch_float": pytorch, "eval_loss_vs_pytorch": loss - 2.5,
            "quality_on": {"blocks": 8, "window": 192, "tokens": 1528, "runtime": f"{fmt}-runtime 1.0",
                           "source": "the first 192 tokens of 8 held-out blocks"}}


def test_the_shipped_files_quality_heads_the_report_beside_pytorch():
    from edgekd.report.job import shipped_quality_words

    rep = {"teacher": {"params": 1000}, "student": {"params": 300, "size_mb": 1.2, "eval_loss": 2.4, "eval_tokens": 12240},
           "scratch": {}, "distillation": {},
           "generation": {"format": "litert-lm", "precision": "int4", "budget": {"decode_tok_s": 20.0,
                                                                                     "prompt_len": 64, "decode_len": 128}},
           "exports": {"litert-lm": _file("litert-lm", "float32", 2.5, 0.6, "export/student.litertlm"),
                       "litert-lm-int4": _file("litert-lm", "int4", 2.6, 0.55, "export/student.int4.litertlm"),
                       "onnx-genai-int4": {"path": "export/student-genai.int4", "format": "onnx-genai",
                                           "precision": "int4", "passed": False, "error": "parity"}}}
    md = render_markdown(rep, "causal-lm")
    # the headline is the shipped file's (the searched precision in the target's format), PyTorch's beside it
    head = md.index("The file that ships, litert-lm-int4 (`export/student.int4.litertlm`), run in litert-lm-runtime 1.0")
    assert head < md.index("| model | params")
    assert "held-out loss 2.6000 (perplexity 13.464), top-1 agreement with the teacher 0.550" in md
    assert "scores 2.5000 (perplexity 12.182), 0.600 on the same 1,528 held-out tokens: the file's loss is " \
           "0.1000 higher (perplexity x 1.105)" in md
    # the quality table: the files' rows and PyTorch float's on their tokens, labelled, after the PyTorch rows
    rows = ["| distilled student | 300 |", "| distilled student, PyTorch float (on the files' tokens) † | 300 | 1.20 | "
            "2.5000 | 12.182 | 0.600 |", "| litert-lm: the float32 file in litert-lm-runtime 1.0 † | 300 | 1.00 | 2.5000 |",
            "| litert-lm-int4: the int4 file in litert-lm-runtime 1.0 † | 300 | 1.00 | 2.6000 | 13.464 | 0.550 |",
            "† Measured on the first 192 tokens of 8 held-out blocks: 1,528 scored tokens (the rows above: all 12,240 "
            "held-out tokens). Each exported file ran in its own runtime"]
    assert [md.index(r) for r in rows] == sorted(md.index(r) for r in rows)
    assert "onnx-genai-int4:" not in md  # a failed export has no quality row
    rep["generation"] = {**rep["generation"], "format": "onnx-genai"}  # the shipped one failed: said, not hidden
    assert shipped_quality_words(rep) == "The file that ships (onnx-genai-int4: parity) has no quality measured in " \
                                         "its runtime."
    assert shipped_quality_words({**rep, "exports": {}}) is None and "file that ships" not in \
        render_markdown({**rep, "exports": {}}, "causal-lm")


def test_a_classifiers_files_show_their_accuracy_beside_pytorch():
    """A classifier's kept ONNX/TFLite files (export.parity.HeldoutSentences.measure's keys): the headline is the
    shipped file's accuracy and macro-F1 beside PyTorch float's on the same sentences, the quality table has a
    row per file, and the footnote counts sentences."""
    def file(fmt, precision, acc, f1, loss):
        return {"path": f"export/student.{fmt}", "format": fmt, "precision": precision, "passed": True, "size_mb": 0.5,
                "top1_agreement": 1.0, "eval_loss": loss, "accuracy": acc, "macro_f1": f1, "top1_agreement_pytorch": 0.95,
                "pytorch_float": {"eval_loss": 0.40, "accuracy": 0.90, "macro_f1": 0.89}, "eval_loss_vs_pytorch": loss - 0.4,
                "quality_on": {"sentences": 20, "runtime": f"{fmt}-rt 1.0", "source": "the first 20 of the 20 held-out "
                               "sentences (the validation split), padded to 32 and masked"}}

    rep = {"teacher": {"params": 1000, "accuracy": 0.95, "macro_f1": 0.95},
           "student": {"params": 300, "size_mb": 1.2, "eval_loss": 0.4, "accuracy": 0.9, "macro_f1": 0.89,
                       "eval_examples": 20},
           "scratch": {}, "distillation": {}, "latency": {"format": "tflite", "precision": "int8"},
           "exports": {"onnx": file("onnx", "float32", 0.90, 0.89, 0.40), "tflite-int8": file("tflite", "int8", 0.85, 0.84, 0.45)}}
    md = render_markdown(rep, "classifier")
    assert md.index("The file that ships, tflite-int8 (`export/student.tflite`), run in tflite-rt 1.0 on this machine: "
                    "held-out accuracy 0.850, macro-F1 0.840") < md.index("| model | params")
    assert "scores 0.900 and 0.890 on the same 20 held-out sentences, and the file gives PyTorch's label on 95.0% of them" in md
    rows = ["| distilled student, PyTorch float (on the files' sentences) † | 300 | 1.20 | 0.4000 | 0.900 | 0.890 | — |",
            "| onnx: the float32 file in onnx-rt 1.0 † | 300 | 0.50 | 0.4000 | 0.900 | 0.890 | — |",
            "| tflite-int8: the int8 file in tflite-rt 1.0 † | 300 | 0.50 | 0.4500 | 0.850 | 0.840 | — |",
            "† Measured on the first 20 of the 20 held-out sentences (the validation split), padded to 32 and masked: 20 "
            "scored sentences (the rows above: all 20 held-out sentences)"]
    assert [md.index(r) for r in rows] == sorted(md.index(r) for r in rows)


def test_the_runtime_to_ship_is_the_faster_that_passes_parity_on_the_device():
    from edgekd.report.job import runtime_choice

    def row(device, fmt, tok_s, passed=None, emulated=False, precision="int4"):
        m = {"device": device, "format": fmt, "precision": precision, "quantize": precision, "decode_tok_s": tok_s,
             "emulated": emulated}
        return m | ({} if passed is None else {"parity": {"checked": True, "passed": passed}})

    measured = [row("local", "litert-lm", 900.0), row("local", "onnx-genai", 1200.0),
                row("local", "onnx-genai", 300.0, precision="float32"),
                row("ssh://pi@a", "litert-lm", 40.0, True), row("ssh://pi@a", "onnx-genai", 55.0, False),
                row("ssh://root@b", "litert-lm", 1.0, True, True), row("ssh://root@b", "onnx-genai", 9.0, True, True),
                row("ssh://root@c", "litert-lm", 1.0, True)]
    got = runtime_choice(measured, "int4")
    assert got["local"]["ship"] == "onnx-genai" and "1200.0 tok/s at int4 against litert-lm 900.0" in got["local"]["why"]
    assert got["ssh://pi@a"]["ship"] == "litert-lm" and "onnx-genai int4 file failed generation parity" in \
        got["ssh://pi@a"]["why"]
    assert got["ssh://root@b"]["ship"] is None and "emulated" in got["ssh://root@b"]["why"]
    assert "ssh://root@c" not in got  # one runtime measured there: nothing to choose
