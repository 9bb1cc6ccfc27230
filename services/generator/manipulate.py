"""Photoreal candidates: named, parameterised strategies that turn one W+ code into images.

SFHQ "brings to life" an inspiration image by encoding it with e4e and synthesizing several
photoreal candidates from that code (docs/sfhq-format.md, "Bringing inspiration images to life"). Each candidate here is a
`StrategySpec` — `(name, params, seed)` — and is deterministic given it; the resolved
parameters (defaults filled in) are recorded with every result.

Notation: `w` is the e4e W+ code `[L, 512]`, `w̄` the generator's `latent_avg`, `g(l)` the
layer group of layer `l` (`layer_groups`: coarse / middle / fine).

`e4e_strict_prior` — the e4e code as is, optionally pulled toward the average face per group:
    `w'_l = w_l + β_g(l)·(w̄ − w_l)`,  β ∈ [0, 1] (params `coarse`, `middle`, `fine`; default 0).
`low_prior` — refine the code toward the inspiration image, keeping its colours and style:
    `w' = argmin_v  loss(G(v), target) + λ·mean((v − w)²)`, by `steps` Adam steps (rate `lr`)
    from `v = w`; `λ` = `prior_weight` is the weak prior toward the e4e code. `loss` defaults to
    `pixel_multiscale_loss` at `loss_size` pixels (G rendered only up to that scale; finer
    layers keep the e4e values); a perceptual loss can be passed in. With an e4e encoder given
    (`identity`), `identity_weight`·d_id(G(v), target) is added: d_id is the perceptual term of
    `services.encoder.refine.ReconstructionLoss.for_encoder` on the e4e IR-SE50 backbone's
    features (initialised from ArcFace), the target's features computed once per optimisation.
    `identity_weight` = 0, or no encoder, is the pixel + multi-scale loss alone.
`style_mix` — fine layers from another sample, for variety:
    `w'_l = w_l + α·(d − w_l)` for `l ≥ start` (else `w_l`), `d = w̄ + ψ·(mapping(z_seed) − w̄)`,
    `z_seed` = NVlabs' seed → z (params `start` (default 8, the first fine layer; the last layer on
    generators under 64 px), `strength` α, `psi` ψ).
`encoder_truncation` (SFHQ part 3) — with `w_s` a psi > 1 sample and `w` the e4e code of
    `G(w_s)`: `w'_l = w_l + a_g(l)·(w_s,l − w_l)`; the e4e code plays the role w̄ plays in the usual
    truncation trick (params `coarse`, `middle`, `fine` = a per group).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from services.common.strategies import GROUP_NAMES, SCHEMAS, ParamSpec, StrategySchema, check_params
from services.encoder.model import Encoder
from services.encoder.refine import ReconstructionLoss
from services.generator.model import Generator, z_from_seed

__all__ = [
    "LAYER_GROUPS",
    "GROUP_NAMES",
    "layer_groups",
    "group_strengths",
    "ParamSpec",
    "Strategy",
    "StrategySpec",
    "CandidateResult",
    "STRATEGIES",
    "e4e_strict_prior",
    "low_prior",
    "style_mix",
    "encoder_truncation",
    "pixel_multiscale_loss",
    "identity_loss",
    "candidate_latents",
    "candidate_latents_batch",
    "CandidateJob",
    "low_prior_batch",
    "make_candidates",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
MAX_SEED = 2**64  # proto seeds are uint64 (model.z_from_seed matches NVlabs' seeds below 2**32)


def layer_groups(n_latent: int) -> dict[str, range]:
    """Layer indices of each group, by the resolution a layer drives (two layers per resolution):
    coarse = 4–8 px (layers 0–3), middle = 16–32 px (4–7), fine = 64 px and up (8 …).

    At 1024 px (18 layers) this is coarse 0–3, middle 4–7, fine 8–17; smaller generators keep the same
    resolutions per group (a 64-px one has fine = 8–9, a 16-px one no fine layers).
    """
    if n_latent < 1:
        raise ValueError(f"n_latent must be positive, got {n_latent}")
    return {
        "coarse": range(0, min(4, n_latent)),
        "middle": range(min(4, n_latent), min(8, n_latent)),
        "fine": range(min(8, n_latent), n_latent),
    }


LAYER_GROUPS: dict[str, range] = layer_groups(18)


def group_strengths(
    strengths: Mapping[str, float] | float | Sequence[float] | Tensor, n_latent: int
) -> Tensor:
    """A per-layer strength vector `[n_latent]` from per-group values (missing groups = 0),
    one number for every layer, or per-layer values already."""
    if isinstance(strengths, Mapping):
        unknown = set(strengths) - set(GROUP_NAMES)
        if unknown:
            raise ValueError(f"unknown layer group(s) {sorted(unknown)}; groups are {GROUP_NAMES}")
        per_layer = torch.zeros(n_latent)
        for group, layers in layer_groups(n_latent).items():
            per_layer[list(layers)] = float(strengths.get(group, 0.0))
        return per_layer
    values = torch.as_tensor(strengths, dtype=torch.float32)
    if values.ndim == 0:
        return values.expand(n_latent).clone()
    if values.shape != (n_latent,):
        raise ValueError(f"per-layer strengths must have {n_latent} values, got {list(values.shape)}")
    return values.clone()


# ----------------------------------------------------------------------------- the manipulations


def _lerp_layers(start: Tensor, end: Tensor, amount: Tensor) -> Tensor:
    """`start_l + amount_l·(end_l − start_l)` for W+ codes `[..., L, 512]` and `amount` `[L]`."""
    return start + amount.to(start).reshape(-1, 1) * (end - start)


def e4e_strict_prior(
    w_plus: Tensor, w_avg: Tensor, strengths: Mapping[str, float] | float | Sequence[float] | Tensor
) -> Tensor:
    """`w_l + β_g(l)·(w̄ − w_l)`: the e4e code pulled toward the average face per layer group."""
    n_latent = w_plus.shape[-2]
    return _lerp_layers(w_plus, w_avg.to(w_plus).expand_as(w_plus), group_strengths(strengths, n_latent))


def encoder_truncation(
    w_e4e: Tensor, w_s: Tensor, strengths: Mapping[str, float] | float | Sequence[float] | Tensor
) -> Tensor:
    """`w_e4e + a·(w_s − w_e4e)` per layer (SFHQ part 3): truncation toward the e4e code of the sample.

    `w_e4e` is W+ `[..., L, 512]`; `w_s` is W `[512]` (broadcast to every layer) or W+.
    `strengths` = a per group (`{'coarse': .., 'middle': .., 'fine': ..}`), one number, or per layer.
    """
    n_latent = w_e4e.shape[-2]
    w_s = w_s.to(w_e4e)
    if w_s.shape[-2:] != w_e4e.shape[-2:]:
        w_s = w_s.reshape(*([1] * (w_e4e.ndim - 1)), -1)  # W → every layer
    return _lerp_layers(w_e4e, w_s.expand_as(w_e4e), group_strengths(strengths, n_latent))


def style_mix(
    generator: Generator, w_plus: Tensor, seed: int, start: int, strength: float = 1.0, psi: float = 0.7
) -> Tensor:
    """Layers `start…` moved toward a donor `w̄ + ψ·(mapping(z_seed) − w̄)` by `strength`."""
    if not 0 <= start < generator.n_latent:
        raise ValueError(
            f"style_mix: parameter 'start' must be in [0, {generator.n_latent - 1}], got {start}"
        )
    z = z_from_seed(seed, generator.style_dim)[None].to(generator.device)
    with torch.no_grad():
        donor = generator.truncate(generator.mapping(z), psi)[0]
    amount = torch.zeros(generator.n_latent)
    amount[start:] = strength
    return _lerp_layers(w_plus, donor.to(w_plus).expand_as(w_plus), amount)


def pixel_multiscale_loss(image: Tensor, target: Tensor, levels: int = 3) -> Tensor:
    """Mean over scales 1, 1/2, 1/4, … of the mean squared pixel difference.

    The coarse scales weigh colours, lighting and background (what `low_prior` should keep from the
    inspiration); the full scale keeps edges from drifting.
    """
    total = image.new_zeros(())
    for level in range(levels):
        if level:
            image, target = F.avg_pool2d(image, 2), F.avg_pool2d(target, 2)
        total = total + F.mse_loss(image, target)
        if min(image.shape[-2:]) < 2:
            return total / (level + 1)
    return total / levels


def per_sample_multiscale_loss(image: Tensor, target: Tensor, levels: int = 3) -> Tensor:
    """`pixel_multiscale_loss` of each sample of a batch: `[B]` (sample i's value is exactly
    `pixel_multiscale_loss(image[i:i+1], target[i:i+1])`)."""
    total = image.new_zeros(image.shape[0])
    for level in range(levels):
        if level:
            image, target = F.avg_pool2d(image, 2), F.avg_pool2d(target, 2)
        total = total + F.mse_loss(image, target, reduction="none").mean(dim=(1, 2, 3))
        if min(image.shape[-2:]) < 2:
            return total / (level + 1)
    return total / levels


def _resize(image: Tensor, size: int) -> Tensor:
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    if image.shape[-1] > size:
        return F.interpolate(image, size=(size, size), mode="area")
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)


def _target_batch(target: Tensor) -> Tensor:
    if not isinstance(target, Tensor) or not target.is_floating_point():
        raise ValueError("target must be a float image tensor [3, H, W] or [1, 3, H, W] in [-1, 1]")
    if target.ndim == 3:
        target = target[None]
    if target.ndim != 4 or target.shape[:2] != (1, 3):
        raise ValueError(f"target must have shape [3, H, W] or [1, 3, H, W], got {list(target.shape)}")
    if not bool(torch.isfinite(target).all()):
        raise ValueError("target contains NaN or infinite values")
    return target


def identity_loss(encoder: Encoder) -> ReconstructionLoss:
    """The identity term alone: `ReconstructionLoss.for_encoder` with its pixel and multi-scale
    terms weighted 0. `loss(image, target)` is the mean over the batch of each sample's
    normalised feature distance on the e4e backbone; the target's features are computed on the
    first call and reused while the target tensor is the same (one optimisation)."""
    return ReconstructionLoss.for_encoder(encoder, pixel_weight=0.0, multiscale_weight=0.0, levels=0)


def low_prior(
    generator: Generator,
    w_init: Tensor,
    target: Tensor,
    steps: int = 30,
    lr: float = 0.01,
    prior_weight: float = 0.1,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    loss_size: int = 256,
    identity: Encoder | None = None,
    identity_weight: float = 1.0,
) -> Tensor:
    """Refine a W+ code toward `target` by latent optimisation (`steps` Adam steps, rate `lr`).

    Minimises `loss_fn(G(v), target) + prior_weight·mean((v − w_init)²)` starting at `v = w_init`.
    Images are compared at `loss_size` px: G renders only up to that scale (its intermediate RGB
    output), so the layers of finer scales keep their `w_init` values. `target` is `[3, H, W]` or
    `[1, 3, H, W]` in [-1, 1] (any size: resized). `loss_fn(image, target) -> scalar` defaults to
    `pixel_multiscale_loss`. Returns the refined code with `w_init`'s shape. Deterministic:
    noise is the checkpoint's constant noise and `seed` seeds torch's RNG for any randomness in
    `loss_fn`. The generator's weights are not touched. With `identity` (an e4e encoder on the
    generator's device) and `identity_weight` > 0, `identity_weight · identity_loss` is added.
    """
    loss_fn = loss_fn or pixel_multiscale_loss
    id_loss = identity_loss(identity) if identity is not None and identity_weight > 0 else None
    single = w_init.ndim == 2
    start = (w_init[None] if single else w_init).detach().to(generator.device, torch.float32)
    compare_size = min(int(loss_size), generator.size)
    # The smallest synthesis scale that covers the comparison size (the layers above it get no gradient
    # and keep the e4e values: they only add detail finer than the loss can see).
    render_size = min(generator.size, 2 ** max(2, math.ceil(math.log2(compare_size))))
    # Autograd must work even when the caller runs in inference mode (the service does).
    with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        start = start.clone()
        goal = _resize(
            _target_batch(target).detach().to(generator.device, torch.float32).clone(), compare_size
        )
        latent = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([latent], lr=lr)
        for _ in range(int(steps)):
            optimizer.zero_grad(set_to_none=True)
            # Render only up to the comparison size: the intermediate RGB output of that scale.
            image = generator.synthesize(latent, noise_mode="const", max_resolution=render_size)
            image = _resize(image, compare_size)
            loss = loss_fn(image, goal.expand_as(image)) + prior_weight * (latent - start).square().mean()
            if id_loss is not None:
                loss = loss + identity_weight * id_loss(image, goal)
            loss.backward()
            optimizer.step()
        refined = latent.detach()
    return refined[0] if single else refined


def low_prior_batch(
    generator: Generator,
    w_init: Tensor,
    targets: Sequence[Tensor],
    steps: int = 30,
    lr: float = 0.01,
    prior_weight: float | Sequence[float] = 0.1,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    loss_size: int = 256,
    identity: Encoder | None = None,
    identity_weight: float = 1.0,
) -> Tensor:
    """`low_prior` for a batch of codes `[B, L, 512]` and their own targets, in one optimisation.

    Every step renders the whole batch once (one forward and one backward pass instead of B) and
    takes one Adam step on the batch. The loss is the *sum* of the per-sample losses (each with its
    own `prior_weight`), so sample i's gradient is exactly its own loss's gradient, and Adam being
    elementwise, each code follows the trajectory `low_prior` gives it alone (up to float rounding
    of batched kernels). `loss_fn(image, target) -> scalar` is applied to each sample's `[1, ...]`
    slices; the default loss is computed per sample in one go. The RNG is seeded with `seed` (only
    a random `loss_fn` draws from it: callers batch codes of different seeds only with the default
    loss). The identity term (with `identity` and `identity_weight` > 0) has one weight for the
    whole batch (callers batch only codes of equal `identity_weight`); the batch mean it returns
    is scaled by B, so it too is the sum of the per-sample terms, and the targets' features are
    computed once for the whole optimisation.
    """
    if w_init.ndim != 3:
        raise ValueError(f"w_init must be a batch of W+ codes [B, L, 512], got {list(w_init.shape)}")
    batch = w_init.shape[0]
    if len(targets) != batch:
        raise ValueError(f"{batch} codes but {len(targets)} targets")
    weights = torch.as_tensor(prior_weight, dtype=torch.float32).reshape(-1)
    if weights.numel() not in (1, batch):
        raise ValueError(f"prior_weight must be one number or one per code, got {weights.numel()}")
    start = w_init.detach().to(generator.device, torch.float32)
    compare_size = min(int(loss_size), generator.size)
    render_size = min(generator.size, 2 ** max(2, math.ceil(math.log2(compare_size))))
    with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        start = start.clone()
        goal = torch.cat(
            [
                _resize(_target_batch(t).detach().to(generator.device, torch.float32).clone(), compare_size)
                for t in targets
            ]
        )
        weights = weights.to(generator.device).expand(batch).clone()
        id_loss = identity_loss(identity) if identity is not None and identity_weight > 0 else None
        latent = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([latent], lr=lr)
        for _ in range(int(steps)):
            optimizer.zero_grad(set_to_none=True)
            image = _resize(
                generator.synthesize(latent, noise_mode="const", max_resolution=render_size), compare_size
            )
            if loss_fn is None:
                fit = per_sample_multiscale_loss(image, goal)
            else:
                fit = torch.stack([loss_fn(image[i : i + 1], goal[i : i + 1]) for i in range(batch)])
            prior = (latent - start).square().mean(dim=(1, 2))
            total = (fit + weights * prior).sum()
            if id_loss is not None:
                total = total + identity_weight * batch * id_loss(image, goal)
            total.backward()
            optimizer.step()
        return latent.detach()


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Strategy:
    """A strategy's schema (`services.common.strategies`: parameters as data) and the code that builds it."""

    schema: StrategySchema
    build: Callable[[_Inputs, Mapping[str, float], int], Tensor]

    @property
    def name(self) -> str:
        return self.schema.name

    @property
    def formula(self) -> str:
        return self.schema.formula

    @property
    def params(self) -> Mapping[str, ParamSpec]:
        return self.schema.params

    @property
    def needs_target(self) -> bool:
        return self.schema.needs_target

    @property
    def needs_sampled_w(self) -> bool:
        return self.schema.needs_sampled_w


