"""The e4e encoder behind `low_prior`'s identity term, in the generator process (wiring).

The latent optimisation runs where the generator is (docs/pipeline.md, "Identity-aware
low_prior"): each step renders G and back-propagates through it, so the e4e backbone is loaded
next to it, with the encoder service's own loader (`services.encoder.service.encoder_model`: the
registered `e4e-ffhq-encode` checkpoint, strict, `torch.load(weights_only=True)`, random weights
only when the registry is marked random). Without that checkpoint `low_prior` is pixel +
multi-scale only, and its recorded strategy says `identity_weight: 0`.
"""

from __future__ import annotations

import logging

from services.common.config import Settings
from services.common.model_holder import LazyModel
from services.common.weights import WeightsRegistry
from services.encoder.model import CHECKPOINT_NAME as E4E_CHECKPOINT
from services.encoder.model import Encoder
from services.encoder.service import EncoderModel, encoder_model
from services.generator.engine import wants_identity
from services.generator.manipulate import CandidateJob
from services.generator.model import Generator

log = logging.getLogger(__name__)

__all__ = ["identity_model", "identity_for", "identity_provenance"]


def identity_model(
    settings: Settings, registry: WeightsRegistry | None = None, *, preload: bool = False
) -> EncoderModel | None:
    """The e4e encoder whose IR-SE50 backbone gives `low_prior` its identity term, loaded as the
    encoder service loads it (now, with `preload`); None (with a warning) when the e4e checkpoint
    is not registered."""
    registry = registry or WeightsRegistry(settings.weights_dir)
    if not registry.has(E4E_CHECKPOINT):
        log.warning(
            "generator: %s is not registered: low_prior runs without its identity term "
            "(pixel + multi-scale only; `sfhq weights download %s` adds it)",
            E4E_CHECKPOINT,
            E4E_CHECKPOINT,
        )
        return None
    model = encoder_model(settings, registry)
    if preload:
        model.preload()
    return model


def identity_for(identity: EncoderModel | None, jobs: list[CandidateJob]) -> Encoder | None:
    """The loaded e4e encoder when some `low_prior` candidate of `jobs` uses it (else None)."""
    return identity.get() if identity is not None and wants_identity(jobs) else None


def identity_provenance(model: LazyModel[Generator], identity: EncoderModel | None) -> dict[str, dict]:
    """The generator's provenance, plus the e4e checkpoint's when the identity term can use it."""
    record = model.provenance_record()
    return {**record, **identity.provenance_record()} if identity is not None else record
