"""A run's exported files timed on a device, and the one writer of RUN/profile records.

Takes export records (edgekd.export.export_run's) and returns report.json's measured entries
(`latency.measured`; for generative exports `generation.measured`); the full statistics of each
measurement land in RUN/profile/FORMAT-PRECISION-DEVICE.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from edgekd import faults
from edgekd.io import write_json

if TYPE_CHECKING:
    from edgekd.profile.common import Runner


def device_tag(device: str) -> str:
    """A device string as a file-name part: "ssh://pi@board:22" -> "ssh-pi_board_22"."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in device.replace("ssh://", "ssh-"))


def _write(run_dir: Path, export: dict, stats: dict) -> tuple[dict, str]:
    """RUN/profile/FORMAT-PRECISION-DEVICE.json with the export's recipe and precision; its relative path."""
    fmt, precision = export["format"], export["precision"]
    stats = stats | {"quantize": export["quantize"], "precision": precision}
    prof = run_dir / "profile" / f"{fmt}-{'float' if precision == 'float32' else precision}-{device_tag(stats['device'])}.json"
    write_json(prof, stats)
    return stats, str(prof.relative_to(run_dir))


def write_profile(run_dir: Path, export: dict, stats: dict) -> dict:
    """Write one measurement of one exported file to RUN/profile and return its `latency.measured` entry."""
    stats, rel = _write(Path(run_dir), export, stats)
    return {"device": stats["device"], "format": stats["format"], "quantize": stats["quantize"],
            "precision": stats["precision"], "p50_ms": stats["p50_ms"], "p90_ms": stats["p90_ms"],
            "mean_ms": stats["mean_ms"], "peak_rss_mb": stats.get("peak_rss_mb"), "size_mb": stats.get("size_mb"),
            "threads": stats.get("threads"), "profile": rel} | \
        ({"machine": stats["machine"], "emulated": bool(stats.get("emulated"))} if "machine" in stats else {}) | \
        ({"parity": parity_summary(stats["parity"])} if "parity" in stats else {})


def write_generation_profile(run_dir: Path, export: dict, stats: dict) -> dict:
    """Write one generation profile to RUN/profile and return its `generation.measured` entry (medians)."""
    from edgekd.profile.generation_profile import median_of

    stats, rel = _write(Path(run_dir), export, stats)
    entry = {k: stats.get(k) for k in ("device", "format", "quantize", "precision", "runtime", "prompt_len",
                                       "decode_len", "runs", "threads", "init_ms", "peak_rss_mb", "size_mb")}
    entry |= {k: median_of(stats.get(k)) for k in ("ttft_ms", "prefill_tok_s", "decode_tok_s")} | {"profile": rel}
    if "machine" in stats:
        entry |= {"machine": stats["machine"], "emulated": bool(stats.get("emulated"))}
    if "parity" in stats:
        entry["parity"] = parity_summary(stats["parity"])
    return entry


# A device's generation parity as report.json's measured entries hold it (the full record, tokens included, is in
# the RUN/profile file).
PARITY_SUMMARY_KEYS = ("checked", "passed", "error", "why", "prompts_matched", "prompts", "first_divergence",
                       "tokens_match_share", "top1_agreement_decisive", "ppl_ratio", "threshold", "machine", "emulated",
                       "emulated_by", "cpu_features",
                       "rows", "top1_agreement", "max_abs_diff")  # the last three: a graph file's (.onnx, .tflite)


def parity_summary(parity: dict) -> dict:
    """The measured entry's `parity`: prompts matched against PyTorch and first divergences on the device, its
    machine, and how many prompts it continued exactly as the same file did here (`same_tokens_as_here`)."""
    out = {"checked": parity.get("checked", True)} | {k: parity[k] for k in PARITY_SUMMARY_KEYS[1:] if k in parity}
    here = parity.get("here") or {}
    if here:
        out |= {"same_tokens_as_here": here.get("same_tokens_as_device"), "here_machine": here.get("machine"),
                "here_prompts_matched": here.get("prompts_matched")}
    if parity.get("run"):
        out["runtime"] = parity["run"].get("version")
    elif parity.get("runtime"):
        out["runtime"] = parity["runtime"]
    return out


def profile_export(run_dir, export: dict, device: str | Runner = "local", runs: int = 20, warmup: int = 3,
                   threads: Optional[int] = None, **profile_kw) -> dict:
    """Time one exported file (an export record) on `device` (a device string or its runner); its measured entry."""
    from edgekd.profile import profile_model

    stats = profile_model(Path(run_dir) / export["path"], device=device, runs=runs, warmup=warmup, threads=threads,
                          **profile_kw)
    return write_profile(run_dir, export, stats)


def profile_exports(run_dir, exports: dict, device: str | Runner = "local", runs: int = 20, warmup: int = 3,
                    threads: Optional[int] = None, **profile_kw) -> list[dict]:
    """Time every export that passed parity on `device`, in order; their measured entries."""
    measured = []
    for rec in exports.values():
        if rec.get("passed"):
            measured.append(profile_export(run_dir, rec, device, runs, warmup, threads, **profile_kw))
            faults.point("profile")
    return measured


def profile_generative_export(run_dir, export: dict, device: str | Runner = "local", prompt_len: int = 64,
                              decode_len: int = 128, runs: int = 3, warmup: int = 1, threads: Optional[int] = None,
                              **profile_kw) -> dict:
    """Time generation of one generative export (a litert-lm or onnx-genai record) on `device`; its entry."""
    from edgekd.profile.generation_profile import profile_generation

    stats = profile_generation(Path(run_dir) / export["path"], device=device, prompt_len=prompt_len,
                               decode_len=decode_len, runs=runs, warmup=warmup, threads=threads, **profile_kw)
    return write_generation_profile(run_dir, export, stats)
