"""The candidate strategies' parameters, as data: names, defaults, ranges (no torch here).

The generator (`services/generator/manipulate.py`) attaches the code that builds each strategy's
W+ code; the gateway checks a job's strategies against the same table at submit, so a misspelt
parameter (`corse` for `coarse`) is refused before any work starts instead of failing every item.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

GROUP_NAMES: tuple[str, ...] = ("coarse", "middle", "fine")


@dataclass(frozen=True)
class ParamSpec:
    """One strategy parameter: default and closed range; `integer` ones must be whole numbers.

    `default_for_layers(n_latent)`, when set, gives the default for a generator with that many layers.
    """

    default: float
    low: float
    high: float
    integer: bool = False
    help: str = ""
    default_for_layers: Callable[[int], float] | None = None

    def default_value(self, n_latent: int | None) -> float:
        if n_latent is not None and self.default_for_layers is not None:
            return float(self.default_for_layers(n_latent))
        return float(self.default)


@dataclass(frozen=True)
class StrategySchema:
    """A strategy's name, its formula (for people) and its parameters; what it needs as input."""

    name: str
    formula: str
    params: Mapping[str, ParamSpec]
    needs_target: bool = False  # the inspiration image (low_prior optimises toward it)
    needs_sampled_w: bool = False  # a psi > 1 sample's W (encoder_truncation)


def _group_params(default: float | tuple[float, ...], what: str | tuple[str, ...]) -> dict[str, ParamSpec]:
    defaults = default if isinstance(default, tuple) else (default,) * len(GROUP_NAMES)
    helps = what if isinstance(what, tuple) else tuple(f"{what} for the {g} layers" for g in GROUP_NAMES)
    return {
        group: ParamSpec(value, 0.0, 1.0, help=text)
        for group, value, text in zip(GROUP_NAMES, defaults, helps, strict=True)
    }


SCHEMAS: dict[str, StrategySchema] = {
    schema.name: schema
    for schema in (
        StrategySchema(
            "e4e_strict_prior",
            "w'_l = w_l + beta_g(l) * (w_avg - w_l)",
            _group_params(0.0, "pull toward w_avg"),
        ),
        StrategySchema(
            "low_prior",
            "w' = argmin_v loss(G(v), target) + identity_weight * d_id(G(v), target) + prior_weight * mean((v - w)^2), Adam from v = w",
            {
                "steps": ParamSpec(30, 0, 1000, integer=True, help="optimisation steps"),
                "lr": ParamSpec(0.01, 1e-5, 1.0, help="Adam learning rate"),
                "prior_weight": ParamSpec(0.1, 0.0, 1e4, help="weight of the pull toward the e4e code"),
                "loss_size": ParamSpec(
                    256, 8, 1024, integer=True, help="pixels at which images are compared"
                ),
                "identity_weight": ParamSpec(
                    1.0,
                    0.0,
                    100.0,
                    help="weight of the identity term (e4e IR-SE50 backbone features); 0 = pixel + multi-scale only",
                ),
            },
            needs_target=True,
        ),
        StrategySchema(
            "style_mix",
            "w'_l = w_l + strength * (donor - w_l) for l >= start, donor = w_avg + psi * (mapping(z_seed) - w_avg)",
            {
                "start": ParamSpec(
                    8,
                    0,
                    17,
                    integer=True,
                    help="first layer taken from the donor (default: the first fine layer, 8)",
                    # Generators under 9 layers (< 64 px) have no fine layers: mix the last one.
                    default_for_layers=lambda n_latent: min(8, n_latent - 1),
                ),
                "strength": ParamSpec(1.0, 0.0, 1.0, help="how far the layers move toward the donor"),
                "psi": ParamSpec(0.7, 0.0, 2.0, help="truncation of the donor sample"),
            },
        ),
        StrategySchema(
            "encoder_truncation",
            "w'_l = w_e4e,l + a_g(l) * (w_s,l - w_e4e,l)",
            _group_params(
                (0.6, 0.5, 0.3),
                (
                    "a for the coarse layers (pose, face shape)",
                    "a for the middle layers (features, hair style)",
                    "a for the fine layers (colours, texture: most artifacts)",
                ),
            ),
            needs_sampled_w=True,
        ),
    )
}


def check_param(strategy: str, key: str, value: Any, spec: ParamSpec) -> float:
    """`value` as a float if it suits `spec`; ValueError naming the strategy and parameter otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"strategy {strategy!r}: parameter {key!r} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"strategy {strategy!r}: parameter {key!r} must be finite, got {value!r}")
    if not spec.low <= number <= spec.high:
        raise ValueError(
            f"strategy {strategy!r}: parameter {key!r} must be in [{spec.low:g}, {spec.high:g}], got {number:g}"
        )
    if spec.integer and number != int(number):
        raise ValueError(f"strategy {strategy!r}: parameter {key!r} must be a whole number, got {number:g}")
    return number


def check_params(strategy: str, params: Mapping[str, Any]) -> dict[str, float]:
    """Every parameter checked against the strategy's table (ValueError naming the first bad one)."""
    schema = SCHEMAS.get(strategy)
    if schema is None:
        raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(SCHEMAS)})")
    checked: dict[str, float] = {}
    for key, value in dict(params).items():
        spec = schema.params.get(key)
        if spec is None:
            raise ValueError(
                f"strategy {strategy!r}: unknown parameter {key!r} (known: {', '.join(schema.params)})"
            )
        checked[key] = check_param(strategy, key, value, spec)
    return checked
