"""Progressive distillation: a chain of shrinking students, each taught by the one before it (the
first by the run's teacher); the last is the run's student (cf. TA-KD, Mirzadeh et al., 2020)."""

from __future__ import annotations

from edgekd.distill.schemes.base import Plan, Stage, register_scheme, split_options
from edgekd.distill.schemes.offline import OfflineScheme, with_cache_data
from edgekd.errors import EdgekdError
from edgekd.losses import unwrap
from edgekd.models.arch import param_count
from edgekd.report.sections import fmt, register_section


def shrunk_config(config, overrides: dict):
    """`config` with `overrides` (canonical names or the family's own) applied through edgekd.models.arch,
    so per-layer lists shrink with the layers; a derived head_dim is recomputed; unknown keys are an error."""
    from edgekd.models.arch import ARCH_KEYS, config_from

    d = config.to_dict()
    for key in overrides:
        if key not in d and not hasattr(config, key) and key not in ARCH_KEYS:
            raise EdgekdError(f"progressive: unknown config field {key!r} for {type(config).__name__}")
    field = getattr(type(config), "__dataclass_fields__", {}).get("head_dim")
    derived = field is None or field.default is None  # Llama's is hidden / heads; Gemma's, Qwen3's their own
    drop = ("head_dim",) if derived and "head_dim" not in overrides and \
        ("hidden_size" in overrides or "num_attention_heads" in overrides) else ()
    return config_from(config, overrides, drop=drop, what="progressive: ")


def stage_configs(sizes, teacher, student_config) -> list:
    """The chain's stage configs: the intermediate `sizes` (config overrides, each applied to the previous
    stage's config; default: one stage halfway between teacher and student), then the run's student.
    Checked before any training: every stage has fewer parameters and no more layers than the one before."""
    if sizes is None:
        sizes = halfway_sizes(teacher, student_config)
    if not isinstance(sizes, list) or not all(isinstance(o, dict) for o in sizes):
        raise EdgekdError(f"scheme 'progressive': sizes must be a list of config overrides, one per intermediate "
                          f"stage (e.g. [{{\"num_hidden_layers\": 3}}]), got {sizes!r}")
    configs, prev = [], teacher.config
    for overrides in sizes:
        prev = shrunk_config(prev, overrides)
        configs.append(prev)
    configs.append(student_config)
    prev = teacher.config
    for n, c in enumerate(configs, 1):
        have, want = param_count(prev), param_count(c)
        if want >= have or c.num_hidden_layers > prev.num_hidden_layers:
            raise EdgekdError(f"scheme 'progressive': stage {n} ({want} parameters, {c.num_hidden_layers} layers) is "
                              f"not smaller than the model before it ({have}, {prev.num_hidden_layers} layers): "
                              f"each stage must shrink (the last stage is the run's student)")
        prev = c
    return configs


def arch_summary(config) -> dict:
    """The shape fields of a config (no vocabulary): how report.json lists a stage's model."""
    from edgekd.models.arch import ARCH_KEYS, arch_of

    a = arch_of(config)
    return {k: a[k] for k in ARCH_KEYS if k != "vocab_size"}


def halfway_sizes(teacher, student_config) -> list[dict]:
    """The default intermediate stage of a progressive chain: depth (rounded up), heads, FFN and hidden
    size halfway between teacher and student, as config overrides of the teacher's config; [] where
    that model does not lie strictly between the two in parameters."""
    from edgekd.models.arch import arch_of

    t, s = unwrap(teacher).config, student_config
    ta, sa = arch_of(t), arch_of(s)
    mid = lambda a, b: (a + b) // 2  # noqa: E731
    o = {"num_hidden_layers": mid(ta["num_hidden_layers"] + 1, sa["num_hidden_layers"]),
         "intermediate_size": mid(ta["intermediate_size"], sa["intermediate_size"])}
    h = mid(ta["num_attention_heads"], sa["num_attention_heads"])
    o["num_attention_heads"] = h
    kv = max(1, mid(ta["num_key_value_heads"], sa["num_key_value_heads"]))
    while h % kv:
        kv -= 1
    o["num_key_value_heads"] = kv
    if ta["head_dim"] == sa["head_dim"]:  # keep the head size, so heads copy over from the previous stage
        o["hidden_size"], o["head_dim"] = h * ta["head_dim"], ta["head_dim"]
    else:
        o["hidden_size"] = max(h, mid(ta["hidden_size"], sa["hidden_size"]) // h * h)
    sizes = [param_count(c) for c in (t, shrunk_config(t, o), s)]
    return [o] if sizes[0] > sizes[1] > sizes[2] else []


@register_scheme("progressive")
class ProgressiveScheme(OfflineScheme):
    """Each stage is an offline distillation of the previous stage's model; the stages split the run's
    steps and walk the training stream on, so over all stages the chain sees the scratch baseline's
    batches. A teacher cache (scheme options) serves the first stage, whose teacher is the run's."""

    plan_options = ("sizes",)

    @classmethod
    def plan(cls, run) -> Plan:
        options, plan_options = split_options(cls, run.cfg.scheme_config)
        configs = stage_configs(plan_options.get("sizes"), run.teacher, run.student_config)
        n = len(configs)
        if run.steps < n:
            raise EdgekdError(f"scheme 'progressive' has {n} stages but only {run.steps} steps: "
                              f"give at least one step per stage")
        steps = [run.steps // n] * n
        steps[-1] += run.steps - sum(steps)
        stages = []
        for i, (c, k) in enumerate(zip(configs, steps)):
            first, last = i == 0, i == n - 1
            stream = cls.train_stream(run, sum(steps[:i]))
            stages.append(Stage(f"distill {i + 1}/{n}", c, k, "distill" if last else f"distill-stage{i + 1}", stream,
                                [run.teacher] if first else None, dict(options) if first else {}))
        record = {"progressive": {"stages": [{"config": arch_summary(c), "steps": k} for c, k in zip(configs, steps)]}}
        return with_cache_data(Plan(stages, record))


@register_section("progressive_stages", 70)
def stages_section(rep: dict, kind: str) -> list[str]:
    """report.md: each stage of the chain (report.json's distillation.stages)."""
    stages = rep["distillation"].get("stages")
    if not stages:
        return []
    lines = ["## Progressive stages", "", "Each stage was distilled from the one before it (the first from the "
             "teacher); the last is the student.", "",
             "| stage | layers | hidden | FFN | params | steps | held-out loss |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for st in stages:
        c = st.get("config", {})
        lines.append(f"| {st.get('stage')} | {fmt(c.get('num_hidden_layers'))} | {fmt(c.get('hidden_size'))} | "
                     f"{fmt(c.get('intermediate_size'))} | {st.get('params', 0):,} | {st.get('steps')} | "
                     f"{fmt(st.get('eval_loss'))} |")
    return lines + [""]
