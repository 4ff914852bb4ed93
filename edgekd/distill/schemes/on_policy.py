"""On-policy and mixed distillation (GKD, Agarwal et al. 2024): a share λ of the training batches are the
student's own continuations of prompts cut from the batch, scored token by token by the teacher.

Offline KD trains the student on text it will never write itself; at generation time it conditions on
its own tokens (the train/inference mismatch). Here, on a share `lmbda` of the steps, each row of the
batch is cut to its first `prompt_len` tokens, the student samples `max_new_tokens` tokens after it
(HF `generate` with the KV cache, at `sample_temperature`, seeded per step), and the batch becomes
prompt + sample with labels on the sampled tokens only. The trainer then runs it like any other batch:
one student forward, one teacher forward over prompt + sample, the run's loss on the sampled tokens.
GKD's generalised JSD is the kernel's `jsd` divergence: `--loss '[{"name": "kd", "divergence": "jsd",
"beta": 0.5}]'`. On the student's samples the response losses take α = 1 (the divergence alone): a
sampled token is no ground truth for the hard-label CE. λ = 0 never samples: it is offline KD.
"""

from __future__ import annotations

import math
import torch

from edgekd.distill.schemes.base import Plan, Scheme, freeze, register_scheme
from edgekd.errors import EdgekdError
from edgekd.losses import unwrap
from edgekd.report.sections import register_section

OPTIONS = ("lmbda", "prompt_len", "max_new_tokens", "sample_temperature")


def resolve_options(opts: dict, seq_len: int) -> dict:
    """The scheme's options with their defaults for blocks of `seq_len` tokens; a bad one is an EdgekdError."""
    def bad(name, want, v):
        raise EdgekdError(f"scheme 'on_policy': {name} must be {want}, got {v!r}")

    lmbda = opts.get("lmbda", 0.5)
    if isinstance(lmbda, bool) or not isinstance(lmbda, (int, float)) or not 0.0 <= lmbda <= 1.0:
        bad("lmbda", "a number in [0, 1] (the share of steps trained on the student's samples)", lmbda)
    plen = opts.get("prompt_len", max(1, seq_len // 2))
    if isinstance(plen, bool) or not isinstance(plen, int) or not 1 <= plen < seq_len:
        bad("prompt_len", f"an integer in [1, {seq_len - 1}] (prompts are cut from blocks of --seq-len {seq_len})",
            plen)
    new = opts.get("max_new_tokens", seq_len - plen)
    if isinstance(new, bool) or not isinstance(new, int) or new < 1:
        bad("max_new_tokens", "a positive integer", new)
    temp = opts.get("sample_temperature", 1.0)
    if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not math.isfinite(temp) or temp <= 0:
        bad("sample_temperature", "a positive number", temp)
    return {"lmbda": float(lmbda), "prompt_len": plen, "max_new_tokens": new, "sample_temperature": float(temp)}


def on_policy_step(step: int, lmbda: float) -> bool:
    """Whether optimiser step `step` trains on the student's samples: exactly ⌊n·λ⌋ of the first n steps are,
    spread evenly, decided by the step alone (so --resume makes the same choices)."""
    return math.floor((step + 1) * lmbda + 1e-9) > math.floor(step * lmbda + 1e-9)


@register_scheme("on_policy")
class OnPolicyScheme(Scheme):
    """GKD: a frozen teacher run live on a mix of the run's batches and the student's own samples."""

    @classmethod
    def plan(cls, run) -> Plan:
        from edgekd.models.loading import CAUSAL_LM

        if run.kind != CAUSAL_LM:
            raise EdgekdError("scheme 'on_policy' trains on the student's generations: it needs a causal LM teacher, "
                              "not a classifier")
        plan = super().plan(run)
        stage = plan.stages[0]
        unknown = sorted(set(stage.options) - set(OPTIONS))
        if unknown:
            raise EdgekdError(f"scheme 'on_policy': unknown option {unknown[0]!r}; it takes {', '.join(OPTIONS)}")
        stage.options = resolve_options(stage.options, run.data.seq_len) | {"seed": run.cfg.seed}
        on = sum(on_policy_step(i, stage.options["lmbda"]) for i in range(stage.steps))
        plan.record["on_policy"] = {k: stage.options[k] for k in OPTIONS} | {"steps": stage.steps,
                                                                              "on_policy_steps": on}
        return plan

    def __init__(self, *, teachers, student, lmbda: float = 0.5, prompt_len: int = 16, max_new_tokens: int = 16,
                 sample_temperature: float = 1.0, seed: int = 0, loss_fn=None):
        super().__init__(teachers=teachers, student=student, loss_fn=loss_fn)
        self.require_one_teacher()
        freeze(self.teacher)
        self.lmbda, self.prompt_len, self.max_new_tokens = float(lmbda), int(prompt_len), int(max_new_tokens)
        self.sample_temperature, self.seed = float(sample_temperature), int(seed)
        self._alphas: list = []  # (response term, the run's α)

    def use_loss(self, loss_fn) -> None:
        super().use_loss(loss_fn)
        terms = loss_fn.modules() if isinstance(loss_fn, torch.nn.Module) else []
        self._alphas = [(m, m.alpha) for m in terms if getattr(m, "takes_temperature", False)]

    def training_batch(self, student, batch: dict, step: int) -> dict:
        """The batch step `step` trains on: the run's, or (on a share λ of the steps) the student's samples."""
        on = on_policy_step(step, self.lmbda)
        for term, alpha in self._alphas:
            term.alpha = 1.0 if on else alpha
        return self.sample(student, batch, step) if on else batch

    def sample(self, student, batch: dict, step: int) -> dict:
        """Prompt (the first prompt_len tokens of each row) + the student's sampled continuation, labels on the
        sampled tokens only (up to and including an EOS); right-padded, attention-masked."""
        from edgekd.distill.schemes.sequence import generate_sequence_data

        ids = batch["input_ids"]
        plen = min(self.prompt_len, ids.shape[1] - 1)
        mask = batch.get("attention_mask")
        if mask is not None and not bool(mask[:, :plen].bool().all()):
            raise EdgekdError("scheme 'on_policy' cuts prompts from unpadded training blocks: this batch is padded")
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        seqs = generate_sequence_data(student, list(ids[:, :plen]), max_new_tokens=self.max_new_tokens,
                                      do_sample=True, temperature=self.sample_temperature,
                                      seed=self.seed + 1_000_003 * step + rank, batch_size=ids.shape[0])
        pad = getattr(unwrap(student).config, "pad_token_id", None)
        return next(seqs.batches(len(seqs), pad if pad is not None else 0))


@register_section("on_policy", 90)
def on_policy_section(rep: dict, kind: str) -> list[str]:
    """report.md: the share of steps on the student's samples (report.json's distillation.on_policy)."""
    o = rep["distillation"].get("on_policy") or {}
    return [f"On-policy KD (GKD): {o.get('on_policy_steps')} of {o.get('steps')} steps (λ = {o.get('lmbda')}) "
            f"trained on the student's own samples ({o.get('max_new_tokens')} tokens after {o.get('prompt_len')}-token "
            f"prompts at temperature {o.get('sample_temperature')}), scored by the teacher token by token.", ""] if o else []