@dataclass(frozen=True)
class _Inputs:
    """Everything a strategy may read, for one candidate set."""

    generator: Generator
    w_plus: Tensor  # [L, 512]
    target: Tensor | None
    sampled_w: Tensor | None
    loss_fn: LossFn | None
    identity: Encoder | None = None


def _build_strict(inputs: _Inputs, params: Mapping[str, float], seed: int) -> Tensor:
    return e4e_strict_prior(inputs.w_plus, inputs.generator.latent_avg, {g: params[g] for g in GROUP_NAMES})


def _build_low_prior(inputs: _Inputs, params: Mapping[str, float], seed: int) -> Tensor:
    assert inputs.target is not None
    return low_prior(
        inputs.generator,
        inputs.w_plus,
        inputs.target,
        steps=int(params["steps"]),
        lr=params["lr"],
        prior_weight=params["prior_weight"],
        loss_fn=inputs.loss_fn,
        seed=seed,
        loss_size=int(params["loss_size"]),
        identity=inputs.identity,
        identity_weight=params["identity_weight"],
    )


def _build_style_mix(inputs: _Inputs, params: Mapping[str, float], seed: int) -> Tensor:
    return style_mix(
        inputs.generator, inputs.w_plus, seed, int(params["start"]), params["strength"], params["psi"]
    )


