#!/usr/bin/env python3
"""Times LLM generation of an exported model (time to first token, prefill and decode tokens/s) and
prints one JSON object.

Self-contained like the board timer, beside which it is shipped with export/graph_runtime.py (its core pinning
and peak RSS are board_timer.py's, its error conventions graph_runtime.py's): on a board only python3 and the
runtime's pip package are assumed.
A `.litertlm` bundle is timed by LiteRT-LM's own benchmark (`litert_lm.Benchmark`, what
`litert-lm benchmark` runs); an onnxruntime-genai folder by a greedy generator loop, since
onnxruntime-genai ships no benchmark in its package. Both count the same way:

    ttft_ms        the prompt handed in -> the first new token chosen (prefill + one decode step)
    prefill_tok_s  prompt tokens / prefill time
    decode_tok_s   new tokens after the first / their time

Each timed run is a fresh generation over the same prompt (token ids 1..P of the model's vocabulary:
the speed of a dense model does not depend on which tokens it sees).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isfile(os.path.join(_HERE, "graph_runtime.py")):  # on a board: shipped beside this file
    sys.path.insert(0, _HERE)
    import board_facts as bf  # noqa: E402
    import board_timer as bt  # noqa: E402
    import generative_runtime as genrt  # noqa: E402
    import graph_runtime as gr  # noqa: E402
else:
    import edgekd.export.generative_runtime as genrt  # noqa: E402
    import edgekd.export.graph_runtime as gr  # noqa: E402
    import edgekd.profile.board_facts as bf  # noqa: E402
    import edgekd.profile.board_timer as bt  # noqa: E402

RunnerError = gr.RunnerError
SPREAD_KEYS = ("ttft_ms", "prefill_tok_s", "decode_tok_s")


def spread(values: list[float]) -> dict:
    """A number over runs as the profile reports it: mean, median, min, max, std and the values."""
    return {"mean": statistics.fmean(values), "median": statistics.median(values), "min": min(values),
            "max": max(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "values": list(values)}


def detect_format(path: str) -> str:
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "genai_config.json")):
            return "onnx-genai"
        raise RunnerError("bad-model", f"{path} is a folder without genai_config.json: not an onnxruntime-genai model")
    if path.endswith(".litertlm"):
        return "litert-lm"
    raise RunnerError("bad-model", f"{path}: not a .litertlm bundle or an onnxruntime-genai folder")


def _litert_lm():
    try:
        import litert_lm
    except ImportError as e:
        raise RunnerError("no-runtime", "python3 on the device has no LiteRT-LM runtime: pip install litert-lm-api") from e
    return litert_lm


def bench_litert_lm(path: str, prompt_len: int, decode_len: int, runs: int, warmup: int, threads: int) -> dict:
    """LiteRT-LM's own benchmark, once per run (each run initialises its engine: init_ms is the first's)."""
    lm = _litert_lm()
    lm.set_min_log_severity(lm.LogSeverity.ERROR)
    infos = []
    # XNNPACK's weight cache goes to a scratch directory, not beside the file (it would be shipped with it)
    with tempfile.TemporaryDirectory(prefix="edgekd-xnnpack-") as cache:
        bench = lm.Benchmark(path, backend=lm.Backend.CPU(thread_count=threads), prefill_tokens=prompt_len,
                             decode_tokens=decode_len, max_num_tokens=prompt_len + decode_len, cache_dir=cache)
        for i in range(warmup + runs):
            try:
                info = bench.run()
            except Exception as e:  # the runtime raises RuntimeError with its own status text
                raise RunnerError("bad-model", f"LiteRT-LM cannot run {path}: {gr.first_line(e)}") from e
            if i >= warmup:
                infos.append(info)
    return {"runtime": f"litert-lm {_version('litert-lm-api', 'litert-lm')}",
            "init_ms": infos[0].init_time_in_second * 1e3,
            "ttft_ms": [x.time_to_first_token_in_second * 1e3 for x in infos],
            "prefill_tok_s": [x.last_prefill_tokens_per_second for x in infos],
            "decode_tok_s": [x.last_decode_tokens_per_second for x in infos],
            "prompt_tokens": [x.last_prefill_token_count for x in infos],
            "decode_tokens": [x.last_decode_token_count for x in infos]}


def _og():
    try:
        import onnxruntime_genai as og
    except ImportError as e:
        raise RunnerError("no-runtime", "python3 on the device has no onnxruntime-genai: pip install onnxruntime-genai") from e
    return og


def _og_model(og, path: str, threads: int):
    config = og.Config(path)
    config.clear_providers()  # the CPU provider: what a board without an accelerator runs
    opts = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}
    config.overlay(json.dumps(opts))
    return og.Model(config)


def _og_generate_once(og, model, prompt: list[int], decode_len: int) -> tuple[float, float, float]:
    """(prefill s, first-token s, rest s): append the prompt, then decode_len greedy tokens, no early stop."""
    params = og.GeneratorParams(model)
    total = len(prompt) + decode_len
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(prompt)  # the prompt's forward pass (prefill)
    t1 = time.perf_counter()
    gen.generate_next_token()  # chooses the first token from the prefill's logits and runs it through the model
    gen.get_next_tokens()
    t2 = time.perf_counter()
    for _ in range(decode_len - 1):
        gen.generate_next_token()
    gen.get_next_tokens()
    return t1 - t0, t2 - t0, time.perf_counter() - t2


def bench_onnx_genai(path: str, prompt_len: int, decode_len: int, runs: int, warmup: int, threads: int) -> dict:
    og = _og()
    t0 = time.perf_counter()
    try:
        model = _og_model(og, path, threads)
    except Exception as e:
        raise RunnerError("bad-model", f"onnxruntime-genai cannot load {path}: {gr.first_line(e)}") from e
    init_ms = (time.perf_counter() - t0) * 1e3
    with open(os.path.join(path, "genai_config.json")) as f:
        cfg = json.load(f)["model"]
    vocab = int(cfg.get("vocab_size") or 2)
    limit = int(cfg.get("context_length") or prompt_len + decode_len)
    if prompt_len + decode_len > limit:
        raise RunnerError("bad-args", f"prompt {prompt_len} + decode {decode_len} tokens exceed the model's "
                                      f"context of {limit}")
    prompt = [1 + i % max(1, vocab - 1) for i in range(prompt_len)]
    out = {"ttft_ms": [], "prefill_tok_s": [], "decode_tok_s": []}
    for i in range(warmup + runs):
        try:
            pre, first, rest = _og_generate_once(og, model, prompt, decode_len)
        except Exception as e:
            raise RunnerError("bad-model", f"{path} loads but fails to generate: {gr.first_line(e)}") from e
        if i < warmup:
            continue
        out["ttft_ms"].append(first * 1e3)
        out["prefill_tok_s"].append(prompt_len / pre)
        out["decode_tok_s"].append((decode_len - 1) / rest if decode_len > 1 else 1.0 / (first - pre))
    return {"runtime": f"onnxruntime-genai {og.__version__}", "init_ms": init_ms, **out}


def _version(*dists: str) -> str:
    try:
        from importlib.metadata import version, PackageNotFoundError
    except ImportError:
        return ""
    for d in dists:
        try:
            return version(d)
        except PackageNotFoundError:
            continue
    return ""


BENCHES = {"litert-lm": bench_litert_lm, "onnx-genai": bench_onnx_genai}


def parity(path: str, prompts: list[list[int]], new_tokens: int, threads: int) -> dict:
    """The file's side of generation parity here (generative_runtime.parity_run, on `threads` threads): its greedy
    tokens after each prompt and its teacher-forced argmax and losses, which the host compares with PyTorch's."""
    try:
        model = genrt.load(path, threads)
    except genrt.GenRuntimeError as e:
        if e.kind == "no-runtime":  # timed, but its tokens cannot be read here: said in the profile, not fatal
            return {"unavailable": str(e)}
        raise RunnerError(e.kind, str(e)) from e
    try:
        return genrt.parity_run(model, prompts, new_tokens) | {"threads": threads}
    except Exception as e:
        raise RunnerError("bad-model", f"{path} loads but its parity run fails: {gr.first_line(e)}") from e
    finally:
        model.close()


