"""Offline distillation: a frozen teacher, run live or served from a top-k teacher cache."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from edgekd.data.teacher_cache import TeacherCache
from edgekd.distill.schemes.base import Plan, Scheme, freeze, needs_of, register_scheme
from edgekd.errors import EdgekdError
from edgekd.report.sections import register_section


def with_cache_data(plan: Plan) -> Plan:
    """A teacher cache (the first stage's `cache` option) is built from, or checked against, that stage's
    training stream; the plan's record says where it is and whether this run builds it."""
    first = plan.stages[0]
    if "cache" in first.options:
        first.options["cache_data"] = first.stream
        path = Path(first.options["cache"])
        plan.record["teacher_cache"] = {"path": str(path), "built": not (path / "index.json").is_file()}
    return plan


@register_scheme("offline")
class OfflineScheme(Scheme):
    """A frozen teacher (eval, no grad), run live or served from a `TeacherCache`.

    cache: a TeacherCache or the path of one; with `cache_data` (the training examples) the cache
    is built there when missing (k = cache_k, default 32) and checked against data and teacher
    when present. In a run, `cache_data` is the first stage's training stream. A live teacher may have
    another tokenizer than the student's (`use_tokens`).
    """

    takes_other_tokenizer = True

    @classmethod
    def plan(cls, run) -> Plan:
        return with_cache_data(super().plan(run))

    def __init__(self, *, teachers, student, cache=None, cache_data=None, cache_k: Optional[int] = None, loss_fn=None):
        super().__init__(teachers=teachers, student=student, loss_fn=loss_fn)
        if cache is None or teachers:
            self.require_one_teacher()
            freeze(self.teacher)
        if cache is not None and not isinstance(cache, TeacherCache):
            teacher = self.teacher if teachers else None
            if cache_data is not None and teacher is not None:
                kw = {"k": cache_k} if cache_k else {}
                cache = TeacherCache.build_or_open(teacher, cache_data, cache, **kw)  # every rank writes its shards
            else:
                cache = TeacherCache.open(cache, data=cache_data, teacher=teacher)
        self.cache = cache

    def teacher_outputs(self, batch, student_out):
        if self.cache is not None:
            needs = needs_of(student_out, self.loss_fn)
            if needs.needs_hidden_states or needs.needs_attentions:
                raise EdgekdError("a top-k teacher cache stores only logits: use response losses ('kd', 'mse_logits') "
                                  "with it, or drop the cache")
            return self.cache.lookup(batch)
        return super().teacher_outputs(batch, student_out)


@register_section("teacher_cache", 100)
def teacher_cache_section(rep: dict, kind: str) -> list[str]:
    """report.md: the top-k teacher cache the run read (report.json's distillation.teacher_cache)."""
    cache = rep["distillation"].get("teacher_cache")
    if not cache:
        return []
    how = "built by this run" if cache.get("built") else "reused"
    return [f"Teacher top-k cache: `{cache.get('path')}` ({how}).", ""]
