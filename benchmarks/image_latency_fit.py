"""The latency model's error on this machine (`host`) for image classifiers: priors, and calibrated leave-one-out.

Each of the image search's CNN students of the built-in teacher (and the teacher itself) is saved, exported to
ONNX float (`edgekd.export.export_model`, parity checked) and timed here (`edgekd.profile.profile_model`, p50 of
`--runs` calls, one thread). The model predicts each with the datasheet priors, then calibrated
(`cost_latency.calibrate`) on every *other* shape's measurement, so each calibrated number is a prediction of a
shape the fit never saw.

    .venv/bin/python benchmarks/image_latency_fit.py [--runs 300] [--json benchmarks/image_latency_fit.json]

Prints a table and writes JSON with the machine and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from edgekd.targets.hostbench import cpu_model_name



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--json", default=str(Path(__file__).with_name("image_latency_fit.json")))
    args = ap.parse_args()
    import torch
    from transformers import AutoConfig, AutoModelForImageClassification

    import edgekd.models.cnn  # noqa: F401  (registers the CNN with the Auto classes)
    from edgekd.export import export_model
    from edgekd.models.builtin import IMAGE_DIR
    from edgekd.models.vision import config_with, image_candidates, image_input_of, image_param_count
    from edgekd.profile import profile_model
    from edgekd.targets import measure_target
    from edgekd.targets.cost_latency import calibrate, measurement_from_profile, predict
    from edgekd.targets.spec import load_target

    host = measure_target(load_target("host"))  # this machine's measured facts (an explicit step)
    teacher = AutoConfig.from_pretrained(IMAGE_DIR)
    shapes = [("teacher", {})] + [(f"depth {c['depth']:g} width {c['width']:g}", c["overrides"])
                                  for c in image_candidates(teacher)]
    reader = image_input_of(IMAGE_DIR)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, over in shapes:
            cfg = config_with(teacher, over) if over else teacher
            d = Path(tmp) / name.replace(" ", "_")
            torch.manual_seed(0)
            AutoModelForImageClassification.from_config(cfg).save_pretrained(d)
            reader.save_pretrained(d)
            rec = export_model(d, "onnx", out=d / "m.onnx", show_progress=False)
            prof = profile_model(d / "m.onnx", "local", runs=args.runs, warmup=20, threads=1)
            rows.append({"shape": name, "hidden_sizes": cfg.hidden_sizes, "params": image_param_count(cfg),
                         "config": cfg, "passed": rec["passed"], "measured_ms": prof["p50_ms"],
                         "prior_ms": predict(cfg, host, fmt="onnx", threads=1).total_ms,
                         "meas": measurement_from_profile(dict(prof) | {"threads": 1}, cfg, "float32", seq_len=1)})
    for i, r in enumerate(rows):
        cal = calibrate([o["meas"] for j, o in enumerate(rows) if j != i], host, "onnx")
        r["calibrated_ms"] = predict(r["config"], host, fmt="onnx", calibration=cal, threads=1).total_ms
    print(f"{'shape':22} {'hidden':>14} {'params':>7} {'measured':>9} {'priors':>8} {'x':>6} {'calib.':>8} {'x':>6}")
    out_rows = []
    for r in rows:
        r["prior_ratio"], r["calibrated_ratio"] = r["prior_ms"] / r["measured_ms"], r["calibrated_ms"] / r["measured_ms"]
        print(f"{r['shape']:22} {str(r['hidden_sizes']):>14} {r['params']:7,} {r['measured_ms']:9.4f} "
              f"{r['prior_ms']:8.4f} {r['prior_ratio']:6.2f} {r['calibrated_ms']:8.4f} {r['calibrated_ratio']:6.2f}")
        out_rows.append({k: v for k, v in r.items() if k not in ("config", "meas")})
    err = {k: statistics.median(abs(r[k] - 1) for r in rows) for k in ("prior_ratio", "calibrated_ratio")}
    print(f"median |predicted / measured - 1|: priors {err['prior_ratio']:.2f}, calibrated (leave-one-out) "
          f"{err['calibrated_ratio']:.2f}")
    out = {"machine": {"cpu": cpu_model_name(), "cores": os.cpu_count(), "load_average": os.getloadavg()}, "runs": args.runs,
           "rows": out_rows, "median_abs_error": err}
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json} (load average {out['machine']['load_average']})")


if __name__ == "__main__":
    main()
