"""Image classifiers (issue 23): the built-in digits and CNN teacher, the digits job end to end (`edgekd distill
--teacher builtin-cnn --target raspberry-pi-4`: its report keys and exported files, run here in onnxruntime and
LiteRT against PyTorch), Hugging Face ResNet / MobileNetV2 / ViT teachers built from tiny configs, and each bad
image input's one-line error with exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_pipeline import _cache, cli  # noqa: F401  (fixtures: a throwaway cache; the CLI in-process)

JOB = ["--steps", "100", "--temperature", "4", "--quiet"]  # an image teacher's batch size and lr: the CLI's (32, 1e-2)


def _main(*args) -> int:
    from edgekd.cli import main

    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["edgekd", *map(str, args)])
    try:
        main()
    except SystemExit as e:
        return e.code or 0
    finally:
        mp.undo()
    return 0


@pytest.fixture(scope="module")
def digits_job(tmp_path_factory):
    """The digits job through the CLI, once for the module."""
    out = tmp_path_factory.mktemp("digits") / "run"
    assert _main("distill", "--teacher", "builtin-cnn", "--target", "raspberry-pi-4", "--out", out, *JOB) == 0
    return out


def hf_image_teacher(d: Path, family: str, size: int = 16, labels: int = 3) -> Path:
    """A tiny untrained *ForImageClassification of `family` saved with save_pretrained, with its image processor's
    preprocessor_config.json (size, mean, std), as users' teachers come."""
    from transformers import (ConvNextConfig, ConvNextForImageClassification, MobileNetV2Config,
                              MobileNetV2ForImageClassification, ResNetConfig, ResNetForImageClassification, ViTConfig,
                              ViTForImageClassification)

    names = {"id2label": {i: f"c{i}" for i in range(labels)}, "label2id": {f"c{i}": i for i in range(labels)}}
    torch.manual_seed(0)
    if family == "resnet":
        model = ResNetForImageClassification(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[2, 2],
                                                          layer_type="basic", **names))
    elif family == "convnext":
        model = ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[16, 32], depths=[2, 2], num_stages=2, **names))
    elif family == "mobilenet_v2":
        model = MobileNetV2ForImageClassification(MobileNetV2Config(depth_multiplier=0.35, image_size=size, **names))
    else:
        model = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=64, image_size=size, patch_size=4, **names))
    model.save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": size, "width": size}, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3],
         "rescale_factor": 1 / 255}))
    return d


