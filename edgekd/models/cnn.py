"""edgekd's small CNN image classifier: the built-in image teacher (`builtin-cnn`, trained on the 8x8 digits
by `edgekd teacher train --image`) and the student `--student cnn` of any image teacher (the seeds' Keras
`Distiller` example: a teacher CNN and a narrower student CNN).

Each stage is a 3x3 convolution and a ReLU, every stage after the first at stride 2; then global average
pooling and a linear layer to the classes. Plain convolutions, ReLUs, a mean and a matmul: what torch.export,
ONNX, TFLite and full-integer int8 (NPUs, the Edge TPU, microcontrollers) all take. It is a `PreTrainedModel`
with its own config, registered with transformers' Auto classes like edgekd's BiLSTM, so edgekd's loading,
trainer and exporters treat it as any other image classifier.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from edgekd.errors import EdgekdError
from edgekd.models.arch import CNN_MODEL_TYPE as MODEL_TYPE
from edgekd.models.loading import register_auto

NAME = "cnn"  # what --student says (edgekd.models.arch.STUDENT_NAMES)


class CNNConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, num_channels: int = 1, image_size: int = 8, hidden_sizes=(16, 32, 64),
                 classifier_dropout: float = 0.1, **kwargs):
        self.num_channels, self.image_size = int(num_channels), int(image_size)
        self.hidden_sizes = [int(h) for h in hidden_sizes]
        self.classifier_dropout = classifier_dropout
        super().__init__(**kwargs)


class CNNForImageClassification(PreTrainedModel):
    config_class = CNNConfig
    base_model_prefix = "cnn"
    main_input_name = "pixel_values"

    def __init__(self, config: CNNConfig):
        super().__init__(config)
        layers, inp = [], config.num_channels
        for i, h in enumerate(config.hidden_sizes):
            layers += [nn.Conv2d(inp, h, 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU()]
            inp = h
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(inp, config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None,
                **_unused) -> ImageClassifierOutput:
        x = self.features(pixel_values).mean(dim=(2, 3))
        logits = self.classifier(self.dropout(x))
        loss = None if labels is None else nn.functional.cross_entropy(logits.float(), labels.view(-1))
        return ImageClassifierOutput(loss=loss, logits=logits)


register_auto(MODEL_TYPE, CNNConfig, CNNForImageClassification, "AutoModelForImageClassification")


def cnn_config(teacher_config, image_size: int, overrides: dict) -> CNNConfig:
    """The CNN student of an image teacher: its channels and classes; half the teacher's stages' widths where
    the teacher is a CNN itself, else (8, 16, 32), unless `overrides` say (hidden_sizes, classifier_dropout)."""
    known = {"hidden_sizes", "classifier_dropout", "model_type"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise EdgekdError(f"--student {NAME} takes hidden_sizes and classifier_dropout, not {', '.join(unknown)}: "
                          f"drop them")
    sizes = overrides.get("hidden_sizes")
    if sizes is not None and (not isinstance(sizes, list) or not sizes or
                              not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in sizes)):
        raise EdgekdError(f"--student {NAME}: hidden_sizes must be a list of positive integers, got {sizes!r}")
    if sizes is None:
        own = getattr(teacher_config, "hidden_sizes", None) if teacher_config.model_type == MODEL_TYPE else None
        sizes = [max(4, h // 2) for h in own] if own else [8, 16, 32]
    return CNNConfig(num_channels=getattr(teacher_config, "num_channels", 3), image_size=image_size,
                     hidden_sizes=sizes, classifier_dropout=float(overrides.get("classifier_dropout", 0.1)),
                     num_labels=len(teacher_config.id2label), id2label=dict(teacher_config.id2label),
                     label2id=dict(teacher_config.label2id), architectures=[CNNForImageClassification.__name__])
