"""After a distill run: export the student four ways, profile each locally, and summarise for report.json."""

from __future__ import annotations

from pathlib import Path

from edgekd import faults
from edgekd.errors import EdgekdError, JobFailed
from edgekd.export.api import export_model
from edgekd.io import write_json

VARIANTS = (("onnx", "none", "student.onnx"), ("onnx", "int8-dynamic", "student.int8.onnx"),
            ("tflite", "none", "student.tflite"), ("tflite", "int8-dynamic", "student.int8.tflite"))


def _device_tag(device: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in device.replace("ssh://", "ssh-"))


def export_and_profile_run(run_dir, seq_len: int = 64, calib_inputs=None, device: str = "local",
                           runs: int = 20, warmup: int = 3, threads: int | None = None,
                           min_top1: float = 0.9, **profile_kw) -> dict:
    """Fill RUN/export and RUN/profile; return {"exports": ..., "measured": [...]} for report.json.

    The int8 files use dynamic-range int8 (weights int8, activations quantised at run time), which
    holds parity on causal LMs where full static int8 of the TFLite file did not. A variant that fails
    its parity check is recorded with its numbers and error and is not profiled; the others go on.
    """
    from edgekd.profile import profile_model

    run = Path(run_dir)
    student = run / "student"
    if not (student / "config.json").is_file():
        raise EdgekdError(f"{run} has no student/ model to export: run `edgekd distill` first")
    exports, measured, summary = {}, [], {"seq_len": seq_len, "device": device, "files": {}}
    for fmt, quant, name in VARIANTS:
        key = fmt if quant == "none" else f"{fmt}-int8"
        out = run / "export" / name
        rel = str(out.relative_to(run))
        try:
            rec = export_model(student, fmt, quant, seq_len=seq_len, out=out, calib_inputs=calib_inputs,
                               min_top1=min_top1)
        except (EdgekdError, JobFailed) as e:
            exports[key] = {"path": rel, "quantize": quant, "passed": False, "error": str(e)}
            summary["files"][key] = exports[key]
            continue
        exports[key] = {"path": rel, "format": fmt, "quantize": quant, "max_abs_diff": rec["max_abs_diff"],
                        "top1_agreement": rec["top1_agreement"], "size_mb": rec["size_mb"], "passed": True}
        summary["files"][key] = exports[key] | {"record": rel + ".json"}
        faults.point("export")
        stats = profile_model(out, device=device, runs=runs, warmup=warmup, threads=threads, **profile_kw)
        stats["quantize"] = quant
        prof = run / "profile" / f"{fmt}-{'int8' if quant != 'none' else 'float'}-{_device_tag(device)}.json"
        write_json(prof, stats)
        faults.point("profile")
        measured.append({"device": stats["device"], "format": fmt, "quantize": quant,
                         "p50_ms": stats["p50_ms"], "p90_ms": stats["p90_ms"], "mean_ms": stats["mean_ms"],
                         "peak_rss_mb": stats["peak_rss_mb"], "size_mb": stats["size_mb"],
                         "profile": str(prof.relative_to(run))})
    write_json(run / "export" / "export.json", summary)
    return {"exports": exports, "measured": measured}
