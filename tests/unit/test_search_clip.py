"""CLIP embedder: official folder layout loaded strictly, CLIP's preprocessing, tokenizer, backends."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from services.common.weights import WeightsMissing, WeightsRegistry
from services.search.clip_model import (
    CLIP_MEAN,
    CLIP_STD,
    ClipInputError,
    ClipWeightsError,
    load_clip,
    load_clip_from_registry,
    preprocess_image,
)
from services.search.random_weights import END_TOKEN, START_TOKEN, write_random_clip_folder
from tests.helpers.data import face_path


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return write_random_clip_folder(tmp_path_factory.mktemp("clip") / "clip-vit-large-patch14-336", seed=3)


@pytest.fixture(scope="module")
def embedder(clip_folder: Path):
    return load_clip(clip_folder, batch_size=2)


def face_images(count: int = 3) -> list[Image.Image]:
    return [Image.open(face_path(i)) for i in range(count)]


def test_folder_has_the_official_layout(clip_folder: Path) -> None:
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt", "RANDOM_WEIGHTS"):
        assert (clip_folder / name).is_file()
    config = json.loads((clip_folder / "config.json").read_text())
    assert config["model_type"] == "clip"
    keys = set(load_file(str(clip_folder / "model.safetensors")))
    # A few of the official checkpoint's key names (transformers' CLIPModel layout).
    for key in (
        "text_model.embeddings.token_embedding.weight",
        "vision_model.embeddings.class_embedding",
        "vision_model.pre_layrnorm.weight",
        "visual_projection.weight",
        "text_projection.weight",
        "logit_scale",
    ):
        assert key in keys
    vocab = json.loads((clip_folder / "vocab.json").read_text())
    # CLIP's vocabulary order: 256 byte symbols, the same with </w>, merges, then the two specials last.
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert vocab[START_TOKEN] == len(vocab) - 2 and vocab[END_TOKEN] == len(vocab) - 1


def test_tokenizer_round_trips_lowercases_and_pads_to_77(embedder) -> None:
    text = "A Portrait photo of an OLD woman with curly Purple hair"
    ids = embedder.tokenize([text, "x" * 400])
    assert ids.shape == (2, 77)
    vocab_size = embedder._tokenizer.vocab_size
    start, end = vocab_size - 2, vocab_size - 1
    assert ids[0, 0] == start
    decoded = embedder._tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)
    assert decoded == text.lower()
    # Truncation keeps the end token in the last slot, as OpenAI's tokenize(truncate=True) does.
    assert ids[1, 0] == start and ids[1, -1] == end
    # Learnt merges make common words single tokens (a working BPE, not one token per byte).
    n_tokens = int(np.argmax(ids[0] == end)) - 1
    assert n_tokens == len(text.split())


@pytest.mark.parametrize("size", [(90, 50), (50, 90), (64, 64)])
def test_preprocessing_matches_clip_reference(size: tuple[int, int]) -> None:
    from transformers import CLIPImageProcessorPil

    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    reference = CLIPImageProcessorPil(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    expected = reference(images=[image], return_tensors="np")["pixel_values"][0]
    ours = preprocess_image(image, 32)
    assert ours.shape == (3, 32, 32) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_preprocessing_centre_crops_and_converts_modes() -> None:
    # Left third red, middle green, right third blue: a centre crop of the wide image is all green.
    stripes = np.zeros((40, 120, 3), np.uint8)
    stripes[:, :40, 0] = 255
    stripes[:, 40:80, 1] = 255
    stripes[:, 80:, 2] = 255
    pixels = preprocess_image(Image.fromarray(stripes), 16)
    green = (1.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert pixels[1, 4:12, 4:12].min() > green[1] - 0.2
    assert pixels[0, 4:12, 4:12].max() < 0.0 and pixels[2, 4:12, 4:12].max() < 0.0
    gray = preprocess_image(Image.fromarray(stripes[:, :, 1]), 16)  # mode L becomes RGB
    assert gray.shape == (3, 16, 16)
    with pytest.raises(ClipInputError):
        preprocess_image(np.zeros((4, 4, 3)), 16)


def test_image_features_equal_the_model_and_do_not_depend_on_batching(clip_folder: Path, embedder) -> None:
    from transformers import CLIPModel

    images = face_images(3)
    features = embedder.embed_images(images)  # batch_size=2: two batches
    assert features.shape == (3, embedder.dim) and features.dtype == np.float32
    one_by_one = np.concatenate([embedder.embed_images([im]) for im in images])
    np.testing.assert_allclose(features, one_by_one, atol=1e-5)
    model = CLIPModel.from_pretrained(clip_folder, local_files_only=True).eval()
    pixels = torch.from_numpy(np.stack([preprocess_image(im, embedder.image_size) for im in images]))
    with torch.inference_mode():
        expected = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
    np.testing.assert_allclose(features, expected, atol=1e-5)
    assert not np.allclose(features[0], features[1])  # different faces, different features
    assert embedder.embed_images([]).shape == (0, embedder.dim)


def test_text_features_match_the_model_and_the_text_only_loader(clip_folder: Path, embedder) -> None:
    from transformers import CLIPModel, CLIPTokenizer

    texts = ["a smiling woman", "an old man with a beard", ""]
    features = embedder.embed_texts(texts)
    assert features.shape == (3, embedder.dim)
    model = CLIPModel.from_pretrained(clip_folder, local_files_only=True).eval()
    tokens = CLIPTokenizer.from_pretrained(clip_folder)(
        texts, padding="max_length", max_length=77, return_tensors="pt"
    )
    with torch.inference_mode():
        expected = model.get_text_features(input_ids=tokens["input_ids"]).pooler_output.numpy()
    np.testing.assert_allclose(features, expected, atol=1e-5)
    text_only = load_clip(clip_folder, towers="text")
    np.testing.assert_allclose(text_only.embed_texts(texts), features, atol=1e-6)
    with pytest.raises(RuntimeError, match="text-only"):
        text_only.embed_images(face_images(1))
    image_only = load_clip(clip_folder, towers="image")
    np.testing.assert_allclose(
        image_only.embed_images(face_images(2)), embedder.embed_images(face_images(2)), atol=1e-6
    )
    with pytest.raises(ClipInputError):
        embedder.embed_texts([b"bytes"])


def _rewrite_weights(folder: Path, change) -> None:
    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"))


def test_loading_is_strict_about_the_key_layout(clip_folder: Path, tmp_path: Path) -> None:
    missing = shutil.copytree(clip_folder, tmp_path / "missing")
    _rewrite_weights(missing, lambda s: s.pop("visual_projection.weight"))
    with pytest.raises(ClipWeightsError, match="visual_projection"):
        load_clip(missing)

    extra = shutil.copytree(clip_folder, tmp_path / "extra")
    _rewrite_weights(extra, lambda s: s.__setitem__("vision_model.extra_head.weight", torch.zeros(2)))
    with pytest.raises(ClipWeightsError, match="extra_head"):
        load_clip(extra)

    # Older exports of the official file carry position_ids buffers: those alone are accepted.
    legacy = shutil.copytree(clip_folder, tmp_path / "legacy")
    _rewrite_weights(
        legacy, lambda s: s.__setitem__("text_model.embeddings.position_ids", torch.arange(77).unsqueeze(0))
    )
    assert load_clip(legacy).dim == 32


def test_a_missing_folder_names_sfhq_weights(tmp_path: Path) -> None:
    registry = WeightsRegistry(tmp_path / "weights")
    with pytest.raises(WeightsMissing, match="sfhq weights"):
        load_clip_from_registry(registry)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsMissing, match="model.safetensors"):
        load_clip(empty)


def test_registry_loading_records_random_weights(tmp_path: Path) -> None:
    registry = WeightsRegistry(tmp_path / "weights")
    write_random_clip_folder(registry.expected_path("clip-vit-l-14-336"), seed=1)
    embedder = load_clip_from_registry(registry)
    provenance = embedder.provenance()
    assert provenance["random_weights"] is True
    assert provenance["feature_key"] == "CLIP_ViTL_14@336"
    assert len(provenance["sha256"]) == 64


def test_onnx_backend_gives_the_same_image_features(clip_folder: Path, embedder, tmp_path: Path) -> None:
    images = face_images(2)
    onnx = load_clip(clip_folder, backend="onnx", onnx_path=tmp_path / "image_tower.onnx")
    assert onnx.backend == "onnx" and (tmp_path / "image_tower.onnx").is_file()
    np.testing.assert_allclose(onnx.embed_images(images), embedder.embed_images(images), atol=1e-4)
    # Text still runs in torch and is unaffected.
    np.testing.assert_allclose(onnx.embed_texts(["a face"]), embedder.embed_texts(["a face"]), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_stays_close_to_float32(clip_folder: Path, embedder) -> None:
    images = face_images(2)
    gpu = load_clip(clip_folder, device="cuda", fp16=True)
    assert gpu.dtype == torch.float16
    cpu_features = embedder.embed_images(images)
    gpu_features = gpu.embed_images(images)
    assert gpu_features.dtype == np.float32
    cosine = (cpu_features * gpu_features).sum(1) / (
        np.linalg.norm(cpu_features, axis=1) * np.linalg.norm(gpu_features, axis=1)
    )
    assert cosine.min() > 0.999


@pytest.mark.parametrize("size", [(512, 512), (300, 200), (200, 336)])
def test_device_preprocessing_matches_pillows_within_its_rounding(size: tuple[int, int]) -> None:
    """The CUDA path's batched preprocessing, run here on CPU tensors, against the Pillow path."""
    from services.search.clip_model import preprocess_pixels

    image = Image.open(face_path(4)).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    reference = preprocess_image(image, 224)
    batch = torch.from_numpy(np.stack([np.asarray(image)] * 2))
    ours = preprocess_pixels(batch, 224).numpy()
    assert ours.shape == (2, 3, 224, 224)
    step = 1.0 / 255 / min(0.26130258, 0.26862954, 0.27577711)  # one 8-bit level after normalising
    difference = np.abs(ours[0] - reference)
    assert difference.max() <= 1.5 * step and difference.mean() < 0.3 * step  # Pillow rounds to 8 bits
    np.testing.assert_array_equal(ours[0], ours[1])


def test_device_preprocessing_gives_the_same_features(embedder) -> None:
    from services.search.clip_model import preprocess_pixels

    images = [Image.open(face_path(i)).convert("RGB") for i in (2, 5)]
    pil = embedder.embed_images(images)
    pixels = preprocess_pixels(
        torch.from_numpy(np.stack([np.asarray(im) for im in images])), embedder.image_size
    )
    ours = embedder.embed_pixels(pixels.numpy())
    cosine = (pil * ours).sum(1) / np.linalg.norm(pil, axis=1) / np.linalg.norm(ours, axis=1)
    assert cosine.min() > 0.999
