"""The one-command job: `edgekd distill --target NAME` = search -> distill -> export -> profile -> report.

The student is chosen for the device before any training (the latency model predicts it); when the
device itself is measured and misses the budget, the measurement recalibrates the model and a smaller
student is searched and distilled again, at most MAX_SHRINKS times. Everything lands in one run
directory (DESIGN.md); each file is written atomically, and report.json gains its job keys
(`search`, `exports`, `latency.measured`, `timings_s.job`) only when the job is complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from edgekd.errors import EdgekdError, JobFailed
from edgekd import faults
from edgekd.console import echo
from edgekd.io import run_lock, write_json, write_text
from edgekd.report import mark_status, render_markdown
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
ATTEMPT_ENTRIES = ("config.json", "student", "checkpoints", "export", "profile", "report.json", "report.md",
                   "plots", "search")


@dataclass
class JobConfig:
    """The one-command job: the engine's config nested, plus what only the job needs."""

    engine: Any                       # edgekd.distill.DistillConfig (its `student` is the search's)
    target: Optional[str] = None
    latency_budget_ms: Optional[float] = None
    device: str = "local"             # where the exported student is profiled

    JOB_FIELDS = ("target", "latency_budget_ms", "device")

    @classmethod
    def from_dict(cls, d: dict) -> "JobConfig":
        """The job's fields and the engine's, flat (the Python API's dict form)."""
        from edgekd.distill import DistillConfig

        job = {k: d[k] for k in cls.JOB_FIELDS if k in d}
        return cls(engine=DistillConfig.from_dict({k: v for k, v in d.items() if k not in cls.JOB_FIELDS}), **job)


def _teacher_config(teacher: str) -> dict:
    from edgekd.models.loading import read_config_dict, resolve_model_dir

    return read_config_dict(resolve_model_dir(teacher))


def _check_device(device: str, **profile_kw) -> None:
    """A malformed or unreachable --device is a one-line error before minutes of training, not after."""
    from edgekd.profile import check_device

    check_device(device, **profile_kw)


def _export_key(fmt: str, precision: str) -> str:
    return fmt if precision == "float32" else f"{fmt}-int8"


def _heldout_rows(cfg, run_dir: Path, seq_len: int, n: int = 16):
    """Held-out token rows for the exports' parity checks (the engine's cached validation tokens);
    None (random ids) for classifiers or when the data cannot be re-read."""
    try:
        from edgekd.data.batching import eval_blocks
        from edgekd.data.cache import split_tokens
        from edgekd.data.corpus import load_corpus
        from edgekd.data.tokenizer import load_tokenizer

        corpus = load_corpus(cfg.data, cfg.text_column, cfg.label_column)
        if corpus.is_classification:
            return None
        tok = load_tokenizer(run_dir / "student")
        return eval_blocks(split_tokens(corpus, "validation", tok), seq_len, n)
    except EdgekdError:
        return None


def _search(teacher_cfg: dict, target, budget, seq_len: int, out_dir: Optional[Path], calibration=None,
            quiet=False, smaller_than: Optional[int] = None):
    """search_student, then (after a recalibration) insist on a strictly smaller student than the last."""
    from edgekd.targets.search import _describe, print_table, save_search, search_student

    res = search_student(teacher_cfg, target, budget, seq_len=seq_len, calibration=calibration, show=False)
    if smaller_than is not None and res.choice_row["params"] >= smaller_than:
        fitting = [r for r in res.table if r["fits"] and r["params"] < smaller_than]
        if not fitting:
            raise EdgekdError(f"no smaller student fits {res.target} within {res.latency_budget_ms:g} ms after "
                              f"recalibration: the smallest is {_describe(min(res.table, key=lambda r: r['params']))}")
        for r in res.table:
            r["chosen"] = False
        best = max(fitting, key=lambda r: (r["params"], r["precision"] == "float32", -r["predicted_ms"]))
        best["chosen"] = True
        res.choice = {k: best[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                           "num_key_value_heads", "head_dim", "intermediate_size", "precision")}
        res.predicted_ms = best["predicted_ms"]
    if not quiet:
        print_table(res)
    faults.point("search")
    if out_dir is not None:
        res.files = save_search(res, out_dir)
    return res