def _build_encoder_truncation(inputs: _Inputs, params: Mapping[str, float], seed: int) -> Tensor:
    assert inputs.sampled_w is not None
    return encoder_truncation(inputs.w_plus, inputs.sampled_w, {g: params[g] for g in GROUP_NAMES})


_BUILDERS = {
    "e4e_strict_prior": _build_strict,
    "low_prior": _build_low_prior,
    "style_mix": _build_style_mix,
    "encoder_truncation": _build_encoder_truncation,
}
STRATEGIES: dict[str, Strategy] = {name: Strategy(SCHEMAS[name], build) for name, build in _BUILDERS.items()}


@dataclass(frozen=True)
class StrategySpec:
    """A named strategy with its parameters and seed. Validated on construction (`ValueError` naming
    the bad strategy, parameter or seed); `resolved` fills in the defaults."""

    name: str
    params: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.name!r} (known: {', '.join(STRATEGIES)})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < MAX_SEED:
            raise ValueError(
                f"strategy {self.name!r}: seed must be an integer in [0, 2**64), got {self.seed!r}"
            )
        checked = check_params(self.name, self.params)
        object.__setattr__(self, "params", checked)

    def resolved(self, n_latent: int | None = None) -> StrategySpec:
        """The same spec with every parameter present (defaults filled in, for a generator with
        `n_latent` layers when given — a few defaults depend on it)."""
        strategy = STRATEGIES[self.name]
        return StrategySpec(
            self.name,
            {
                key: self.params.get(key, spec.default_value(n_latent))
                for key, spec in strategy.params.items()
            },
            self.seed,
        )

    def record(self) -> dict[str, Any]:
        """JSON-friendly provenance: name, every parameter's value (whole-number ones as int), seed."""
        specs = STRATEGIES[self.name].params
        params = {
            key: int(value) if specs[key].integer else value for key, value in self.resolved().params.items()
        }
        return {"name": self.name, "params": params, "seed": self.seed}