def rgb_npz(path: Path, n: int = 60, size: int = 20, labels: int = 3, learnable: bool = False) -> Path:
    """Random RGB images (another size than the teacher's: resized) with labels 0..labels-1; `learnable`: each
    class brightens its own colour channel, so a few steps give a student whose labels have margins."""
    rng = np.random.default_rng(0)
    images, y = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % labels
    if learnable:
        images = (images // 2).astype(np.uint8)
        images[np.arange(n), :, :, y % 3] += 127
    np.savez(path, images=images, labels=y)
    return path


# --- the built-in digits and teacher -------------------------------------------------------------------------


def test_digits_split_is_deterministic_and_complete():
    from sklearn.datasets import load_digits

    from edgekd.data.images import HELDOUT_SHARE, load_images
    from edgekd.models.vision import image_input_of

    reader = image_input_of("builtin-cnn")
    a, b = load_images("builtin-digits", reader), load_images("builtin", reader)
    ref = load_digits()
    assert len(a.train_labels) + len(a.validation_labels) == len(ref.target) == 1797
    assert len(a.validation_labels) == round(1797 * HELDOUT_SHARE)
    assert tuple(a.train.shape[1:]) == (1, 8, 8) and float(a.train.max()) == pytest.approx(255.0)
    assert torch.equal(a.train, b.train) and a.validation_labels == b.validation_labels
    assert sorted(a.label_values) == list(range(10))
    # every held-out image is a real digit image, scaled from 0..16 to 0..255, with its own label
    flat = {tuple(img.ravel().astype(int)): int(t) for img, t in zip(ref.images, ref.target)}
    for img, lab in zip(a.validation[:20].numpy(), a.validation_labels[:20]):
        assert flat[tuple((img.ravel() * 16 / 255).round().astype(int))] == a.label_values[lab]


def test_builtin_cnn_teacher_is_shipped_small_and_accurate():
    from edgekd.models.builtin import IMAGE_DIR
    from edgekd.models.loading import CLASSIFIER, load_model

    model, reader, kind = load_model("builtin-cnn")
    assert kind == CLASSIFIER and (reader.height, reader.width, reader.channels) == (8, 8, 1)
    assert (IMAGE_DIR / "model.safetensors").stat().st_size < 150_000
    recipe = json.loads((IMAGE_DIR / "recipe.json").read_text())
    assert recipe["heldout_accuracy"] > 0.95


# --- the digits job ---------------------------------------------------------------------------------------------


def test_digits_job_report(digits_job):
    r = json.loads((digits_job / "report.json").read_text())
    assert r["status"] == "complete" and r["kind"] == "classifier" and r["target"] == "raspberry-pi-4"
    for name in ("teacher", "student", "ce_only", "scratch"):
        assert 0 <= r[name]["accuracy"] <= 1 and 0 <= r[name]["macro_f1"] <= 1, name
    assert r["teacher"]["accuracy"] > 0.95
    config = json.loads((digits_job / "config.json").read_text())
    assert (config["batch_size"], config["lr"]) == (32, 1e-2)  # an image teacher's defaults
    assert r["student"]["params"] < r["teacher"]["params"]
    assert r["latency"]["predicted_ms"] > 0 and r["latency"]["measured"]
    for key in ("onnx", "tflite", "onnx-int8", "tflite-int8"):
        e = r["exports"][key]
        assert e["passed"], (key, e)
        assert 0 <= e["accuracy"] <= 1 and "macro_f1" in e
    assert (digits_job / "student" / "preprocessor_config.json").is_file()
    assert "accuracy" in (digits_job / "report.md").read_text()
    full = json.loads((digits_job / "export" / "student.int8.tflite.json").read_text())
    assert full["quantize"] == "int8-full" and full["input_dtype"] == "int8"
    assert abs(r["exports"]["tflite-int8"]["accuracy"] - r["exports"]["tflite"]["accuracy"]) <= 0.05
    m = np.array(r["student"]["confusion"])  # rows: true class, columns: predicted
    assert m.shape == (10, 10) and m.sum() == r["student"]["eval_examples"]
    assert np.trace(m) == round(r["student"]["accuracy"] * m.sum())
    assert (digits_job / "plots" / "confusion.png").stat().st_size > 0
    assert "plots/confusion.png" in (digits_job / "report.md").read_text()
    wrong = r["distillation"]["teacher_right_student_wrong"]  # held-out images KD did not carry over
    assert 0 <= wrong <= round((1 - r["student"]["accuracy"]) * r["student"]["eval_examples"])
    assert (digits_job / "plots" / "mistakes.png").is_file() == (wrong > 0)


def test_digits_files_run_in_their_runtimes_as_pytorch(digits_job):
    """The exported files, opened here in onnxruntime and LiteRT directly, give the PyTorch student's labels on
    held-out digits (float: every one)."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    from edgekd.data.images import load_images
    from edgekd.models.loading import load_model

    student, reader, _ = load_model(digits_job / "student")
    x = reader.normalise(load_images("builtin-digits", reader).validation[:64])
    with torch.no_grad():
        want = student(pixel_values=x).logits.argmax(-1).numpy()
    sess = ort.InferenceSession(str(digits_job / "export" / "student.onnx"))
    got = [sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1].numpy()})[0].argmax(-1)[0] for i in range(len(x))]
    assert (np.array(got) == want).all()
    it = Interpreter(model_path=str(digits_job / "export" / "student.tflite"))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    labels = []
    for i in range(len(x)):
        it.set_tensor(inp["index"], x[i:i + 1].numpy())
        it.invoke()
        labels.append(it.get_tensor(out["index"]).argmax(-1)[0])
    assert (np.array(labels) == want).all()
    full = Interpreter(model_path=str(digits_job / "export" / "student.int8.tflite"))  # full integer: int8 in and out
    assert full.get_input_details()[0]["dtype"] == np.int8 and full.get_output_details()[0]["dtype"] == np.int8


# --- Hugging Face image teachers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["resnet", "mobilenet_v2", "vit", "convnext"])
def test_hf_image_teacher_distils(family, tmp_path):
    from edgekd.distill import DistillConfig, run
    from edgekd.models.loading import load_model

    size = 16
    teacher = hf_image_teacher(tmp_path / "t", family, size=size)
    res = run(DistillConfig(teacher=str(teacher), data=str(rgb_npz(tmp_path / "d.npz")), steps=3, batch_size=4,
                            out=str(tmp_path / "run"), quiet=True, baselines="none", eval_blocks=2))
    rep = res.report
    assert rep["student"]["params"] < rep["teacher"]["params"]
    assert 0 <= rep["student"]["accuracy"] <= 1
    student, reader, _ = load_model(tmp_path / "run" / "student")
    assert type(student).__name__.lower().startswith(family.replace("_", ""))
    assert (reader.height, reader.channels, reader.mean) == (size, 3, (0.5, 0.4, 0.3))


@pytest.mark.parametrize("family", ["resnet", "mobilenet_v2", "vit"])
def test_hf_image_job_with_target(family, tmp_path):
    """The whole job on each family: a student of the family searched under the target's budget, initialised from
    the teacher, exported and passing parity in both formats."""
    teacher = hf_image_teacher(tmp_path / "t", family)
    out = tmp_path / "run"
    assert _main("distill", "--teacher", teacher, "--data", rgb_npz(tmp_path / "d.npz", learnable=True), "--target",
                 "raspberry-pi-4", "--out", out, "--steps", "40", "--batch-size", "8", "--baselines", "none",
                 "--quiet") == 0
    r = json.loads((out / "report.json").read_text())
    assert r["status"] == "complete"
    assert all(r["exports"][k]["passed"] for k in ("onnx", "tflite")), r["exports"]
    s = r["search"]
    assert s["space"] == "image" and s["choice"]["precision"] in ("float32", "int8")
    assert r["student"]["config"]["model_type"] == family and r["student"]["params"] < r["teacher"]["params"]
    assert r["latency"]["meets_budget_predicted"] and r["student"]["init"]["method"] == "teacher"


def test_latency_model_counts_image_classifiers():
    """Convolutions are counted as matmuls (2 x outputs x inputs per output), int8 files predicted smaller."""
    from transformers import AutoConfig

    import edgekd.models.cnn  # noqa: F401
    from edgekd.models.builtin import IMAGE_DIR
    from edgekd.targets.cost_latency import graph_ops, model_size_mb, predict

    cfg = AutoConfig.from_pretrained(IMAGE_DIR)
    ops = [o for o in graph_ops(cfg, 0) if o.kind == "matmul"]
    first = ops[0]  # conv 1 -> 16 channels, 3x3, on 8x8: 64 outputs x 16 channels x 9 taps
    assert first.flops == 2.0 * 64 * 9 * 16
    assert model_size_mb(cfg, "int8") < model_size_mb(cfg, "float32")
    assert predict(cfg, "raspberry-pi-4").total_ms > 0
    # calibrated from a measured profile like the LM's: the fit moves the prediction toward the measurement
    from edgekd.targets.cost_latency import calibrate, measurement_from_profile

    measured = 0.012
    cal = calibrate([measurement_from_profile({"p50_ms": measured, "threads": 1}, cfg, "float32", seq_len=1)],
                    "raspberry-pi-4", "tflite")
    before = predict(cfg, "raspberry-pi-4", fmt="tflite", threads=1).total_ms
    after = predict(cfg, "raspberry-pi-4", fmt="tflite", calibration=cal, threads=1).total_ms
    assert abs(after - measured) < abs(before - measured)


# --- searched students: fewer blocks and channels of the teacher's family ----------------------------------------


@pytest.mark.parametrize("family,depth,width,want", [
    ("resnet", 0.5, 0.5, {"depths": [1, 1], "hidden_sizes": [8, 16], "embedding_size": 8}),
    ("convnext", 1.0, 0.5, {"depths": [2, 2], "hidden_sizes": [8, 16]}),
    ("vit", 0.5, 0.5, {"num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 16, "intermediate_size": 32}),
    ("mobilenet_v2", 1.0, 0.5, {"depth_multiplier": 0.175}),
    ("mobilenet_v2", 0.5, 1.0, None),  # its stages are fixed: width only
])
def test_image_student_shapes_narrow_the_family(family, depth, width, want, tmp_path):
    from transformers import AutoConfig, AutoModelForImageClassification

    from edgekd.models.vision import image_candidates, image_narrowing, image_param_count, image_student_shape

    cfg = AutoConfig.from_pretrained(hf_image_teacher(tmp_path / "t", family))
    assert image_student_shape(cfg, depth, width) == want
    teacher, n_teacher = cfg.to_dict(), image_param_count(cfg)
    cands = image_candidates(cfg)
    assert len({json.dumps(c["overrides"], sort_keys=True) for c in cands}) == len(cands) > 2
    for c in cands:  # each a narrowing that builds, smaller than the teacher
        student = {**teacher, **c["overrides"]}
        assert image_narrowing(teacher, student) is None
        assert image_param_count(student) < n_teacher
    AutoModelForImageClassification.from_config(AutoConfig.for_model(**{**teacher, **cands[-1]["overrides"]}))
    assert "exceeds the teacher's" in image_narrowing(teacher, {**teacher, **image_student_shape(cfg, 1.0, 1.0),
                                                                "hidden_size" if family == "vit" else "depth_multiplier"
                                                                if family == "mobilenet_v2" else "hidden_sizes":
                                                                64 if family == "vit" else 2.0 if family ==
                                                                "mobilenet_v2" else [64, 64]})


def test_image_search_chooses_the_largest_student_under_the_latency_budget():
    """The one search (search_student) over the image space: the largest narrowing predicted within the budget, a
    tighter budget a smaller one, none within it one line naming the nearest."""
    from transformers import AutoConfig

    import edgekd.models.cnn  # noqa: F401
    from edgekd.errors import EdgekdError
    from edgekd.models.builtin import IMAGE_DIR
    from edgekd.search import search_student

    cfg = AutoConfig.from_pretrained(IMAGE_DIR)
    free = search_student(cfg, "raspberry-pi-4", {"latency_ms": 1e9})
    assert free.space == "image" and free.columns[:3] == ["depth", "width", "student"]
    assert free.choice["student"] == json.dumps({"hidden_sizes": [12, 24, 48]})  # the teacher itself is no candidate
    assert free.student_config(cfg)["hidden_sizes"] == [12, 24, 48]
    ms = sorted({r["predicted_ms"] for r in free.table})
    budget = ms[len(ms) // 2]
    res = search_student(cfg, "raspberry-pi-4", {"latency_ms": budget})
    within = [r for r in res.table if r["predicted_ms"] <= budget]
    assert res.choice_row["params"] == max(r["params"] for r in within) < free.choice_row["params"]
    assert res.choice_row["predicted_ms"] <= budget
    with pytest.raises(EdgekdError) as e:
        search_student(cfg, "raspberry-pi-4", {"latency_ms": ms[0] / 10})
    assert "--latency-budget" in str(e.value) and "hidden_sizes" in str(e.value) and "\n" not in str(e.value)


def test_channel_importance_is_the_mean_activation_after_each_nonlinearity():
    """Against a plain reference: the built-in CNN's first stage scores are mean ReLU(conv(x)) per channel."""
    from edgekd.models.vision import measure_channel_importance

    teacher, x = _digits_teacher_and_images()
    scores = measure_channel_importance(teacher, [{"pixel_values": x[:64]}])
    with torch.no_grad():
        ref = teacher.features[:2](x[:64]).mean((0, 2, 3))
    assert sorted(scores) == [16, 32, 64]
    torch.testing.assert_close(scores[16], ref)


def test_student_initialised_from_the_teachers_strongest_channels():
    """A narrowed student keeps the teacher's channels that fire most, the same index on both sides of each
    channel; untrained, it already classifies far above chance, better than with the first channels; a student
    of the teacher's own shape is the teacher."""
    from transformers import AutoModelForImageClassification

    from edgekd.models.vision import config_with, init_from_image_teacher, measure_channel_importance

    teacher, x = _digits_teacher_and_images()
    xv, yv = _digits_heldout()
    scores = measure_channel_importance(teacher, [{"pixel_values": x}])

    def student(hidden_sizes, importance):
        torch.manual_seed(0)
        s = AutoModelForImageClassification.from_config(config_with(teacher.config, {"hidden_sizes": hidden_sizes}))
        info = init_from_image_teacher(s.eval(), teacher, importance) if importance != "random" else None
        return s, info

    def accuracy(m):
        with torch.no_grad():
            return (m(pixel_values=xv).logits.argmax(-1) == yv).float().mean().item()

    same, info = student([16, 32, 64], scores)
    assert info["copied_tensors"] == info["of"] and info["narrowed_tensors"] == 0
    with torch.no_grad():
        torch.testing.assert_close(same(pixel_values=xv).logits, teacher(pixel_values=xv).logits)
    narrow, info = student([12, 24, 48], scores)
    assert info["channels"] == "mean |activation|" and info["narrowed_tensors"] == info["of"] - 1  # all but the head bias
    k1 = torch.sort(torch.topk(scores[16], 12).indices).values
    k2 = torch.sort(torch.topk(scores[32], 24).indices).values
    t_w, s_w = teacher.features[2].weight, narrow.features[2].weight  # conv 2: [out 32 -> 24, in 16 -> 12]
    torch.testing.assert_close(s_w, t_w[k2][:, k1])
    first, _ = student([12, 24, 48], None)
    rand, _ = student([12, 24, 48], "random")
    assert accuracy(narrow) > accuracy(first) and accuracy(narrow) > accuracy(rand) + 0.4


def _digits_teacher_and_images():
    from edgekd.data.images import load_images
    from edgekd.models.loading import load_model

    teacher, reader, _ = load_model("builtin-cnn")
    corpus = load_images("builtin-digits", reader)
    return teacher, reader.normalise(corpus.train[:256])


def _digits_heldout():
    from edgekd.data.images import load_images
    from edgekd.models.loading import load_model

    _, reader, _ = load_model("builtin-cnn")
    corpus = load_images("builtin-digits", reader)
    return reader.normalise(corpus.validation), torch.tensor(corpus.validation_labels)


# --- bad input: one line, exit 2 ---------------------------------------------------------------------------------


def _png(path: Path, mode: str = "L", size: int = 8, value: int = 128) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode == "L" else (value,) * 3).save(path)


