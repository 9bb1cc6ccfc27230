"""Stable Diffusion for the prompts mode: a tiny random diffusers pipeline (built here, saved in the
official folder layout), its strict loader, per-image seeds, batching, and the `diffuse` stage."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from services.common.blobs import BlobStore, item_key
from services.common.images import decode_image
from services.common.model_holder import LazyModel
from services.common.queue import Task
from services.common.weights import WeightsRegistry
from services.generator.diffusion import DiffusionFolderError, DiffusionRequest, load_diffusion
from services.generator.prompts_stage import diffuse_stage, diffusion_models
from services.generator.random_diffusion import write_random_diffusion_folder
from tests.helpers.services import settings_for

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return write_random_diffusion_folder(tmp_path_factory.mktemp("sd") / "stable-diffusion-2-1", seed=3)


@pytest.fixture(scope="module")
def model(sd_folder):
    return load_diffusion(sd_folder, CPU, fp16=False)


def test_the_tiny_pipeline_is_saved_in_the_official_diffusers_layout(sd_folder):
    index = json.loads((sd_folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for network in ("unet", "vae", "text_encoder"):
        assert list((sd_folder / network).glob("*.safetensors")), network
        assert not list((sd_folder / network).glob("*.bin"))
    registry = WeightsRegistry(sd_folder.parent)
    assert registry.has("stable-diffusion-2-1")  # what `sfhq weights add` checks: the required files


def test_an_image_depends_on_its_prompt_and_seed_only_not_on_its_batch(model):
    a = DiffusionRequest("a portrait photo of an old man", seed=11, steps=3)
    b = DiffusionRequest("a portrait photo of a young woman", seed=12, steps=3, negative_prompt="blurry")
    together = model.generate([a, b], batch_size=2)
    alone = model.generate([b], batch_size=1)
    assert together[0].shape == (64, 64, 3) and together[0].dtype == np.uint8
    assert model.default_size == (64, 64)
    np.testing.assert_allclose(together[1].astype(int), alone[0].astype(int), atol=1)
    assert np.abs(together[0].astype(int) - together[1].astype(int)).mean() > 1  # prompts and seeds differ
    other_seed = model.generate([DiffusionRequest(b.prompt, seed=13, steps=3, negative_prompt="blurry")])
    assert np.abs(other_seed[0].astype(int) - alone[0].astype(int)).mean() > 1


def test_requests_with_different_settings_run_in_separate_calls_in_order(model, monkeypatch):
    calls = []
    real = model.pipeline.__call__

    def counting(*args, **kwargs):
        calls.append((len(kwargs["prompt"]), kwargs["num_inference_steps"], kwargs["width"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(type(model.pipeline), "__call__", lambda self, *a, **k: counting(*a, **k))
    requests = [
        DiffusionRequest("x", seed=1, steps=2),
        DiffusionRequest("y", seed=2, steps=3),
        DiffusionRequest("z", seed=3, steps=2, width=48, height=32),
        DiffusionRequest("w", seed=4, steps=2),
        DiffusionRequest("v", seed=5, steps=2),
    ]
    images = model.generate(requests, batch_size=2)
    assert sorted(calls) == sorted([(2, 2, 64), (1, 2, 64), (1, 3, 64), (1, 2, 48)])
    assert [im.shape[:2] for im in images] == [(64, 64), (64, 64), (32, 48), (64, 64), (64, 64)]
    monkeypatch.undo()
    np.testing.assert_allclose(
        images[3].astype(int), model.generate([requests[3]])[0].astype(int), atol=1
    )  # its place in the batch changed nothing


def test_the_loader_is_strict_about_the_folder(sd_folder, tmp_path):
    broken = shutil.copytree(sd_folder, tmp_path / "missing-key")
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop(next(k for k in state if k.endswith("conv_out.weight")))
    save_file(state, weights)
    with pytest.raises(DiffusionFolderError, match="do not match the config.*missing_keys.*conv_out"):
        load_diffusion(broken, CPU, fp16=False)

    pickled = shutil.copytree(sd_folder, tmp_path / "bin-only")
    (pickled / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({}, pickled / "vae" / "diffusion_pytorch_model.bin")  # never unpickled
    with pytest.raises(DiffusionFolderError, match="vae"):
        load_diffusion(pickled, CPU, fp16=False)

    other = shutil.copytree(sd_folder, tmp_path / "sdxl")
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(DiffusionFolderError, match="StableDiffusionXLPipeline"):
        load_diffusion(other, CPU, fp16=False)


def diffuse_task(item: str, pipeline: str = "stable-diffusion-2-1", **payload) -> Task:
    return Task.make(
        "job1", item, "diffuse", {"prompt": "a face", "seed": 1, "steps": 2, "pipeline": pipeline, **payload}
    )


def test_the_diffuse_stage_writes_each_image_with_its_size_and_provenance(tmp_path, sd_folder):
    settings = settings_for(tmp_path, weights_dir=str(sd_folder.parent))
    blobs = BlobStore(settings.blob_url)
    models = diffusion_models(settings)
    tasks = [
        diffuse_task("p0", seed=5),
        diffuse_task("p1", seed=6, width=32, height=48),
        diffuse_task("p2", steps=0),  # refused by the contract, alone
        diffuse_task("p3", pipeline="stable-diffusion-v1-4"),  # not registered here
    ]
    results = diffuse_stage(models, blobs, settings)(tasks)
    assert [r.ok for r in results] == [True, True, False, False]
    assert results[2].error_code == "INVALID_ARGUMENT" and "steps" in results[2].error_message
    assert results[3].error_code == "FAILED_PRECONDITION" and "sfhq weights" in results[3].error_message
    first, second = results[0].output, results[1].output
    assert first["image"] == item_key("job1", "p0", "diffuse", "image.qoi")
    assert (first["width"], first["height"], second["width"], second["height"]) == (64, 64, 32, 48)
    assert decode_image(blobs.get(second["image"])).size == (32, 48)
    assert first["provenance"]["diffusion"]["checkpoint"] == "stable-diffusion-2-1"
    again = diffuse_stage(models, blobs, settings)([diffuse_task("p9", seed=5)])[0]
    np.testing.assert_array_equal(
        np.asarray(decode_image(blobs.get(again.output["image"]))),
        np.asarray(decode_image(blobs.get(first["image"]))),
    )  # the same seed and prompt make the same image


def test_a_ready_model_can_be_handed_to_the_stage(tmp_path, model):
    settings = settings_for(tmp_path)
    models = {"stable-diffusion-2-1": LazyModel.ready("diffusion", model)}
    result = diffuse_stage(models, BlobStore(settings.blob_url), settings)([diffuse_task("p0")])[0]
    assert result.ok and result.output["width"] == 64