@dataclass(frozen=True)
class CandidateResult:
    """One candidate: the resolved spec that made it, its image `[3, S, S]` (float, ~[-1, 1]) and W+ code `[L, 512]`."""

    strategy: StrategySpec
    image: Tensor
    latent: Tensor


def _w_plus_code(generator: Generator, value: Tensor, what: str) -> Tensor:
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise ValueError(f"{what} must be a float tensor")
    if value.ndim == 3 and value.shape[0] == 1:
        value = value[0]
    if value.shape != (generator.n_latent, generator.style_dim):
        raise ValueError(
            f"{what} must be a W+ code [{generator.n_latent}, {generator.style_dim}], got {list(value.shape)}"
        )
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{what} contains NaN or infinite values")
    return value.detach().to(generator.device, torch.float32)


def _sampled_w(generator: Generator, value: Tensor) -> Tensor:
    if (
        isinstance(value, Tensor)
        and value.ndim in (1, 2)
        and value.shape[-1] == generator.style_dim
        and value.numel() == generator.style_dim
    ):
        if not bool(torch.isfinite(value).all()):
            raise ValueError("sampled_w contains NaN or infinite values")
        return value.detach().reshape(generator.style_dim).to(generator.device, torch.float32)
    return _w_plus_code(generator, value, "sampled_w")


