"""Losses on what happens inside the models: hidden states, attention maps, token relations.

Teacher tensors are always detached; padded tokens (attention_mask 0) count for nothing; the
value is the mean over the mapped layer pairs, so a term's weight does not depend on how many.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.losses.base import (LossTerm, LossView, Setup, config_int, even_hidden_map, even_layer_map,
                                hidden_size, masked_mean, num_layers, parse_layer_map, register_loss)


def _layer(states, i: int, who: str, loss: str) -> torch.Tensor:
    if i >= len(states):
        raise EdgekdError(f"loss {loss!r}: the layer map asks for the {who}'s entry {i}, but its output has "
                          f"{len(states)}: fix layer_map")
    return states[i]


@register_loss("feature")
class FeatureLoss(LossTerm):
    """FitNets hints: proj(student hidden_i) against teacher hidden_map[i], MSE or 1 − cosine.

    One learned linear projection (student dim -> teacher dim) per mapped student layer; it starts
    as the identity when the dims agree. Indices are into HF `hidden_states` (0 = embeddings);
    the default maps every student index evenly onto the teacher's (0->0, last->last).
    """

    needs_hidden_states = True

    def __init__(self, setup: Setup, distance: str = "mse", layer_map=None):
        super().__init__()
        if distance not in ("mse", "cosine"):
            raise EdgekdError(f"loss 'feature': unknown distance {distance!r}; choose mse or cosine")
        ls, lt = num_layers(setup.student_config), num_layers(setup.teacher_config)
        self.distance = distance
        self.layer_map = parse_layer_map(layer_map, even_hidden_map(ls, lt), ls + 1, lt + 1, self.name,
                                         "hidden-state entries")
        ds, dt = hidden_size(setup.student_config), hidden_size(setup.teacher_config)
        self.proj = nn.ModuleDict()
        for s in self.layer_map:
            lin = nn.Linear(ds, dt)
            if ds == dt:
                with torch.no_grad():
                    lin.weight.copy_(torch.eye(ds))
                    lin.bias.zero_()
            self.proj[str(s)] = lin

    def forward(self, view: LossView) -> torch.Tensor:
        shs = view.student("hidden_states", self.name)
        ths = view.teacher("hidden_states", self.name)
        terms = []
        for s, t in self.layer_map.items():
            hs = _layer(shs, s, "student", self.name)
            ht = _layer(ths, t, "teacher", self.name).detach().to(hs.device).float()
            proj = self.proj[str(s)]
            if (hs.shape[-1], ht.shape[-1]) != (proj.in_features, proj.out_features):
                raise EdgekdError(f"loss 'feature' was built for hidden sizes {proj.in_features}->{proj.out_features} "
                                  f"but got {hs.shape[-1]}->{ht.shape[-1]}: build the loss with the config of the "
                                  f"model that answers as teacher (scheme.teacher_config)")
            p = proj(hs.to(proj.weight.dtype)).float()
            if self.distance == "mse":
                d = (p - ht).pow(2).mean(-1)
            else:
                d = 1.0 - F.cosine_similarity(p, ht, dim=-1, eps=1e-8)
            mask = view.token_mask(d.shape[0], d.shape[1], d.device)
            terms.append(masked_mean(d, mask))
        return torch.stack(terms).mean()


@register_loss("attention")
class AttentionLoss(LossTerm):
    """Attention transfer: student attention rows against the teacher's, MSE or KL(teacher ‖ student).

    Per query row: MSE sums the squared differences over keys; KL is Σ_k a_t log(a_t / a_s).
    Rows are averaged over heads and real (unpadded) queries. With different head counts both
    sides are first averaged over heads. Indices are 0-based layers; by default the student's
    layers spread evenly over the teacher's, last onto last. Needs attn_implementation="eager".
    """

    needs_attentions = True

    def __init__(self, setup: Setup, distance: str = "mse", layer_map=None):
        super().__init__()
        if distance not in ("mse", "kl"):
            raise EdgekdError(f"loss 'attention': unknown distance {distance!r}; choose mse or kl")
        ls, lt = num_layers(setup.student_config), num_layers(setup.teacher_config)
        self.distance = distance
        self.layer_map = parse_layer_map(layer_map, even_layer_map(ls, lt), ls, lt, self.name, "layers")
        heads = ("num_attention_heads", "n_head", "num_heads")
        self.same_heads = (config_int(setup.student_config, *heads, what="head count")
                           == config_int(setup.teacher_config, *heads, what="head count"))

    def forward(self, view: LossView) -> torch.Tensor:
        sas = view.student("attentions", self.name)
        tas = view.teacher("attentions", self.name)
        terms = []
        for s, t in self.layer_map.items():
            a_s = _layer(sas, s, "student", self.name).float()
            a_t = _layer(tas, t, "teacher", self.name).detach().to(a_s.device).float()
            if a_s.shape[1] != a_t.shape[1] or not self.same_heads:
                a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
            if a_s.shape != a_t.shape:
                raise EdgekdError(f"loss 'attention': student attention {tuple(a_s.shape)} and teacher "
                                  f"{tuple(a_t.shape)} differ: they must see the same batch")
            if self.distance == "mse":
                d = (a_s - a_t).pow(2).sum(-1)
            else:
                tiny = torch.finfo(torch.float32).tiny
                d = (torch.xlogy(a_t, a_t) - a_t * torch.log(a_s.clamp_min(tiny))).sum(-1)
            d = d.mean(1)  # heads -> [B, S]
            terms.append(masked_mean(d, view.token_mask(d.shape[0], d.shape[1], d.device)))
        return torch.stack(terms).mean()


@register_loss("relation")
class RelationLoss(LossTerm):
    """Token-to-token cosine-similarity matrices [B,S,S] of hidden states, MSE over real token pairs.

    Dimension-free, so no projection is needed. Indices are into `hidden_states`; the default
    compares the final hidden states only.
    """

    needs_hidden_states = True

    def __init__(self, setup: Setup, layer_map=None):
        super().__init__()
        ls, lt = num_layers(setup.student_config), num_layers(setup.teacher_config)
        self.layer_map = parse_layer_map(layer_map, {ls: lt}, ls + 1, lt + 1, self.name, "hidden-state entries")

    @staticmethod
    def similarity(h: torch.Tensor) -> torch.Tensor:
        h = F.normalize(h.float(), dim=-1, eps=1e-8)
        return h @ h.transpose(-1, -2)

    def forward(self, view: LossView) -> torch.Tensor:
        shs = view.student("hidden_states", self.name)
        ths = view.teacher("hidden_states", self.name)
        terms = []
        for s, t in self.layer_map.items():
            g_s = self.similarity(_layer(shs, s, "student", self.name))
            g_t = self.similarity(_layer(ths, t, "teacher", self.name).detach().to(g_s.device))
            if g_s.shape != g_t.shape:
                raise EdgekdError(f"loss 'relation': student and teacher sequences differ in shape "
                                  f"{tuple(g_s.shape)} vs {tuple(g_t.shape)}")
            m = view.token_mask(g_s.shape[0], g_s.shape[1], g_s.device)
            pair = m[:, :, None] & m[:, None, :]
            terms.append(masked_mean((g_s - g_t).pow(2), pair))
        return torch.stack(terms).mean()
