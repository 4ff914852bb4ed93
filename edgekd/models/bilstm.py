"""edgekd's BiLSTM sentence classifier: the small non-transformer student (`--student bilstm`) a
`*ForSequenceClassification` teacher is distilled into (Tang et al., 2019, distilled BERT into one).

Token embedding (from the teacher's word embeddings where the sizes agree) -> a bidirectional LSTM over
the sentence's real tokens only -> mean and max pooling over those tokens -> a linear layer to the
labels. It is a `PreTrainedModel` with its own config, registered with transformers' Auto classes, so
`save_pretrained`/`from_pretrained` (safetensors), edgekd's loading, trainer and exporters treat it as
any other classifier.

Padding never changes the logits: the backward direction reads each sentence reversed within its own
length (the padding stays at the end), the forward direction never sees a later position, and pooling
counts real tokens only; so a sentence padded to the exported length gives its unpadded logits. The
recurrence is written out step by step (the input projection of all steps is one matmul) so that
torch.export, and with it ONNX and TFLite, sees plain matmuls and elementwise ops, not an LSTM kernel.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from edgekd.errors import EdgekdError
from edgekd.models.arch import BILSTM_MODEL_TYPE as MODEL_TYPE, arch_of, register_param_count
from edgekd.models.loading import register_auto

NAME = "bilstm"  # what --student says (edgekd.models.arch.STUDENT_NAMES)


class BiLSTMConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, vocab_size: int = 30522, embedding_size: int = 128, hidden_size: int = 128,
                 classifier_dropout: float = 0.1, pad_token_id: int = 0, **kwargs):
        self.vocab_size, self.embedding_size, self.hidden_size = vocab_size, embedding_size, hidden_size
        self.classifier_dropout = classifier_dropout
        super().__init__(pad_token_id=pad_token_id, **kwargs)


class _Direction(nn.Module):
    """One LSTM direction (PyTorch's gate order i, f, g, o) run over [B, S, E] inputs left to right."""

    def __init__(self, inp: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.w_ih = nn.Linear(inp, 4 * hidden)
        self.w_hh = nn.Linear(hidden, 4 * hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        gx = self.w_ih(x)  # every step's input projection at once
        h = x.new_zeros(b, self.hidden)
        c = x.new_zeros(b, self.hidden)
        outs = []
        for t in range(s):
            i, f, g, o = (gx[:, t] + self.w_hh(h)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, dim=1)


def _reverse_within_length(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's first `length` positions reversed, the padding left where it is (its own inverse)."""
    s = x.shape[1]
    pos = torch.arange(s, device=x.device).unsqueeze(0)
    length = mask.sum(dim=1, keepdim=True)
    idx = torch.where(pos < length, length - 1 - pos, pos)
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class BiLSTMForSequenceClassification(PreTrainedModel):
    config_class = BiLSTMConfig
    base_model_prefix = "bilstm"
    main_input_name = "input_ids"

    def __init__(self, config: BiLSTMConfig):
        super().__init__(config)
        e, h = config.embedding_size, config.hidden_size
        self.embeddings = nn.Embedding(config.vocab_size, e, padding_idx=config.pad_token_id)
        self.forward_lstm = _Direction(e, h)
        self.backward_lstm = _Direction(e, h)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(4 * h, config.num_labels)  # [mean, max] of [forward, backward]
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.1)

    def get_input_embeddings(self):
        return self.embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, **_unused) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.to(torch.long)
        x = self.embeddings(input_ids)
        fwd = self.forward_lstm(x)
        bwd = _reverse_within_length(self.backward_lstm(_reverse_within_length(x, mask)), mask)
        out = torch.cat([fwd, bwd], dim=-1)
        m = mask.unsqueeze(-1).to(out.dtype)
        mean = (out * m).sum(1) / m.sum(1).clamp(min=1.0)
        mx = torch.where(m > 0, out, torch.full_like(out, -1e4)).amax(1)
        logits = self.classifier(self.dropout(torch.cat([mean, mx], dim=-1)))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def init_from_teacher(self, teacher) -> dict:
        """The teacher's word embeddings where vocabulary and width agree; the rest stays random."""
        emb = teacher.get_input_embeddings().weight
        own = self.embeddings.weight
        if tuple(emb.shape) != tuple(own.shape):
            return {"method": "random", "why": f"the BiLSTM's embeddings are {tuple(own.shape)}, the teacher's word "
                                               f"embeddings {tuple(emb.shape)}"}
        own.copy_(emb)
        return {"method": "teacher", "copied": ["word embeddings"], "width": "embeddings only"}


register_auto(MODEL_TYPE, BiLSTMConfig, BiLSTMForSequenceClassification, "AutoModelForSequenceClassification")


def bilstm_config(teacher_config, overrides: dict) -> BiLSTMConfig:
    """The BiLSTM student of a classifier teacher: the teacher's vocabulary, labels and padding id; the
    embedding as wide as the teacher's (so its word embeddings can be copied) and an LSTM half that wide,
    unless `overrides` say otherwise (embedding_size, hidden_size, classifier_dropout)."""
    archs = getattr(teacher_config, "architectures", None) or []
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        raise EdgekdError(f"--student {NAME} is a sentence classifier: the teacher ({archs[0] if archs else 'a '}"
                          f"{'' if archs else teacher_config.model_type}) must be a *ForSequenceClassification model")
    a = arch_of(teacher_config)
    known = {"embedding_size", "hidden_size", "classifier_dropout", "model_type"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise EdgekdError(f"--student {NAME} takes embedding_size, hidden_size and classifier_dropout, not "
                          f"{', '.join(unknown)}: drop them")
    for k in ("embedding_size", "hidden_size"):
        v = overrides.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise EdgekdError(f"--student {NAME}: {k} must be a positive integer, got {v!r}")
    pad = getattr(teacher_config, "pad_token_id", None)
    return BiLSTMConfig(vocab_size=a["vocab_size"], embedding_size=overrides.get("embedding_size") or a["hidden_size"],
                        hidden_size=overrides.get("hidden_size") or max(8, a["hidden_size"] // 2),
                        classifier_dropout=float(overrides.get("classifier_dropout", 0.1)),
                        pad_token_id=0 if pad is None else int(pad), num_labels=a["num_labels"],
                        id2label=dict(teacher_config.id2label), label2id=dict(teacher_config.label2id),
                        architectures=[BiLSTMForSequenceClassification.__name__])


def bilstm_param_count(config) -> int:
    """Parameters of the BiLSTM a config describes (an object or its dict)."""
    get = (lambda k: config.get(k)) if isinstance(config, dict) else (lambda k: getattr(config, k))
    v, e, h = int(get("vocab_size")), int(get("embedding_size")), int(get("hidden_size"))
    labels = len(get("id2label") or {}) or int(get("num_labels") or 2)
    direction = e * 4 * h + 4 * h + h * 4 * h
    return v * e + 2 * direction + 4 * h * labels + labels


register_param_count((MODEL_TYPE,), bilstm_param_count)
