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
from edgekd.deploy import PROFILE_RUNS, PROFILE_WARMUP
from edgekd.distill.config import DistillConfig, read_saved_json, refuse_changes, resolve_out, resume_config
from edgekd.errors import EdgekdError, JobFailed
from edgekd.io import run_lock, write_json
from edgekd.report import JobFacts, build_job_report, failure_message, mark_status, print_summary, write_job_report
from edgekd.settings import Settings
from edgekd.timing import PhaseTimer

# Defaults of the job, tuned so `edgekd distill --target android-arm64` ends within ~8 minutes on an
# idle 2-core machine (see the report's timings_s.job for the CPU seconds of each phase).
# 150 steps: on an idle 2 cores a distill step takes ~0.45 s and a scratch step ~0.26 s, so training is
# ~2 min and the whole job ~3; the engine's 300 would be ~4.5 min, too close to 10 on a slower box.
JOB_STEPS = 150          # training steps, for the distilled student and again for the scratch baseline
EXPORT_SEQ_LEN = 64      # the exported (static) sequence length = the one the latency budget is for
MAX_SHRINKS = 2          # recalibrate-and-shrink rounds after a measured miss on the device
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
    `quant_aware`: the student that ships quantised is distilled into its runtime's numbers after float
    distillation (edgekd.distill.quant_aware) and the float student quantised after training is measured beside
    it (None: on; False: post-training quantisation only, today's `--no-quant-aware`).
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
    quant_aware: Optional[bool] = None  # None/True: quantised exports distilled into their runtime's numbers (QAD)
    runtime: Optional[str] = None       # the LLM runtime searched for and shipped (default: the target file's)

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


JOB_ONLY = {"latency_budget_ms": "--latency-budget", "decode_tok_s": "--decode-tok-s", "ttft_ms": "--ttft-ms",
            "calibration": "--calibration", "save_calibration": "--save-calibration", "generative": "--generative/--logits",
            "device": "--device", "quant_aware": "--quant-aware/--no-quant-aware", "runtime": "--runtime"}


def distill_job(config: JobConfig, *, settings: Optional[Settings] = None):
    """`edgekd distill`: the whole job for `config.target`, or the engine alone without one (then the job's
    own options are refused by name). Returns the run directory (the engine's RunResult without a target)."""
    if config.target:
        return distill_for_target(config, settings=settings)
    default = JobConfig()
    given = [opt for k, opt in JOB_ONLY.items() if getattr(config, k) != getattr(default, k)]
    if given:
        raise EdgekdError(f"{', '.join(given)} {'goes' if len(given) == 1 else 'go'} with --target (the job's "
                          f"budget, cost model and device): give --target NAME, or drop {'it' if len(given) == 1 else 'them'}")
    from edgekd.distill import run

    return run(config.engine, settings=settings)


def distill_for_target(config: Union[JobConfig, dict], *, settings: Optional[Settings] = None) -> Path:
    """Search, distill, export, profile and report for `config.target`; return the run directory.

    `config`: a JobConfig (or a dict of its fields with the engine's flat beside them); the engine's
    `student` must be unset: the search chooses it. `settings`: the CLI's (default: the environment now).
    """
    job = JobConfig.from_dict(config) if isinstance(config, dict) else replace(config, engine=replace(config.engine))
    from edgekd.distill import apply_settings

    settings = apply_settings(settings or Settings.from_env())  # the kernel switch and fault hook, for Python callers
    t, runner = _check_job(job, settings)
    out = resolve_out(job.engine)
    job.engine.out = str(out)
    with run_lock(out):
        if (out / "config.json").exists() and not job.engine.resume:
            raise EdgekdError(f"run directory {out} already holds a run: pass --resume to continue it or another --out")
        if job.engine.resume:
            _check_resume(job, out)
        try:
            return _Job(job, t, out, settings, runner).run()
        except BaseException as e:
            if (out / "config.json").is_file():  # the job had begun: its report says how it ended
                interrupted = isinstance(e, KeyboardInterrupt)
                mark_status(out, "interrupted" if interrupted else "failed",
                            "interrupted (Ctrl-C): rerun with --resume to finish it" if interrupted else
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
            raise


def _check_job(job: JobConfig, settings: Settings):
    """The job's options, the target (its host facts measured, explicitly, here) and a reachable device
    (probed once, here), before any work."""
    from edgekd.profile import check_device
    from edgekd.targets import load_target, measure_target

    if not job.target:
        raise EdgekdError("distill_for_target needs a target: pass --target NAME (see `edgekd targets list`)")
    if job.engine.student is not None and not _given_student(job):
        raise EdgekdError("--student and --target together: the target's search chooses the student; drop one "
                          "(--student bilstm and --student cnn are the exception: each is distilled as it is and "
                          "measured against the budget)")
    t = measure_target(load_target(job.target, settings), settings=settings)
    runner = check_device(job.device, settings=settings, **job.profile)  # the one probe of the device
    if job.engine.steps is None:
        job.engine.steps = JOB_STEPS
    return t, runner


def _given_student(job: JobConfig) -> bool:
    """A student the search does not choose: edgekd's BiLSTM (--student bilstm) or CNN (--student cnn), which are
    not narrowings of the teacher's family; the job distills it as given, predicts an image student's latency,
    and judges the budget on its measured time. (An image teacher's own family is searched: search.spaces.)"""
    from edgekd.models.arch import BILSTM_MODEL_TYPE, CNN_MODEL_TYPE
    from edgekd.models.specs import student_overrides

    return job.engine.student is not None and \
        (student_overrides(job.engine.student) or {}).get("model_type") in (BILSTM_MODEL_TYPE, CNN_MODEL_TYPE)


def _check_resume(job: JobConfig, out: Path) -> None:
    """--resume continues the job as it was configured: a job or engine option that differs is one line."""
    if (out / "config.json").is_file():
        resume_config(job.engine, out)  # the engine's options (raises naming them)
    path = out / JOB_FILE
    if not path.is_file():
        return  # killed before the job wrote it: nothing to hold the flags against
    refuse_changes(job.saved_fields(), read_saved_json(path), JobConfig().saved_fields(), "job", free=RESUME_FREE)


def _start_calibration(job: JobConfig, t, fmt: str, settings: Settings, cls):
    """The cost model's starting calibration (a `cls`: its calibration type), and how report.json names
    it (source, path, values)."""
    from edgekd.targets.fitting import calibration_path, load_calibration

    given = job.calibration
    if given is None:
        return None, {"source": "priors", "path": None, "values": None}
    if isinstance(given, cls):
        return given, {"source": "given", "path": None, "values": given.to_dict()}
    if not isinstance(given, (str, os.PathLike)):
        raise EdgekdError(f"calibration: this job's cost model takes a {cls.__name__}, a path or 'saved', got a "
                          f"{type(given).__name__}")
    path = calibration_path(t.key, fmt, settings) if given == "saved" else Path(given)
    cal = load_calibration(t.key, fmt, path, cls, settings)
    if cal is None:
        what = f"no saved calibration for {t.name}/{fmt} ({path})" if given == "saved" else f"{path} does not exist"
        raise EdgekdError(f"--calibration: {what}: measure the device once with --save-calibration, or drop it")
    return cal, {"source": "saved" if given == "saved" else "file", "path": str(path), "values": cal.to_dict()}


def _target_facts(t) -> dict:
    """The device facts the job's cost model used (report.json's `target_facts`)."""
    return {"name": t.name, "path": t.path, "facts": {k: t.data[k] for k in ("cpu", "memory", "runtime", "budget")},
            "measured": {k: t[k] for k in t.measured}}


BUDGET_OPTIONS = {"latency_ms": "--latency-budget", "decode_tok_s": "--decode-tok-s", "ttft_ms": "--ttft-ms"}


def cost_model_of(job: JobConfig, teacher_cfg: dict):
    """The job's cost model: `generation` for a causal-LM teacher (unless --logits), `latency` otherwise (sentence
    and image classifiers alike: the latency model counts an image classifier's convolutions, cost_latency.image_ops)."""
    from edgekd.models.loading import CAUSAL_LM, model_kind
    from edgekd.targets import get_cost_model

    causal = model_kind(teacher_cfg) == CAUSAL_LM
    generative = causal if job.generative is None else job.generative
    if generative and not causal:
        raise EdgekdError("--generative needs a causal-LM teacher: a classifier is exported as a logits graph")
    return get_cost_model("generation" if generative else "latency")


def budget_overrides(job: JobConfig, model, target: str) -> tuple[dict, str]:
    """The budget bounds the job's options set (refused by name where they are another cost model's), and
    where the budget comes from: the options, the built-in teacher's demo budget (when nothing is given
    with that teacher), or the target file."""
    from edgekd.models.builtin import demo_budget, is_builtin_teacher

    given = {"latency_ms": job.latency_budget_ms, "decode_tok_s": job.decode_tok_s, "ttft_ms": job.ttft_ms}
    given = {k: v for k, v in given.items() if v is not None}
    foreign = [BUDGET_OPTIONS[k] for k in given if k not in model.budget_keys]
    if foreign:
        own = "/".join(model.budget_options[k] for k in model.budget_keys)
        raise EdgekdError(f"{'/'.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not a budget of the "
                          f"{model.name} job, whose budget is {own}: drop {'it' if len(foreign) == 1 else 'them'}, "
                          f"or choose the other job with --generative/--logits")
    if given:
        return given, "options"
    demo = demo_budget(model.name, target) if is_builtin_teacher(job.engine.teacher) else None
    return (dict(demo), "built-in teacher's demo budget") if demo else ({}, "target file")


def disk_mb(out: Path) -> dict:
    """The run directory's size on disk and its largest parts, in MB (report.json's `disk_mb`)."""
    def size(p: Path) -> float:
        files = [p] if p.is_file() else (f for f in p.rglob("*") if f.is_file() and not f.is_symlink())
        return sum(f.stat().st_size for f in files) / 1e6 if p.exists() else 0.0

    return {"run": size(out), "checkpoints": size(out / "checkpoints"), "export": size(out / "export")}


class _Job:
    """distill_for_target's work with RUN/.lock held: the state one attempt hands to the next.

    The job holds one cost model (`self.model`: its search, budget, calibration and attempt records) and
    one Deployment (`self.deploy`: how its student is exported, checked and timed); every phase below
    is the same whatever they are.
    """

    def __init__(self, job: JobConfig, t, out: Path, settings: Settings, runner=None):
        from edgekd.deploy import Where, deployment_for
        from edgekd.models.loading import CAUSAL_LM, check_kind, model_kind, read_config_dict, resolve_model_dir

        self.job, self.t, self.out, self.settings = job, t, out, settings
        self.timer = PhaseTimer(out / "checkpoints" / "job_timings.json", resume=job.engine.resume)
        self.teacher_cfg = read_config_dict(resolve_model_dir(job.engine.teacher))
        check_kind(resolve_model_dir(job.engine.teacher), self.teacher_cfg)  # before the search: one line, no files
        max_pos = int(self.teacher_cfg.get("max_position_embeddings") or job.export_seq_len)
        self.seq_len = min(job.export_seq_len, job.engine.seq_len, max_pos)
        self.model = cost_model_of(job, self.teacher_cfg)
        self.budget, self.budget_source = budget_overrides(job, self.model, t.name)
        if "seq_len" in self.model.length_keys:
            self.budget["seq_len"] = self.seq_len
        self.given = _given_student(job)
        if self.given and model_kind(self.teacher_cfg) == CAUSAL_LM:
            raise EdgekdError("--student bilstm is a sentence classifier: give a *ForSequenceClassification teacher, "
                              "or drop --student to search a student of the causal LM's family")
        self.fmt = self.model.target_format(t)
        if job.runtime is not None:
            if job.runtime not in self.model.runtimes:  # noqa: SIM102
                raise EdgekdError(f"--runtime {job.runtime}: the {self.model.name} job runs "
                                  f"{' or '.join(self.model.runtimes) or 'its target file runtime only'}"
                                  + (": drop --runtime, or --logits" if self.model.runtimes else ": drop --runtime"))
            self.fmt = job.runtime
        self.deploy = deployment_for(self.model.name)
        self.threads = int(t.runtime.get("default_threads") or 0) or None
        on_target_local = t.access.get("method") == "local"  # `host`: this machine is the device
        self.measure_device = job.device if job.device != "local" else ("local" if on_target_local else None)
        self.device_note = None
        device_threads = self._device_threads(runner) if job.device != "local" and runner is not None else None
        self.where = Where(out=out, seq_len=self.seq_len, threads=device_threads or self.threads,
                           local_threads=self.threads if on_target_local else None,
                           device=runner if job.device != "local" and runner is not None else self.measure_device,
                           settings=settings, profile_kw=dict(job.profile), runs=job.profile_runs,
                           warmup=job.profile_warmup)
        self.cal, self.cal_info = _start_calibration(job, t, self.fmt, settings, self.model.calibration_type)
        self.attempts: list[dict] = []
        self.device_measurements: list[dict] = []  # calibration inputs, across attempts
        self.device_error = self.shrink_note = None
        self.quiet = job.engine.quiet

    def _device_threads(self, runner) -> Optional[int]:
        """The threads the device's profiles run on where the device has fewer CPUs than the target's threads: an
        emulated board's CPUs (its times judge nothing; said in report.json's `device_note`); a real device with
        fewer is one line now, before any work, not a failed profile after the training."""
        if not self.threads:
            return None
        facts = runner.facts()
        have = facts.get("threads")
        if not have or have >= self.threads:
            return None
        if facts.get("emulated"):
            self.device_note = (f"{runner.describe()} is emulated with {have} CPU{'s' if have != 1 else ''}: its files "
                                f"ran on {have} thread{'s' if have != 1 else ''}, not {self.t.name}'s {self.threads} "
                                f"(its times judge nothing; its tokens are checked)")
            return have
        raise EdgekdError(f"{runner.describe()} has {have} CPU{'s' if have != 1 else ''} for edgekd, {self.t.name} runs "
                          f"on {self.threads} threads: check that --device is the device {self.t.name} describes, or "
                          f"give a target file whose default_threads it has")

    def search(self, max_params: Optional[int] = None):
        from edgekd.search import print_table, search_student

        res = search_student(self.teacher_cfg, self.t, self.budget, cost_model=self.model, calibration=self.cal,
                             max_params=max_params, train_params=self.trainable_params(), settings=self.settings,
                             fmt=self.fmt)
        needed, limit = self.model.positions(res.budget), int(self.teacher_cfg.get("max_position_embeddings") or 2048)
        if needed > limit:
            raise EdgekdError(f"{self.t.name}'s budget ({self.model.budget_words(res.budget)}) needs {needed} positions, "
                              f"more than the teacher's {limit}: use a target file with shorter "
                              f"{'/'.join(self.model.length_keys)}")
        if not self.quiet:
            print_table(res)
        faults.point("search")
        return res

    def trainable_params(self) -> Optional[int]:
        """The largest student this machine can train beside the teacher at the job's batch and sequence."""
        import torch

        from edgekd.distill.memory import trainable_params
        from edgekd.models.loading import CLASSIFIER, model_kind
        from edgekd.models.vision import is_image_classifier

        if is_image_classifier(self.teacher_cfg):  # kilobytes to megabytes of weights: no bound worth estimating
            return None
        e = self.job.engine
        device = torch.device(e.torch_device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return trainable_params(self.teacher_cfg, -(-e.batch_size // self.settings.world_size), e.seq_len, device,
                                per_token=model_kind(self.teacher_cfg) != CLASSIFIER, micro=e.micro_batch_size)

    def given_result(self):
        """The SearchResult of a student given as it is (nothing searched, nothing predicted): the budget it is
        measured against."""
        from edgekd.search import SearchResult

        b = self.model.budget(self.t, self.budget)
        predicted = None
        from edgekd.models.vision import is_image_classifier

        if is_image_classifier(self.teacher_cfg):  # the latency model counts image classifiers (its image_ops)
            from transformers import AutoConfig

            from edgekd.models.loading import check_kind, resolve_model_dir
            from edgekd.models.students import student_config_from
            from edgekd.targets.cost_latency import predict

            d = resolve_model_dir(self.job.engine.teacher)
            check_kind(d, self.teacher_cfg)  # registers edgekd's CNN with the Auto classes
            student = student_config_from(self.job.engine.student, AutoConfig.from_pretrained(str(d)))
            predicted = predict(student, self.t, precision="float32", fmt=self.fmt, calibration=self.cal,
                                threads=self.threads).total_ms
        return SearchResult(choice={"student": str(self.job.engine.student or "default"), "precision": "float32"},
                            table=[], target=self.t.name, predicted_ms=predicted,
                            calibrated=predicted is not None and self.cal is not None,
                            cost_model=self.model.name, budget=b, fmt=self.fmt, latency_budget_ms=float(b["latency_ms"]))

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
            if not self.shrink_wanted(k):
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

        e = self.job.engine
        with self.timer("distill+scratch+eval"):
            result = run(replace(e, student=e.student if self.given else res.arch, quant_aware=self.quant_aware(res),
                                 resume=resume and (self.out / "config.json").is_file()), status="incomplete",
                         settings=self.settings)
        with self.timer("export+parity+local_profile"):
            data = {"data": e.data, "text_column": e.text_column, "label_column": e.label_column}
            exports, measured = self.deploy.export_and_time(self.where, res, result, data)
        on_dev = self.measure_on_device(res, exports, measured) if self.measure_device else {}
        params = result.report["student"]["params"] if self.given else res.choice_row["params"]
        self.attempts.append({"attempt": k, "choice": res.choice, "params": params, "predicted_ms": res.predicted_ms,
                              "calibrated": res.calibrated} | self.model.attempt_numbers(res, on_dev.get(res.precision)))
        return result, exports, measured, on_dev

    def quant_aware(self, res) -> list[str]:
        """The recipes the engine distils the student into (its quantised exports'), or none with --no-quant-aware."""
        if self.job.quant_aware is False:
            if res.precision == "float32":
                raise EdgekdError(f"--no-quant-aware: the student for {self.t.name} ships in float32, so there is "
                                  f"nothing quantised to train for: drop it")
            return list(self.job.engine.quant_aware)
        return list(dict.fromkeys([*self.job.engine.quant_aware, *self.deploy.quant_aware_recipes(res)]))

    def measure_on_device(self, res, exports: dict, measured: list) -> dict:
        """The deployed file and its other precision on the device (both inform a recalibration)."""
        from edgekd.export import export_key

        on_dev = {}
        with self.timer("device_profile"):
            for prec in self.deploy.device_precisions(res):
                e = exports.get(export_key(self.fmt, prec), {})
                if not e.get("passed"):
                    continue
                if self.measure_device == "local":  # this machine is the device: the local timing is it
                    m = next((m for m in measured if m["format"] == self.fmt and m["precision"] == prec), None)
                else:
                    try:
                        m = self.deploy.profile_on_device(self.where, res, e)
                    except EdgekdError as err:
                        self.device_error = str(err)
                        break
                    measured.append(m)
                if m is not None and m.get("emulated"):  # real tokens, meaningless times: never judged or fitted
                    m["on_target"] = False
                elif m is not None:
                    m["on_target"] = True
                    on_dev[prec] = m
            for fmt, prec in ([] if self.device_error or self.measure_device == "local"
                              else self.deploy.compared_on_device(res, self.fmt)):
                e = exports.get(export_key(fmt, prec), {})
                if e.get("passed"):  # the other runtime's file, beside it: which one to ship there (report)
                    try:
                        measured.append(self.deploy.profile_on_device(self.where, res, e) | {"on_target": False})
                    except EdgekdError as err:
                        self.device_error = str(err)
        return on_dev

    def shrink_wanted(self, k: int) -> bool:
        """A measured miss on the device, shrink rounds left, and a student the search chose."""
        return bool(self.attempts[-1]["misses"]) and k < self.job.max_shrinks and not self.given

    def recalibrate_and_search(self, res, on_dev: dict):
        """A measured miss: recalibrate on every device measurement so far, search a strictly smaller student."""
        with self.timer("recalibrate+search"):
            config = {**self.teacher_cfg, **res.arch}
            for prec, m in on_dev.items():
                self.device_measurements.append(self.model.measurement(m, config, prec, seq_len=self.seq_len,
                                                                       threads=self.threads))
            self.cal = self.model.calibrate(self.device_measurements, self.t, self.fmt,
                                            prior=self.cal or self.model.default_calibration(self.t, self.fmt))
            self.cal_info = self.cal_info | {"recalibrated": self.cal.to_dict()}
            try:
                return self.search(max_params=self.attempts[-1]["params"])
            except EdgekdError as err:
                self.shrink_note = str(err)
                return None

    def next_attempt(self, k: int, nxt) -> None:
        """Park attempt k in RUN/attempts/k, save the new calibration and search for attempt k + 1."""
        if not self.quiet:
            echo(f"measured {self.model.miss_words(self.attempts[-1], nxt.budget)} on {self.measure_device}: "
                 f"recalibrated the {self.model.name} model; distilling a smaller student "
                 f"({k + 1}/{self.job.max_shrinks})")
        dest = self.out / "attempts" / str(k)
        dest.mkdir(parents=True, exist_ok=True)
        for name in ATTEMPT_ENTRIES:
            if (self.out / name).exists():
                os.replace(self.out / name, dest / name)
        nxt.save(self.out / "search")
        if self.job.save_calibration:  # the device's own calibration, for later --calibration saved
            from edgekd.targets.fitting import calibration_path

            self.cal.save(calibration_path(self.t.key, self.fmt, self.settings))

    def finish(self, res, result, exports: dict, measured: list) -> Path:
        """report.json and report.md of the job (report/ builds and renders them); JobFailed if it failed."""
        (self.cal or self.model.default_calibration(self.t, self.fmt)).save(self.out / "search" / "calibration.json")
        facts = JobFacts(target=self.t.name, search=res, attempts=self.attempts, fmt=self.fmt,
                         runtime=self.model.runtime(self.fmt), seq_len=self.seq_len, threads=self.threads,
                         exports=exports, measured=measured, timings=self.timer.summary(), calibration=self.cal_info,
                         target_facts=_target_facts(self.t), device_error=self.device_error,
                         shrink_stopped=self.shrink_note, device_note=self.device_note,
                         extra={"job": self.job.saved_fields(), "budget_source": self.budget_source,
                                "disk_mb": disk_mb(self.out)})
        rep = build_job_report(result.report, facts)
        write_job_report(self.out, rep)
        if not self.quiet:
            print_summary(self.out, rep)
            d = rep["disk_mb"]
            echo(f"run directory: {d['run']:.0f} MB on disk (checkpoints {d['checkpoints']:.0f} MB, "
                 f"exports {d['export']:.0f} MB; --keep-checkpoints N keeps more)")
        failed = failure_message(rep, self.out)
        if failed:
            raise JobFailed(failed)
        return self.out


__all__ = ["JobConfig", "distill_for_target", "distill_job", "JOB_STEPS", "EXPORT_SEQ_LEN", "budget_overrides", "cost_model_of"]