def _saved_search(d: Path):
    """The search a resumed job already made (RUN/search/candidates.json), so --resume keeps its student."""
    from edgekd.targets.search import SearchResult

    try:
        saved = json.loads((d / "candidates.json").read_text())
        return SearchResult(choice=saved["choice"], table=saved["candidates"], target=saved["target"],
                            latency_budget_ms=saved["latency_budget_ms"], predicted_ms=saved["predicted_ms"],
                            calibrated=saved["calibrated"],
                            files={x: str(d / f) for x, f in (("csv", "candidates.csv"), ("json", "candidates.json"),
                                                              ("plot", "search.png"))})
    except (json.JSONDecodeError, KeyError) as e:
        raise EdgekdError(f"{d / 'candidates.json'} is corrupt ({type(e).__name__}): start a new run with another --out") from e


def _park_attempt(run_dir: Path, k: int) -> Path:
    """Move attempt k's files into RUN/attempts/k so the next attempt writes a clean top level."""
    dest = run_dir / "attempts" / str(k)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ATTEMPT_ENTRIES:
        src = run_dir / name
        if src.exists():
            os.replace(src, dest / name)
    return dest


def _measure_on_device(run_dir: Path, file: Path, device: str, threads: int, runs: int, warmup: int,
                       profile_kw: dict) -> dict:
    from edgekd.export.run_dir import _device_tag
    from edgekd.profile import profile_model

    stats = profile_model(file, device=device, runs=runs, warmup=warmup, threads=threads, **profile_kw)
    fmt = "onnx" if file.suffix == ".onnx" else "tflite"
    quant = "int8-dynamic" if ".int8." in file.name else "none"
    stats["quantize"] = quant
    prof = run_dir / "profile" / f"{fmt}-{'int8' if quant != 'none' else 'float'}-{_device_tag(device)}.json"
    write_json(prof, stats)
    return {"device": stats["device"], "format": fmt, "quantize": quant, "p50_ms": stats["p50_ms"],
            "p90_ms": stats["p90_ms"], "mean_ms": stats["mean_ms"], "peak_rss_mb": stats.get("peak_rss_mb"),
            "size_mb": stats.get("size_mb"), "threads": stats.get("threads"), "on_target": True,
            "profile": str(prof.relative_to(run_dir))}


