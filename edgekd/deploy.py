"""How the job exports, checks and times a student for each cost model: the part of the job that
differs by what the device runs (a logits graph, or an LLM generating). The job (pipeline.py) holds
one Deployment and calls it the same way whatever it is.

- `latency` -> LogitsDeployment: ONNX and TFLite, float and int8, parity on held-out rows (a
  classifier's: held-out sentences of every length), each file timed as one forward.
- `generation` -> GenerativeDeployment: litert-lm and onnx-genai, float and the searched precision,
  generation parity on held-out prompts, each timed generating at the budget's lengths.

A new cost model whose files are exported and timed differently adds a Deployment here and one
`DEPLOYMENTS` entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from edgekd import faults
from edgekd.settings import Settings

PROFILE_RUNS = 20        # timed runs per exported logits file
PROFILE_WARMUP = 3
PARITY_ROWS = 16         # held-out rows the logits exports are checked on
IMAGE_PARITY_ROWS = 64   # an image classifier's: as many training images calibrate its static int8 file
GEN_PROMPTS, GEN_PROMPT_TOKENS = 8, 16  # held-out prompts (and their length) of the generation parity check
GEN_PROFILE_RUNS = 3     # timed generations per generative export


@dataclass
class Where:
    """Where and how the job's files are timed: the run directory, the exported window, the threads
    (on the target, None elsewhere), the device and the runner's options."""

    out: Path
    seq_len: int
    threads: Optional[int]
    local_threads: Optional[int]
    device: Any                     # None, "local", or the device's probed runner (edgekd.profile.Runner)
    settings: Settings
    profile_kw: dict
    runs: int = PROFILE_RUNS
    warmup: int = PROFILE_WARMUP


class Deployment:
    """Export the run's student, keep what passes parity, time it here and on the device."""

    def export_and_time(self, where: Where, search, result, data: dict) -> tuple[dict, list]:
        """Export records (by key) and the measured entries of timing the passing ones locally."""
        raise NotImplementedError

    def device_precisions(self, search) -> tuple[str, ...]:
        """The precisions timed on the device: the deployed one first, then the one that also informs a
        recalibration."""
        raise NotImplementedError

    def quant_aware_recipes(self, search) -> list[str]:
        """The runtime recipes ("FORMAT:QUANTIZE") the student is distilled into after float distillation, so each
        quantised file holds a model that was measured (DistillConfig.quant_aware); none by default."""
        return []

    def profile_on_device(self, where: Where, search, export: dict) -> dict:
        """One export timed on the device; its measured entry."""
        raise NotImplementedError

    def compared_on_device(self, search, fmt: str) -> list[tuple[str, str]]:
        """(format, precision) of the files also timed on the device beside the deployed format's, to say which
        runtime to ship there; none by default."""
        return []


class LogitsDeployment(Deployment):
    """The logits graph four ways (ONNX, TFLite, float and int8), each timed as one forward."""

    def export_and_time(self, where: Where, search, result, data: dict) -> tuple[dict, list]:
        from edgekd.export import export_run
        from edgekd.export.run_dir import IMAGE_VARIANTS, VARIANTS
        from edgekd.models.loading import CLASSIFIER
        from edgekd.profile.exports import profile_exports

        top1 = labelled = None
        if result.kind == CLASSIFIER:  # parity rows, and labelled sentences each file's accuracy is measured on
            rows, labelled = heldout_sentences(where, data, result.report.get("student", {}).get("eval_examples"))
        elif result.heldout_ids is None:
            rows = None
        else:  # held-out blocks: parity, and each file's own quality, on them
            rows = {"input_ids": result.heldout_ids[:PARITY_ROWS, :where.seq_len],
                    "source": "held-out blocks the report evaluates on"}
            top1 = None if result.teacher_top1 is None else result.teacher_top1[:PARITY_ROWS, :where.seq_len - 1]
        image = rows is not None and "pixel_values" in rows
        exports = export_run(where.out, seq_len=where.seq_len, calib_inputs=rows, teacher_top1=top1, labelled=labelled,
                             variants=IMAGE_VARIANTS if image else VARIANTS)
        measured = profile_exports(where.out, exports, device="local", runs=where.runs, warmup=where.warmup,
                                   threads=where.local_threads)
        return exports, measured

    def device_precisions(self, search) -> tuple[str, ...]:
        return tuple(dict.fromkeys((search.precision, "int8" if search.precision == "float32" else "float32")))

    def profile_on_device(self, where: Where, search, export: dict) -> dict:
        from edgekd.profile.exports import profile_export

        return profile_export(where.out, export, where.device, where.runs, where.warmup, where.threads or 1,
                              settings=where.settings, **where.profile_kw)


