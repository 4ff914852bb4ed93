import torch

from edgekd.data.batching import BlockStream, encode_texts, eval_blocks
from edgekd.data.tokenizer import load_tokenizer, tokenizer_hash, train_tokenizer
from tests.distill.helpers import small_texts


def test_tokenizer_trains_round_trips_and_reloads(tmp_path):
    texts = small_texts(6)
    tok = train_tokenizer(texts, vocab_size=512)
    assert len(tok) == 512
    s = "def f(x):\n    return x ** 2  # ünïcode ✓\n"
    ids = tok(s, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == s
    assert len(ids) < len(s.encode())  # merges compress
    assert tokenizer_hash(train_tokenizer(texts, vocab_size=512)) == tokenizer_hash(tok)  # deterministic
    tok.save_pretrained(str(tmp_path))
    again = load_tokenizer(tmp_path)
    assert again(s, add_special_tokens=False)["input_ids"] == ids
    assert again.eos_token_id == tok.eos_token_id and again.pad_token_id is not None


def test_block_stream_position_is_the_whole_state():
    tokens = torch.arange(1000)
    a = BlockStream(tokens, 10, 4, seed=3)
    seq = [a.next()["input_ids"] for _ in range(60)]  # crosses epochs (100 blocks)
    b = BlockStream(tokens, 10, 4, seed=3)
    b.load_state_dict({"position": 37})
    assert torch.equal(b.next()["input_ids"], seq[37])
    # each epoch visits every block exactly once
    first_epoch = torch.cat(seq[:25])[:, 0].sort().values
    assert torch.equal(first_epoch, torch.arange(0, 1000, 10))
    assert not torch.equal(torch.cat(seq[:25]), torch.cat(seq[25:50]))  # reshuffled


def test_ranks_split_the_global_batch():
    tokens = torch.arange(2000)
    whole = BlockStream(tokens, 10, 4, seed=1).batch_at(5)["input_ids"]
    parts = [BlockStream(tokens, 10, 4, seed=1, rank=r, world=2).batch_at(5)["input_ids"] for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)


def test_eval_blocks_and_encode(tmp_path):
    tok = train_tokenizer(small_texts(3), vocab_size=300)
    flat = encode_texts(["a b", "c"], tok)
    assert int((flat == tok.eos_token_id).sum()) == 2
    blocks = eval_blocks(torch.arange(100), 10, max_blocks=4)
    assert blocks.shape == (4, 10) and int(blocks[0, 0]) == 0 and int(blocks[-1, 0]) == 90
