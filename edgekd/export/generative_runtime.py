#!/usr/bin/env python3
"""Greedy generation, token ids in and out, with an exported generative model in its own runtime.

Standalone like export/graph_runtime.py (no torch, no edgekd): export's parity check imports it here; what runs
on a board is the same runtime and the same files, so what is timed there (profile/board_genbench.py) is what was
checked here. Where only python3, numpy and the runtime exist, this file is all that is needed.

    model = load("student.litertlm")          # or an onnx-genai folder (genai_config.json + model.onnx)
    model.format, model.runtime, model.version
    model.generate(prompt_ids, max_new_tokens)  # greedy; the new tokens only; never stops early at EOS
    model.next_token_logits(ids)               # teacher-forced: row i predicts ids[i + 1]
    model.close()

Both models run the KV-cache graph one token at a time after the prompt, the way the runtimes serve
generation. Greedy means argmax of the runtime's logits, taken here: the runtimes' own samplers stop at
the end-of-sequence token, which would make "N new tokens" depend on what the model says.

LiteRT-LM: the LiteRT-LM engine takes and returns text only (its prompt is re-tokenised, its output is
detokenised, and it stops at stop tokens), which cannot be mapped back to token ids exactly. So the
bundle's own prefill/decode TFLite section is run through LiteRT's interpreter (ai_edge_litert, the same
kernels and XNNPACK delegate that the engine's CPU executor uses), read with litert_lm_builder's header
schema (installed with litert-lm). Nothing is prepended: no start token, no prompt template. The test
suite checks that the engine's own greedy text (top_k=1, apply_prompt_template=False) is the
detokenised tokens generated here, and that the engine prepends no start token.
"""

from __future__ import annotations

import json
import os
import struct

LITERT_LM = "litert-lm"
ONNX_GENAI = "onnx-genai"
ONNX_SEQ2SEQ = "onnx-seq2seq"  # an encoder-decoder in Optimum's layout (Seq2SeqOnnxModel)
SEQ2SEQ_FILES = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")


class GenRuntimeError(Exception):
    """A model that cannot be loaded or run; `kind` is "no-runtime" or "bad-model" (as graph_runtime.RunnerError)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def detect_format(path: str) -> str:
    """A folder with genai_config.json is onnx-genai; a file starting with LITERTLM is a LiteRT-LM bundle."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "genai_config.json")):
            return ONNX_GENAI
        if all(os.path.isfile(os.path.join(path, f)) for f in SEQ2SEQ_FILES):
            return ONNX_SEQ2SEQ
        raise GenRuntimeError("bad-model", f"{path} is a folder without genai_config.json (not an onnx-genai export)")
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
    except OSError as e:
        raise GenRuntimeError("bad-model", f"cannot read {path}: {e.strerror}") from e
    if magic == b"LITERTLM":
        return LITERT_LM
    raise GenRuntimeError("bad-model", f"{path} is neither a .litertlm bundle nor an onnx-genai folder")


def load(path: str, threads: int | None = None):
    """The model at PATH (a .litertlm file or an onnx-genai folder) in its runtime, on `threads` CPU threads."""
    path = os.fspath(path)
    fmt = detect_format(path)
    return {LITERT_LM: LiteRtLmModel, ONNX_SEQ2SEQ: Seq2SeqOnnxModel}.get(fmt, GenaiModel)(path, threads)


def _np():
    try:
        import numpy as np
    except ImportError as e:
        raise GenRuntimeError("no-runtime", "python3 has no numpy: pip install numpy") from e
    return np


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _check_lengths(prompt_ids, max_new_tokens: int, limit: int, what: str) -> None:
    if not prompt_ids:
        raise ValueError("prompt_ids is empty: give at least one token id")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if len(prompt_ids) + max_new_tokens > limit:
        raise ValueError(f"prompt ({len(prompt_ids)}) + new tokens ({max_new_tokens}) exceed the {what} of {limit} tokens")


