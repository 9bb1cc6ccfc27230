"""The extra feature extractors (SFHQ's CLIP_ViTL_14 and ConvNext_XL_Imagenet21k keys): strict
loads of tiny random models in the published folder layouts, timm's transform, the embed stage
with extras, and a plugin registered by key."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from services.common.blobs import BlobStore, item_key
from services.common.model_holder import LazyModel
from services.common.queue import Task
from services.search.clip_model import clip_provenance, load_clip
from services.search.embed_stage import embed_stage, extractor_models
from services.search.extractors import EXTRACTORS, ExtractorError, ExtractorSpec, extractor_spec, register
from services.search.random_weights import write_random_clip_folder, write_random_convnext_folder
from tests.helpers.services import settings_for

CPU = torch.device("cpu")


def face(seed: int, size=(96, 80)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    write_random_clip_folder(folder / "clip-vit-large-patch14-336", seed=1)
    write_random_clip_folder(folder / "clip-vit-large-patch14", seed=2)
    write_random_convnext_folder(folder / "convnext-xlarge-224-22k", seed=3)
    return folder


def test_sfhqs_extra_keys_are_known_with_their_published_sizes():
    assert {
        k: (s.checkpoint, s.dim)
        for k, s in EXTRACTORS.items()
        if k in ("CLIP_ViTL_14", "ConvNext_XL_Imagenet21k")
    } == {
        "CLIP_ViTL_14": ("clip-vit-l-14", 768),
        "ConvNext_XL_Imagenet21k": ("convnext-xlarge-224-22k", 2048),
    }
    with pytest.raises(ExtractorError, match="unknown feature extractor 'DINO_ViTS_8'"):
        extractor_spec("DINO_ViTS_8")


def test_convnext_loads_strictly_and_gives_pooled_features(weights, tmp_path):
    spec = extractor_spec("ConvNext_XL_Imagenet21k")
    model = spec.load(weights / "convnext-xlarge-224-22k", CPU, False)
    features = model.embed_images([face(1), face(2), face(1)])
    assert features.shape == (3, 32) and features.dtype == np.float32  # tiny: the last stage's width
    np.testing.assert_allclose(features[0], features[2], rtol=1e-5)
    assert not np.allclose(features[0], features[1])
    pixels = model.preprocess(face(3, size=(300, 200)))  # timm: shortest side to 64/0.875, crop 64
    assert pixels.shape == (3, 64, 64)
    broken = tmp_path / "broken"
    write_random_convnext_folder(broken)
    state = load_file(broken / "model.safetensors")
    state.pop(next(k for k in state if k.endswith("layernorm.weight")))
    save_file(state, broken / "model.safetensors")
    with pytest.raises(ExtractorError, match="missing"):
        spec.load(broken, CPU, False)


def test_clip_vit_l_14_is_the_image_tower_of_its_own_folder(weights):
    model = extractor_spec("CLIP_ViTL_14").load(weights / "clip-vit-large-patch14", CPU, False)
    other = load_clip(weights / "clip-vit-large-patch14-336", towers="image")
    image = face(4)
    assert model.embed_images([image]).shape == other.embed_images([image]).shape
    assert not np.allclose(model.embed_images([image]), other.embed_images([image]))  # another model


def test_the_embed_stage_adds_the_configured_extractors_features(weights, tmp_path):
    settings = settings_for(
        tmp_path, weights_dir=str(weights), extra_features="CLIP_ViTL_14,ConvNext_XL_Imagenet21k"
    )
    blobs = BlobStore(settings.blob_url)
    buffer = io.BytesIO()
    face(5).save(buffer, "PNG")
    blobs.put("in/face.png", buffer.getvalue())
    clip = load_clip(weights / "clip-vit-large-patch14-336")
    extras = extractor_models(settings)
    assert list(extras) == ["CLIP_ViTL_14", "ConvNext_XL_Imagenet21k"]
    handler = embed_stage(LazyModel.ready("clip", clip, clip_provenance(clip)), blobs, settings, extras)
    result = handler([Task.make("job1", "i1", "embed", {"image": "in/face.png"})])[0]
    assert result.ok, result.error_message
    extra = result.output["extra_features"]
    assert extra == {
        "CLIP_ViTL_14": item_key("job1", "i1", "embed", "features-CLIP_ViTL_14.npy"),
        "ConvNext_XL_Imagenet21k": item_key("job1", "i1", "embed", "features-ConvNext_XL_Imagenet21k.npy"),
    }
    assert blobs.get_npy(extra["ConvNext_XL_Imagenet21k"]).shape == (32,)
    provenance = result.output["provenance"]
    assert provenance["features:ConvNext_XL_Imagenet21k"]["checkpoint"] == "convnext-xlarge-224-22k"
    assert provenance["features:CLIP_ViTL_14"]["random_weights"] is True
    missing = settings_for(tmp_path / "m", extra_features="ConvNext_XL_Imagenet21k")  # nothing registered
    failed = embed_stage(LazyModel.ready("clip", clip), blobs, missing, extractor_models(missing))(
        [Task.make("job1", "i2", "embed", {"image": "in/face.png"})]
    )[0]
    assert failed.error_code == "FAILED_PRECONDITION" and "sfhq weights" in failed.error_message
    with pytest.raises(ExtractorError, match="unknown feature extractor"):
        extractor_models(settings_for(tmp_path / "u", extra_features="NoSuchModel"))


class _Means:
    def embed_images(self, images):
        return np.stack([np.asarray(im, np.float32).mean(axis=(0, 1)) for im in images])


def test_a_registered_extractor_is_used_by_its_key(weights, tmp_path):
    register(ExtractorSpec("Mean_RGB", "clip-vit-l-14", 3, lambda folder, device, fp16: _Means()))
    try:
        settings = settings_for(tmp_path, weights_dir=str(weights), extra_features="Mean_RGB")
        model = extractor_models(settings)["Mean_RGB"]
        assert model.run(lambda m: m.embed_images([face(6)])).shape == (1, 3)
    finally:
        EXTRACTORS.pop("Mean_RGB")
