"""The contract between the gateway and the stage workers: every stage's payload and output, typed.

The gateway builds payloads with these classes (`gateway/pipeline.py`) and reads outputs with
them; each stage handler parses its payload with them and returns its output as one. A payload
that does not match (a missing key, a wrong type, an unknown field) is refused with
`InvalidInput` naming the stage and the field, so a bad task fails its own item only.

Values in payloads and outputs are JSON: blob *keys* (never bytes), numbers, strings, lists.
Arrays travel as `.npy` blobs. docs/architecture.md has the same table in prose.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from services.common.errors import InvalidInput

FEATURE_KEY = "CLIP_ViTL_14@336"  # SFHQ's pickle key for CLIP ViT-L/14@336 features
SFHQ_DEDUP_THRESHOLD = 0.92  # SFHQ: no two released images have a CLIP cosine above this
MAX_CANDIDATES = 16  # strategies (candidates) per item


class ItemState(StrEnum):
    """Where an item of a job is. Terminal: every state but PENDING and EXPANDED."""

    PENDING = "pending"  # a task of it is queued or running
    EXPANDED = "expanded"  # an input whose candidates are now items of their own
    CURATED = "curated"  # passed the taste model; waits for the job's dataset-wide near-duplicate pass
    REVIEW = "review"  # the taste model is unsure: waits for a person (ReviewQueue / Review)
    ACCEPTED = "accepted"  # curated in; being annotated and written
    WRITTEN = "written"  # its files are in the dataset
    REJECTED_TASTE = "rejected_taste"
    REJECTED_DUPLICATE = "rejected_duplicate"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Decision(StrEnum):
    """The curate stage's verdict on a candidate."""

    ACCEPTED = "accepted"
    REVIEW = "review"  # between the model's two thresholds: a person decides
    REJECTED_TASTE = "rejected_taste"
    REJECTED_DUPLICATE = "rejected_duplicate"


_list_adapters: dict[type, TypeAdapter[Any]] = {}