def profile(path: str, prompt_len: int = 64, decode_len: int = 128, runs: int = 3, warmup: int = 1,
            threads: int | None = None, pin: bool = True, parity_prompts: list[list[int]] | None = None,
            parity_new_tokens: int = 32) -> dict:
    """Warmup generations, then `runs` timed ones on the fastest cores; the profile's keys, the device's machine
    and whether it is emulated (board_facts), and with `parity_prompts` the file's parity run (`parity_run`)."""
    if runs < 1 or warmup < 0 or prompt_len < 1 or decode_len < 1:
        raise RunnerError("bad-args", f"runs, prompt and decode lengths must be >= 1 and warmup >= 0 (got runs={runs}, "
                                      f"warmup={warmup}, prompt_len={prompt_len}, decode_len={decode_len})")
    fmt = detect_format(path)
    cores = bt.big_cores(threads)
    allowed = len(bt.big_cores())
    if threads is not None and not 1 <= threads <= allowed:
        raise RunnerError("bad-args", f"--threads must be in [1, {allowed}], got {threads}")
    if pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    threads = threads or len(cores)
    got = BENCHES[fmt](path, prompt_len, decode_len, runs, warmup, threads)
    facts = bf.facts()
    stats = {"format": fmt, "runtime": got["runtime"], "prompt_len": prompt_len, "decode_len": decode_len,
             "runs": runs, "warmup": warmup, "threads": threads, "cores": cores,
             **{k: spread(got[k]) for k in SPREAD_KEYS}, "init_ms": got["init_ms"],
             "peak_rss_mb": bt.peak_rss_mb(), "size_mb": gr.size_mb(path),
             "machine": facts["machine"], "emulated": facts["emulated"], "emulated_by": facts["emulated_by"],
             "cpu_features": facts["cpu_features"], "python": facts["python"]}
    if parity_prompts:  # after the timing, so peak RSS is the timed generation's
        stats["parity_run"] = parity(path, parity_prompts, parity_new_tokens, threads)
    return stats | {k: v for k, v in got.items() if k not in stats and k not in SPREAD_KEYS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--decode-len", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--parity-prompts", default=None, help="JSON list of token-id lists: also run generation parity")
    ap.add_argument("--parity-new-tokens", type=int, default=32)
    a = ap.parse_args(argv)
    prompts = json.loads(a.parity_prompts) if a.parity_prompts else None
    return bt.print_result(lambda: profile(a.model, a.prompt_len, a.decode_len, a.runs, a.warmup, a.threads,
                                           pin=not a.no_pin, parity_prompts=prompts,
                                           parity_new_tokens=a.parity_new_tokens))


if __name__ == "__main__":
    sys.exit(main())
