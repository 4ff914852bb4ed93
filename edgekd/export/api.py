"""export_model: convert, quantise, check against PyTorch, and only then put the file in place."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from edgekd.checks import export_args, output_file
from edgekd.checks import model_dir as check_model_dir
from edgekd.console import err
from edgekd.errors import EdgekdError, JobFailed
from edgekd.export import graph_runtime, parity
from edgekd.export.hf import load_for_export
from edgekd.formats import FORMATS
from edgekd.models.loading import CLASSIFIER
from edgekd.io import write_json
from edgekd.precision import precision_of

PARITY_ROWS = 16


def default_out(model_dir: Path, fmt: str, quantize: str) -> Path:
    """Beside MODEL_DIR in export/: NAME.onnx, NAME.int8.tflite, NAME.int8-dynamic.onnx ..."""
    tag = "" if quantize == "none" else f".{quantize}"
    return model_dir.resolve().parent / "export" / f"{model_dir.resolve().name}{tag}{FORMATS[fmt].suffix}"


def _parity_inputs(calib_inputs, loaded, seq_len: int, n: int) -> tuple[dict[str, torch.Tensor], str]:
    """The rows parity (and static int8 calibration) runs on, {input name: [N, seq_len]}, and where they came
    from. `calib_inputs`: token ids [N, seq_len], or for a classifier {"input_ids", "attention_mask"} (held-out
    sentences padded to seq_len); default: deterministic random ids, for a classifier of lengths from 2 tokens
    to the full window, padded with the model's pad id and masked."""
    vocab, names = loaded.vocab_size, loaded.input_names
    masked = "attention_mask" in names
    if loaded.image is not None:  # an image classifier: held-out images, else seeded noise at its input's shape
        return _image_inputs(calib_inputs, loaded.image, n)
    if calib_inputs is None:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (n, seq_len), generator=g)
        if not masked:
            return {"input_ids": ids}, "random token ids (seed 0)"
        lengths = torch.linspace(min(2, seq_len), seq_len, n).round().long()
        mask = (torch.arange(seq_len)[None] < lengths[:, None]).long()
        return ({"input_ids": torch.where(mask.bool(), ids, loaded.pad_token_id), "attention_mask": mask},
                f"random token ids (seed 0) of {int(lengths.min())} to {seq_len} tokens, padded and masked")
    given = dict(calib_inputs) if isinstance(calib_inputs, Mapping) else {"input_ids": calib_inputs}
    rows = torch.as_tensor(given["input_ids"])
    if rows.dim() != 2 or rows.shape[0] < 1 or rows.shape[1] != seq_len:
        raise EdgekdError(f"calib_inputs must be token ids shaped [N, seq_len={seq_len}], got {tuple(rows.shape)}")
    if rows.is_floating_point() or int(rows.min()) < 0 or int(rows.max()) >= vocab:
        raise EdgekdError(f"calib_inputs hold ids outside the model's vocabulary [0, {vocab}): tokenise with the "
                          f"model's own tokenizer")
    feeds = {"input_ids": rows.long()}
    if masked:
        mask = torch.as_tensor(given["attention_mask"]) if given.get("attention_mask") is not None else \
            torch.ones_like(rows)
        if mask.shape != rows.shape or not bool(((mask == 0) | (mask == 1)).all()) or bool((mask.sum(1) == 0).any()):
            raise EdgekdError(f"calib_inputs' attention_mask must be 0/1 shaped like input_ids {tuple(rows.shape)} with "
                              f"at least one token per row")
        feeds["attention_mask"] = mask.long()
    return feeds, str(given.get("source") or "calib_inputs")


def _image_inputs(calib_inputs, image, n: int) -> tuple[dict[str, torch.Tensor], str]:
    """{"pixel_values": [N, C, H, W]} (the model's normalised input) and where the rows came from."""
    shape = (image.channels, image.height, image.width)
    if calib_inputs is None:
        g = torch.Generator().manual_seed(0)
        return {"pixel_values": torch.randn(n, *shape, generator=g)}, "random normal pixel values (seed 0)"
    given = dict(calib_inputs) if isinstance(calib_inputs, Mapping) else {"pixel_values": calib_inputs}
    x = torch.as_tensor(given.get("pixel_values"))
    if x.dim() != 4 or tuple(x.shape[1:]) != shape or x.shape[0] < 1 or not x.is_floating_point():
        raise EdgekdError(f"calib_inputs must be pixel values shaped [N, {', '.join(map(str, shape))}] (the model's "
                          f"input), got {tuple(x.shape)}")
    return {"pixel_values": x.float()}, str(given.get("source") or "calib_inputs")


def _half(feeds: dict[str, torch.Tensor], first: bool) -> dict[str, torch.Tensor]:
    """Every other row (the even ones, or the odd): calibration and check rows both span the lengths."""
    return {k: v[0 if first else 1::2] for k, v in feeds.items()}