def heldout_sentences(where: Where, data: dict, scored: Optional[int] = None) -> tuple[dict, Any]:
    """A classifier's parity rows: held-out (validation) sentences from the shortest to the longest, each
    padded to the exported length with its attention mask, in the student's tokenizer; and the labelled
    held-out sentences its files' own accuracy is measured on (parity.HeldoutSentences: the first `scored`,
    those the engine scored the models on, at most parity.QUALITY_SENTENCES)."""
    from edgekd.data.batching import sentences_of_every_length
    from edgekd.data.corpus import load_corpus
    from edgekd.data.tokenizer import load_tokenizer
    from edgekd.export.parity import HeldoutSentences
    from edgekd.models.loading import read_config_dict
    from edgekd.models.vision import image_input_of

    image = image_input_of(where.out / "student")
    if image is not None:  # an image classifier: training and held-out images, as the engine read them
        import torch

        from edgekd.data.images import load_images

        corpus = load_images(data["data"], image, data["text_column"], data["label_column"])
        train = image.normalise(corpus.train[:IMAGE_PARITY_ROWS])
        labelled = HeldoutSentences.of_images(corpus, read_config_dict(where.out / "student"), image, scored,
                                              str(data["data"]))
        held = labelled.feeds["pixel_values"][:len(train)]
        k = min(len(train), len(held))  # even rows training images (static int8 calibrates on them), odd held out
        rows = torch.stack([train[:k], held[:k]], 1).flatten(0, 1)
        return {"pixel_values": rows, "source": f"{k} training images (even rows: what static int8 calibrates on) "
                                                f"and {k} held-out images (odd rows: what it is checked on) of "
                                                f"{data['data']}"}, labelled

    corpus = load_corpus(data["data"], data["text_column"], data["label_column"])
    tokenizer = load_tokenizer(where.out / "student")
    rows = sentences_of_every_length(corpus.validation, tokenizer, where.seq_len, PARITY_ROWS)
    lengths = rows["attention_mask"].sum(1)
    labelled = HeldoutSentences.of(corpus, read_config_dict(where.out / "student"), tokenizer, where.seq_len, scored,
                                   str(data["data"]))
    return rows | {"source": f"held-out sentences (the validation split) of {int(lengths.min())} to "
                             f"{int(lengths.max())} tokens, padded to {where.seq_len} and masked"}, labelled


class GenerativeDeployment(Deployment):
    """litert-lm and onnx-genai, float and the searched precision, each with generation parity on held-out
    prompts, then each timed generating at the budget's prompt and decode lengths."""

    def export_and_time(self, where: Where, search, result, data: dict) -> tuple[dict, list]:
        from edgekd.export import export_run
        from edgekd.export.generative_export import CACHE_LENGTH
        from edgekd.export.parity import HeldoutText
        from edgekd.export.run_dir import generative_variants
        from edgekd.profile.exports import profile_generative_export

        prompts = heldout = None
        if result.heldout_ids is not None:
            prompts = [[int(x) for x in row[:GEN_PROMPT_TOKENS]] for row in result.heldout_ids[:GEN_PROMPTS]]
            top1 = None if result.teacher_top1 is None else result.teacher_top1.numpy()
            heldout = HeldoutText.of(result.heldout_ids.numpy(), top1, CACHE_LENGTH,
                                     source="held-out blocks the report evaluates on")
        exports = export_run(where.out, variants=generative_variants(("float32", search.precision)), prompts=prompts,
                             heldout=heldout, quant_aware=result.quant_aware)
        b = search.budget
        measured = []
        for e in exports.values():
            if e.get("passed"):
                measured.append(profile_generative_export(where.out, e, "local", b["prompt_len"], b["decode_len"],
                                                          GEN_PROFILE_RUNS, 1, where.local_threads))
                faults.point("profile")
        return exports, measured

    def device_precisions(self, search) -> tuple[str, ...]:
        return tuple(dict.fromkeys((search.precision, "float32")))

    def compared_on_device(self, search, fmt: str) -> list[tuple[str, str]]:
        """The other LLM runtime's file at the deployed precision."""
        from edgekd.export.run_dir import generative_variants

        return [(f, search.precision) for f in dict.fromkeys(v[0] for v in generative_variants()) if f != fmt]

    def quant_aware_recipes(self, search) -> list[str]:
        """Every quantised generative export's recipe (both runtimes': each file is built from its own student)."""
        from edgekd.export.run_dir import generative_variants

        return [f"{fmt}:{quant}" for fmt, quant, _ in generative_variants(("float32", search.precision))
                if quant != "none"]

    def profile_on_device(self, where: Where, search, export: dict) -> dict:
        from edgekd.profile.exports import profile_generative_export

        b = search.budget
        return profile_generative_export(where.out, export, where.device, b["prompt_len"], b["decode_len"],
                                         GEN_PROFILE_RUNS, 1, where.threads or 1, settings=where.settings,
                                         **where.profile_kw)


DEPLOYMENTS: dict[str, Deployment] = {"latency": LogitsDeployment(), "generation": GenerativeDeployment()}


def deployment_for(cost_model: str) -> Deployment:
    """The Deployment of a cost model's job."""
    return DEPLOYMENTS[cost_model]


__all__ = ["DEPLOYMENTS", "Deployment", "GenerativeDeployment", "LogitsDeployment", "Where", "deployment_for"]

