"""Generator service: Synthesize / Sample / Candidates over a real gRPC server, and the queue stages."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from services.common.blobs import BlobStore, item_key
from services.common.images import decode_image
from services.common.model_holder import LazyModel
from services.common.queue import RedisQueue, Task, connect_redis
from services.common.weights import WeightsRegistry
from services.generator.checkpoint import generator_from_state_dict
from services.generator.engine import configure_runtime, to_uint8
from services.generator.model import Generator, z_from_seed
from services.generator.random_weights import random_latent_avg, random_rosinality_state_dict
from services.generator.service import build_process, generator_model, sample_stage, synthesize_stage
from sfhq.tensors import numpy_to_tensor, tensor_to_numpy
from sfhq.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from tests.helpers.nvlabs_pickle import write_nvlabs_pickle
from tests.helpers.services import ServedProcess, settings_for

KW = dict(size=16, style_dim=32, n_mlp=2, max_channels=16, seed=31)  # n_latent = 6


@pytest.fixture(scope="module")
def generator() -> Generator:
    return generator_from_state_dict(random_rosinality_state_dict(**KW), random_latent_avg(32, 31))


class CountingGenerator:
    """Delegates to a generator and records the batch size of every synthesize call."""

    def __init__(self, generator: Generator):
        self._generator = generator
        self.batches: list[int] = []

    def synthesize(self, latents, *args, **kwargs):
        self.batches.append(latents.shape[0])
        return self._generator.synthesize(latents, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._generator, name)


def ready(generator) -> LazyModel:
    return LazyModel.ready("generator", generator)


def Server(settings, model=None) -> ServedProcess:  # noqa: N802 - reads like the class it returns
    return ServedProcess(build_process(settings, model=model), generator_pb2_grpc.GeneratorStub)


@pytest.fixture()
def server(tmp_path, generator):
    running = Server(settings_for(tmp_path), ready(generator))
    yield running
    running.close()


def decoded(image: common_pb2.Image) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image.data)).convert("RGB"))


def expected_pixels(generator: Generator, latents: torch.Tensor, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return to_uint8(generator.synthesize(latents, **kwargs))


def w_of(generator: Generator, n: int, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return generator.mapping(torch.randn(n, 32, generator=torch.Generator().manual_seed(seed)))


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


# ---- Synthesize ---------------------------------------------------------------------------------


def test_synthesize_w_and_w_plus_in_order(server, generator):
    w = w_of(generator, 2)
    w_plus = w[1:].unsqueeze(1).repeat(1, 6, 1)
    request = generator_pb2.SynthesizeRequest(
        latents=[numpy_to_tensor(w[0].numpy()), numpy_to_tensor(w_plus[0].numpy())]
    )
    images = [decoded(img) for img in server.stub.Synthesize(request).images]
    expected = expected_pixels(generator, w)
    assert images[0].shape == (16, 16, 3)
    np.testing.assert_array_equal(images[0], expected[0])
    np.testing.assert_array_equal(images[1], expected[1])  # W+ of the same w gives the same face


def test_synthesize_truncation_and_noise_modes(server, generator):
    w = w_of(generator, 2, seed=1)
    tensors = [numpy_to_tensor(x.numpy()) for x in w]
    average = server.stub.Synthesize(generator_pb2.SynthesizeRequest(latents=tensors, truncation_psi=0.0))
    first, second = (decoded(img) for img in average.images)
    np.testing.assert_array_equal(first, second)  # psi = 0: both are the w_avg face
    far = server.stub.Synthesize(
        generator_pb2.SynthesizeRequest(latents=tensors, truncation_psi=1.8, truncation_cutoff=4)
    )
    np.testing.assert_array_equal(
        decoded(far.images[0]), expected_pixels(generator, w[:1], truncation=1.8, truncation_cutoff=4)[0]
    )
    no_noise = server.stub.Synthesize(
        generator_pb2.SynthesizeRequest(latents=tensors[:1], noise_mode=generator_pb2.NOISE_MODE_NONE)
    )
    np.testing.assert_array_equal(
        decoded(no_noise.images[0]), expected_pixels(generator, w[:1], noise_mode="none")[0]
    )


def test_synthesize_output_options(server, generator):
    w = w_of(generator, 1, seed=2)
    output = common_pb2.OutputOptions(format=common_pb2.IMAGE_FORMAT_JPEG, jpeg_quality=80, size=32)
    response = server.stub.Synthesize(
        generator_pb2.SynthesizeRequest(latents=[numpy_to_tensor(w[0].numpy())], output=output)
    )
    image = Image.open(io.BytesIO(response.images[0].data))
    assert image.format == "JPEG" and image.size == (32, 32)

    to_blobs = common_pb2.OutputOptions(to_blob_store=True)
    stored = server.stub.Synthesize(
        generator_pb2.SynthesizeRequest(latents=[numpy_to_tensor(w[0].numpy())], output=to_blobs)
    )
    uri = stored.images[0].uri
    assert uri.startswith("file://") and not stored.images[0].data
    pixels = np.asarray(Image.open(io.BytesIO(server.servicer.blobs.get(uri))))
    np.testing.assert_array_equal(pixels, expected_pixels(generator, w)[0])


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (generator_pb2.SynthesizeRequest(), "latents: the request has none; give 1..64"),
        (generator_pb2.SynthesizeRequest(latents=[numpy_to_tensor(np.zeros(31))]), "latents[0]: shape [31]"),
        (
            generator_pb2.SynthesizeRequest(latents=[numpy_to_tensor(np.zeros((5, 32)))]),
            "neither W [32] nor W+ [6, 32]",
        ),
        (generator_pb2.SynthesizeRequest(latents=[numpy_to_tensor(np.full(32, np.nan))]), "NaN"),
        (
            generator_pb2.SynthesizeRequest(latents=[common_pb2.Tensor(data=b"123", shape=[32])]),
            "bytes do not match",
        ),
        (
            generator_pb2.SynthesizeRequest(latents=[numpy_to_tensor(np.zeros(32))], truncation_psi=5.0),
            "truncation_psi must be a finite number in [0, 4]",
        ),
        (
            generator_pb2.SynthesizeRequest(latents=[numpy_to_tensor(np.zeros(32))], truncation_cutoff=7),
            "truncation_cutoff must be in [0, 6]",
        ),
        (
            generator_pb2.SynthesizeRequest(
                latents=[numpy_to_tensor(np.zeros(32))], output=common_pb2.OutputOptions(jpeg_quality=101)
            ),
            "jpeg_quality",
        ),
    ],
)
def test_synthesize_bad_requests_are_invalid_argument(server, request_, message):
    code, details = status_of(lambda: server.stub.Synthesize(request_))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in details


# ---- Sample -------------------------------------------------------------------------------------


def test_sample_returns_truncated_w_and_reproducible_images(server, generator):
    request = generator_pb2.SampleRequest(seeds=[7, 2**40], psi=1.5)
    first, again = server.stub.Sample(request), server.stub.Sample(request)
    assert [s.seed for s in first.samples] == [7, 2**40]
    for sample in first.samples:
        with torch.no_grad():
            expected_w = generator.truncate(generator.mapping(z_from_seed(sample.seed, 32)[None]), 1.5)[0]
        np.testing.assert_allclose(
            tensor_to_numpy(sample.w, expect_shape=(32,)), expected_w.numpy(), rtol=1e-6, atol=1e-6
        )
    for a, b in zip(first.samples, again.samples, strict=True):
        np.testing.assert_array_equal(decoded(a.image), decoded(b.image))
    random_noise = generator_pb2.SampleRequest(seeds=[7], psi=1.5, noise_mode=generator_pb2.NOISE_MODE_RANDOM)
    np.testing.assert_array_equal(
        decoded(server.stub.Sample(random_noise).samples[0].image),
        decoded(server.stub.Sample(random_noise).samples[0].image),
    )


def test_sample_with_cutoff_returns_w_plus(server):
    response = server.stub.Sample(generator_pb2.SampleRequest(seeds=[3], psi=0.5, truncation_cutoff=2))
    assert list(response.samples[0].w.shape) == [6, 32]


def test_sample_bad_psi_is_invalid_argument(server):
    code, details = status_of(
        lambda: server.stub.Sample(generator_pb2.SampleRequest(seeds=[1], psi=float("nan")))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "psi" in details
    code, details = status_of(lambda: server.stub.Sample(generator_pb2.SampleRequest(psi=1.0)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "seeds" in details


# ---- Candidates ---------------------------------------------------------------------------------


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_candidates_from_one_code(server, generator):
    code = w_of(generator, 1, seed=4).repeat(6, 1) + 0.1
    target = png(expected_pixels(generator, w_of(generator, 1, seed=5))[0])
    request = generator_pb2.CandidatesRequest(
        latent=numpy_to_tensor(code.numpy()),
        strategies=[
            common_pb2.Strategy(name="e4e_strict_prior", params={"fine": 0.5}),
            common_pb2.Strategy(name="low_prior", params={"steps": 2, "loss_size": 16}, seed=3),
            common_pb2.Strategy(name="style_mix", params={"start": 4}, seed=11),
            common_pb2.Strategy(name="encoder_truncation"),
        ],
        target=common_pb2.Image(data=target),
        sampled_w=numpy_to_tensor(w_of(generator, 1, seed=6)[0].numpy()),
    )
    candidates = server.stub.Candidates(request).candidates
    assert [c.strategy.name for c in candidates] == [
        "e4e_strict_prior",
        "low_prior",
        "style_mix",
        "encoder_truncation",
    ]
    assert dict(candidates[0].strategy.params) == {"coarse": 0.0, "middle": 0.0, "fine": 0.5}
    assert candidates[1].strategy.seed == 3 and candidates[1].strategy.params["lr"] == pytest.approx(0.01)
    for candidate in candidates:
        latent = tensor_to_numpy(candidate.latent, expect_shape=(6, 32))
        np.testing.assert_array_equal(
            decoded(candidate.image), expected_pixels(generator, torch.from_numpy(latent)[None])[0]
        )
    np.testing.assert_array_equal(tensor_to_numpy(candidates[2].latent)[:4], code[:4].numpy())


@pytest.mark.parametrize(
    ("strategies", "extra", "code", "message"),
    [
        (
            [common_pb2.Strategy(name="sharpen")],
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown strategy 'sharpen'",
        ),
        (
            [common_pb2.Strategy(name="style_mix", params={"psi": 9})],
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "'psi'",
        ),
        ([common_pb2.Strategy(name="low_prior")], {}, grpc.StatusCode.INVALID_ARGUMENT, "needs a target"),
        (
            [common_pb2.Strategy(name="encoder_truncation")],
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs sampled_w",
        ),
        ([], {}, grpc.StatusCode.INVALID_ARGUMENT, "strategies"),
        (
            [common_pb2.Strategy(name="low_prior")],
            {"target": common_pb2.Image(data=b"\x89PNG broken")},
            grpc.StatusCode.INVALID_ARGUMENT,
            "image",
        ),
        (
            [common_pb2.Strategy(name="low_prior")],
            {"target": common_pb2.Image(uri="uploads/none.png")},
            grpc.StatusCode.NOT_FOUND,
            "uploads/none.png",
        ),
    ],
)
def test_candidates_bad_requests(server, generator, strategies, extra, code, message):
    request = generator_pb2.CandidatesRequest(
        latent=numpy_to_tensor(np.zeros((6, 32))), strategies=strategies, **extra
    )
    got_code, details = status_of(lambda: server.stub.Candidates(request))
    assert got_code == code and message in details


def test_candidates_needs_a_w_plus_code(server):
    request = generator_pb2.CandidatesRequest(
        latent=numpy_to_tensor(np.zeros(32)), strategies=[common_pb2.Strategy(name="e4e_strict_prior")]
    )
    code, details = status_of(lambda: server.stub.Candidates(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "W+ code [6, 32]" in details


# ---- checkpoints --------------------------------------------------------------------------------


def test_missing_checkpoint_is_failed_precondition_naming_sfhq_weights(tmp_path):
    running = Server(settings_for(tmp_path))  # the real loader, on an empty weights folder
    try:
        request = generator_pb2.SampleRequest(seeds=[1], psi=1.0)
        code, details = status_of(lambda: running.stub.Sample(request))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "sfhq weights download stylegan2-ffhq-config-f" in details
    finally:
        running.close()


def test_loader_falls_back_to_the_nvlabs_pickle_then_the_e4e_decoder(tmp_path):
    settings = settings_for(tmp_path)
    registry = WeightsRegistry(settings.weights_dir)
    e4e_path = registry.expected_path("e4e-ffhq-encode")
    e4e_path.parent.mkdir(parents=True, exist_ok=True)
    decoder = random_rosinality_state_dict(**KW)
    torch.save(
        {
            "state_dict": {f"decoder.{k}": v for k, v in decoder.items()},
            "latent_avg": torch.zeros(6, 32),
            "opts": {},
        },
        e4e_path,
    )
    assert generator_model(settings).get().source["format"] == "e4e-decoder"
    write_nvlabs_pickle(registry.expected_path("stylegan2-ada-ffhq"), **KW)
    model = generator_model(settings)
    assert model.get().source["format"] == "nvlabs"
    assert model.provenance.checkpoint == "stylegan2-ada-ffhq" and len(model.provenance.sha256) == 64


def test_runtime_settings_per_device():
    cpu = configure_runtime(generator_from_state_dict(random_rosinality_state_dict(**KW)), "cpu", fp16=True)
    assert (cpu.modconv, cpu.channels_last, cpu.fp16_resolutions) == ("grouped", False, 0)  # exact, no fp16
    cuda = configure_runtime(
        generator_from_state_dict(random_rosinality_state_dict(**KW)), "cuda:0", fp16=True
    )
    assert (cuda.modconv, cuda.channels_last, cuda.fp16_resolutions) == ("batched", True, 4)
    w = torch.randn(2, 32)
    with torch.no_grad():  # a 16-px generator has 3 blocks above 4x4: "top 4" means all of them
        reference = generator_from_state_dict(random_rosinality_state_dict(**KW)).synthesize(w)
        assert (cuda.synthesize(w) - reference).abs().max() < 2e-2 * reference.abs().max()


# ---- queue stages -------------------------------------------------------------------------------


def test_sample_handler_writes_w_plus_and_image(tmp_path, generator):
    settings = settings_for(tmp_path)
    blobs = BlobStore(settings.blob_url)
    counting = CountingGenerator(generator)
    tasks = [
        Task.make("job1", "s1", "sample", {"seed": 5, "psi": 1.5}),
        Task.make("job1", "s2", "sample", {"seed": 5, "psi": 9.0}),
        Task.make("job2", "s1", "sample", {"seed": 6, "psi": 1.2}),
        Task.make("job2", "s2", "sample", {"psi": 1.2}),
    ]
    results = sample_stage(ready(counting), blobs, settings)(tasks)
    assert [r.ok for r in results] == [True, False, True, False]
    assert results[1].error_code == "INVALID_ARGUMENT" and "psi" in results[1].error_message
    assert "seed" in results[3].error_message
    assert counting.batches == [2]  # both good samples in one model batch
    assert (results[0].output["w"], results[0].output["image"]) == (
        item_key("job1", "s1", "sample", "w.npy"),
        item_key("job1", "s1", "sample", "image.qoi"),
    )
    w = blobs.get_npy(results[0].output["w"])
    assert w.shape == (6, 32) and w.dtype == np.float32
    with torch.no_grad():
        expected = generator.truncate(generator.mapping(z_from_seed(5, 32)[None]), 1.5)[0]
    np.testing.assert_allclose(w, expected.expand(6, -1).numpy(), rtol=1e-6, atol=1e-6)
    pixels = np.asarray(decode_image(blobs.get(results[0].output["image"])))
    np.testing.assert_array_equal(pixels, expected_pixels(generator, torch.from_numpy(w)[None])[0])


def test_synthesize_handler_batches_candidates_and_fails_bad_tasks_alone(tmp_path, generator):
    settings = settings_for(tmp_path)
    blobs = BlobStore(settings.blob_url)
    code = (w_of(generator, 1, seed=8).repeat(6, 1)).numpy()
    blobs.put_npy("in/code.npy", code)
    blobs.put_npy("in/bad.npy", np.zeros((3, 32), dtype=np.float32))
    blobs.put_npy("in/sampled.npy", w_of(generator, 1, seed=9).repeat(6, 1).numpy())
    blobs.put("in/target.png", png(expected_pixels(generator, w_of(generator, 1, seed=10))[0]))
    strategies = [
        {"name": "e4e_strict_prior", "params": {}, "seed": 0},
        {"name": "style_mix", "params": {}, "seed": 2**62},
    ]
    tasks = [
        Task.make("job1", "i1", "synthesize", {"latent": "in/code.npy", "strategies": strategies, "target": None, "sampled_w": None}),
        Task.make("job1", "i2", "synthesize", {"latent": "in/bad.npy", "strategies": strategies, "target": None, "sampled_w": None}),
        Task.make("job2", "i1", "synthesize", {
            "latent": "in/code.npy", "target": "in/target.png", "sampled_w": "in/sampled.npy",
            "strategies": [{"name": "encoder_truncation", "params": {"fine": 1.0}, "seed": 1},
                           {"name": "low_prior", "params": {"steps": 1, "loss_size": 16}, "seed": 1}],
        }),
        Task.make("job2", "i2", "synthesize", {"latent": "in/code.npy", "strategies": [{"name": "blur"}]}),
        Task.make("job2", "i3", "synthesize", {"latent": "in/missing.npy", "strategies": strategies}),
    ]  # fmt: skip
    counting = CountingGenerator(generator)
    results = synthesize_stage(ready(counting), blobs, settings, None)(tasks)
    assert [(r.ok, r.error_code) for r in results] == [
        (True, ""), (False, "INVALID_ARGUMENT"), (True, ""), (False, "INVALID_ARGUMENT"), (False, "NOT_FOUND"),
    ]  # fmt: skip
    assert "'latent'" in results[1].error_message and "unknown strategy 'blur'" in results[3].error_message
    assert (
        counting.batches[-1] == 4
    )  # the four candidates of two jobs: one model batch (low_prior ran before)

    candidates = results[0].output["candidates"]
    assert [c["strategy"]["name"] for c in candidates] == ["e4e_strict_prior", "style_mix"]
    assert candidates[1]["strategy"] == {
        "name": "style_mix",
        "params": {"start": 5, "strength": 1.0, "psi": 0.7},
        "seed": 2**62,
    }  # 16 px: the last layer
    assert candidates[0]["image"] == item_key("job1", "i1", "synthesize", "candidate-0.qoi")
    np.testing.assert_array_equal(blobs.get_npy(candidates[0]["latent"]), code)
    truncated = results[2].output["candidates"][0]
    np.testing.assert_allclose(blobs.get_npy(truncated["latent"])[8:], blobs.get_npy("in/sampled.npy")[8:])
    pixels = np.asarray(decode_image(blobs.get(candidates[0]["image"])))
    np.testing.assert_array_equal(pixels, expected_pixels(generator, torch.from_numpy(code)[None])[0])


def test_the_pipelined_synthesize_stage_writes_what_the_serial_one_writes(tmp_path, generator):
    """Stores in a thread pool (the worker runs the next batch meanwhile) change no byte and no result."""
    outputs = {}
    for name, pool in (("serial", None), ("pipelined", ThreadPoolExecutor(3))):
        settings = settings_for(tmp_path / name)
        blobs = BlobStore(settings.blob_url)
        blobs.put_npy("in/code.npy", w_of(generator, 1, seed=8).repeat(6, 1).numpy())
        blobs.put("in/target.png", png(expected_pixels(generator, w_of(generator, 1, seed=10))[0]))
        strategies = [
            {"name": "e4e_strict_prior", "params": {"fine": 0.5}, "seed": 0},
            {"name": "low_prior", "params": {"steps": 2, "loss_size": 16}, "seed": 1},
        ]
        tasks = [
            Task.make("job", f"i{n}", "synthesize", {"latent": "in/code.npy", "target": "in/target.png", "strategies": strategies})
            for n in range(3)
        ] + [Task.make("job", "bad", "synthesize", {"latent": "in/missing.npy", "strategies": strategies})]  # fmt: skip
        handler = synthesize_stage(ready(generator), blobs, settings, None, pool)
        first = handler.submit(tasks[:2]) if pool else None  # two batches in flight at once
        results = (first.result() if first else handler(tasks[:2])) + handler(tasks[2:])
        outputs[name] = (
            [(r.task_id, r.ok, r.error_code, r.output) for r in results],
            {key: blobs.get(key) for key in blobs.list("jobs/")},
        )
    assert outputs["pipelined"] == outputs["serial"]
    assert len(outputs["serial"][1]) == 12 and [ok for _, ok, _, _ in outputs["serial"][0]] == [True] * 3 + [
        False
    ]


def test_synthesize_stage_refines_the_low_prior_candidates_of_a_batch_together(tmp_path, generator):
    settings = settings_for(tmp_path)
    blobs = BlobStore(settings.blob_url)
    blobs.put_npy("in/code.npy", w_of(generator, 1, seed=8).repeat(6, 1).numpy())
    blobs.put("in/target.png", png(expected_pixels(generator, w_of(generator, 1, seed=10))[0]))
    payload = {
        "latent": "in/code.npy",
        "target": "in/target.png",
        "strategies": [{"name": "low_prior", "params": {"steps": 3, "loss_size": 16}, "seed": 0}],
    }
    counting = CountingGenerator(generator)
    tasks = [Task.make("job", f"i{n}", "synthesize", payload) for n in range(3)]
    results = synthesize_stage(ready(counting), blobs, settings, None)(tasks)
    assert all(r.ok for r in results)
    assert counting.batches == [3, 3, 3, 3]  # 3 low_prior steps of all three tasks at once, then the images


def test_synthesize_handler_with_missing_checkpoint_fails_permanently(tmp_path):
    settings = settings_for(tmp_path)
    blobs = BlobStore(settings.blob_url)
    blobs.put_npy("in/code.npy", np.zeros((6, 32), dtype=np.float32))
    model = generator_model(settings)  # the real loader, on an empty weights folder
    tasks = [
        Task.make(
            "j", f"i{n}", "synthesize", {"latent": "in/code.npy", "strategies": [{"name": "style_mix"}]}
        )
        for n in range(2)
    ]
    results = synthesize_stage(model, blobs, settings, None)(tasks)
    assert [(r.ok, r.error_code) for r in results] == [(False, "FAILED_PRECONDITION")] * 2
    assert "sfhq weights" in results[0].error_message


def test_synthesize_stage_worker_batches_across_jobs(sfhq_settings, generator):
    settings = sfhq_settings.model_copy(update={"stages": ["synthesize"]})
    blobs = BlobStore(settings.blob_url)
    blobs.put_npy("in/code.npy", w_of(generator, 1, seed=12).repeat(6, 1).numpy())
    queue = RedisQueue.from_settings(settings, connect_redis(settings.redis_url))
    queue.ensure_groups()
    payload = {
        "latent": "in/code.npy",
        "strategies": [{"name": "e4e_strict_prior", "params": {"coarse": 0.5}, "seed": 0}],
    }
    queue.enqueue_many([Task.make(f"job{n % 2}", f"item{n}", "synthesize", payload) for n in range(3)])
    counting = CountingGenerator(generator)
    process = build_process(settings, model=ready(counting), blobs=blobs)
    process.start()
    try:
        results = []
        deadline = time.monotonic() + 30
        while len(results) < 3 and time.monotonic() < deadline:
            results += [result for _, result in queue.read_results("test", count=10, block_ms=200)]
    finally:
        process.stop(grace=1)
    assert sorted(r.item_id for r in results) == ["item0", "item1", "item2"] and all(r.ok for r in results)
    assert counting.batches == [3]  # three tasks of two jobs, one model batch