def _prepare(
    generator: Generator,
    w_plus: Tensor,
    strategies: Sequence[StrategySpec | Mapping[str, Any]],
    target: Tensor | None,
    sampled_w: Tensor | None,
    loss_fn: LossFn | None,
    identity: Encoder | None = None,
) -> tuple[_Inputs, list[StrategySpec]]:
    """Checked inputs and resolved specs of one candidate set (`ValueError` naming the problem)."""
    code = _w_plus_code(generator, w_plus, "w_plus")
    specs = [spec if isinstance(spec, StrategySpec) else StrategySpec(**spec) for spec in strategies]
    for spec in specs:
        strategy = STRATEGIES[spec.name]
        if strategy.needs_target and target is None:
            raise ValueError(f"strategy {spec.name!r} needs a target image")
        if strategy.needs_sampled_w and sampled_w is None:
            raise ValueError(f"strategy {spec.name!r} needs sampled_w (the psi > 1 sample's w)")
    inputs = _Inputs(
        generator=generator,
        w_plus=code,
        target=_target_batch(target) if target is not None else None,
        sampled_w=_sampled_w(generator, sampled_w) if sampled_w is not None else None,
        loss_fn=loss_fn,
        identity=identity,
    )
    resolved = [spec.resolved(generator.n_latent) for spec in specs]
    if identity is None:  # no backbone: low_prior is pixel + multi-scale, and its record says so
        resolved = [
            StrategySpec(spec.name, {**spec.params, "identity_weight": 0.0}, spec.seed)
            if spec.name == "low_prior"
            else spec
            for spec in resolved
        ]
    return inputs, resolved