class _Contract(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    what: ClassVar[str] = "payload"

    @classmethod
    def parse(cls, data: Any, stage: str = "") -> Self:
        """Validate a dict; InvalidInput naming the stage and every bad field otherwise."""
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            problems = "; ".join(
                f"'{'.'.join(str(part) for part in issue['loc']) or '(root)'}': {issue['msg']}"
                for issue in error.errors()[:5]
            )
            where = f"{stage} {cls.what}" if stage else cls.what
            raise InvalidInput(f"{where} is invalid: {problems}") from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def validate_many(cls, rows: list[dict[str, Any]], stage: str = "") -> list[dict[str, Any]]:
        """Check many dicts in one pass of pydantic-core (a new job's first tasks); returns them as
        their JSON form. InvalidInput names the first bad row."""
        adapter = _list_adapters.get(cls)
        if adapter is None:
            adapter = _list_adapters[cls] = TypeAdapter(list[cls])  # type: ignore[valid-type]
        try:
            return adapter.dump_python(adapter.validate_python(rows), mode="json")
        except ValidationError as error:
            issue = error.errors()[0]
            where = f"{stage} {cls.what}" if stage else cls.what
            raise InvalidInput(
                f"{where} {issue['loc'][0]} is invalid: {issue['loc'][1:]}: {issue['msg']}"
            ) from None


class Payload(_Contract):
    what: ClassVar[str] = "payload"


class StageOutput(_Contract):
    what: ClassVar[str] = "output"
    # Stages that load checkpoints say which ones: {role: {checkpoint, file, sha256, random_weights, ...}}.
    provenance: dict[str, dict[str, Any]] = Field(default_factory=dict)


BlobKey = str


# ---- diffuse (generator) ------------------------------------------------------------------------

MAX_PROMPT_CHARS = 1000  # CLIP reads 77 tokens; a longer prompt is a mistake, not a richer one
DIFFUSION_PIPELINES = (
    "stable-diffusion-2-1",
    "stable-diffusion-v1-4",
)  # registry names; the first is the default


class DiffusePayload(Payload):
    """One Stable Diffusion image: everything needed to make it again."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    seed: int = Field(ge=0, lt=2**64)
    guidance_scale: float = Field(7.5, ge=0.0, le=50.0, allow_inf_nan=False)
    steps: int = Field(30, ge=1, le=500)
    width: int = Field(0, ge=0, le=2048, multiple_of=8)  # 0: the pipeline's own size
    height: int = Field(0, ge=0, le=2048, multiple_of=8)
    pipeline: Literal["stable-diffusion-2-1", "stable-diffusion-v1-4"] = "stable-diffusion-2-1"


class DiffuseOutput(StageOutput):
    image: BlobKey  # the generated image (lossless); the align stage finds its face
    width: int
    height: int


# ---- align (annotator) --------------------------------------------------------------------------


class AlignPayload(Payload):
    input: BlobKey = Field(min_length=1)  # the source image's blob key or URI
    output_size: int = Field(1024, ge=16, le=4096)
    transform_size: int | None = Field(None, ge=16, le=8192)


class AlignOutput(StageOutput):
    aligned: BlobKey  # the aligned face (lossless)
    landmarks68: list[list[float]]  # in the aligned image
    source_landmarks68: list[list[float]]  # in the source image
    transform: list[list[float]]  # 2x3 affine map, source pixel -> aligned pixel
    face_count: int


# ---- encode (encoder) ---------------------------------------------------------------------------


class EncodePayload(Payload):
    image: BlobKey = Field(min_length=1)  # an aligned face


class EncodeOutput(StageOutput):
    latent: BlobKey  # float32 [n_latent, 512] W+ code


# ---- sample / synthesize (generator) ------------------------------------------------------------


class SamplePayload(Payload):
    seed: int = Field(ge=0, lt=2**64)
    psi: float = Field(ge=0.0, le=4.0, allow_inf_nan=False)


class SampleOutput(StageOutput):
    w: BlobKey  # float32 [n_latent, 512]: the truncated sample as W+
    image: BlobKey


class StrategyRecord(_Contract):
    """One candidate's recipe: a strategy name, its numeric parameters and its seed."""

    what: ClassVar[str] = "strategy"
    name: str = Field(min_length=1, max_length=64)
    params: dict[str, float] = Field(default_factory=dict)
    seed: int = Field(0, ge=0, lt=2**64)


class SynthesizePayload(Payload):
    latent: BlobKey = Field(min_length=1)
    strategies: list[StrategyRecord] = Field(min_length=1, max_length=MAX_CANDIDATES)
    target: BlobKey | None = None  # the aligned inspiration (low_prior fits it)
    sampled_w: BlobKey | None = None  # part 3: the psi > 1 sample the encoder corrects


class Candidate(StageOutput):
    image: BlobKey
    latent: BlobKey
    strategy: StrategyRecord


class SynthesizeOutput(StageOutput):
    candidates: list[Candidate]


# ---- embed / curate (search) ----------------------------------------------------------------------


class EmbedPayload(Payload):
    image: BlobKey = Field(min_length=1)


class EmbedOutput(StageOutput):
    features: BlobKey  # float32 [dim], raw (not normalised), as SFHQ's pickles hold them
    feature_key: str = FEATURE_KEY
    dim: int
    # SFHQ_EXTRA_FEATURES: pickle key (e.g. "ConvNext_XL_Imagenet21k") -> float32 [dim] blob
    extra_features: dict[str, BlobKey] = Field(default_factory=dict, max_length=16)


class CuratePayload(Payload):
    features: BlobKey = Field(min_length=1)
    image: BlobKey = Field(min_length=1)
    taste_model: str = Field("", max_length=128)  # "" = no taste filter
    owner: str = Field("", max_length=32)  # the job's user: the taste model is theirs, and so is the item
    # None: the taste model's own high / low threshold
    accept_threshold: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    reject_threshold: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    dataset_id: str = Field("", max_length=64)  # recorded with the item in the index (dataset-wide dedup)
    # SFHQ_EXTRA_FEATURES: {pickle key: [dim] blob}, kept with the item for taste models trained on them
    extra_features: dict[str, BlobKey] = Field(default_factory=dict, max_length=16)
    # None = SFHQ's 0.92; negative = no near-duplicate check (it runs dataset-wide, after curate)
    dedup_threshold: float | None = Field(None, lt=1.0, allow_inf_nan=False)

    @property
    def effective_dedup_threshold(self) -> float:
        return SFHQ_DEDUP_THRESHOLD if self.dedup_threshold is None else self.dedup_threshold


class CurateOutput(StageOutput):
    decision: Decision = Field(strict=False)  # stored as its JSON string
    taste_score: float | None = None
    duplicate_of: str | None = None  # the item id of the copy that stays
    similarity: float | None = None


# ---- annotate (annotator) -----------------------------------------------------------------------


class AnnotatePayload(Payload):
    image: BlobKey = Field(min_length=1)
    features: BlobKey = Field(min_length=1)
    feature_key: str = FEATURE_KEY
    stem: str = Field(min_length=1, max_length=200)  # SFHQ_pt<part>_<ordinal>
    dataset_uri: str = Field(min_length=1)
    image_size: int = Field(1024, ge=16, le=4096)
    jpeg_quality: int = Field(95, ge=1, le=100)
    working_size: int = Field(256, ge=64, le=1024)  # SFHQ parsed and placed landmarks at 256 px
    detect_faces: bool = False  # False: StyleGAN output, the face is where FFHQ puts it
    canonical_fallback: bool = True  # no detection: use FFHQ's canonical face box
    latent: BlobKey | None = None  # written to latents/ when given
    extra_features: dict[str, BlobKey] = Field(default_factory=dict, max_length=16)  # key -> [dim] blob
    # 256 -> 1024 px landmark mapping: "sfhq" (x * 4, as SFHQ) or "pixel_centres" ((x + 0.5) * 4 - 0.5)
    landmark_convention: Literal["sfhq", "pixel_centres"] = "sfhq"

    def batch_key(self) -> tuple[int, bool, bool, str]:
        """What annotate tasks parsed in one batch (one parser call) must share."""
        return self.working_size, self.detect_faces, self.canonical_fallback, self.landmark_convention


class AnnotateOutput(StageOutput):
    files: dict[str, str]  # kind -> path written in the dataset
    face_count: int
    fallback_points: int  # of the 110 points, how many used their geometric fallback
    pose: dict[str, float] | None = None  # {yaw, pitch, roll} in degrees (docs/landmarks.md, "Head pose")


PAYLOADS: dict[str, type[Payload]] = {
    "diffuse": DiffusePayload,
    "align": AlignPayload,
    "encode": EncodePayload,
    "sample": SamplePayload,
    "synthesize": SynthesizePayload,
    "embed": EmbedPayload,
    "curate": CuratePayload,
    "annotate": AnnotatePayload,
}
OUTPUTS: dict[str, type[StageOutput]] = {
    "diffuse": DiffuseOutput,
    "align": AlignOutput,
    "encode": EncodeOutput,
    "sample": SampleOutput,
    "synthesize": SynthesizeOutput,
    "embed": EmbedOutput,
    "curate": CurateOutput,
    "annotate": AnnotateOutput,
}
