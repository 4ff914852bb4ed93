"""Distillation schemes, one module each; importing the package registers them all (see base.py)."""

from edgekd.distill.schemes.base import (SCHEMES, Plan, Scheme, Stage, build_scheme, freeze, needs_of,
                                         register_scheme, scheme_class, split_options)
from edgekd.distill.schemes.offline import OfflineScheme
from edgekd.distill.schemes.online import OnlineScheme
from edgekd.distill.schemes.self_ema import SelfScheme, ema_update
from edgekd.distill.schemes.multi_teacher import MultiTeacherScheme
from edgekd.distill.schemes.progressive import (ProgressiveScheme, arch_summary, halfway_sizes,
                                                shrunk_config, stage_configs)
from edgekd.distill.schemes.sequence import SequenceData, SequenceScheme, generate_sequence_data
from edgekd.distill.schemes.on_policy import OnPolicyScheme

__all__ = ["SCHEMES", "Plan", "Scheme", "Stage", "build_scheme", "freeze", "needs_of", "register_scheme",
           "scheme_class", "split_options", "OfflineScheme", "OnlineScheme", "SelfScheme", "ema_update",
           "MultiTeacherScheme", "ProgressiveScheme", "arch_summary", "halfway_sizes", "shrunk_config",
           "stage_configs", "SequenceData", "SequenceScheme", "generate_sequence_data", "OnPolicyScheme"]
