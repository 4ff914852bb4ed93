"""torch.distributed past one process, on 2 CPU processes over gloo: the sharded top-k teacher cache
and FSDP2 training, each against the one-process result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgekd.data.teacher_cache import TeacherCache
from tests.distill.cache_worker import K, N, teacher_and_data

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env.pop("EDGEKD_FAULT", None)
    return env | extra


def _torchrun(script, *args, check=True, **env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / script), *map(str, args)]
    r = subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def one_process_cache(tmp_path_factory):
    t, data = teacher_and_data()
    path = tmp_path_factory.mktemp("cache1") / "c"
    TeacherCache.build(t, data, path, k=K, batch_size=2, dtype="float32", shard_examples=4)
    return path


def _same_cache(a: Path, b: Path):
    ca, cb = TeacherCache.open(a), TeacherCache.open(b)
    assert len(ca) == len(cb) == N and ca.k == cb.k == K
    for i in range(N):
        ea, eb = ca.example(i), cb.example(i)
        assert torch.equal(ea.values, eb.values) and torch.equal(ea.indices, eb.indices)
    ia, ib = (json.loads((p / "index.json").read_text()) for p in (a, b))
    assert ia["data_hash"] == ib["data_hash"] and ia["teacher_hash"] == ib["teacher_hash"]


def _read_back_matches(rank_files: list[Path], cache: Path):
    """What the ranks looked up (stream batches by tokens, examples by position) is the cache's own."""
    c = TeacherCache.open(cache)
    parts = [load_file(str(f)) for f in rank_files]
    for pos in range(3):
        ids = torch.cat([p[f"batch{pos}.ids"] for p in parts])
        assert ids.shape[0] == 4  # the global batch, split over the ranks
        want = c.lookup({"input_ids": ids})
        assert torch.equal(torch.cat([p[f"batch{pos}.values"] for p in parts]), want.values)
        assert torch.equal(torch.cat([p[f"batch{pos}.indices"] for p in parts]), want.indices)
    seen = set()
    for p in parts:
        for key in p:
            if key.startswith("example") and key.endswith(".values"):
                i = int(key[len("example"):-len(".values")])
                seen.add(i)
                assert torch.equal(p[key], c.example(i).values)
                assert torch.equal(p[f"example{i}.indices"], c.example(i).indices)
    assert seen == set(range(N))


@pytest.mark.slow
def test_cache_written_by_two_ranks_equals_one_process_and_reads_back_on_one_or_two(tmp_path, one_process_cache):
    _torchrun("cache_worker.py", tmp_path / "c2", tmp_path / "read2")
    names = sorted(p.name for p in (tmp_path / "c2").glob("shard-*.safetensors"))
    # 13 examples = 7 batches of 2: rank 0 takes 3 batches (6 examples), rank 1 the other 4 (7); shards of 4
    assert names == ["shard-00000-of-00002.00000.safetensors", "shard-00000-of-00002.00001.safetensors",
                     "shard-00001-of-00002.00000.safetensors", "shard-00001-of-00002.00001.safetensors"]
    assert not (tmp_path / ".c2.building").exists()
    _same_cache(tmp_path / "c2", one_process_cache)
    _read_back_matches([tmp_path / "read2.rank0", tmp_path / "read2.rank1"], one_process_cache)
    # the one-process cache read by two ranks, and the two-rank cache by one process
    _torchrun("cache_worker.py", one_process_cache, tmp_path / "read1by2")
    _read_back_matches([tmp_path / "read1by2.rank0", tmp_path / "read1by2.rank1"], tmp_path / "c2")
    r = subprocess.run([sys.executable, str(HERE / "cache_worker.py"), tmp_path / "c2", tmp_path / "read2by1"],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _read_back_matches([tmp_path / "read2by1"], one_process_cache)


@pytest.mark.slow
def test_killed_sharded_cache_write_resumes_from_its_complete_shards(tmp_path, one_process_cache):
    r = _torchrun("cache_worker.py", tmp_path / "c", tmp_path / "read", check=False, EDGEKD_FAULT="kill:teacher_cache")
    assert r.returncode != 0
    stage = tmp_path / ".c.building"
    assert not (tmp_path / "c").exists() and (stage / "build.json").is_file()
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in stage.glob("shard-*.safetensors")}
    assert done and len(done) < 4  # each rank died after its first shard
    assert not list(stage.glob(".*.tmp"))  # no half-written file is left looking complete
    _torchrun("cache_worker.py", tmp_path / "c", tmp_path / "read")
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "c").glob("shard-*.safetensors")}
    assert len(after) == 4 and all(after[n] == v for n, v in done.items())  # complete shards were kept, not redone
    _same_cache(tmp_path / "c", one_process_cache)
    assert not stage.exists()