def candidate_latents(
    generator: Generator,
    w_plus: Tensor,
    strategies: Sequence[StrategySpec | Mapping[str, Any]],
    target: Tensor | None = None,
    sampled_w: Tensor | None = None,
    loss_fn: LossFn | None = None,
    identity: Encoder | None = None,
) -> list[tuple[StrategySpec, Tensor]]:
    """The W+ code `[L, 512]` of each candidate, with its resolved spec (no images yet).

    Split from `make_candidates` so that a worker can synthesize the candidates of many jobs
    in one batch. Arguments as there.
    """
    inputs, resolved = _prepare(generator, w_plus, strategies, target, sampled_w, loss_fn, identity)
    return [(spec, STRATEGIES[spec.name].build(inputs, spec.params, spec.seed).detach()) for spec in resolved]


@dataclass(frozen=True)
class CandidateJob:
    """One candidate set of a batch: a W+ code, its strategies and what they need (as in `candidate_latents`)."""

    w_plus: Tensor
    strategies: Sequence[StrategySpec | Mapping[str, Any]]
    target: Tensor | None = None
    sampled_w: Tensor | None = None


def candidate_latents_batch(
    generator: Generator,
    jobs: Sequence[CandidateJob],
    loss_fn: LossFn | None = None,
    max_batch: int = 8,
    identity: Encoder | None = None,
) -> list[list[tuple[StrategySpec, Tensor]] | ValueError]:
    """`candidate_latents` of many candidate sets, with their `low_prior` codes refined together.

    The `low_prior` candidates of all jobs that share `steps`, `lr`, `loss_size` and
    `identity_weight` (and, with a custom `loss_fn`, the seed) run as one `low_prior_batch` of up to `max_batch` codes; each gets
    the code it would get alone (within float rounding). A job whose inputs are invalid gets its
    `ValueError` in its place; the others are unaffected.
    """
    outcomes: list[list[tuple[StrategySpec, Tensor]] | ValueError] = []
    codes: dict[tuple[int, int], Tensor] = {}
    refine: dict[tuple[Any, ...], list[tuple[int, int, _Inputs, StrategySpec]]] = {}
    prepared: dict[int, list[StrategySpec]] = {}
    for j, job in enumerate(jobs):
        later: list[tuple[tuple[Any, ...], tuple[int, int, _Inputs, StrategySpec]]] = []
        now: dict[tuple[int, int], Tensor] = {}
        try:
            inputs, resolved = _prepare(
                generator, job.w_plus, job.strategies, job.target, job.sampled_w, loss_fn, identity
            )
            for k, spec in enumerate(resolved):
                if spec.name == "low_prior":
                    p = spec.params
                    seed = spec.seed if loss_fn is not None else 0
                    key = (p["steps"], p["lr"], p["loss_size"], p["identity_weight"], seed)
                    later.append((key, (j, k, inputs, spec)))
                else:
                    now[j, k] = STRATEGIES[spec.name].build(inputs, spec.params, spec.seed).detach()
        except ValueError as error:
            outcomes.append(error)
            continue
        codes.update(now)
        for key, member in later:
            refine.setdefault(key, []).append(member)
        prepared[j] = resolved
        outcomes.append([])
    for members in refine.values():
        for first in range(0, len(members), max(1, max_batch)):
            chunk = members[first : first + max(1, max_batch)]
            spec = chunk[0][3]
            refined = low_prior_batch(
                generator,
                torch.stack([inputs.w_plus for _, _, inputs, _ in chunk]),
                [inputs.target for _, _, inputs, _ in chunk if inputs.target is not None],
                steps=int(spec.params["steps"]),
                lr=spec.params["lr"],
                prior_weight=[member.params["prior_weight"] for _, _, _, member in chunk],
                loss_fn=loss_fn,
                seed=spec.seed,
                loss_size=int(spec.params["loss_size"]),
                identity=identity,
                identity_weight=spec.params["identity_weight"],
            )
            for (j, k, _, _), code in zip(chunk, refined, strict=True):
                codes[j, k] = code
    for j, resolved in prepared.items():
        outcomes[j] = [(spec, codes[j, k]) for k, spec in enumerate(resolved)]
    return outcomes