def litertlm_sections(path: str) -> list[tuple[int, int, int]]:
    """(data type, begin, end) of each section of a .litertlm bundle, read with the format's own schema."""
    try:
        from litert_lm_builder import litertlm_header_schema_py_generated as schema
    except ImportError as e:
        raise GenRuntimeError("no-runtime", "reading a .litertlm bundle needs litert-lm: pip install litert-lm") from e
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(32)
        end = struct.unpack("<Q", head[24:32])[0] if len(head) == 32 and head.startswith(b"LITERTLM") else 0
        if not 32 < end <= size:
            raise GenRuntimeError("bad-model", f"{path} is not a complete .litertlm bundle (its header is cut off or "
                                               f"missing, {size} bytes): export it again")
        header = head + f.read(end - 32)
    try:
        objects = schema.LiteRTLMMetaData.GetRootAs(header[32:end], 0).SectionMetadata()
        sections = [(objects.Objects(i).DataType(), objects.Objects(i).BeginOffset(), objects.Objects(i).EndOffset())
                    for i in range(objects.ObjectsLength())]
    except Exception as e:  # noqa: BLE001  a corrupt flatbuffer raises whatever its reader trips on
        raise GenRuntimeError("bad-model", f"{path} is not a complete .litertlm bundle (its section table is "
                                           f"unreadable): export it again") from e
    cut = [e for _, _, e in sections if e > size]
    if cut:
        raise GenRuntimeError("bad-model", f"{path} is not a complete .litertlm bundle ({size} bytes, its sections "
                                           f"run to {max(cut)}: the file is cut off): copy or export it again")
    return sections


def check_bundle(path: str) -> None:
    """A .litertlm file a user names is whole before any runtime loads it (a truncated copy crashes the runtime)."""
    from edgekd.errors import EdgekdError

    if not str(path).endswith(".litertlm") or not os.path.isfile(path):
        return
    try:
        litertlm_sections(path)
    except GenRuntimeError as e:
        if e.kind == "bad-model":
            raise EdgekdError(str(e)) from e


def scored_rows(logits, ids) -> tuple[list[int], list[float]]:
    """What generation parity needs of a file's teacher-forced logits over `ids` ([len(ids), vocab], row i predicts
    ids[i + 1]): the argmax of every row and the negative log-likelihood of each next token (float64), so that a
    device sends back two numbers a position, not its logits."""
    np = _np()
    x = np.asarray(logits, dtype=np.float64).reshape(len(ids), -1)
    z = x[:-1] - x[:-1].max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), np.asarray(ids[1:], dtype=np.int64)]
    return [int(a) for a in x.argmax(-1)], [float(v) for v in nll]


def parity_run(model, prompts: list[list[int]], new_tokens: int) -> dict:
    """A loaded model's side of generation parity on `prompts`: its greedy `new_tokens` after each prompt and
    scored_rows of its teacher-forced logits over each prompt (what export/parity.py's GenerationReference
    compares with PyTorch's, here and on a device)."""
    import time

    started = time.perf_counter()
    tokens = [model.generate([int(t) for t in p], new_tokens) for p in prompts]
    scored = [scored_rows(model.next_token_logits([int(t) for t in p]), p) for p in prompts]
    return {"tokens": tokens, "argmax": [a for a, _ in scored], "nll": [n for _, n in scored],
            "runtime": model.runtime, "version": model.version, "runner": model.runner,
            "context_length": getattr(model, "context_length", getattr(model, "cache_length", None)),
            "seconds": time.perf_counter() - started}


