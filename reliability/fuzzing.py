"""Generated and mutated requests for every public RPC, and a sender that classifies the answers.

Shared by tests/integration/test_fuzz_rpcs.py (a few hundred examples, deterministic) and
reliability/fuzz.py (10,000+). A *case* is the serialized request bytes plus call metadata; it is
sent raw, so a case may be bytes no well-behaved client would ever produce. Four kinds:

* `generated`: a message built field by field from the proto descriptors, with hostile values
  where they matter: corrupt, truncated, bomb and oversized images; tensors with wrong shapes,
  dtypes, byte counts, NaN and infinities; huge and odd strings (paths, URLs, NUL, RTL marks);
  unknown enum numbers; extreme integers and floats; long repeated fields;
* `seed-field`: a valid request with one field replaced by such a value (reaches deep code);
* `mutated`: a valid request's bytes with flips, cuts, splices, huge lengths, deep nesting;
* `headers`: a valid request with giant, numerous, binary or duplicated metadata.

The contract under test: every answer is an explicit status that names the problem
(INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...) -- never UNKNOWN or INTERNAL -- and no
process dies or bloats.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import strategies as st
from PIL import Image

from sfhq.v1 import annotator_pb2, common_pb2, encoder_pb2, gateway_pb2, generator_pb2, search_pb2

FORBIDDEN_CODES = frozenset({"UNKNOWN", "INTERNAL"})
CLIENT_REJECTED = "CLIENT_REJECTED"  # the grpc client refused to send it (e.g. reserved metadata)
SERVICES = (
    ("gateway", gateway_pb2, "Gateway"),
    ("encoder", encoder_pb2, "Encoder"),
    ("generator", generator_pb2, "Generator"),
    ("annotator", annotator_pb2, "Annotator"),
    ("search", search_pb2, "Search"),
)
FD = pb_descriptor.FieldDescriptor


# ---- the RPCs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    process: str  # the cluster process serving it
    path: str  # "/sfhq.v1.Gateway/GetJob"
    request: type[Message]
    server_streaming: bool
    client_streaming: bool = False

    @property
    def name(self) -> str:  # "Gateway.GetJob"
        return self.path.rsplit("/", 2)[-2].split(".")[-1] + "." + self.path.rsplit("/", 1)[-1]


def public_rpcs() -> list[Rpc]:
    """Every method of every public service, from the generated descriptors (none can be forgotten)."""
    rpcs = []
    for process, module, service_name in SERVICES:
        service = module.DESCRIPTOR.services_by_name[service_name]
        for method in service.methods:
            rpcs.append(
                Rpc(
                    process,
                    f"/{service.full_name}/{method.name}",
                    message_factory.GetMessageClass(method.input_type),
                    method.server_streaming,
                    method.client_streaming,
                )
            )
    return rpcs


@dataclass(frozen=True)
class FuzzCase:
    rpc_path: str
    payload: bytes
    metadata: tuple[tuple[str, str | bytes], ...] = ()
    kind: str = "generated"
    expected: str = ""  # corpus cases may pin the one right answer (e.g. RESOURCE_EXHAUSTED)

    def digest(self) -> str:
        return hashlib.sha256(self.payload + repr(self.metadata).encode()).hexdigest()[:16]


@dataclass
class Environment:
    """What the generators know about the cluster under test: sizes, real ids, sample images."""

    n_latent: int = 10
    clip_dim: int = 32
    job_ids: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    blob_keys: list[str] = field(default_factory=list)  # real image blobs
    safe_root: str = "/nonexistent"  # where generated jobs may write (inside the cluster's data roots)
    face: bytes = b""  # a real face photo (JPEG)
    small_png: bytes = b""


# ---- images -------------------------------------------------------------------------------------


def _png(width: int, height: int, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 255, (height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * min(width, 64)) * min(height, 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _bomb_png() -> bytes:
    """A real 1-bit 20000x20000 PNG (400 MP) that is only a few tens of KB compressed."""
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, "PNG", optimize=False)
    return buffer.getvalue()


def _other_formats() -> list[bytes]:
    out = []
    for fmt, mode in (
        ("GIF", "P"),
        ("BMP", "RGB"),
        ("TIFF", "RGB"),
        ("WEBP", "RGB"),
        ("JPEG", "CMYK"),
        ("PNG", "I;16"),
        ("PNG", "LA"),
        ("ICO", "RGBA"),
        ("PPM", "RGB"),
    ):
        buffer = io.BytesIO()
        try:
            Image.new(mode, (17, 9)).save(buffer, fmt)
        except (OSError, KeyError, ValueError):
            continue
        out.append(buffer.getvalue())
    return out


_IMAGES: dict[str, Any] = {}


def image_corpus() -> dict[str, Any]:
    """Hostile and valid encoded images, built once."""
    if not _IMAGES:
        valid = _png(64, 64)
        _IMAGES.update(
            valid=valid,
            tiny=_png(1, 1),
            wide=_png(4000, 2, "L"),
            rgba=_png(48, 48, "RGBA"),
            truncated=valid[: len(valid) // 2],
            header_only=valid[:33],
            bomb=_bomb_png(),
            claims_huge=_png_header_claiming(100_000, 100_000),
            claims_zero=_png_header_claiming(0, 0),
            others=_other_formats(),
            text=b"GIF89a this is not really an image",
            npy=np.zeros(4, np.float32).tobytes(),
            zip=b"PK\x03\x04" + b"\x00" * 40,
            big=b"\xff\xd8\xff" + b"\x00" * (6 * 1024 * 1024),  # a 6 MB "JPEG" of zeros
        )
    return _IMAGES


def image_bytes(env: Environment) -> st.SearchStrategy[bytes]:
    images = image_corpus()
    fixed = [
        images[k]
        for k in (
            "valid",
            "tiny",
            "wide",
            "rgba",
            "truncated",
            "header_only",
            "bomb",
            "claims_huge",
            "claims_zero",
            "text",
            "npy",
            "zip",
            "big",
        )
    ]
    fixed += images["others"]
    if env.face:
        fixed.append(env.face)
    # drawn by index, for the same reason as the header sets
    pick = st.integers(0, len(fixed) - 1).map(fixed.__getitem__)
    return st.one_of(pick, st.binary(max_size=64), pick.flatmap(_mutate_bytes))


# ---- scalar values ------------------------------------------------------------------------------

NASTY_STRINGS = [
    "",
    " ",
    "\x00",
    "\x00abc",
    "a" * 129,
    "../../../../etc/passwd",
    "/etc/shadow",
    "file:///etc/passwd",
    "jobs/../../secrets",
    "C:\\Windows\\win.ini",
    "%s%n%x%d",
    "${jndi:ldap://127.0.0.1:9/a}",
    "'; DROP TABLE jobs; --",
    "\u202eevil",
    "\ufeff",
    "\U0001f642" * 50,
    "sfhq:job:*",
    "*",
    "0-0",
    "-1",
    "99999999999999999999",
    "NaN",
    "inf",
    "\r\n\r\n",
    "s3://bucket/key",
    "memory://x",
    "http://127.0.0.1:9/x",
    "gs://b/k",
    "SFHQ_pt1_00000000",
    "default",
    "default@1",
    "default@-1",
    "x@99999999999",
    "e4e_strict_prior",
    "low_prior",
    "style_mix",
    "encoder_truncation",
]
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


def any_text() -> st.SearchStrategy[str]:
    return st.one_of(
        _TEXT,
        st.sampled_from(NASTY_STRINGS),
        st.sampled_from([5_000, 70_000, 1_100_000]).map(lambda n: "A" * n),
    )


def _int_range(field_descriptor: pb_descriptor.FieldDescriptor) -> tuple[int, int]:
    return {
        FD.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
        FD.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
        FD.CPPTYPE_UINT32: (0, 2**32 - 1),
        FD.CPPTYPE_UINT64: (0, 2**64 - 1),
    }[field_descriptor.cpp_type]


def scalar(field_descriptor: pb_descriptor.FieldDescriptor, env: Environment) -> st.SearchStrategy[Any]:
    cpp = field_descriptor.cpp_type
    if cpp in (FD.CPPTYPE_INT32, FD.CPPTYPE_INT64, FD.CPPTYPE_UINT32, FD.CPPTYPE_UINT64):
        lo, hi = _int_range(field_descriptor)
        edges = [
            v
            for v in (
                0,
                1,
                -1,
                2,
                3,
                7,
                64,
                256,
                1000,
                1024,
                4096,
                10_000,
                2**31 - 1,
                -(2**31),
                2**32 - 1,
                2**63 - 1,
                -(2**63),
                2**64 - 1,
            )
            if lo <= v <= hi
        ]
        return st.one_of(st.sampled_from(edges), st.integers(max(lo, -5), min(hi, 300)), st.integers(lo, hi))
    if cpp in (FD.CPPTYPE_FLOAT, FD.CPPTYPE_DOUBLE):
        width = 32 if cpp == FD.CPPTYPE_FLOAT else 64
        return st.one_of(
            st.sampled_from(
                [
                    0.0,
                    -0.0,
                    0.5,
                    1.0,
                    1.5,
                    2.0,
                    -1.0,
                    1e-45,
                    3e38,
                    -3e38,
                    float("nan"),
                    float("inf"),
                    float("-inf"),
                ]
            ),
            st.floats(width=width, allow_nan=True, allow_infinity=True),
        )
    if cpp == FD.CPPTYPE_BOOL:
        return st.booleans()
    if cpp == FD.CPPTYPE_ENUM:
        known = [value.number for value in field_descriptor.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-1000, 1000))
    if cpp == FD.CPPTYPE_STRING and field_descriptor.type == FD.TYPE_BYTES:
        return image_bytes(env) if field_descriptor.name == "data" else st.binary(max_size=128)
    if cpp == FD.CPPTYPE_STRING:
        return _string_for(field_descriptor.name, env)
    raise TypeError(f"no strategy for {field_descriptor.full_name}")


def _string_for(name: str, env: Environment) -> st.SearchStrategy[str]:
    """Strings, biased by what the field means (ids get real ids, paths stay inside the data roots)."""
    base = any_text()
    if name == "job_id" and env.job_ids:
        return st.one_of(st.sampled_from(env.job_ids), base)
    if name in ("item_id", "item_ids") and env.item_ids:
        return st.one_of(st.sampled_from(env.item_ids), base)
    if name in ("dataset_uri", "input_folder"):
        # generated jobs must never write outside the cluster's folder: relative names and paths
        # that the data roots refuse only (a relative path lands in the work folder, the cwd)
        safe = _TEXT.map(lambda s: f"{env.safe_root}/{''.join(c for c in s if c.isalnum()) or 'x'}")
        return st.one_of(
            st.just(""),
            safe,
            st.sampled_from(
                ["../x", "/", "/etc", "s3://b/k", "memory://x", "http://127.0.0.1:9/x", "a" * 5000]
            ),
        )
    if name == "owner":
        # real users (another user's data must stay invisible), and names no user can have
        return st.one_of(
            st.sampled_from(["", "tester", "admin", "default", "someone-else", "../x", "a" * 40]), base
        )
    if name == "uri":
        return st.one_of(st.sampled_from(env.blob_keys or ["jobs/x"]), base)
    if name == "dtype":
        return st.one_of(
            st.sampled_from(
                [
                    "",
                    "float32",
                    "float16",
                    "float64",
                    "int8",
                    "uint8",
                    "bool",
                    "object",
                    "complex64",
                    "<f4",
                    ">f4",
                    "U8",
                    "V4",
                    "f" * 300,
                ]
            ),
            base,
        )
    return base


# ---- messages -----------------------------------------------------------------------------------


def tensor(env: Environment) -> st.SearchStrategy[common_pb2.Tensor]:
    shapes = st.one_of(
        st.sampled_from(
            [
                [env.n_latent, 512],
                [512],
                [1, env.n_latent, 512],
                [env.clip_dim],
                [1, env.clip_dim],
                [2, env.clip_dim],
                [18, 512],
                [0],
                [],
                [-1, 512],
                [2**40, 2**40],
                [7],
            ]
        ),
        st.lists(st.integers(-3, 2**20), max_size=5),
    )
    dtypes = st.sampled_from(["", "float32", "float16", "float64", "int32", "object", "bogus"])

    @st.composite
    def build(draw: Callable[..., Any]) -> common_pb2.Tensor:
        shape = draw(shapes)
        dtype = draw(dtypes)
        count = int(np.prod(shape)) if shape and all(0 <= d < 2**16 for d in shape) else 0
        itemsize = {"": 4, "float32": 4, "float16": 2, "float64": 8, "int32": 4}.get(dtype, 4)
        data_kind = draw(
            st.sampled_from(["consistent", "consistent", "nan", "inf", "random", "empty", "short"])
        )
        if data_kind in ("consistent", "nan", "inf", "short") and count * itemsize <= 8_000_000:
            np_dtype = {"float16": np.float16, "float64": np.float64, "int32": np.int32}.get(
                dtype, np.float32
            )
            values = np.random.default_rng(draw(st.integers(0, 1000))).standard_normal(count).astype(np_dtype)
            floating = np.issubdtype(values.dtype, np.floating)
            if data_kind == "nan" and count and floating:
                values[draw(st.integers(0, count - 1))] = np.nan
            if data_kind == "inf" and count and floating:
                values[draw(st.integers(0, count - 1))] = np.inf
            data = values.astype(values.dtype.newbyteorder("<")).tobytes()
            if data_kind == "short":
                data = data[: max(0, len(data) - draw(st.integers(1, 8)))]
        elif data_kind == "random":
            data = draw(st.binary(max_size=256))
        else:
            data = b""
        return common_pb2.Tensor(data=data, shape=shape, dtype=dtype)

    return build()


def image_message(env: Environment) -> st.SearchStrategy[common_pb2.Image]:
    by_data = st.builds(
        lambda data, name: common_pb2.Image(data=data, name=name), image_bytes(env), any_text()
    )
    by_uri = st.builds(
        lambda uri, name: common_pb2.Image(uri=uri, name=name), _string_for("uri", env), any_text()
    )
    return st.one_of(by_data, by_uri, st.just(common_pb2.Image()))


def field_value(
    field_descriptor: pb_descriptor.FieldDescriptor, env: Environment, depth: int
) -> st.SearchStrategy[Any]:
    """A value for one (non-repeated view of a) field."""
    if field_descriptor.cpp_type == FD.CPPTYPE_MESSAGE:
        return message(field_descriptor.message_type, env, depth + 1)
    return scalar(field_descriptor, env)


def message(
    descriptor: pb_descriptor.Descriptor, env: Environment, depth: int = 0
) -> st.SearchStrategy[Message]:
    """Any message of this type, every field possibly set to a hostile value."""
    if descriptor.full_name == "sfhq.v1.Tensor":
        return tensor(env)
    if descriptor.full_name == "sfhq.v1.Image":
        return image_message(env)
    cls = message_factory.GetMessageClass(descriptor)

    @st.composite
    def build(draw: Callable[..., Any]) -> Message:
        msg = cls()
        if depth > 3:
            return msg
        for fd in descriptor.fields:
            if not draw(st.booleans()):
                continue
            _set_field(msg, fd, draw, env, depth)
        return msg

    return build()


def _is_map(fd: pb_descriptor.FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _set_field(
    msg: Message, fd: pb_descriptor.FieldDescriptor, draw: Callable[..., Any], env: Environment, depth: int
) -> None:
    """Set `fd` of `msg` to drawn values (replacing what was there)."""
    msg.ClearField(fd.name)
    if _is_map(fd):
        key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
        entries = draw(
            st.lists(st.tuples(scalar(key_fd, env), field_value(value_fd, env, depth)), max_size=4)
        )
        target = getattr(msg, fd.name)
        for key, value in entries:
            if value_fd.cpp_type == FD.CPPTYPE_MESSAGE:
                target[key].CopyFrom(value)
            else:
                target[key] = value
        return
    if fd.is_repeated:
        count = draw(st.one_of(st.integers(0, 3), st.sampled_from([0, 1, 17, 65, 300])))
        values = [draw(field_value(fd, env, depth)) for _ in range(min(count, 3))]
        values = (values * (count // max(1, len(values)) + 1))[:count] if values else []
        target = getattr(msg, fd.name)
        if fd.cpp_type == FD.CPPTYPE_MESSAGE:
            for value in values:
                target.add().CopyFrom(value)
        else:
            target.extend(values)
        return
    value = draw(field_value(fd, env, depth))
    if fd.cpp_type == FD.CPPTYPE_MESSAGE:
        getattr(msg, fd.name).CopyFrom(value)
    else:
        setattr(msg, fd.name, value)


# ---- valid requests (seeds) ---------------------------------------------------------------------


def seed_requests(env: Environment) -> dict[str, list[Message]]:
    """At least one well-formed request per RPC, so that mutations reach past the first check."""
    rng = np.random.default_rng(0)

    def vec(*shape: int) -> common_pb2.Tensor:
        array = np.ascontiguousarray(rng.standard_normal(shape).astype("<f4"))
        return common_pb2.Tensor(data=array.tobytes(), shape=list(shape), dtype="float32")

    image = common_pb2.Image(data=env.small_png or image_corpus()["valid"], name="fuzz.png")
    face = common_pb2.Image(data=env.face or image_corpus()["valid"], name="face.jpg")
    job = env.job_ids[0] if env.job_ids else "20990101-000000-00000000"
    item = env.item_ids[0] if env.item_ids else "s0000000-c0"
    spec = gateway_pb2.JobSpec(
        mode=gateway_pb2.JOB_MODE_SAMPLING,
        sampling=gateway_pb2.SamplingSpec(count=1),
        curation=gateway_pb2.CurationSpec(disable_dedup=True),
        output=gateway_pb2.OutputSpec(
            dataset_uri=f"{env.safe_root}/seed-job", annotation_size=64, image_size=64
        ),
    )
    label = search_pb2.LabelRequest(
        taste_model="fuzz",
        labels=[
            search_pb2.ItemLabel(vector=vec(env.clip_dim), positive=True),
            search_pb2.ItemLabel(vector=vec(env.clip_dim), positive=False),
        ],
    )
    strategies = [common_pb2.Strategy(name="e4e_strict_prior"), common_pb2.Strategy(name="style_mix", seed=3)]
    return {
        "/sfhq.v1.Gateway/SubmitJob": [gateway_pb2.SubmitJobRequest(spec=spec)],
        "/sfhq.v1.Gateway/GetJob": [gateway_pb2.GetJobRequest(job_id=job)],
        "/sfhq.v1.Gateway/WatchJob": [gateway_pb2.WatchJobRequest(job_id=job)],
        "/sfhq.v1.Gateway/CancelJob": [gateway_pb2.CancelJobRequest(job_id="20990101-000000-00000000")],
        "/sfhq.v1.Gateway/ListJobs": [gateway_pb2.ListJobsRequest(limit=3)],
        "/sfhq.v1.Gateway/ListItems": [gateway_pb2.ListItemsRequest(job_id=job, limit=5)],
        "/sfhq.v1.Gateway/GetItem": [
            gateway_pb2.GetItemRequest(job_id=job, item_id=item, include_image=True, include_annotations=True)
        ],
        "/sfhq.v1.Gateway/Search": [search_pb2.SearchRequest(text="a smiling face", top_k=3)],
        "/sfhq.v1.Gateway/Label": [label],
        "/sfhq.v1.Gateway/ImportItems": [
            gateway_pb2.ImportItemsRequest(
                items=[search_pb2.IndexedItem(item_id="fuzz-import", vector=vec(env.clip_dim), source="fuzz")]
            )
        ],
        "/sfhq.v1.Encoder/Encode": [encoder_pb2.EncodeRequest(images=[image])],
        "/sfhq.v1.Encoder/EncodeUnaligned": [encoder_pb2.EncodeRequest(images=[face])],
        "/sfhq.v1.Generator/Synthesize": [generator_pb2.SynthesizeRequest(latents=[vec(env.n_latent, 512)])],
        "/sfhq.v1.Generator/Sample": [generator_pb2.SampleRequest(seeds=[1, 2], psi=1.5)],
        "/sfhq.v1.Generator/Candidates": [
            generator_pb2.CandidatesRequest(
                latent=vec(env.n_latent, 512), strategies=strategies, sampled_w=vec(512)
            )
        ],
        "/sfhq.v1.Annotator/Detect": [annotator_pb2.DetectRequest(images=[face])],
        "/sfhq.v1.Annotator/Align": [annotator_pb2.AlignRequest(images=[face], output_size=64)],
        "/sfhq.v1.Annotator/Annotate": [annotator_pb2.AnnotateRequest(images=[image], working_size=64)],
        "/sfhq.v1.Search/Embed": [search_pb2.EmbedRequest(texts=["a face"], images=[image])],
        "/sfhq.v1.Search/Search": [search_pb2.SearchRequest(vector=vec(env.clip_dim), top_k=5)],
        "/sfhq.v1.Search/Add": [
            search_pb2.AddRequest(
                items=[
                    search_pb2.IndexedItem(
                        item_id="fuzz-item", vector=vec(env.clip_dim), job_id="fuzz", source="fuzz"
                    )
                ]
            )
        ],
        "/sfhq.v1.Search/Remove": [search_pb2.RemoveRequest(item_ids=["fuzz-item"])],
        "/sfhq.v1.Search/Dedup": [
            search_pb2.DedupRequest(vectors=[vec(env.clip_dim), vec(env.clip_dim)], threshold=0.9)
        ],
        "/sfhq.v1.Search/Label": [label],
        "/sfhq.v1.Search/TrainTaste": [search_pb2.TrainTasteRequest(taste_model="fuzz")],
        "/sfhq.v1.Search/Score": [search_pb2.ScoreRequest(taste_model="fuzz", vectors=[vec(env.clip_dim)])],
        "/sfhq.v1.Search/ListTasteModels": [search_pb2.ListTasteModelsRequest()],
        "/sfhq.v1.Search/GetTasteModel": [search_pb2.GetTasteModelRequest(taste_model="fuzz")],
        "/sfhq.v1.Search/NextReview": [search_pb2.NextReviewRequest(count=3)],
        "/sfhq.v1.Search/SetDecisions": [
            search_pb2.SetDecisionsRequest(item_ids=["fuzz-item"], decision="review")
        ],
        "/sfhq.v1.Search/SetPoses": [
            search_pb2.SetPosesRequest(
                item_ids=["fuzz-item"], poses=[common_pb2.HeadPose(yaw=10.0, pitch=-5.0, roll=1.0)]
            )
        ],
        "/sfhq.v1.Search/DedupGroups": [
            search_pb2.DedupGroupsRequest(filter=search_pb2.SearchFilter(dataset_id="fuzz"), threshold=0.95)
        ],
        "/sfhq.v1.Gateway/TrainTaste": [search_pb2.TrainTasteRequest(taste_model="fuzz")],
        "/sfhq.v1.Gateway/ListTasteModels": [search_pb2.ListTasteModelsRequest()],
        "/sfhq.v1.Gateway/GetTasteModel": [search_pb2.GetTasteModelRequest(taste_model="fuzz")],
        "/sfhq.v1.Gateway/ScoreItems": [gateway_pb2.ScoreItemsRequest(taste_model="fuzz", job_id=job)],
        "/sfhq.v1.Gateway/ReviewQueue": [gateway_pb2.ReviewQueueRequest(job_id=job, count=3)],
        "/sfhq.v1.Gateway/Review": [gateway_pb2.ReviewRequest(job_id=job, item_id=item, accept=True)],
        "/sfhq.v1.Gateway/CurateDataset": [
            gateway_pb2.CurateDatasetRequest(
                dataset_uri=f"{env.safe_root}/seed-job", taste_model="fuzz", dry_run=True
            )
        ],
        "/sfhq.v1.Gateway/DedupDataset": [
            gateway_pb2.DedupDatasetRequest(dataset_uri=f"{env.safe_root}/seed-job", dry_run=True)
        ],
    }


# ---- byte mutations -----------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def deep_nesting(depth: int, field_number: int = 15) -> bytes:
    """`depth` length-delimited fields nested in each other (unknown to every message here)."""
    tag = _varint((field_number << 3) | 2)
    body = b""
    for _ in range(depth):
        body = tag + _varint(len(body)) + body
    return body


def deep_groups(depth: int, field_number: int = 15) -> bytes:
    """`depth` nested start-group tags, then as many end-group tags."""
    return _varint((field_number << 3) | 3) * depth + _varint((field_number << 3) | 4) * depth


def _mutate_bytes(data: bytes) -> st.SearchStrategy[bytes]:
    size = max(1, len(data))

    @st.composite
    def build(draw: Callable[..., Any]) -> bytes:
        kind = draw(
            st.sampled_from(
                [
                    "flip",
                    "cut",
                    "insert",
                    "splice",
                    "repeat",
                    "huge_length",
                    "nest",
                    "groups",
                    "zero",
                    "append_field",
                ]
            )
        )
        out = bytearray(data)
        position = draw(st.integers(0, size - 1))
        if kind == "flip" and out:
            for _ in range(draw(st.integers(1, 8))):
                index = draw(st.integers(0, len(out) - 1))
                out[index] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            out = out[:position]
        elif kind == "insert":
            out[position:position] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "splice":
            end = draw(st.integers(position, size))
            out[position:end] = b""
        elif kind == "repeat":
            out = out * draw(st.integers(2, 50))
        elif kind == "huge_length":
            out = (
                bytearray(_varint((draw(st.integers(1, 20)) << 3) | 2) + _varint(2**31 + 5) + b"x" * 16) + out
            )
        elif kind == "nest":
            out = bytearray(deep_nesting(draw(st.sampled_from([50, 100, 101, 1000, 20000])))) + out
        elif kind == "groups":
            out = out + bytearray(deep_groups(draw(st.sampled_from([10, 99, 100, 5000]))))
        elif kind == "zero":
            out = bytearray(len(out))
        elif kind == "append_field":  # an unknown field with random wire type and content
            field_number = draw(st.integers(1, 2**29 - 1))
            wire = draw(st.sampled_from([0, 1, 2, 5]))
            out += _varint((field_number << 3) | wire) + draw(st.binary(min_size=1, max_size=16))
        return bytes(out)

    return build()


HEADER_SETS: list[tuple[tuple[str, str | bytes], ...]] = [
    (("x-giant", "a" * 20_000),),
    (("x-giant", "a" * 1_000_000),),
    (("x-almost", "b" * 8_000),),
    tuple((f"x-many-{n}", "v" * 100) for n in range(300)),
    (("x-data-bin", bytes(range(256)) * 40),),
    (("authorization", "Bearer " + "t" * 10_000),),
    (("authorization", "Basic dXNlcjpwYXNz"),),
    (("authorization", "Bearer"),),
    (("grpc-timeout", "1n"),),
    (("content-type", "application/json"),),
    (("user-agent", "\x7f" * 10),),
]


# ---- cases --------------------------------------------------------------------------------------


def cases(rpc: Rpc, env: Environment) -> st.SearchStrategy[FuzzCase]:
    """All four kinds of case for one RPC."""
    seeds = seed_requests(env)[rpc.path]

    def wrap(kind: str) -> Callable[[bytes], FuzzCase]:
        return lambda payload: FuzzCase(rpc.path, payload, (), kind)

    generated = (
        message(rpc.request.DESCRIPTOR, env).map(lambda m: m.SerializeToString()).map(wrap("generated"))
    )

    @st.composite
    def seed_field(draw: Callable[..., Any]) -> FuzzCase:
        msg = copy.deepcopy(draw(st.sampled_from(seeds)))
        target = msg
        # walk down into a set sub-message now and then, so nested fields get hostile values too
        while True:
            nested = [
                fd
                for fd in target.DESCRIPTOR.fields
                if fd.cpp_type == FD.CPPTYPE_MESSAGE
                and not fd.is_repeated
                and target.HasField(fd.name)
                and fd.message_type.full_name not in ("sfhq.v1.Tensor", "sfhq.v1.Image")
            ]
            if not nested or not draw(st.booleans()):
                break
            target = getattr(target, draw(st.sampled_from(nested)).name)
        fields = list(target.DESCRIPTOR.fields)
        if fields:
            _set_field(target, draw(st.sampled_from(fields)), draw, env, 1)
        return FuzzCase(rpc.path, msg.SerializeToString(), (), "seed-field")

    seed_bytes = st.sampled_from([seed.SerializeToString() for seed in seeds])
    mutated = seed_bytes.flatmap(_mutate_bytes).map(wrap("mutated"))
    # drawn by index: a strategy's repr (shown in hypothesis' reports) would hold a megabyte of header
    header_sets = st.integers(0, len(HEADER_SETS) - 1).map(HEADER_SETS.__getitem__)
    headers = st.builds(
        lambda payload, metadata: FuzzCase(rpc.path, payload, metadata, "headers"), seed_bytes, header_sets
    )
    return st.one_of(generated, seed_field(), mutated, headers)


# ---- sending ------------------------------------------------------------------------------------


def invalid_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """Why a grpc client would refuse to send this metadata ("" if it would send it)."""
    for key, value in metadata:
        if not key or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789-_." for c in key):
            return f"metadata key {key!r} is not a valid HTTP/2 header name"
        if not key.endswith("-bin") and (
            not isinstance(value, str) or any(not " " <= c <= "~" for c in value)
        ):
            return f"metadata value of {key!r} is not printable ASCII"
    return ""


@dataclass
class Outcome:
    code: str
    details: str
    seconds: float


class Sender:
    """Sends raw cases over channels that carry the right credentials (`channel_for(process)`)."""

    def __init__(self, channel_for: Callable[[str], grpc.Channel], *, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self._channel_for = channel_for
        self._channels: dict[str, grpc.Channel] = {}
        self._process_of = {rpc.path: rpc.process for rpc in public_rpcs()}
        self._streaming = {rpc.path for rpc in public_rpcs() if rpc.server_streaming}
        self._uploads = {rpc.path for rpc in public_rpcs() if rpc.client_streaming}

    def _channel(self, process: str) -> grpc.Channel:
        if process not in self._channels:
            self._channels[process] = self._channel_for(process)
        return self._channels[process]

    def send(self, case: FuzzCase) -> Outcome:
        channel = self._channel(self._process_of.get(case.rpc_path, "gateway"))
        started = time.perf_counter()
        invalid = invalid_metadata(case.metadata)
        if invalid:  # grpc's client would fail it locally (with INTERNAL!): it never reaches a server
            return Outcome(CLIENT_REJECTED, invalid, 0.0)
        try:
            if case.rpc_path in self._uploads:  # a client stream: the case's message, twice
                channel.stream_unary(case.rpc_path)(
                    iter([case.payload, case.payload]), timeout=self.timeout_s, metadata=case.metadata
                )
            elif case.rpc_path in self._streaming:
                call = channel.unary_stream(case.rpc_path)(
                    case.payload, timeout=self.timeout_s, metadata=case.metadata
                )
                for count, _ in enumerate(call):  # a live job streams for a while: a few events will do
                    if count >= 3:
                        call.cancel()
                        break
            else:
                channel.unary_unary(case.rpc_path)(
                    case.payload, timeout=self.timeout_s, metadata=case.metadata
                )
            return Outcome("OK", "", time.perf_counter() - started)
        except grpc.RpcError as exc:
            code = exc.code()
            name = code.name if code is not None else "UNKNOWN"
            if name == "CANCELLED" and case.rpc_path in self._streaming:
                name = "OK"  # we hung up on a healthy stream ourselves
            return Outcome(name, (exc.details() or "")[:300], time.perf_counter() - started)
        except (ValueError, TypeError) as exc:  # the client library refused (e.g. reserved metadata)
            return Outcome(
                CLIENT_REJECTED, f"{type(exc).__name__}: {exc}"[:300], time.perf_counter() - started
            )

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


# ---- the corpus of cases that found bugs -------------------------------------------------------


def save_case(folder: Path, case: FuzzCase, outcome: Outcome, note: str = "", expected: str = "") -> Path:
    """Keep a case as `<folder>/<Service.Method>/<digest>.bin` + `.json` (metadata, what it found)."""
    rpc_folder = folder / case.rpc_path.strip("/").replace("sfhq.v1.", "").replace("/", ".")
    rpc_folder.mkdir(parents=True, exist_ok=True)
    path = rpc_folder / f"{case.digest()}.bin"
    path.write_bytes(case.payload)
    meta = {
        "rpc": case.rpc_path,
        "kind": case.kind,
        "found": f"{outcome.code}: {outcome.details}",
        "metadata": [[k, v if isinstance(v, str) else v.hex()] for k, v in case.metadata],
        "note": note,
    }
    if expected:
        meta["expected"] = expected
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


def load_corpus(folder: Path) -> list[FuzzCase]:
    out = []
    for path in sorted(folder.glob("*/*.bin")):
        meta_path = path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        rpc_path = meta.get("rpc") or "/sfhq.v1." + path.parent.name.replace(".", "/", 1)
        metadata = tuple(
            (k, bytes.fromhex(v) if k.endswith("-bin") else v) for k, v in meta.get("metadata", [])
        )
        out.append(
            FuzzCase(
                rpc_path, path.read_bytes(), metadata, meta.get("kind", "corpus"), meta.get("expected", "")
            )
        )
    return out


def histogram(outcomes: Iterable[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.code] = counts.get(outcome.code, 0) + 1
    return dict(sorted(counts.items()))


# ---- discovering the cluster --------------------------------------------------------------------


def discover(cluster: Any, safe_root: Path) -> Environment:
    """Learn the model sizes and some real ids from a running ReliabilityCluster (reliability/harness.py)."""
    from reliability import harness
    from sfhq.tensors import tensor_to_numpy

    safe_root.mkdir(parents=True, exist_ok=True)
    env = Environment(safe_root=str(safe_root), small_png=image_corpus()["valid"])
    from tests.helpers.data import face_bytes

    env.face = face_bytes(0)
    with cluster.channel("encoder") as channel:
        reply = channel.unary_unary(
            "/sfhq.v1.Encoder/Encode",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=encoder_pb2.EncodeResponse.FromString,
        )(encoder_pb2.EncodeRequest(images=[common_pb2.Image(data=env.small_png)]), timeout=120)
        env.n_latent = int(tensor_to_numpy(reply.latents[0]).shape[0])
    with cluster.channel("search") as channel:
        reply = channel.unary_unary(
            "/sfhq.v1.Search/Embed",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=search_pb2.EmbedResponse.FromString,
        )(search_pb2.EmbedRequest(texts=["a face"]), timeout=120)
        env.clip_dim = int(tensor_to_numpy(reply.text_features[0]).shape[-1])
    with cluster.client() as client:
        job = client.wait(
            client.submit(harness.sampling_spec(1, safe_root / "discovery")).job_id, timeout=300
        )
        env.job_ids = [job.job_id]
        env.item_ids = [item.item_id for item in client.list_items(job.job_id)]
    admin = cluster.admin_redis()
    for raw in admin.hvals(f"sfhq:job:{job.job_id}:items"):
        outputs = json.loads(raw).get("outputs", {})
        for stage in ("sample", "synthesize"):
            key = (outputs.get(stage) or {}).get("image")
            if key:
                env.blob_keys.append(key)
    return env