def _bad(monkeypatch, capsys, tmp_path, teacher, data, needle):
    code, _, err = cli(monkeypatch, capsys, "distill", "--teacher", teacher, "--data", data, "--out",
                       tmp_path / "run", "--steps", "1", "--quiet")
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("edgekd: error:") and needle in lines[0], err


def test_bad_image_inputs_are_one_line(tmp_path, monkeypatch, capsys):
    one = tmp_path / "one"
    for i in range(4):
        _png(one / "3" / f"{i}.png")
    _bad(monkeypatch, capsys, tmp_path, "builtin-cnn", one, "one class")

    broken = tmp_path / "broken"
    for c in ("1", "2"):
        _png(broken / c / "a.png")
    (broken / "2" / "b.png").write_bytes(b"not a png")
    _bad(monkeypatch, capsys, tmp_path, "builtin-cnn", broken, "cannot be read")

    np.savez(tmp_path / "l.npz", images=np.zeros((20, 8, 8), np.uint8), labels=np.arange(20) % 11)
    _bad(monkeypatch, capsys, tmp_path, "builtin-cnn", tmp_path / "l.npz", "not one of the teacher's 10 classes")

    rgb = hf_image_teacher(tmp_path / "rgb", "resnet")
    grey = tmp_path / "grey"
    for c in ("c0", "c1"):
        for i in range(3):
            _png(grey / c / f"{i}.png")
    _bad(monkeypatch, capsys, tmp_path, rgb, grey, "grey images but the teacher reads RGB")

    timm = tmp_path / "timm"
    timm.mkdir()
    (timm / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 10}))
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(10, 4)}, str(timm / "model.safetensors"))
    _bad(monkeypatch, capsys, tmp_path, timm, tmp_path / "l.npz", "timm needs a CPU build of torchvision")

    (rgb / "preprocessor_config.json").unlink()
    _bad(monkeypatch, capsys, tmp_path, rgb, grey, "has no preprocessor_config.json")