def make_candidates(
    generator: Generator,
    w_plus: Tensor,
    strategies: Sequence[StrategySpec | Mapping[str, Any]],
    target: Tensor | None = None,
    sampled_w: Tensor | None = None,
    loss_fn: LossFn | None = None,
    batch_size: int = 8,
    identity: Encoder | None = None,
) -> list[CandidateResult]:
    """One candidate per strategy, in order. `w_plus` is the e4e code `[L, 512]` (or `[1, L, 512]`);
    `target` (the aligned inspiration image `[3, H, W]` in [-1, 1], for `low_prior`) and
    `sampled_w` (the psi > 1 sample's w, `[512]` or W+, for `encoder_truncation`) are needed only
    by those strategies; `loss_fn` replaces low_prior's default loss; `identity` (the e4e encoder)
    adds low_prior's identity term. Images are synthesized
    together in batches of `batch_size` with the checkpoint's constant noise.
    """
    pairs = candidate_latents(generator, w_plus, strategies, target, sampled_w, loss_fn, identity)
    results: list[CandidateResult] = []
    with torch.no_grad():
        for first in range(0, len(pairs), batch_size):
            chunk = pairs[first : first + batch_size]
            images = generator.synthesize(torch.stack([latent for _, latent in chunk]), noise_mode="const")
            results += [
                CandidateResult(spec, image, latent)
                for (spec, latent), image in zip(chunk, images, strict=True)
            ]
    return results
