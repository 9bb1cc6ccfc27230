"""Protobuf <-> Python for the Generator API: noise modes, latents, strategies, responses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from services.common.errors import InvalidInput
from services.common.rpc import read_array
from services.generator import engine
from services.generator.engine import Truncation
from services.generator.manipulate import StrategySpec
from services.generator.model import Generator
from sfhq.tensors import numpy_to_tensor
from sfhq.v1 import common_pb2, generator_pb2

NOISE_MODES = {
    generator_pb2.NOISE_MODE_UNSPECIFIED: "const",
    generator_pb2.NOISE_MODE_CONST: "const",
    generator_pb2.NOISE_MODE_RANDOM: "random",
    generator_pb2.NOISE_MODE_NONE: "none",
}


def noise_mode(value: int) -> str:
    if value not in NOISE_MODES:
        raise InvalidInput(f"noise_mode: unknown value {value}")
    return NOISE_MODES[value]


def truncation(
    request: generator_pb2.SynthesizeRequest | generator_pb2.SampleRequest, psi_field: str, n_latent: int
) -> Truncation:
    """The request's truncation psi (field `psi_field`, default 1 = none) and layer cutoff, checked."""
    psi = engine.check_psi(getattr(request, psi_field), psi_field) if request.HasField(psi_field) else 1.0
    if not request.HasField("truncation_cutoff"):
        return Truncation(psi)
    return Truncation(psi, engine.check_cutoff(request.truncation_cutoff, n_latent))


def latents(messages: Sequence[common_pb2.Tensor], generator: Generator) -> Tensor:
    """W and W+ latents as one batch; when they are mixed, the W ones are broadcast to W+."""
    batch = [
        engine.as_latent(read_array(m, f"latents[{i}]"), generator, f"latents[{i}]")
        for i, m in enumerate(messages)
    ]
    if len({latent.ndim for latent in batch}) > 1:
        batch = [engine.to_w_plus(latent, generator.n_latent) for latent in batch]
    return torch.cat(batch)


def strategies(messages: Sequence[common_pb2.Strategy]) -> list[StrategySpec]:
    return [
        engine.strategy_spec(s.name, dict(s.params), s.seed, f"strategies[{i}]")
        for i, s in enumerate(messages)
    ]


def strategy(spec: StrategySpec) -> common_pb2.Strategy:
    record = spec.record()
    params = {key: float(value) for key, value in record["params"].items()}
    return common_pb2.Strategy(name=record["name"], params=params, seed=record["seed"])


def samples_response(
    seeds: list[int], w: Tensor, images: list[common_pb2.Image]
) -> generator_pb2.SampleResponse:
    return generator_pb2.SampleResponse(
        samples=[
            generator_pb2.Sample(seed=seed, w=numpy_to_tensor(w[i].numpy()), image=image)
            for i, (seed, image) in enumerate(zip(seeds, images, strict=True))
        ]
    )


def candidates_response(
    pairs: list[tuple[StrategySpec, Tensor]], images: list[common_pb2.Image]
) -> generator_pb2.CandidatesResponse:
    return generator_pb2.CandidatesResponse(
        candidates=[
            generator_pb2.Candidate(
                strategy=strategy(spec), image=image, latent=numpy_to_tensor(latent.numpy())
            )
            for (spec, latent), image in zip(pairs, images, strict=True)
        ]
    )