def test_distiller_fit_runs_the_engine(tmp_path):
    """The seeds' Python API: Distiller(teacher, student, T, alpha, loss).fit runs edgekd's engine."""
    from edgekd.distiller import Distiller

    d = Distiller("builtin-cnn", "cnn", temperature=4.0, alpha=0.5, loss="kd")
    result = d.fit(data="builtin-digits", steps=5, batch_size=16, out=str(tmp_path / "run"), quiet=True,
                   baselines="ce_only")
    config = json.loads((result.out / "config.json").read_text())
    assert (config["temperature"], config["alpha"], config["student"], config["steps"]) == (4.0, 0.5, "cnn", 5)
    assert {"teacher", "student", "ce_only"} <= set(d.scores()) and d.scores()["ce_only"]["accuracy"] is not None
    x = torch.zeros(2, 1, 8, 8)
    assert d.student(pixel_values=x).logits.shape == (2, 10)


def test_image_data_formats_read_alike(tmp_path):
    """The same labelled images as a class folder, an .npz (uint8 NHWC and float NCHW on 0..1) and a saved data
    set give the same pixels at the teacher's size; RGB becomes grey for a grey teacher; other sizes are resized."""
    import datasets
    from PIL import Image

    from edgekd.data.images import load_images
    from edgekd.models.vision import ImageInput

    reader = ImageInput(8, 8, 1, (0.5,), (0.5,))
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (10, 8, 8), dtype=np.uint8)
    labels = [str(i % 2) for i in range(10)]
    for i, (im, lab) in enumerate(zip(imgs, labels)):
        (tmp_path / "f" / lab).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack([im] * 3, -1)).save(tmp_path / "f" / lab / f"{i:02d}.png")  # RGB, grey content
    np.savez(tmp_path / "a.npz", images=imgs[..., None], labels=np.array(labels))
    np.savez(tmp_path / "b.npz", images=imgs[:, None].astype(np.float32) / 255.0, labels=np.array(labels))
    datasets.Dataset.from_dict({"image": [Image.fromarray(im) for im in imgs], "label": labels}).save_to_disk(
        str(tmp_path / "ds"))
    def examples(c):  # every (label, pixels) of a corpus, whatever the order its format lists them in
        pairs = zip([*c.train, *c.validation], [*c.train_labels, *c.validation_labels])
        return sorted((str(c.label_values[y]), tuple(x.round().int().flatten().tolist())) for x, y in pairs)

    got = [load_images(str(tmp_path / p), reader) for p in ("f", "a.npz", "b.npz", "ds")]
    for g in got:
        assert len(g.train_labels) == 8 and len(g.validation_labels) == 2
        assert examples(g) == examples(got[1])
    assert torch.equal(got[1].train, got[3].train)  # the same order: the same held-out split
    big = np.kron(imgs, np.ones((2, 2), np.uint8))  # 16x16: resized to the teacher's 8x8
    np.savez(tmp_path / "big.npz", images=big, labels=np.array(labels))
    assert tuple(load_images(str(tmp_path / "big.npz"), reader).train.shape[1:]) == (1, 8, 8)


def test_augmentation_shifts_training_images_only_when_asked():
    from edgekd.data.images import ImageStream

    x = torch.arange(4 * 64, dtype=torch.float32).reshape(4, 1, 8, 8)
    plain = ImageStream(x, [0, 1, 0, 1], 4, seed=3).batch_at(0)["pixel_values"]
    moved = ImageStream(x, [0, 1, 0, 1], 4, seed=3, augment=1, background=torch.tensor([-1.0])).batch_at(0)
    assert sorted(plain.sum((1, 2, 3)).tolist()) == sorted(x.sum((1, 2, 3)).tolist())  # the images themselves
    assert not torch.equal(plain, moved["pixel_values"])
    again = ImageStream(x, [0, 1, 0, 1], 4, seed=3, augment=1, background=torch.tensor([-1.0])).batch_at(0)
    assert torch.equal(moved["pixel_values"], again["pixel_values"])  # a resumed run sees the same batch