class LiteRtLmModel:
    """A .litertlm bundle's prefill/decode model, run signature by signature with explicit KV-cache tensors."""

    format = LITERT_LM
    runtime = LITERT_LM

    def __init__(self, path: str, threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
            import ai_edge_litert
        except ImportError as e:
            raise GenRuntimeError("no-runtime", "running a .litertlm bundle needs ai-edge-litert: pip install ai-edge-litert") from e
        self.path, self.np = path, _np()
        self.version = f"ai_edge_litert {getattr(ai_edge_litert, '__version__', '?')}"
        self.runner = "LiteRT interpreter on the bundle's prefill/decode signatures"
        tflite_model = 3  # litert_lm_builder's AnySectionDataType.TFLiteModel
        with open(path, "rb") as f:
            blobs = []
            for kind, begin, end in litertlm_sections(path):
                if kind == tflite_model:
                    f.seek(begin)
                    blobs.append(f.read(end - begin))
        for blob in blobs:
            try:
                it = Interpreter(model_content=blob, num_threads=threads)
            except Exception as e:
                raise GenRuntimeError("bad-model", f"LiteRT cannot load {path}: {_first_line(e)}") from e
            if "decode" in it.get_signature_list():
                self._it = it
                break
        else:
            raise GenRuntimeError("bad-model", f"{path} has no TFLite section with a decode signature")
        self._decode = self._it.get_signature_runner("decode")
        prefills = [s for s in self._it.get_signature_list() if s.startswith("prefill")]
        self._prefill = {int(self._it.get_signature_runner(s).get_input_details()["tokens"]["shape"][1]):
                         self._it.get_signature_runner(s) for s in prefills}
        details = self._decode.get_input_details()
        self._cache_spec = {k: (tuple(v["shape"]), v["dtype"]) for k, v in details.items() if k.startswith("kv_cache")}
        self.cache_length = int(details["mask"]["shape"][-1])
        self.prefill_lengths = sorted(self._prefill)
        self._cache = None

    def _reset(self) -> None:
        self._cache = {k: self.np.zeros(shape, dtype) for k, (shape, dtype) in self._cache_spec.items()}

    def _mask(self, positions):
        np = self.np
        allowed = np.arange(self.cache_length)[None, :] <= np.asarray(positions)[:, None]
        return np.where(allowed, 0.0, np.finfo(np.float32).min).astype(np.float32)[None, None]

    def _run(self, runner, tokens, positions) -> dict:
        np = self.np
        out = runner(tokens=np.asarray([tokens], np.int32), input_pos=np.asarray(positions, np.int32),
                     mask=self._mask(positions), **self._cache)
        self._cache = {k: out[k] for k in self._cache}
        return out

    def _prefill_tokens(self, ids, start: int, pad_pos: int) -> None:
        """Feed ids at start.. through the prefill signature; padding writes only slot pad_pos, which the
        next decode step overwrites, and the mask keeps every real position from attending to it."""
        if not ids or not self._prefill:
            for i, t in enumerate(ids):
                self._run(self._decode, [t], [start + i])
            return
        size = self.prefill_lengths[-1]
        for at in range(0, len(ids), size):
            chunk = list(ids[at:at + size])
            pos = list(range(start + at, start + at + len(chunk)))
            runner_len = min((n for n in self.prefill_lengths if n >= len(chunk)), default=size)
            pad = runner_len - len(chunk)
            self._run(self._prefill[runner_len], chunk + [chunk[-1]] * pad, pos + [pad_pos] * pad)

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation: prefill all but the last prompt token, then decode token by token."""
        _check_lengths(prompt_ids, max_new_tokens, self.cache_length, "bundle's KV cache")
        self._reset()
        n = len(prompt_ids)
        self._prefill_tokens(list(prompt_ids[:-1]), 0, n - 1)
        token, out = int(prompt_ids[-1]), []
        for pos in range(n - 1, n - 1 + max_new_tokens):
            token = int(self._run(self._decode, [token], [pos])["logits"].reshape(-1).argmax())
            out.append(token)
        return out

    def next_token_logits(self, ids: list[int]):
        """Logits after each of `ids` (row i predicts ids[i+1]), decoding one token at a time from position 0."""
        _check_lengths(ids, 1, self.cache_length + 1, "bundle's KV cache")
        self._reset()
        rows = [self._run(self._decode, [int(t)], [i])["logits"].reshape(-1) for i, t in enumerate(ids)]
        return self.np.stack(rows).astype(self.np.float32)

    def close(self) -> None:
        self._it = self._decode = self._prefill = self._cache = None


class GenaiModel:
    """An onnxruntime-genai folder, driven token by token through og.Generator."""

    format = ONNX_GENAI
    runtime = "onnxruntime-genai"

    def __init__(self, path: str, threads: int | None = None):
        try:
            import onnxruntime_genai as og
        except ImportError as e:
            raise GenRuntimeError("no-runtime", "running an onnx-genai folder needs onnxruntime-genai: "
                                                "pip install onnxruntime-genai") from e
        self.og, self.np, self.path = og, _np(), path
        self.version = f"onnxruntime-genai {og.__version__}"
        self.runner = "og.Generator, one token per step"
        try:
            config = og.Config(path)
            if threads:
                config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": int(threads)}}}}))
            self._model = og.Model(config)
            with open(os.path.join(path, "genai_config.json")) as f:
                self.context_length = int(json.load(f)["model"]["context_length"])
        except Exception as e:
            raise GenRuntimeError("bad-model", f"onnxruntime-genai cannot load {path}: {_first_line(e)}") from e

    def _generator(self, length: int):
        params = self.og.GeneratorParams(self._model)
        params.set_search_options(do_sample=False, max_length=length)
        return self.og.Generator(self._model, params)

    def _last_logits(self, gen):
        logits = self.np.asarray(gen.get_logits(), dtype=self.np.float32)
        return logits.reshape(-1, logits.shape[-1])[-1]

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation: the prompt in one call, then one appended token per step."""
        _check_lengths(prompt_ids, max_new_tokens, self.context_length, "model's context")
        gen = self._generator(len(prompt_ids) + max_new_tokens)
        gen.append_tokens([int(t) for t in prompt_ids])
        out = []
        for step in range(max_new_tokens):
            out.append(int(self._last_logits(gen).argmax()))
            if step + 1 < max_new_tokens:
                gen.append_tokens([out[-1]])
        return out

    def next_token_logits(self, ids: list[int]):
        """Logits after each of `ids` (row i predicts ids[i+1]), appending one token at a time."""
        _check_lengths(ids, 1, self.context_length + 1, "model's context")
        gen = self._generator(len(ids))
        rows = []
        for t in ids:
            gen.append_tokens([int(t)])
            rows.append(self._last_logits(gen))
        return self.np.stack(rows)

    def close(self) -> None:
        self._model = None


class Seq2SeqOnnxModel:
    """An encoder-decoder in onnxruntime/Optimum's layout: encoder_model.onnx (input_ids, attention_mask ->
    last_hidden_state), decoder_model.onnx (the first step: input_ids, encoder_attention_mask,
    encoder_hidden_states -> logits, present.N.decoder/encoder.key/value) and decoder_with_past_model.onnx
    (one token: input_ids, encoder_attention_mask, past_key_values.N.* -> logits, present.N.decoder.*), with
    config.json for the decoder's start and end tokens."""

    format = ONNX_SEQ2SEQ
    runtime = "onnxruntime"

    def __init__(self, path: str, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise GenRuntimeError("no-runtime", "running an onnx-seq2seq folder needs onnxruntime: pip install "
                                                "onnxruntime") from e
        self.np, self.path = _np(), path
        self.version = f"onnxruntime {ort.__version__}"
        self.runner = "encoder once, decoder_model for the first token, decoder_with_past_model after"
        try:
            with open(os.path.join(path, "config.json")) as f:
                cfg = json.load(f)
            self.start, self.eos = int(cfg["decoder_start_token_id"]), int(cfg["eos_token_id"])
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = int(threads)
            self._enc, self._dec, self._past = (
                ort.InferenceSession(os.path.join(path, f), opts, providers=["CPUExecutionProvider"])
                for f in SEQ2SEQ_FILES)
        except Exception as e:
            raise GenRuntimeError("bad-model", f"onnxruntime cannot load {path}: {_first_line(e)}") from e

    def translate(self, source_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy decoding of one source sentence: the new tokens, up to and including the end token."""
        np = self.np
        ids = np.asarray([source_ids], dtype=np.int64)
        mask = np.ones_like(ids)
        hidden = self._enc.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        out, cross = [], {}
        feeds = {"input_ids": np.asarray([[self.start]], dtype=np.int64), "encoder_attention_mask": mask,
                 "encoder_hidden_states": hidden}
        session = self._dec
        while len(out) < max_new_tokens:
            res = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
            out.append(int(res["logits"][0, -1].argmax()))
            if out[-1] == self.eos:
                break
            present = {n.replace("present", "past_key_values", 1): v for n, v in res.items() if n.startswith("present.")}
            cross = cross or {n: v for n, v in present.items() if ".encoder." in n}  # the first step's, kept
            feeds = {"input_ids": np.asarray([[out[-1]]], dtype=np.int64), "encoder_attention_mask": mask, **cross,
                     **{n: v for n, v in present.items() if ".decoder." in n}}
            session = self._past
        return out

    def close(self) -> None:
        self._enc = self._dec = self._past = None
