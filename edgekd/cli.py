"""The `edgekd` command: parses arguments and delegates to the Python API; no logic of its own."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from edgekd.errors import EdgekdError
from edgekd.hyperparams import DEFAULT_ALPHA, DEFAULT_TEMPERATURE

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distill a teacher into a student that meets a latency budget on an edge device.")
kernel_app = typer.Typer(no_args_is_help=True, help="The fused distillation kernel.")
targets_app = typer.Typer(no_args_is_help=True, help="Edge targets: the devices a student is built for.")
teacher_app = typer.Typer(no_args_is_help=True, help="Teachers: the built-in one and its recipe.")
app.add_typer(kernel_app, name="kernel")
app.add_typer(targets_app, name="targets")
app.add_typer(teacher_app, name="teacher")
device_app = typer.Typer(no_args_is_help=True, help="Devices: what one has, putting the runtimes there, the emulated "
                                                    "arm64 board.")
app.add_typer(device_app, name="device")

def _work(fn):
    """A command that does real work: from its start, third-party output goes to the log (not --verbose)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        from edgekd import console

        console.capture()
        return fn(*a, **kw)

    return wrapper


def _print_version(value: bool) -> None:
    if value:
        from edgekd import __version__
        from edgekd.console import echo

        echo(f"edgekd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="On an error, show the full chain of causes (traceback)."),
    verbose: bool = typer.Option(False, "--verbose", help="Show third-party warnings, logs and progress bars "
                                                          "(by default they go to the run's edgekd.log)."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """--debug and --verbose are also accepted after the command (main() takes them off the line)."""


# --- kernel -------------------------------------------------------------------------------------

@kernel_app.command("bench")
@_work
def kernel_bench(
    rows: Optional[int] = typer.Option(None, help="Rows (tokens); default: the issue's sizes."),
    vocab: Optional[int] = typer.Option(None, help="Vocabulary size; default: 32000 and 128256."),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16; default: float32 and bfloat16."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    repeats: int = typer.Option(5, help="Timed repeats per variant, interleaved (the best is reported)."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="Also time torch.compile of the eager loss."),
    out: Optional[str] = typer.Option(None, help="Where to write the JSON (default: benchmarks/kernel_bench.json)."),
) -> None:
    """Time eager PyTorch, torch.compile and the fused kernel on KD+CE forward and backward."""
    from edgekd.checks import kernel_bench_args

    kernel_bench_args(rows, vocab, repeats, device, _path(out), dtype)  # before the heavy imports
    from edgekd.kernels import bench, force_reference
    from edgekd.settings import Settings

    force_reference(Settings.from_env().kernel == "reference")

    bench.main(rows=rows, vocab=vocab, dtype=dtype, device=device, repeats=repeats,
               use_compile=compile, out=_path(out))


# --- targets ------------------------------------------------------------------------------------

@targets_app.command("list")
def targets_list() -> None:
    """Every known target: cores, throughput, bandwidth, format and default budget."""
    from edgekd.settings import Settings
    from edgekd.targets.show import print_targets

    print_targets(Settings.from_env())


@targets_app.command("show")
def targets_show(name: str = typer.Argument(..., help="Target name, e.g. android-arm64.")) -> None:
    """All facts of one target, and its sources."""
    from edgekd.settings import Settings
    from edgekd.targets.show import print_target

    print_target(name, Settings.from_env())


# --- distill / teacher (engine) -------------------------------------------------------------------

def _opt(*names: str, help: str, **kw):
    """A typer option, for the Annotated aliases below."""
    return typer.Option(*names, help=help, **kw)


# distill's options (declared once here so its signature reads one option a line)
TeacherOpt = Annotated[str, _opt(help="Teacher: a local Hugging Face model directory, 'builtin' (a small Llama), "
                                      "'builtin-seq2seq' (an English -> German Marian) or 'builtin-cnn' (a digits CNN).")]
DataOpt = Annotated[str, _opt(help="Data: a text file, a directory of .txt, a .jsonl, .csv or .parquet file, a saved "
                                   "data set, or 'builtin'; for an image teacher a folder of class folders, an .npz of "
                                   "images and labels, a saved data set or 'builtin-digits'.")]
TextColumnOpt = Annotated[Optional[str], _opt("--text-column", help="Tables (.csv, .parquet, .jsonl, saved data sets): "
                                                                    "the text column (default: text, sentence, ...).")]
LabelColumnOpt = Annotated[Optional[str], _opt("--label-column", help="Tables: the label column of classification "
                                                                      "data (default: label or labels).")]
StudentOpt = Annotated[Optional[str], _opt(help="Student: a JSON file of config fields, a model directory, or "
                                                "'bilstm' (a BiLSTM classifier, for a classifier teacher).")]
StepsOpt = Annotated[Optional[int], _opt(help="Training steps (default: the built-in default).")]
OutOpt = Annotated[Optional[str], _opt(help="Run directory (default: runs/distill-TIMESTAMP).")]
ResumeOpt = Annotated[bool, _opt("--resume", help="Continue the run in --out from its last checkpoint.")]
TemperatureOpt = Annotated[str, _opt(help="Softmax temperature T > 0, or 'auto' = log2(teacher/student params) + 1.")]
AlphaOpt = Annotated[float, _opt(help="Weight of the distillation term against hard-label CE, in [0, 1].")]
LossOpt = Annotated[Optional[str], _opt(help="Loss spec: JSON list, path to a .json, or names joined by '+'.")]
SchemeOpt = Annotated[str, _opt(help="offline | online | self | multi_teacher | progressive | sequence | on_policy")]
SchemeConfigOpt = Annotated[Optional[str], _opt(
    "--scheme-config", help='Scheme options as JSON or a .json file, e.g. \'{"cache": "teacher-cache", "cache_k": 32}\' '
                            '(offline), \'{"sizes": [{"num_hidden_layers": 3}]}\' (progressive), \'{"num_prompts": 256}\' '
                            '(sequence), \'{"lmbda": 0.5, "sample_temperature": 1.0, "max_new_tokens": 64}\' (on_policy).')]
SeedOpt = Annotated[int, _opt(help="Random seed.")]
TargetOpt = Annotated[Optional[str], _opt(help="Edge target name (see `edgekd targets list`).")]
LatencyBudgetOpt = Annotated[Optional[float], _opt("--latency-budget", help="Latency budget in ms (the logits job).")]
DecodeOpt = Annotated[Optional[float], _opt("--decode-tok-s", help="Generation budget: least decode tokens/s "
                                                                   "(default: the target's).")]
TtftOpt = Annotated[Optional[float], _opt("--ttft-ms", help="Generation budget: most ms to the first token "
                                                            "(default: the target's).")]
GenerativeOpt = Annotated[Optional[bool], _opt(
    "--generative/--logits", help="--target with a causal-LM teacher: budget generation and export litert-lm/onnx-genai "
                                  "with a KV cache (the default), or budget one logits forward and export ONNX/TFLite.")]
DeviceOpt = Annotated[str, _opt(help="Where to profile: local | ssh://USER@HOST[:PORT] | adb[:SERIAL].")]
CalibrationOpt = Annotated[Optional[str], _opt(
    "--calibration", help="--target: the cost model's starting calibration: a calibration .json (a run's "
                          "search/calibration.json) or 'saved' (the device's, saved with --save-calibration); "
                          "default: the target file's datasheet priors.")]
SaveCalibrationOpt = Annotated[bool, _opt("--save-calibration", help="--target: save the calibration measured on the "
                                                                     "device in the cache.")]
IdentityOpt = Annotated[Optional[str], _opt(help="ssh: private key (default: ssh's, or EDGEKD_SSH_KEY).")]
KnownHostsOpt = Annotated[Optional[str], _opt(help="ssh: known_hosts file to check the host key against.")]
InsecureOpt = Annotated[bool, _opt("--insecure-host-key", help="ssh: do not check the host key.")]
RemotePythonOpt = Annotated[str, _opt(help="ssh: the python on the device.")]
BatchOpt = Annotated[Optional[int], _opt(help="Sequences (images) per optimiser step; default 8, 32 for an image "
                                                "teacher.")]
SeqLenOpt = Annotated[int, _opt(help="Tokens per sequence.")]
LrOpt = Annotated[Optional[float], _opt(help="Peak learning rate; default 2e-3, 1e-2 for an image teacher.")]
ParallelOpt = Annotated[str, _opt("--parallel", help="Under torchrun: ddp (a replica per process) or fsdp (the "
                                                     "student sharded over the processes with FSDP2).")]
QuietOpt = Annotated[bool, _opt("--quiet", help="No progress bars.")]
KeepCheckpointsOpt = Annotated[int, _opt("--keep-checkpoints", help="Checkpoints kept per trained model (default: "
                                                                  "the newest).")]
QuantAwareOpt = Annotated[Optional[bool], _opt("--quant-aware/--no-quant-aware", help="With --target: distil the "
                                              "student that ships as int4/int8 into its runtime's quantised numbers "
                                              "after float distillation (QAD, the default), measuring the float "
                                              "student quantised after training beside it; --no-quant-aware ships "
                                              "that post-training-quantised file instead.")]
QadStepsOpt = Annotated[Optional[int], _opt("--qad-steps", help="Quantisation-aware steps per quantised export "
                                                               "(default: --steps / 3).")]
RuntimeOpt = Annotated[Optional[str], _opt("--runtime", help="With --target on a causal LM: the LLM runtime the "
                                                          "student is searched for and shipped in, litert-lm or "
                                                          "onnx-genai (default: the target file's).")]
AugmentOpt = Annotated[bool, _opt("--augment/--no-augment", help="Image classifiers: shift the training images at "
                                                                "random by up to an eighth of their side (default on).")]
BaselinesOpt = Annotated[str, _opt("--baselines", help="Baselines trained beside the student on hard labels alone: "
                                                       "ce_only,scratch (default), ce_only, scratch or none.")]


@app.command("distill")
@_work
def distill(teacher: TeacherOpt = "builtin", data: DataOpt = "builtin", text_column: TextColumnOpt = None,
            label_column: LabelColumnOpt = None, student: StudentOpt = None, steps: StepsOpt = None,
            out: OutOpt = None, resume: ResumeOpt = False, temperature: TemperatureOpt = str(DEFAULT_TEMPERATURE),
            alpha: AlphaOpt = DEFAULT_ALPHA, loss: LossOpt = None, scheme: SchemeOpt = "offline",
            scheme_config: SchemeConfigOpt = None, seed: SeedOpt = 0, target: TargetOpt = None,
            latency_budget: LatencyBudgetOpt = None, decode_tok_s: DecodeOpt = None, ttft_ms: TtftOpt = None,
            generative: GenerativeOpt = None, device: DeviceOpt = "local", calibration: CalibrationOpt = None,
            save_calibration: SaveCalibrationOpt = False, identity_file: IdentityOpt = None,
            known_hosts: KnownHostsOpt = None, insecure_host_key: InsecureOpt = False,
            remote_python: RemotePythonOpt = "python3", batch_size: BatchOpt = None, seq_len: SeqLenOpt = 256,
            lr: LrOpt = None, parallel: ParallelOpt = "ddp", quiet: QuietOpt = False,
            baselines: BaselinesOpt = "ce_only,scratch", keep_checkpoints: KeepCheckpointsOpt = 1,
            quant_aware: QuantAwareOpt = None, qad_steps: QadStepsOpt = None, runtime: RuntimeOpt = None,
            augment: AugmentOpt = True) -> None:
    """Distill the teacher into a student, train the scratch baseline, evaluate both, write the run."""
    from edgekd.checks import input_file, optional_number
    from edgekd.run_inputs import distill_inputs
    from edgekd.settings import Settings

    # Checked before the heavy imports and before anything is written: a bad value costs no run directory.
    temp = temperature if temperature == "auto" else _float_option("--temperature", temperature)
    from edgekd.distill.config import training_defaults

    batch_size, lr = training_defaults(_path(teacher), batch_size, lr)  # the Python API's own, one rule
    distill_inputs(dict(teacher=_path(teacher), data=_path(data), student=_student(student), steps=steps, out=_path(out),
                        temperature=temp, alpha=alpha, latency_budget_ms=latency_budget, batch_size=batch_size,
                        seq_len=seq_len, lr=lr, seed=seed, loss=loss))
    for name, v in (("--decode-tok-s", decode_tok_s), ("--ttft-ms", ttft_ms)):
        optional_number(name, v, low=0, low_open=True)
    calibration = _path(calibration, keep=("saved",))
    if calibration != "saved":
        input_file(calibration, "--calibration")
    from edgekd.distill import DistillConfig, apply_settings
    from edgekd.pipeline import JobConfig, distill_job

    settings = apply_settings(Settings.from_env())  # the kernel switch and the fault hook, before any phase

    engine = DistillConfig(teacher=_path(teacher), data=_path(data), text_column=text_column,
                           label_column=label_column, student=_student(student), steps=steps, out=_path(out),
                           resume=resume, temperature=temp, alpha=alpha, loss=loss, scheme=scheme, seed=seed,
                           batch_size=batch_size, seq_len=seq_len, lr=lr, quiet=quiet, parallel=parallel,
                           baselines=baselines, keep_checkpoints=keep_checkpoints, qad_steps=qad_steps, augment=augment,
                           scheme_config=_scheme_paths(_json_option("--scheme-config", scheme_config)))
    target = _path(target) if target and target.endswith(".toml") else target
    distill_job(JobConfig(engine=engine, target=target, latency_budget_ms=latency_budget, device=device,
                          calibration=calibration, save_calibration=save_calibration, generative=generative,
                          decode_tok_s=decode_tok_s, ttft_ms=ttft_ms, quant_aware=quant_aware, runtime=runtime,
                          profile=dict(identity_file=_path(identity_file), known_hosts=_path(known_hosts),
                                       insecure_host_key=insecure_host_key, remote_python=remote_python)),
                settings=settings)


def _scheme_paths(opts: dict) -> dict:
    """The paths inside --scheme-config (extra teachers, a teacher cache) made absolute like every other."""
    if isinstance(opts.get("teachers"), list):
        opts["teachers"] = [_path(t) if isinstance(t, str) else t for t in opts["teachers"]]
    if isinstance(opts.get("cache"), str):
        opts["cache"] = _path(opts["cache"])
    return opts


def _student(value: Optional[str]) -> Optional[str]:
    """--student: a path made absolute, or the name of a student edgekd provides (bilstm) kept as it is."""
    from edgekd.models.arch import STUDENT_NAMES  # torch-free

    return _path(value, keep=tuple(STUDENT_NAMES))


def _path(value: Optional[str], keep: tuple = ()) -> Optional[str]:
    """A user's path made absolute once, here at the edge: nothing below depends on the current directory
    (the names of the shipped teachers and data, and `keep`, stay as they are)."""
    import os

    from edgekd.models.builtin import BUILTIN_DATA, BUILTIN_TEACHERS

    keep = (*keep, *BUILTIN_TEACHERS, *BUILTIN_DATA)
    if value is None or value in keep:
        return value
    return os.path.abspath(os.path.expanduser(value))


def _json_option(name: str, value: Optional[str]) -> dict:
    from pathlib import Path

    from edgekd.checks import parse_json_object

    if not value:
        return {}
    text = Path(value).read_text() if value.endswith(".json") and Path(value).is_file() else value
    return parse_json_object(text, name, "give an object or a .json file")


def _float_option(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError as e:
        raise EdgekdError(f"{name} must be a number or 'auto', got {value!r}") from e


@teacher_app.command("train")
@_work
def teacher_train(
    out: Optional[str] = typer.Option(None, help="Where to write the teacher (default: the packaged built-in dir)."),
    steps: Optional[int] = typer.Option(None, help="Training steps (default: the recipe's)."),
    seed: Optional[int] = typer.Option(None, help="Seed (default: the recipe's)."),
    checkpoints: Optional[str] = typer.Option(None, help="Checkpoint into this folder and resume from it (a "
                                              "stable-phase checkpoint of a longer run continues a shorter one)."),
    seq2seq: bool = typer.Option(False, "--seq2seq", help="The built-in seq2seq teacher instead: an English -> German "
                                                         "Marian on the built-in gettext corpus (builtin-seq2seq)."),
    image: bool = typer.Option(False, "--image", help="The built-in image teacher instead: edgekd's CNN on "
                                                     "scikit-learn's 8x8 digits (builtin-cnn)."),
) -> None:
    """Train the built-in teacher from its recipe on the built-in corpus (reproduces the shipped one)."""
    from edgekd.checks import teacher_train_args

    teacher_train_args(steps, seed, _path(out))
    if checkpoints is not None:
        teacher_train_args(out=_path(checkpoints))
    from edgekd.distill.teacher import train_builtin_image_teacher, train_builtin_seq2seq_teacher, train_builtin_teacher
    from edgekd.models.builtin import BUILTIN_DIR, IMAGE_DIR, SEQ2SEQ_DIR

    if seq2seq and image:
        raise EdgekdError("--seq2seq and --image name two different teachers: pass one")
    if image:
        train_builtin_image_teacher(_path(out) or IMAGE_DIR, steps=steps, seed=seed, checkpoints=_path(checkpoints))
        return
    if seq2seq:
        train_builtin_seq2seq_teacher(_path(out) or SEQ2SEQ_DIR, steps=steps, seed=seed, checkpoints=_path(checkpoints))
        return
    train_builtin_teacher(_path(out) or BUILTIN_DIR, steps=steps, seed=seed, checkpoints=_path(checkpoints))


# --- export / profile -----------------------------------------------------------------------------

@app.command("export")
@_work
def export(
    model_dir: str = typer.Argument(..., help="Hugging Face model directory (config.json + model.safetensors)."),
    format: str = typer.Option(..., "--format", help="onnx | tflite (token ids -> logits) | litert-lm | onnx-genai "
                                                     "(generative: KV cache, incremental decode) | onnx-seq2seq "
                                                     "(encoder-decoder: encoder, decoder and decoder-with-past graphs)."),
    quantize: str = typer.Option("none", help="onnx/tflite: none | int8-dynamic | int8 (static, calibrated); tflite "
                                              "image classifiers also int8-full (every op, input and output int8); "
                                              "litert-lm/onnx-genai: none | int8 | int4."),
    seq_len: int = typer.Option(64, help="onnx/tflite: sequence length of the exported input (TFLite is static)."),
    out: Optional[str] = typer.Option(None, help="Output file, or folder for onnx-genai (default: "
                                                 "MODEL_DIR/../export/NAME[.QUANT].EXT, NAME.litertlm, NAME-genai[.QUANT]/)."),
    min_top1: Optional[float] = typer.Option(None, help="Quantised parity: least top-1 agreement with PyTorch "
                                                        "(default 0.9; generative: 0.8, teacher-forced)."),
    new_tokens: int = typer.Option(32, help="litert-lm/onnx-genai/onnx-seq2seq: greedy tokens generated per parity "
                                            "prompt (sentence)."),
) -> None:
    """Export, check against PyTorch (logits; generative formats: greedy generation), write FILE and FILE.json."""
    from edgekd.checks import export_args, generative_args, model_dir as check_model_dir
    from edgekd.formats import FORMATS
    from edgekd.console import echo

    if format == "onnx-seq2seq":  # an encoder-decoder: three graphs with a KV cache, checked by greedy translation
        if quantize != "none":
            raise EdgekdError(f"--format onnx-seq2seq exports float32 only, not --quantize {quantize}: drop --quantize")
        check_model_dir(_path(model_dir), "MODEL_DIR")
        from edgekd.export.seq2seq_export import export_seq2seq

        rec = export_seq2seq(_path(model_dir), out=_path(out), new_tokens=new_tokens)
        echo(f"wrote {rec['path']}/ ({rec['size_mb']:.2f} MB: encoder_model.onnx, decoder_model.onnx, "
             f"decoder_with_past_model.onnx): greedy translations of {rec['parity']['sentences']} held-out sentences "
             f"with the KV cache match PyTorch's; parity record {rec['path']}.json")
        return
    if format in FORMATS and FORMATS[format].generative:
        generative_args(format, quantize, new_tokens, min_top1, _path(out))  # before the heavy imports
        check_model_dir(_path(model_dir), "MODEL_DIR")
        from edgekd.export import export_generative

        rec = export_generative(_path(model_dir), format, quantize, out=_path(out), new_tokens=new_tokens,
                                min_top1=min_top1)
        echo(f"wrote {rec['path']} ({rec['size_mb']:.2f} MB, {rec['recipe']}, built in {rec['convert_s']:.0f} s): "
             f"{rec['tokens_match_share']:.0%} of {rec['run']['prompts']} prompts generate PyTorch's greedy "
             f"{rec['run']['new_tokens']} tokens, perplexity ratio {rec['ppl_ratio']:.4f}, top-1 agreement "
             f"{rec['top1_agreement']:.4f}; parity record {rec['path']}.json")
        return
    min_top1 = 0.9 if min_top1 is None else min_top1
    export_args(format, quantize, seq_len, min_top1, _path(out))  # before the heavy imports
    check_model_dir(_path(model_dir), "MODEL_DIR")
    from edgekd.export import export_model

    rec = export_model(_path(model_dir), fmt=format, quantize=quantize, seq_len=seq_len, out=_path(out), min_top1=min_top1)
    echo(f"wrote {rec['path']} ({rec['size_mb']:.2f} MB): max abs diff {rec['max_abs_diff']:.3g}, "
               f"top-1 agreement {rec['top1_agreement']:.4f}; parity record {rec['path']}.json")


@app.command("profile")
@_work
def profile(
    model_file: str = typer.Argument(..., help="An exported .onnx or .tflite file (with --generative: a .litertlm "
                                               "bundle or an onnxruntime-genai folder)."),
    target: Optional[str] = typer.Option(None, help="Target name: its default device and threads."),
    device: Optional[str] = typer.Option(None, help="local | ssh://USER@HOST[:PORT] | adb[:SERIAL]"),
    runs: Optional[int] = typer.Option(None, help="Timed runs (default 50; with --generative 3)."),
    warmup: Optional[int] = typer.Option(None, help="Untimed warmup runs (default 5; with --generative 1)."),
    threads: Optional[int] = typer.Option(None, help="Threads (default: the target's, else all allowed cores)."),
    seq_len: Optional[int] = typer.Option(None, help="Sequence length for dynamic inputs (default: the export's)."),
    generative: bool = typer.Option(False, "--generative", help="Time generation: TTFT, prefill and decode tokens/s."),
    prompt_len: int = typer.Option(64, help="--generative: prompt tokens (prefill)."),
    decode_len: int = typer.Option(128, help="--generative: generated tokens (decode)."),
    remote_python: str = typer.Option("python3", help="ssh: the python on the device."),
    identity_file: Optional[str] = typer.Option(None, help="ssh: private key (default: ssh's, or EDGEKD_SSH_KEY)."),
    known_hosts: Optional[str] = typer.Option(None, help="ssh: known_hosts file to check the host key against."),
    insecure_host_key: bool = typer.Option(False, "--insecure-host-key", help="ssh: do not check the host key."),
    benchmark_binary: Optional[str] = typer.Option(None, help="adb: local benchmark binary to push (benchmark_model; "
                                                              "with --generative LiteRT-LM's litert_lm_main)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Time an exported model on a device: latency percentiles, init, peak RSS, per-op breakdown; with
    --generative, time to first token, prefill and decode tokens/s."""
    import json

    from edgekd.profile import profile_generation, profile_model, target_defaults
    from edgekd.settings import Settings

    settings = Settings.from_env()
    device, threads = target_defaults(target, device, threads, settings)
    ssh = dict(remote_python=remote_python, identity_file=_path(identity_file), known_hosts=_path(known_hosts),
               insecure_host_key=insecure_host_key, benchmark_binary=_path(benchmark_binary), settings=settings)
    if generative:
        from edgekd.export.generative_runtime import check_bundle

        check_bundle(_path(model_file))  # a truncated bundle is one line, not a runtime crash
        stats = profile_generation(_path(model_file), device=device, prompt_len=prompt_len, decode_len=decode_len,
                                   runs=3 if runs is None else runs, warmup=1 if warmup is None else warmup,
                                   threads=threads, **ssh)
    else:
        stats = profile_model(_path(model_file), device=device, runs=50 if runs is None else runs,
                              warmup=5 if warmup is None else warmup, threads=threads, seq_len=seq_len, **ssh)
    if json_out:
        from edgekd.console import echo

        echo(json.dumps(stats))
    elif generative:
        from edgekd.profile.table import print_generation

        print_generation(stats)
    else:
        from edgekd.profile.table import print_profile

        print_profile(stats)
    from edgekd.errors import JobFailed
    from edgekd.profile.generation_profile import parity_failure

    failed = parity_failure(stats)  # a file that fails parity on the device fails as it would here
    if failed:
        raise JobFailed(failed)


# --- device -------------------------------------------------------------------------------------------------

def _ssh_options(remote_python, identity_file, known_hosts, insecure_host_key) -> dict:
    return dict(remote_python=remote_python, identity_file=_path(identity_file), known_hosts=_path(known_hosts),
                insecure_host_key=insecure_host_key)


RemotePythonOpt = Annotated[str, _opt("--remote-python", help="ssh: the python on the device.")]
IdentityOpt = Annotated[Optional[str], _opt("--identity-file", help="ssh: private key (default: ssh's, or EDGEKD_SSH_KEY).")]
KnownHostsOpt = Annotated[Optional[str], _opt("--known-hosts", help="ssh: known_hosts file to check the host key against.")]
InsecureOpt = Annotated[bool, _opt("--insecure-host-key", help="ssh: do not check the host key.")]
JsonOpt = Annotated[bool, _opt("--json", help="Print one JSON object.")]


def _print_facts(facts: dict, json_out: bool) -> None:
    import json

    from edgekd.console import echo

    if json_out:
        echo(json.dumps(facts))
        return
    emulated = f", EMULATED ({facts.get('emulated_by')})" if facts.get("emulated") else ""
    echo(f"{facts.get('device')}: {facts.get('machine')} {facts.get('system') or ''}, Python {facts.get('python')} "
         f"({facts.get('python_path') or '-'}), {facts.get('libc') or '-'}, {facts.get('threads')} threads{emulated}")
    if facts.get("cpu_features") is not None:
        echo(f"  cpu features         {' '.join(facts['cpu_features']) or '-'}")
    for dist, ver in (facts.get("runtimes") or {}).items():
        echo(f"  {dist:<20} {ver or '-'}")


@device_app.command("check")
def device_check(device: str = typer.Argument(..., help="ssh://USER@HOST[:PORT] | adb[:SERIAL] | local"),
                 remote_python: RemotePythonOpt = "python3", identity_file: IdentityOpt = None,
                 known_hosts: KnownHostsOpt = None, insecure_host_key: InsecureOpt = False,
                 json_out: JsonOpt = False) -> None:
    """What a device has: machine, Python, runtimes and their versions, threads, and whether it is emulated."""
    from edgekd.device.setup import device_facts
    from edgekd.settings import Settings

    _print_facts(device_facts(device, Settings.from_env(), **_ssh_options(remote_python, identity_file, known_hosts,
                                                                           insecure_host_key)), json_out)


@device_app.command("setup")
@_work
def device_setup(device: str = typer.Argument(..., help="ssh://USER@HOST[:PORT]"),
                 venv: str = typer.Option("~/.edgekd/venv", help="Where the runtimes' venv goes on the device."),
                 remote_python: RemotePythonOpt = "python3", identity_file: IdentityOpt = None,
                 known_hosts: KnownHostsOpt = None, insecure_host_key: InsecureOpt = False,
                 json_out: JsonOpt = False) -> None:
    """Install the runtimes (this machine's versions, as wheels for the device's platform downloaded here) into a
    venv on an ssh device; then profile with --remote-python VENV/bin/python."""
    from edgekd.console import echo
    from edgekd.device.setup import setup_device
    from edgekd.settings import Settings

    opts = _ssh_options(remote_python, identity_file, known_hosts, insecure_host_key)
    facts = setup_device(device, Settings.from_env(), venv=venv, say=None if json_out else echo, **opts)
    _print_facts(facts, json_out)
    if not json_out:
        echo(f"profile there with --remote-python {facts['remote_python']}")


@device_app.command("board")
@_work
def device_board(port: Optional[int] = typer.Option(None, help="Port on 127.0.0.1 (default: a free one)."),
                 build_only: bool = typer.Option(False, "--build-only", help="Build (or find cached) and exit."),
                 cpu: Optional[str] = typer.Option(None, help="The arm64 core qemu emulates, e.g. cortex-a76 for a "
                                                              "Raspberry Pi 5 (default: max, every feature)."),
                 json_out: JsonOpt = False) -> None:
    """An emulated arm64 Linux board (Debian under qemu-user, the runtimes in a venv) served over ssh on 127.0.0.1
    until Ctrl-C: real arm64 runtimes and tokens, meaningless times. Needs root; built once (about 10 minutes) and
    cached in EDGEKD_BOARD_DIR or CACHE/arm64-board. The runtimes pick their kernels by the core's features: emulate
    the target's core (--cpu) to check the numbers its kernels compute."""
    import json
    import time

    from edgekd.console import echo
    from edgekd.device.board import build_board, check_cpu, start_board
    from edgekd.settings import Settings

    settings = Settings.from_env()
    if cpu is not None:
        check_cpu(cpu)  # before building: a wrong name is one line, not 10 minutes later
    root = build_board(settings, install=True, say=None if json_out else echo)
    if build_only:
        echo(json.dumps({"root": str(root)}) if json_out else f"the arm64 board is built in {root}")
        return
    import signal

    def stop(signum, frame):  # a `kill` stops the board as Ctrl-C does: its sshd ended, /proc unmounted
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also where a background shell started it with SIGINT ignored
    with start_board(settings, port=port, cpu=cpu) as board:
        if json_out:
            echo(json.dumps({"device": board.url, **board.options(), "emulated": board.emulated, "cpu": board.cpu}))
        else:
            core = f", core {board.cpu}" if board.cpu else ""
            echo(f"arm64 board (emulated{core}: its times mean nothing) at {board.url}; Ctrl-C stops it. Use:\n"
                 f"  edgekd device check {board.url} --identity-file {board.identity_file} --known-hosts "
                 f"{board.known_hosts} --remote-python {board.remote_python}\n"
                 f"  edgekd profile FILE --generative {board.command_line()}")
        while True:
            time.sleep(3600)


@app.command("predict")
def predict(
    model: str = typer.Argument(..., help="A model directory (config.json inside), a config.json, or 'builtin'."),
    target: str = typer.Option(..., "--target", help="Target name (see `edgekd targets list`)."),
    precision: str = typer.Option(..., "--precision", help="float32 | int8 | int4"),
    prompt_len: Optional[int] = typer.Option(None, "--prompt-len", help="Prompt tokens (default: the target's budget's)."),
    decode_len: Optional[int] = typer.Option(None, "--decode-len", help="Generated tokens (default: the target's budget's)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Predict time to first token, prefill and decode tokens/s, peak RSS and size of generating on a target."""
    from edgekd.settings import Settings
    from edgekd.targets.cost_generation import predict_model

    pred = predict_model(_path(model), _path(target) if target.endswith(".toml") else target, precision,
                         prompt_len, decode_len, Settings.from_env()).to_dict()
    if json_out:
        import json

        from edgekd.console import echo

        echo(json.dumps(pred))
    else:
        from edgekd.targets.show import print_generation

        print_generation(pred)


# --- entry point --------------------------------------------------------------------------------

_GLOBAL_FLAGS = ("--debug", "--verbose")


def _click_kind(e: BaseException) -> str:
    """'usage', 'click', 'exit', 'abort' or '' for an exception of any click, or of typer's vendored copy."""
    names = {c.__name__ for c in type(e).__mro__}
    if "NoArgsIsHelpError" in names:
        return "help"
    if "UsageError" in names:
        return "usage"
    if "ClickException" in names:
        return "click"
    if "Exit" in names and hasattr(e, "exit_code"):
        return "exit"
    if "Abort" in names:
        return "abort"
    return ""


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def _usage_line(e: BaseException) -> str:
    ctx = getattr(e, "ctx", None)
    where = f"`{ctx.command_path} --help`" if ctx is not None else "`edgekd --help`"
    msg = _one_line(e.format_message() if hasattr(e, "format_message") else str(e))
    return f"{msg.rstrip('.')}: see {where}"


def _os_error_line(e: OSError) -> str:
    import errno

    what = f" {e.filename}" if getattr(e, "filename", None) else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device writing{what}: free some space or choose another --out"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write{what} ({e.strerror}): choose a writable place (--out)"
    return f"{e.strerror or type(e).__name__}:{what} (check the path)"


def _full_disk_line(e: BaseException) -> Optional[str]:
    """The line for a full disk that a library reported in its own words (PyTorch's zip writer raises a
    RuntimeError, 'unexpected pos ...' or 'file write failed', with no errno), else None."""
    import errno

    seen, x = set(), e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return _os_error_line(x)
        text = str(x)
        if "No space left on device" in text or ("inline_container" in text and "unexpected pos" in text) \
                or "file write failed" in text:
            return ("writing a file failed, most likely no space left on the device: free some space or "
                    "choose another --out (a run continues with --resume)")
        x = x.__cause__ or x.__context__
    return None


def main(argv: Optional[list] = None) -> None:
    """Run the app: one line and exit 2 for a user's mistake, 1 for a failed job, 130 when interrupted."""
    import errno
    import traceback

    from edgekd import console
    from edgekd.errors import JobFailed

    args = list(sys.argv[1:] if argv is None else argv)
    debug, verbose = "--debug" in args, "--verbose" in args
    args = [a for a in args if a not in _GLOBAL_FLAGS]  # accepted anywhere on the line
    console.start(verbose)

    def fail(line: str, code: int, exc: Optional[BaseException] = None) -> int:
        err = console.err()  # the real stderr, also while third-party output is captured
        if debug and exc is not None:
            err.print("".join(traceback.format_exception(exc)), markup=False, highlight=False, end="")
        err.print(f"edgekd: error: {line}", markup=False, highlight=False, soft_wrap=True)
        return code

    code = 0
    try:
        res = app(args=args, prog_name="edgekd", standalone_mode=False)
        code = res if isinstance(res, int) else 0
    except (EdgekdError, JobFailed) as e:
        code = fail(_one_line(str(e)), e.exit_code, e)
    except KeyboardInterrupt as e:
        code = fail("interrupted", 130, e)
    except OSError as e:
        code = fail(_os_error_line(e), 2 if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM,
                                                         errno.EROFS, errno.ENOENT, errno.EISDIR, errno.ENOTDIR,
                                                         errno.EEXIST, errno.ENAMETOOLONG) else 1, e)
    except BaseException as e:  # noqa: BLE001 - the one place that turns any exception into an exit code
        kind = _click_kind(e)
        if kind == "help":
            ctx = getattr(e, "ctx", None)
            text = ctx.get_help() if ctx is not None else ""  # typer's rich help prints itself, returns ""
            if text:
                console.out().print(text, markup=False, highlight=False)
            code = 0
        elif kind == "usage":
            code = fail(_usage_line(e), 2, e)
        elif kind == "click":
            code = fail(_one_line(e.format_message()), int(getattr(e, "exit_code", 1) or 1), e)
        elif kind == "exit":
            code = int(getattr(e, "exit_code", 0) or 0)
        elif kind == "abort":
            code = fail("interrupted", 130, e)
        elif isinstance(e, SystemExit):
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else fail(str(e.code), 1))
        elif _full_disk_line(e):
            code = fail(_full_disk_line(e), 2, e)
        else:
            log = console.log_path()
            code = fail(f"internal error: {type(e).__name__}: {_one_line(str(e))[:300]} (a bug in edgekd: rerun "
                        f"with --debug for the traceback{f'; log {log}' if log else ''})", 1, e)
    finally:
        console.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