def distill_for_target(config: Any, *, export_seq_len: int = EXPORT_SEQ_LEN, profile_runs: int = PROFILE_RUNS,
                       profile_warmup: int = PROFILE_WARMUP, max_shrinks: int = MAX_SHRINKS,
                       calibration: Any = None, **profile_kw) -> Path:
    """Search, distill, export, profile and report for `config.target`; return the run directory.

    `config`: a DistillConfig or a dict of its fields (`student` must be unset: the search chooses
    it). `calibration`: the latency model's starting calibration (None: the device's saved one).
    `profile_kw`: extra keywords for profile_model on the device (identity_file, benchmark_binary...).
    """
    from edgekd.distill import resolve_out
    from edgekd.targets import load_target

    job = JobConfig.from_dict(config) if isinstance(config, dict) else replace(config, engine=replace(config.engine))
    cfg = job.engine
    if not job.target:
        raise EdgekdError("distill_for_target needs a target: pass --target NAME (see `edgekd targets list`)")
    if cfg.student is not None:
        raise EdgekdError("--student and --target together: the target's search chooses the student; drop one")
    t = load_target(job.target)
    _check_device(job.device, **profile_kw)
    if cfg.steps is None:
        cfg.steps = JOB_STEPS
    out = resolve_out(cfg)
    cfg.out = str(out)
    with run_lock(out):
        if (out / "config.json").exists() and not cfg.resume:
            raise EdgekdError(f"run directory {out} already holds a run: pass --resume to continue it or another --out")
        try:
            return _job(job, t, out, export_seq_len, profile_runs, profile_warmup, max_shrinks, calibration, profile_kw)
        except BaseException as e:
            if (out / "config.json").is_file():  # the job had begun: its report says how it ended
                interrupted = isinstance(e, KeyboardInterrupt)
                mark_status(out, "interrupted" if interrupted else "failed",
                            "interrupted (Ctrl-C): rerun with --resume to finish it" if interrupted else
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
            raise


def _job(job, t, out: Path, export_seq_len: int, profile_runs: int, profile_warmup: int, max_shrinks: int,
         calibration: Any, profile_kw: dict) -> Path:
    """distill_for_target's work, with RUN/.lock held."""
    from edgekd.distill import run
    from edgekd.export import export_and_profile_run
    from edgekd.targets.latency import (calibrate, default_calibration, load_calibration,
                                        measurement_from_profile, runtime_for)
    from edgekd.targets.search import save_search

    cfg = job.engine
    timer = PhaseTimer(out / "checkpoints" / "job_timings.json", resume=cfg.resume)
    teacher_cfg = _teacher_config(cfg.teacher)
    seq_len = min(export_seq_len, cfg.seq_len, int(teacher_cfg.get("max_position_embeddings") or export_seq_len))
    fmt = t.runtime["preferred_format"]
    threads = int(t.runtime.get("default_threads") or 0) or None
    on_target_local = t.access.get("method") == "local"  # `host`: this machine is the device
    measure_device = job.device if job.device != "local" else ("local" if on_target_local else None)
    cal = calibration if calibration is not None else load_calibration(t.key, fmt)

    attempts: list[dict] = []
    device_measurements: list[dict] = []  # calibration inputs, across attempts
    shrink_note = None
    with timer("search"):
        if cfg.resume and (out / "search" / "candidates.json").is_file():
            res = _saved_search(out / "search")
        else:
            res = _search(teacher_cfg, t, job.latency_budget_ms, seq_len, out / "search", cal, cfg.quiet)
    for k in range(max_shrinks + 1):
        choice = dict(res.choice)
        precision = choice.pop("precision")
        # --- distill, scratch baseline, evaluation (the engine) ---
        with timer("distill+scratch+eval"):
            if not (cfg.resume and (out / "report.json").is_file() and (out / "student").is_dir()):
                run(replace(cfg, student=choice, resume=cfg.resume and (out / "config.json").is_file()),
                    status="incomplete")
        cfg.resume = False
        # --- export four ways with parity, profile each locally ---
        with timer("export+parity+local_profile"):
            ex = export_and_profile_run(out, seq_len=seq_len, calib_inputs=_heldout_rows(cfg, out, seq_len),
                                        device="local", runs=profile_runs, warmup=profile_warmup,
                                        threads=threads if on_target_local else None)
        measured = ex["measured"]
        attempt = {"attempt": k, "choice": res.choice, "params": res.choice_row["params"],
                   "predicted_ms": res.predicted_ms, "calibrated": res.calibrated, "measured_ms": None}
        # --- the device itself: the deployed file and its other precision (both inform calibration) ---
        device_error, on_dev = None, {}
        if measure_device:
            with timer("device_profile"):
                for prec in (precision, "int8" if precision == "float32" else "float32"):
                    e = ex["exports"].get(_export_key(fmt, prec), {})
                    if not e.get("passed"):
                        continue
                    if measure_device == "local":
                        m = next((m for m in measured if m["format"] == fmt and
                                  (m["quantize"] != "none") == (prec == "int8")), None)
                    else:
                        try:
                            m = _measure_on_device(out, out / e["path"], measure_device, threads or 1,
                                                   profile_runs, profile_warmup, profile_kw)
                        except EdgekdError as err:
                            device_error = str(err)
                            break
                        measured.append(m)
                    if m is not None:
                        m["on_target"] = True
                        on_dev[prec] = m
        if precision in on_dev:
            attempt["measured_ms"] = on_dev[precision]["p50_ms"]
        attempts.append(attempt)
        if attempt["measured_ms"] is None or attempt["measured_ms"] <= res.latency_budget_ms or k == max_shrinks:
            break
        # --- measured miss: recalibrate on every device measurement so far, search a smaller student ---
        with timer("recalibrate+search"):
            for prec, m in on_dev.items():
                device_measurements.append(measurement_from_profile(m | {"threads": threads},
                                                                    {**teacher_cfg, **choice}, prec, seq_len=seq_len))
            cal = calibrate(device_measurements, t, fmt, prior=cal or default_calibration(t, fmt))
            try:
                nxt = _search(teacher_cfg, t, res.latency_budget_ms, seq_len, None, cal, cfg.quiet,
                              smaller_than=attempt["params"])
            except EdgekdError as err:
                shrink_note = str(err)
                break
        if not cfg.quiet:
            echo(f"measured {attempt['measured_ms']:.3f} ms on {measure_device} > budget {res.latency_budget_ms:g} ms: "
                  f"recalibrated the latency model; distilling a smaller student ({k + 1}/{max_shrinks})")
        _park_attempt(out, k)
        cal.save(out / "search" / "calibration.json")
        if measure_device != "local" or on_target_local:
            cal.save()  # the device's own calibration: later searches for this target predict it
        nxt.files = save_search(nxt, out / "search")
        res = nxt

    # --- report ---
    rep = json.loads((out / "report.json").read_text())
    kind = rep.get("kind", "causal-lm")
    final = attempts[-1]
    rep["target"] = t.name
    rep["config"].update(target=job.target, latency_budget_ms=res.latency_budget_ms, device=job.device)
    rep["latency_budget_ms"] = res.latency_budget_ms
    rep["latency"] = {
        "predicted_ms": res.predicted_ms, "format": fmt, "runtime": runtime_for(fmt), "precision": precision,
        "seq_len": seq_len, "threads": threads, "calibrated": res.calibrated,
        "meets_budget_predicted": res.predicted_ms <= res.latency_budget_ms,
        "measured_on_target_ms": final["measured_ms"],
        "meets_budget_measured": None if final["measured_ms"] is None else final["measured_ms"] <= res.latency_budget_ms,
        "measured": measured,
    }
    if device_error:
        rep["latency"]["device_error"] = device_error
    if shrink_note:
        rep["latency"]["shrink_stopped"] = shrink_note
    rep["exports"] = ex["exports"]
    rel = lambda p: str(Path(p).relative_to(out))  # noqa: E731
    rep["search"] = {"table": rel(res.files["csv"]), "json": rel(res.files["json"]), "plot": rel(res.files["plot"]),
                     "choice": res.choice, "predicted_ms": res.predicted_ms, "params": final["params"],
                     "calibrated": res.calibrated, "candidates": len(res.table), "attempts": attempts}
    rep.setdefault("timings_s", {})["job"] = timer.summary()
    rep["student"]["precision_deployed"] = precision
    failed = [f"{name}: {e.get('error', 'failed')}" for name, e in ex["exports"].items() if not e.get("passed")]
    missed = None
    if rep["latency"]["meets_budget_measured"] is False:
        missed = (f"the device missed the budget: {final['measured_ms']:.3f} ms measured > {res.latency_budget_ms:g} ms "
                  f"after {len(attempts) - 1} recalibrate-and-shrink round(s)")
    problem = device_error or (f"export parity failed ({'; '.join(failed)})" if failed else None) or missed
    rep["status"] = "failed" if problem else "complete"
    if problem:
        rep["error"] = problem
    write_json(out / "report.json", rep)
    write_text(out / "report.md", render_markdown(rep, kind) + "\n")
    if not cfg.quiet:
        _print_summary(out, rep)
    if missed and not (device_error or failed):
        raise JobFailed(f"{missed}; the run {out} records the numbers")
    if device_error:
        raise JobFailed(f"{device_error} (run {out} holds the local results)")
    if failed:
        raise JobFailed(f"export parity failed ({'; '.join(failed)}); the run {out} records the numbers")
    return out


def _print_summary(out: Path, rep: dict) -> None:
    lat, s, b = rep["latency"], rep["student"], rep["scratch"]
    line = (f"{rep['target']}: student {s['params']:,} params predicted {lat['predicted_ms']:.2f} ms "
            f"(budget {rep['latency_budget_ms']:g} ms)")
    if lat["measured_on_target_ms"] is not None:
        line += f", measured {lat['measured_on_target_ms']:.2f} ms on the device"
    echo(line)
    if "eval_loss" in s and "eval_loss" in b:
        echo(f"held-out loss: distilled {s['eval_loss']:.4f} vs scratch {b['eval_loss']:.4f}")
    echo(f"job written to {out} (report.md, report.json, student/, export/, profile/, search/)")


__all__ = ["distill_for_target", "JOB_STEPS", "EXPORT_SEQ_LEN"]
