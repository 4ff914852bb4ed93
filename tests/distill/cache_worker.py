"""Builds (or opens) a top-k teacher cache of a tiny teacher and reads it back; run by the sharded-cache tests.

usage: python cache_worker.py CACHE_DIR OUT_FILE
Under torchrun every rank joins the gloo group, writes its shards, and reads back its share of a
stream's batches (by their tokens) and of the examples (by position) into OUT_FILE.rankN.
"""

import sys

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from edgekd.data.batching import BlockStream
from edgekd.data.teacher_cache import TeacherCache
from edgekd.distill import apply_settings
from edgekd.settings import Settings
from tests.distill.train_worker import join_group

N, SEQ, K = 13, 16, 5  # an odd number of examples: the ranks' shares differ


def teacher_and_data():
    torch.manual_seed(0)
    t = LlamaForCausalLM(LlamaConfig(vocab_size=48, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     num_key_value_heads=2, intermediate_size=48, max_position_embeddings=32))
    data = torch.randint(0, 48, (N, SEQ), generator=torch.Generator().manual_seed(1))
    return t, data


def main():
    cache_dir, out = sys.argv[1], sys.argv[2]
    apply_settings(Settings.from_env())  # this script is an edge: EDGEKD_FAULT arms the fault hook
    rank, world = join_group()
    t, data = teacher_and_data()
    cache = TeacherCache.build_or_open(t, data, cache_dir, k=K, batch_size=2, dtype="float32", shard_examples=4)
    stream = BlockStream(data.reshape(-1), SEQ, batch_size=4, seed=3, rank=rank, world=world)
    got = {}
    for pos in range(3):
        b = stream.batch_at(pos)
        top = cache.lookup(b)
        got[f"batch{pos}.ids"], got[f"batch{pos}.values"], got[f"batch{pos}.indices"] = b["input_ids"], top.values, top.indices
    for i in range(rank, N, world):
        ex = cache.example(i)
        got[f"example{i}.values"], got[f"example{i}.indices"] = ex.values, ex.indices
    save_file({k: v.contiguous() for k, v in got.items()}, f"{out}.rank{rank}" if world > 1 else out)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
