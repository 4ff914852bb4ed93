"""Multi-teacher distillation: the student learns the teachers' weighted mixture."""

from __future__ import annotations

import math
from typing import Optional

from edgekd.distill.schemes.base import Scheme, freeze, needs_of, register_scheme
from edgekd.errors import EdgekdError
from edgekd.hyperparams import DEFAULT_TEMPERATURE, check_temperature
from edgekd.losses import Needs, TeacherMixture, mixture_logits, unwrap

@register_scheme("multi_teacher")
class MultiTeacherScheme(Scheme):
    """Weighted mean of the teachers' distributions at temperature T, as logits T · log Σ w_i p_i.

    weights default to equal and are normalised to sum to 1; T defaults to the loss's temperature
    (`loss_fn`) or edgekd.hyperparams' default. A response loss at another T re-mixes at its own T (see TeacherMixture).
    Hidden states and attentions, where asked for, are the first teacher's.
    """

    plan_options = ("teachers",)

    @classmethod
    def teachers_for(cls, run, plan_options: dict) -> list:
        return [run.teacher] + [m.to(run.device).eval() for m in cls.extra_teachers(run.cfg, run.teacher,
                                                                                  plan_options.get("teachers", []))]

    @staticmethod
    def extra_teachers(cfg, teacher, given=()) -> list:
        """The other teachers: DistillConfig.teachers and scheme-config "teachers" (`given`: paths to Hugging
        Face model directories, or "builtin"), loaded like the first; each must share the first teacher's
        vocabulary (size, and token -> id map where both directories hold a tokenizer)."""
        from edgekd.data.tokenizer import load_tokenizer
        from edgekd.models.loading import load_model, resolve_model_dir
        from edgekd.models.students import check_tokenizers_agree

        def tokenizer_of(path):
            d = resolve_model_dir(path)
            has = any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
            return load_tokenizer(d) if has else None

        if not isinstance(given, list) or not all(isinstance(t, str) for t in given):
            raise EdgekdError(f"scheme 'multi_teacher': teachers must be a list of model directories (or \"builtin\"), "
                              f"got {given!r}")
        out, first_tok = [], None
        for path in list(cfg.teachers) + given:
            m, _, _ = load_model(path, with_tokenizer=False)
            v, v0 = getattr(m.config, "vocab_size", None), getattr(teacher.config, "vocab_size", None)
            if v != v0:
                raise EdgekdError(f"scheme 'multi_teacher': teacher {path} has a vocabulary of {v} tokens, the first "
                                  f"teacher's {v0}: all teachers must share one tokenizer")
            first_tok = first_tok or tokenizer_of(cfg.teacher)
            check_tokenizers_agree(first_tok, tokenizer_of(path), where=f"multi_teacher teacher {path}")
            out.append(m)
        return out

    def __init__(self, *, teachers, student, weights: Optional[list] = None, temperature: Optional[float] = None,
                 loss_fn=None):
        super().__init__(teachers=teachers, student=student, loss_fn=loss_fn)
        if len(teachers) < 1:
            raise EdgekdError("scheme 'multi_teacher' needs at least one teacher")
        weights = [1.0] * len(teachers) if weights is None else list(weights)
        if len(weights) != len(teachers) or any(not isinstance(w, (int, float)) or w < 0 or not math.isfinite(w)
                                                for w in weights) or sum(weights) <= 0:
            raise EdgekdError(f"scheme 'multi_teacher': weights must be {len(teachers)} numbers >= 0 with a positive "
                              f"sum, got {weights!r}")
        self.weights = [w / sum(weights) for w in weights]
        if temperature is None:
            temperature = getattr(loss_fn, "temperature", None) or DEFAULT_TEMPERATURE
        check_temperature("scheme 'multi_teacher': temperature", temperature, auto=False)  # a scheme option
        self.temperature = float(temperature)
        vocabs = {getattr(getattr(unwrap(t), "config", None), "vocab_size", None) for t in teachers} - {None}
        if len(vocabs) > 1:
            raise EdgekdError(f"scheme 'multi_teacher': the teachers' vocabularies differ ({sorted(vocabs)}); "
                              f"all teachers must share one tokenizer")
        for t in teachers:
            freeze(t)

    def teacher_outputs(self, batch, student_out):
        needs = needs_of(student_out, self.loss_fn)  # the mixture is of logits: the 'kd' loss reads them as they are
        needs = Needs(True, needs.needs_hidden_states, needs.needs_attentions, False)
        outs = [self.run_teacher(t, batch, needs if i == 0 else Needs()) for i, t in enumerate(self.teachers)]
        members = [o.logits for o in outs]
        if len({m.shape[-1] for m in members}) > 1:
            raise EdgekdError(f"scheme 'multi_teacher': the teachers' vocabularies differ "
                              f"({sorted({m.shape[-1] for m in members})}); all teachers must share one tokenizer")
        device = members[0].device
        members = [m.to(device) for m in members]
        return TeacherMixture(logits=mixture_logits(members, self.weights, self.temperature),
                              hidden_states=outs[0].hidden_states, attentions=outs[0].attentions,
                              members=members, weights=self.weights, temperature=self.temperature)