def test_a_stale_staging_directory_for_other_data_is_discarded(tmp_path, one_process_cache):
    t, data = teacher_and_data()
    stage = tmp_path / ".c.building"
    stage.mkdir()
    (stage / "build.json").write_text(json.dumps({"data_hash": "other"}))
    (stage / "shard-00000.safetensors").write_bytes(b"from another build")
    TeacherCache.build(t, data, tmp_path / "c", k=K, batch_size=2, dtype="float32", shard_examples=4)
    _same_cache(tmp_path / "c", one_process_cache)


FSDP_ARGS = ("--kd", "--micro1", "--mask-some", "--steps", "4")


@pytest.fixture(scope="module")
def one_process_student(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "single.safetensors"
    r = subprocess.run([sys.executable, str(HERE / "train_worker.py"), "-", out, *FSDP_ARGS], env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return load_file(out)


def _close(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_fsdp_two_ranks_train_the_one_process_student(tmp_path, one_process_student):
    """Student and teacher sharded over 2 gloo ranks, 2 accumulated micro-batches per rank, clipping over
    sharded gradients: after 4 steps the gathered student is the one process's."""
    _torchrun("train_worker.py", tmp_path / "ck", tmp_path / "fsdp.safetensors", *FSDP_ARGS, "--fsdp")
    r0, r1 = load_file(tmp_path / "fsdp.safetensors.rank0"), load_file(tmp_path / "fsdp.safetensors.rank1")
    _close(r0, r1)
    _close(r0, one_process_student)
    # the checkpoint rank 0 wrote is an ordinary model's full state dict
    ck = load_file(sorted((tmp_path / "ck").glob("step_*"))[-1] / "model.safetensors")
    _close(ck, one_process_student)


@pytest.mark.slow
def test_fsdp_run_killed_after_a_checkpoint_resumes_to_the_same_student(tmp_path, one_process_student):
    r = _torchrun("train_worker.py", tmp_path / "ck", tmp_path / "x", *FSDP_ARGS, "--fsdp", "--kill-at", "2",
                  check=False)
    assert r.returncode != 0 and [p.name for p in (tmp_path / "ck").glob("step_*")] == ["step_000002"]
    _torchrun("train_worker.py", tmp_path / "ck", tmp_path / "resumed.safetensors", *FSDP_ARGS, "--fsdp", "--resume")
    _close(load_file(tmp_path / "resumed.safetensors.rank0"), one_process_student)


@pytest.mark.parametrize("args, env, says", [
    (["--parallel", "fsdp"], {}, "run under torchrun --nproc-per-node N"),
    (["--parallel", "fsdp", "--scheme", "self"], {"WORLD_SIZE": "2"}, "does not support the self scheme"),
    (["--parallel", "zero"], {}, "unknown --parallel 'zero'"),
])
def test_parallel_mistakes_are_one_line_errors_before_any_work(tmp_path, monkeypatch, capsys, args, env, says):
    from tests.test_pipeline import cli

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, _, err = cli(monkeypatch, capsys, "distill", "--out", tmp_path / "run", "--quiet", *args)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