@contextmanager
def export_steps(show: bool, title: str, names: list[str]):
    """A transient spinner naming the export's current step (none in a pipe: there it is blank lines);
    yields step(name) to move on to the next."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  transient=True, disable=not (show and err().is_terminal)) as bar:
        task = bar.add_task(f"{title}: {names[0]}", total=len(names))

        def step(name: str) -> None:
            bar.update(task, advance=1, description=f"{title}: {name}")

        yield step


def export_model(model_dir, fmt: str = "onnx", quantize: str = "none", seq_len: int = 64, out=None,
                 calib_inputs=None, min_top1: float = 0.9, *, show_progress: bool = True,
                 float_file: Path | None = None, teacher_top1=None,
                 labelled: "parity.HeldoutSentences | None" = None) -> dict:
    """Export MODEL_DIR to FILE and write its parity record FILE.json; return the record.

    `float_file`: for a quantised export, the float export of the same model at the same seq_len (FILE with
    its passed record FILE.json beside it), quantised instead of converting the model again.
    Parity runs on `calib_inputs` rows (held-out token ids; for a classifier, held-out sentences of varied
    length padded to seq_len with their attention_mask, which classifier exports take as a second input) or
    on deterministic random ids. For static
    int8 every other row calibrates and the rows between check, so parity is measured on
    rows the calibration never saw. A failed check leaves no FILE, writes FILE.json with passed=false,
    and raises EdgekdError with the numbers.
    A causal LM's file given held-out `calib_inputs` also records its own quality on the rows it is checked on
    (parity.HeldoutText.compare: eval_loss, perplexity, top1_agreement_teacher against `teacher_top1`, the
    teacher's argmax at each position of those rows [N, seq_len - 1], ..., beside PyTorch float's).
    A classifier's file given `labelled` held-out sentences (parity.HeldoutSentences) records its own accuracy
    and macro-F1 on them in its runtime (with eval_loss, top1_agreement_pytorch, ..., beside PyTorch float's).
    """
    export_args(fmt, quantize, seq_len, min_top1, out)
    model_dir = check_model_dir(model_dir, "model directory")
    out = output_file(out or default_out(model_dir, fmt, quantize))
    quantized = quantize != "none"
    steps = ["load", "convert"] + (["quantize"] if quantized else []) + ["parity"]
    with export_steps(show_progress, f"export {model_dir.name} -> {out.name}", steps) as step:
        loaded = load_for_export(model_dir)
        if loaded.image is None and seq_len > loaded.max_len:
            raise EdgekdError(f"--seq-len {seq_len} exceeds the model's {loaded.max_len} positions")
        rows, source = _parity_inputs(calib_inputs, loaded, seq_len, PARITY_ROWS)
        calib_rows, check_rows = rows, rows
        if quantize in ("int8", "int8-full") and parity._count(rows) >= 2:
            calib_rows, check_rows = _half(rows, True), _half(rows, False)
        step("convert")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
            float_path = Path(tmp) / f"float{FORMATS[fmt].suffix}"
            sample = {k: v[:1] for k, v in rows.items()}
            if fmt == "onnx":
                from edgekd.export.onnx_export import export_onnx as export_fn, quantize_onnx as quantize_fn
            else:
                from edgekd.export.tflite_export import export_tflite as export_fn, quantize_tflite as quantize_fn
            if float_file is not None and quantized:  # this model's float file, converted and checked already
                shutil.copyfile(float_file, float_path)
                info = {"dynamic_seq": json.loads(Path(f"{float_file}.json").read_text())["dynamic_seq"]}
            elif fmt == "onnx":
                info = export_fn(loaded.module, sample, float_path, loaded.max_len)
            else:
                info = export_fn(loaded.module, sample, float_path)
            final = float_path
            if quantized:
                step("quantize")
                final = Path(tmp) / f"quant{FORMATS[fmt].suffix}"
                try:
                    info |= quantize_fn(float_path, final, quantize, {k: v.numpy() for k, v in calib_rows.items()})
                except (EdgekdError, JobFailed):
                    raise
                except Exception as e:
                    raise JobFailed(f"{quantize} quantisation of {out.name} failed: "
                                      f"{(str(e).strip().splitlines() or [type(e).__name__])[0][:300]}") from e
            step("parity")
            ref = parity.reference_logits(loaded.module, check_rows)
            try:
                got, runtime = parity.exported_logits(str(final), check_rows)
            except Exception as e:
                raise JobFailed(f"the exported {out.name} does not run: {str(e).splitlines()[0][:300]}") from e
            check = parity.compare(ref, got, quantized, min_top1, labels_must_agree=loaded.kind == CLASSIFIER)
            by_accuracy = quantized and labelled is not None and loaded.image is not None
            if by_accuracy:  # an image classifier's int8 file: judged on its held-out accuracy, below
                check["label_parity_passed"], check["passed"] = check["passed"], True
            if calib_inputs is not None and loaded.kind != CLASSIFIER and check["passed"]:
                top1 = None if teacher_top1 is None else torch.as_tensor(teacher_top1)
                if top1 is not None and check_rows is not rows:  # static int8 checks every other row
                    top1 = _half({"t": top1}, False)["t"]
                ids = check_rows["input_ids"].numpy()
                check |= parity.HeldoutText.of(ids, None if top1 is None else top1.numpy(), ids.shape[1], len(ids),
                                               source).measure(got, ref)
                check["quality_on"]["runtime"] = runtime
            if labelled is not None and loaded.kind == CLASSIFIER and check["passed"]:
                started = time.perf_counter()
                try:
                    scored, _ = parity.exported_logits(str(final), labelled.feeds)
                except Exception as e:
                    raise JobFailed(f"the exported {out.name} does not run: {str(e).splitlines()[0][:300]}") from e
                check |= labelled.measure(scored, labelled.pytorch(loaded.module, model_dir))
                check["quality_on"] |= {"runtime": runtime, "seconds": time.perf_counter() - started}
                if by_accuracy:
                    drop = check["pytorch_float"]["accuracy"] - check["accuracy"]
                    bound = parity.IMAGE_INT8_ACCURACY_DROP
                    check["threshold"] = dict(check.get("threshold") or {}) | {"accuracy_drop": bound}
                    check["passed"] = drop <= bound
                    if not check["passed"]:
                        check["problem"] = (f"its held-out accuracy {check['accuracy']:.3f} is {drop:.3f} below PyTorch "
                                            f"float's {check['pytorch_float']['accuracy']:.3f} (at most {bound}): try "
                                            f"int8-dynamic, or more calibration images")
            record = {"path": str(out), "format": fmt, "quantize": quantize, "precision": precision_of(quantize),
                      "seq_len": seq_len,
                      "size_mb": final.stat().st_size / 1e6, "float_size_mb": float_path.stat().st_size / 1e6,
                      **check, "parity_inputs": _inputs_record(source, check_rows), "inputs": list(loaded.input_names),
                      "model_dir": str(model_dir), "kind": loaded.kind, "architecture": loaded.architecture,
                      "vocab_size": loaded.vocab_size, "input_dtype": "int8" if quantize == "int8-full" else
                      "float32" if loaded.image is not None
                      else "int64" if fmt == "onnx" else "int32",
                      **({"image_input": loaded.image.record()} if loaded.image is not None else {}),
                      **info, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            if record["passed"]:
                os.replace(final, out)
                # the bar the file met here: PyTorch's labels, or, for an image int8 file kept on its accuracy though
                # some labels moved, its own logits here (a device must then give what this machine gives)
                here = ref if check.get("label_parity_passed", True) else got
                record["device_check"] = parity.write_device_check(out, check_rows, here, quantized, min_top1,
                                                                   labels=loaded.kind == CLASSIFIER)
            else:
                out.unlink(missing_ok=True)
                out.with_name(out.name + graph_runtime.CHECK_SUFFIX).unlink(missing_ok=True)
    write_json(out.with_name(out.name + ".json"), record)
    if not record["passed"]:
        raise JobFailed(_failure_line(record))
    return record


def _inputs_record(source: str, feeds: dict[str, torch.Tensor]) -> dict:
    rec = {"source": source, "rows": parity._count(feeds)}
    if "attention_mask" in feeds:  # a classifier's rows: how long each sentence was before padding
        rec["lengths"] = [int(x) for x in feeds["attention_mask"].sum(1)]
    return rec


def _failure_line(rec: dict) -> str:
    if rec.get("problem"):
        return f"{Path(rec['path']).name} failed parity: {rec['problem']}"
    if rec["quantize"] != "none":
        decisive = rec.get("top1_agreement_decisive")
        agree = (f"label agreement {decisive:.4f} on the {rec['decisive_rows']} decisive held-out rows"
                 if decisive is not None else f"top-1 agreement {rec['top1_agreement']:.4f}")
        bound = rec["threshold"].get("top1_agreement_decisive", rec["threshold"].get("top1_agreement"))
        return (f"{Path(rec['path']).name} failed parity: {agree} < {bound} (max abs diff {rec['max_abs_diff']:.4g}): try "
                f"int8-dynamic, more calibration data, or a lower --min-top1")
    if rec["max_abs_diff"] <= rec["threshold"]["max_abs_diff"]:  # a classifier whose labels flipped
        return (f"{Path(rec['path']).name} failed parity: it predicts another label than PyTorch on "
                f"{1 - rec['top1_agreement']:.0%} of {rec['positions']} held-out sentences (max abs diff "
                f"{rec['max_abs_diff']:.4g}): the converter changed the numerics; report the model")
    return (f"{Path(rec['path']).name} failed parity: max abs diff {rec['max_abs_diff']:.4g} > "
            f"{rec['threshold']['max_abs_diff']:.4g} (1e-3 x logits scale {rec['logits_scale']:.4g}): the "
            f"converter changed the numerics; report the model")
