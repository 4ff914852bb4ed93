"""The one-command job: `edgekd distill --target NAME` = search -> distill -> export -> profile -> report.

The student is chosen for the device before any training (the latency model predicts it); when the
device itself is measured and misses the budget, the measurement recalibrates the model and a smaller
student is searched and distilled again, at most `max_shrinks` times. Everything lands in one run
directory (DESIGN.md); each file is written atomically, and report.json gains its job keys
(`search`, `exports`, `latency.measured`, `timings_s.job`, ...) only when the job is complete.

For a causal-LM teacher the job is generative by default: the search weighs generation (decode
tokens/s and time to first token from the target's budget, or --decode-tok-s/--ttft-ms), the student is
exported as an LLM with a KV cache (`litert-lm`, `onnx-genai`; float and the searched precision, each
with generation parity) and profiled generating; a measured miss of the generation budget on the
device recalibrates the generation model. `generative=False` keeps the logits-graph job (ONNX/TFLite
over a fixed window, the latency budget), which is also what classifiers get.

The job talks to each layer through its objects: a SearchResult, the engine's RunResult, export
records, measured entries, and report/'s JobFacts. Its own options are a JobConfig, with the engine's
DistillConfig nested in it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, Union

from edgekd import faults
from edgekd.console import echo
from edgekd.distill.config import DistillConfig, read_saved_json, refuse_changes, resolve_out, resume_config
from edgekd.errors import EdgekdError, JobFailed
from edgekd.io import run_lock, write_json
from edgekd.models.loading import CLASSIFIER
from edgekd.report import JobFacts, build_job_report, failure_message, mark_status, print_summary, write_job_report
from edgekd.settings import Settings
from edgekd.timing import PhaseTimer

# Defaults of the job, tuned so `edgekd distill --target android-arm64` ends within ~8 minutes on an
# idle 2-core machine (see the report's timings_s.job for the CPU seconds of each phase).
# 150 steps: on an idle 2 cores a distill step takes ~0.45 s and a scratch step ~0.26 s, so training is
# ~2 min and the whole job ~3; the engine's 300 would be ~4.5 min, too close to 10 on a slower box.
JOB_STEPS = 150          # training steps, for the distilled student and again for the scratch baseline
EXPORT_SEQ_LEN = 64      # the exported (static) sequence length = the one the latency budget is for
PROFILE_RUNS = 20        # timed runs per exported file
PROFILE_WARMUP = 3
MAX_SHRINKS = 2          # recalibrate-and-shrink rounds after a measured miss on the device
PARITY_ROWS = 16         # held-out rows the exports are checked on
GEN_PROMPTS, GEN_PROMPT_TOKENS = 8, 16  # held-out prompts (and their length) of the generation parity check
GEN_PROFILE_RUNS = 3     # timed generations per generative export
ATTEMPT_ENTRIES = ("config.json", "student", "checkpoints", "export", "profile", "report.json", "report.md",
                   "plots", "search")
JOB_FILE = "job.json"    # the job's own options, for --resume (the engine's are config.json)
RESUME_FREE = ("engine", "profile", "save_calibration")  # may differ on --resume: how, not what


@dataclass
class JobConfig:
    """The job's options; `engine` is what the distillation itself depends on.

    `calibration`: where the latency model starts: None (datasheet priors), a calibration .json path,
    "saved" (the device's calibration saved in the cache), or a Calibration (Python API).
    `save_calibration`: after a measurement on the device, save its calibration in the cache.
    `profile`: extra keywords for profile_model on the device (identity_file, known_hosts, ...).
    `generative`: the LLM job (generation budget, litert-lm/onnx-genai exports) or the logits-graph job;
    None chooses by the teacher (causal LM: generative). `decode_tok_s`, `ttft_ms`: its budget overrides.
    """

    engine: DistillConfig = field(default_factory=DistillConfig)
    target: Optional[str] = None
    latency_budget_ms: Optional[float] = None
    device: str = "local"
    calibration: Any = None
    save_calibration: bool = False
    export_seq_len: int = EXPORT_SEQ_LEN
    profile_runs: int = PROFILE_RUNS
    profile_warmup: int = PROFILE_WARMUP
    max_shrinks: int = MAX_SHRINKS
    profile: dict = field(default_factory=dict)
    generative: Optional[bool] = None   # None: generative for a causal-LM teacher, the logits job otherwise
    decode_tok_s: Optional[float] = None  # generation budget overrides (default: the target file's)
    ttft_ms: Optional[float] = None

    @classmethod
    def from_dict(cls, d: dict) -> "JobConfig":
        """A JobConfig from its own fields plus, flat beside them, the engine's (the old flat dict)."""
        names = {f.name for f in fields(cls)} - {"engine"}
        engine = d.get("engine", {k: v for k, v in d.items() if k not in names})
        engine = engine if isinstance(engine, DistillConfig) else DistillConfig.from_dict(engine)
        return cls(engine=engine, **{k: v for k, v in d.items() if k in names})

    def saved_fields(self) -> dict:
        """The job's options as RUN/job.json holds them (a Calibration object by its device and format)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("engine", "profile")}
        if d["calibration"] is not None and not isinstance(d["calibration"], str):
            d["calibration"] = f"object:{d['calibration'].device}/{d['calibration'].fmt}"
        return d


def distill_for_target(config: Union[JobConfig, dict], *, settings: Optional[Settings] = None) -> Path:
    """Search, distill, export, profile and report for `config.target`; return the run directory.

    `config`: a JobConfig (or a dict of its fields with the engine's flat beside them); the engine's
    `student` must be unset: the search chooses it. `settings`: the CLI's (default: the environment now).
    """
    job = JobConfig.from_dict(config) if isinstance(config, dict) else replace(config, engine=replace(config.engine))
    settings = settings or Settings.from_env()
    t = _check_job(job, settings)
    out = resolve_out(job.engine)
    job.engine.out = str(out)
    with run_lock(out):
        if (out / "config.json").exists() and not job.engine.resume:
            raise EdgekdError(f"run directory {out} already holds a run: pass --resume to continue it or another --out")
        if job.engine.resume:
            _check_resume(job, out)
        try:
            return _Job(job, t, out, settings).run()
        except BaseException as e:
            if (out / "config.json").is_file():  # the job had begun: its report says how it ended
                interrupted = isinstance(e, KeyboardInterrupt)
                mark_status(out, "interrupted" if interrupted else "failed",
                            "interrupted (Ctrl-C): rerun with --resume to finish it" if interrupted else
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
            raise


def _check_job(job: JobConfig, settings: Settings):
    """The target (its host facts measured, explicitly, here) and a reachable device, before any work."""
    from edgekd.profile import check_device
    from edgekd.targets import load_target, measure_target

    if not job.target:
        raise EdgekdError("distill_for_target needs a target: pass --target NAME (see `edgekd targets list`)")
    if job.engine.student is not None and not _given_student(job):
        raise EdgekdError("--student and --target together: the target's search chooses the student; drop one "
                          "(--student bilstm is the exception: it is distilled as it is and measured against the budget)")
    t = measure_target(load_target(job.target), settings=settings)
    check_device(job.device, settings=settings, **job.profile)
    if job.engine.steps is None:
        job.engine.steps = JOB_STEPS
    return t


def _given_student(job: JobConfig) -> bool:
    """A student the search does not choose: edgekd's BiLSTM (--student bilstm), a family the latency model does
    not predict; the job distills it as given and judges the budget on its measured time."""
    from edgekd.models.specs import student_overrides
    from edgekd.models.arch import BILSTM_MODEL_TYPE

    return job.engine.student is not None and \
        (student_overrides(job.engine.student) or {}).get("model_type") == BILSTM_MODEL_TYPE


def _check_resume(job: JobConfig, out: Path) -> None:
    """--resume continues the job as it was configured: a job or engine option that differs is one line."""
    if (out / "config.json").is_file():
        resume_config(job.engine, out)  # the engine's options (raises naming them)
    path = out / JOB_FILE
    if not path.is_file():
        return  # killed before the job wrote it: nothing to hold the flags against
    refuse_changes(job.saved_fields(), read_saved_json(path), JobConfig().saved_fields(), "job", free=RESUME_FREE)


def _start_calibration(job: JobConfig, t, fmt: str, settings: Settings, cls):
    """The cost model's starting calibration (a `cls`: the latency or the generation model's), and how
    report.json names it (source, path, values)."""
    from edgekd.targets.latency import calibration_path, load_calibration

    given = job.calibration
    if given is None:
        return None, {"source": "priors", "path": None, "values": None}
    if isinstance(given, cls):
        return given, {"source": "given", "path": None, "values": given.to_dict()}
    if not isinstance(given, (str, os.PathLike)):
        raise EdgekdError(f"calibration: this job's cost model takes a {cls.__name__}, a path or 'saved', got a "
                          f"{type(given).__name__}")
    path = calibration_path(t.key, fmt, settings) if given == "saved" else Path(given)
    cal = load_calibration(t.key, fmt, path, cls)
    if cal is None:
        what = f"no saved calibration for {t.name}/{fmt} ({path})" if given == "saved" else f"{path} does not exist"
        raise EdgekdError(f"--calibration: {what}: measure the device once with --save-calibration, or drop it")
    return cal, {"source": "saved" if given == "saved" else "file", "path": str(path), "values": cal.to_dict()}


def _target_facts(t) -> dict:
    """The device facts the job's latency model used (report.json's `target_facts`)."""
    return {"name": t.name, "path": t.path, "facts": {k: t.data[k] for k in ("cpu", "memory", "runtime", "budget")},
            "measured": {k: t[k] for k in t.measured}}


class _Job:
    """distill_for_target's work with RUN/.lock held: the state one attempt hands to the next.

    `self.gen` is the generative job's state (None for the logits job): the budget overrides and the
    lengths its exports are profiled at; the methods below branch on it where the two jobs differ.
    """

    def __init__(self, job: JobConfig, t, out: Path, settings: Settings):
        from edgekd.models.loading import CAUSAL_LM, check_kind, model_kind, read_config_dict, resolve_model_dir

        self.job, self.t, self.out, self.settings = job, t, out, settings
        self.timer = PhaseTimer(out / "checkpoints" / "job_timings.json", resume=job.engine.resume)
        self.teacher_cfg = read_config_dict(resolve_model_dir(job.engine.teacher))
        check_kind(resolve_model_dir(job.engine.teacher), self.teacher_cfg)  # before the search: one line, no files
        max_pos = int(self.teacher_cfg.get("max_position_embeddings") or job.export_seq_len)
        self.seq_len = min(job.export_seq_len, job.engine.seq_len, max_pos)
        causal = model_kind(self.teacher_cfg) == CAUSAL_LM
        generative = causal if job.generative is None else job.generative
        if generative and not causal:
            raise EdgekdError("--generative needs a causal-LM teacher: a classifier is exported as a logits graph")
        if not generative and (job.decode_tok_s is not None or job.ttft_ms is not None):
            raise EdgekdError("--decode-tok-s/--ttft-ms budget generation: drop them, or run the generative job")
        if generative and job.latency_budget_ms is not None:
            raise EdgekdError("--latency-budget is the logits job's budget: an LLM's is --decode-tok-s/--ttft-ms "
                              "(or pass --logits for the logits-graph job)")
        self.given = _given_student(job)
        if self.given and causal:
            raise EdgekdError("--student bilstm is a sentence classifier: give a *ForSequenceClassification teacher, "
                              "or drop --student to search a student of the causal LM's family")
        self.gen = {"decode_tok_s": job.decode_tok_s, "ttft_ms": job.ttft_ms} if generative else None
        if generative:
            from edgekd.targets.generation import GenerationCalibration, target_format

            self.fmt, cls = target_format(t), GenerationCalibration
        else:
            from edgekd.targets.latency import Calibration

            self.fmt, cls = t.runtime["preferred_format"], Calibration
        self.threads = int(t.runtime.get("default_threads") or 0) or None
        self.on_target_local = t.access.get("method") == "local"  # `host`: this machine is the device
        self.measure_device = job.device if job.device != "local" else ("local" if self.on_target_local else None)
        self.cal, self.cal_info = _start_calibration(job, t, self.fmt, settings, cls)
        self.attempts: list[dict] = []
        self.device_measurements: list[dict] = []  # calibration inputs, across attempts
        self.device_error = self.shrink_note = None
        self.quiet = job.engine.quiet

    def search(self, max_params: Optional[int] = None):
        from edgekd.search import print_table, search_student

        res = search_student(self.teacher_cfg, self.t, self.job.latency_budget_ms, seq_len=self.seq_len,
                             calibration=self.cal, max_params=max_params, generation=self.gen)
        if res.generation:
            b, limit = res.generation["budget"], int(self.teacher_cfg.get("max_position_embeddings") or 2048)
            if b["prompt_len"] + b["decode_len"] > limit:
                raise EdgekdError(f"{self.t.name}'s generation budget holds at a {b['prompt_len']}-token prompt and "
                                  f"{b['decode_len']} generated tokens, more than the teacher's {limit} positions: "
                                  f"use a target file with shorter prompt_len/decode_len")
        if not self.quiet:
            print_table(res)
        faults.point("search")
        return res

    def given_result(self):
        """The SearchResult of a student given as it is (nothing searched, nothing predicted): the budget it is
        measured against."""
        from edgekd.search import SearchResult

        budget = self.job.latency_budget_ms
        return SearchResult(choice={"student": str(self.job.engine.student), "precision": "float32"}, table=[],
                            target=self.t.name, predicted_ms=None, calibrated=False,
                            latency_budget_ms=float(budget if budget is not None else self.t.budget["latency_ms"]))

    def run(self) -> Path:
        from edgekd.search import SearchResult

        resume, search_dir = self.job.engine.resume, self.out / "search"
        with self.timer("search"):
            if self.given:
                res = self.given_result()
            elif resume and (search_dir / "candidates.json").is_file():
                res = SearchResult.load(search_dir)
            else:
                res = self.search()
                res.save(search_dir)
        if not (self.out / JOB_FILE).is_file():
            write_json(self.out / JOB_FILE, self.job.saved_fields())
        for k in range(self.job.max_shrinks + 1):
            result, exports, measured, on_dev = self.attempt(res, k, resume)
            resume = False
            if not self.shrink_wanted(res, k):
                break
            nxt = self.recalibrate_and_search(res, on_dev)
            if nxt is None:
                break
            self.next_attempt(k, nxt)
            res = nxt
        return self.finish(res, result, exports, measured)

    def attempt(self, res, k: int, resume: bool):
        """One student: distill it (the engine), export it, time it locally and on the device."""
        from edgekd.distill.run import run

        with self.timer("distill+scratch+eval"):
            result = run(replace(self.job.engine, student=self.job.engine.student if self.given else res.arch,
                                 resume=resume and (self.out / "config.json").is_file()), status="incomplete")
        with self.timer("export+parity+local_profile"):
            exports, measured = (self.export_generative(res, result) if self.gen else
                                 self.export_logits(result))
        on_dev = self.measure_on_device(res, exports, measured) if self.measure_device else {}
        params = result.report["student"]["params"] if self.given else res.choice_row["params"]
        self.attempts.append({"attempt": k, "choice": res.choice, "params": params,
                              "predicted_ms": res.predicted_ms, "calibrated": res.calibrated,
                              "measured_ms": on_dev[res.precision]["p50_ms"] if res.precision in on_dev and not self.gen
                              else None} | (self.generation_attempt(res, on_dev) if self.gen else {}))
        return result, exports, measured, on_dev

    def export_logits(self, result):
        """The logits graph four ways (ONNX, TFLite, float and int8), each timed here."""
        from edgekd.export import export_run
        from edgekd.profile.exports import profile_exports

        if result.kind == CLASSIFIER:
            rows = self.heldout_sentences()
        else:
            rows = None if result.heldout_ids is None else result.heldout_ids[:PARITY_ROWS, :self.seq_len]
        exports = export_run(self.out, seq_len=self.seq_len, calib_inputs=rows)
        measured = profile_exports(self.out, exports, device="local", runs=self.job.profile_runs,
                                   warmup=self.job.profile_warmup,
                                   threads=self.threads if self.on_target_local else None)
        return exports, measured

    def heldout_sentences(self) -> dict:
        """A classifier's parity rows: held-out (validation) sentences from the shortest to the longest, each
        padded to the exported length with its attention mask, in the student's tokenizer."""
        from edgekd.data.batching import sentences_of_every_length
        from edgekd.data.corpus import load_corpus
        from edgekd.data.tokenizer import load_tokenizer

        e = self.job.engine
        corpus = load_corpus(e.data, e.text_column, e.label_column)
        rows = sentences_of_every_length(corpus.validation, load_tokenizer(self.out / "student"), self.seq_len,
                                         PARITY_ROWS)
        lengths = rows["attention_mask"].sum(1)
        return rows | {"source": f"held-out sentences (the validation split) of {int(lengths.min())} to "
                                 f"{int(lengths.max())} tokens, padded to {self.seq_len} and masked"}

    def export_generative(self, res, result):
        """litert-lm and onnx-genai, float and the searched precision, each with generation parity on held-out
        prompts, then each timed generating here at the budget's prompt and decode lengths."""
        from edgekd.export import export_run
        from edgekd.export.run_dir import generative_variants
        from edgekd.profile.exports import profile_generative_export

        variants = generative_variants(("float32", res.precision))
        prompts = None if result.heldout_ids is None else [
            [int(x) for x in row[:GEN_PROMPT_TOKENS]] for row in result.heldout_ids[:GEN_PROMPTS]]
        exports = export_run(self.out, variants=variants, prompts=prompts)
        b = res.generation["budget"]
        measured = []
        for e in exports.values():
            if e.get("passed"):
                measured.append(profile_generative_export(self.out, e, "local", b["prompt_len"], b["decode_len"],
                                                          GEN_PROFILE_RUNS, 1,
                                                          self.threads if self.on_target_local else None))
                faults.point("profile")
        return exports, measured

    def measure_on_device(self, res, exports: dict, measured: list) -> dict:
        """The deployed file and its other precision on the device (both inform a recalibration)."""
        from edgekd.export import export_key

        other = "int8" if res.precision == "float32" and not self.gen else "float32"
        on_dev = {}
        with self.timer("device_profile"):
            for prec in dict.fromkeys((res.precision, other)):
                e = exports.get(export_key(self.fmt, prec), {})
                if not e.get("passed"):
                    continue
                if self.measure_device == "local":  # this machine is the device: the local timing is it
                    m = next((m for m in measured if m["format"] == self.fmt and m["precision"] == prec), None)
                else:
                    try:
                        m = self.profile_on_device(res, e)
                    except EdgekdError as err:
                        self.device_error = str(err)
                        break
                    measured.append(m)
                if m is not None:
                    m["on_target"] = True
                    on_dev[prec] = m
        return on_dev

    def profile_on_device(self, res, export: dict) -> dict:
        from edgekd.profile.exports import profile_export, profile_generative_export

        if self.gen:
            b = res.generation["budget"]
            return profile_generative_export(self.out, export, self.measure_device, b["prompt_len"], b["decode_len"],
                                             GEN_PROFILE_RUNS, 1, self.threads or 1, settings=self.settings,
                                             **self.job.profile)
        return profile_export(self.out, export, self.measure_device, self.job.profile_runs, self.job.profile_warmup,
                              self.threads or 1, settings=self.settings, **self.job.profile)

    def generation_attempt(self, res, on_dev: dict) -> dict:
        """The attempt's generation numbers: predicted, measured on the device, and the budget keys it missed."""
        pred, b = res.generation["predicted"], res.generation["budget"]
        m = on_dev.get(res.precision)
        from edgekd.targets.spec import generation_misses

        misses = [] if m is None else generation_misses(m, b)
        return {"predicted": {k: pred[k] for k in ("decode_tok_s", "ttft_ms")},
                "measured": None if m is None else {k: m[k] for k in ("decode_tok_s", "ttft_ms")}, "misses": misses}

    def shrink_wanted(self, res, k: int) -> bool:
        a = self.attempts[-1]
        missed = bool(a.get("misses")) if self.gen else (a["measured_ms"] is not None and
                                                         a["measured_ms"] > res.latency_budget_ms)
        return missed and k < self.job.max_shrinks and not self.given  # a given student is not shrunk

    def recalibrate_and_search(self, res, on_dev: dict):
        """A measured miss: recalibrate on every device measurement so far, search a strictly smaller student."""
        with self.timer("recalibrate+search"):
            config = {**self.teacher_cfg, **res.arch}
            if self.gen:
                from edgekd.targets.generation import (calibrate_generation, default_generation_calibration,
                                                       generation_measurement)

                for prec, m in on_dev.items():
                    self.device_measurements.append(generation_measurement(m, config, prec))
                self.cal = calibrate_generation(self.device_measurements, self.t,
                                                prior=self.cal or default_generation_calibration(self.t, self.fmt))
            else:
                from edgekd.targets.latency import calibrate, default_calibration, measurement_from_profile

                for prec, m in on_dev.items():
                    self.device_measurements.append(measurement_from_profile(
                        m | {"threads": self.threads}, config, prec, seq_len=self.seq_len))
                self.cal = calibrate(self.device_measurements, self.t, self.fmt,
                                     prior=self.cal or default_calibration(self.t, self.fmt))
            self.cal_info = self.cal_info | {"recalibrated": self.cal.to_dict()}
            try:
                return self.search(max_params=self.attempts[-1]["params"])
            except EdgekdError as err:
                self.shrink_note = str(err)
                return None

    def next_attempt(self, k: int, nxt) -> None:
        """Park attempt k in RUN/attempts/k, save the new calibration and search for attempt k + 1."""
        a = self.attempts[-1]
        if not self.quiet:
            missed = (", ".join(f"{m} {a['measured'][m]:.4g}" for m in a["misses"]) + " outside the generation budget"
                      if self.gen else f"{a['measured_ms']:.3f} ms > budget {nxt.latency_budget_ms:g} ms")
            echo(f"measured {missed} on {self.measure_device}: recalibrated the "
                 f"{'generation' if self.gen else 'latency'} model; distilling a smaller student "
                 f"({k + 1}/{self.job.max_shrinks})")
        dest = self.out / "attempts" / str(k)
        dest.mkdir(parents=True, exist_ok=True)
        for name in ATTEMPT_ENTRIES:
            if (self.out / name).exists():
                os.replace(self.out / name, dest / name)
        nxt.save(self.out / "search")
        if self.job.save_calibration:  # the device's own calibration, for later --calibration saved
            from edgekd.targets.latency import calibration_path

            self.cal.save(calibration_path(self.t.key, self.fmt, self.settings))

    def final_calibration(self):
        if self.cal is not None:
            return self.cal
        if self.gen:
            from edgekd.targets.generation import default_generation_calibration

            return default_generation_calibration(self.t, self.fmt)
        from edgekd.targets.latency import default_calibration

        return default_calibration(self.t, self.fmt)

    def finish(self, res, result, exports: dict, measured: list) -> Path:
        """report.json and report.md of the job (report/ builds and renders them); JobFailed if it failed."""
        self.final_calibration().save(self.out / "search" / "calibration.json")
        if self.gen:
            from edgekd.targets.generation import RUNTIME_OF

            runtime = RUNTIME_OF[self.fmt]
        else:
            from edgekd.targets.latency import runtime_for

            runtime = runtime_for(self.fmt)
        facts = JobFacts(target=self.t.name, search=res, attempts=self.attempts, fmt=self.fmt, runtime=runtime,
                         seq_len=self.seq_len, threads=self.threads, exports=exports, measured=measured,
                         timings=self.timer.summary(), calibration=self.cal_info, target_facts=_target_facts(self.t),
                         device_error=self.device_error, shrink_stopped=self.shrink_note,
                         extra={"job": self.job.saved_fields()})
        rep = build_job_report(result.report, facts)
        write_job_report(self.out, rep)
        if not self.quiet:
            print_summary(self.out, rep)
        failed = failure_message(rep, self.out)
        if failed:
            raise JobFailed(failed)
        return self.out


__all__ = ["JobConfig", "distill_for_target", "JOB_STEPS", "EXPORT_SEQ_LEN"]
