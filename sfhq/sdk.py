"""Python SDK for the sfhq-factory gateway (sync `Client` and `AsyncClient`). Light: grpc + numpy only.

from sfhq.sdk import Client
with Client("127.0.0.1:50050") as client:
    job = client.submit_images(["face1.jpg", "face2.png"], output_uri="out/my_dataset")
    for event in client.watch(job.job_id):
        print(event.kind, event.counts.accepted)
    hits = client.search("old asian man with a beard", job_id=job.job_id)
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from sfhq.export import Exporter
from sfhq.tensors import numpy_to_tensor
from sfhq.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, search_pb2

DEFAULT_ADDRESS = "127.0.0.1:50050"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
SLOW_CALL_S = 120.0  # SubmitJob stages the inputs: give it longer than the default deadline
LONG_CALL_S = 1800.0  # training a taste model, a pass over a whole dataset
TERMINAL_STATES = (
    gateway_pb2.JOB_STATE_SUCCEEDED,
    gateway_pb2.JOB_STATE_FAILED,
    gateway_pb2.JOB_STATE_CANCELLED,
)
MODES = {
    "inspiration": gateway_pb2.JOB_MODE_INSPIRATION,
    "sampling": gateway_pb2.JOB_MODE_SAMPLING,
    "annotate": gateway_pb2.JOB_MODE_ANNOTATE_ONLY,
    "annotate_only": gateway_pb2.JOB_MODE_ANNOTATE_ONLY,
    "prompts": gateway_pb2.JOB_MODE_PROMPTS,
}


IMPORT_BATCH_LIMIT = 1000  # the gateway's limit per ImportItems message


class SfhqError(RuntimeError):
    """A gateway call failed; `code` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


WRITE_MODES = {
    "new": gateway_pb2.WRITE_MODE_NEW,
    "append": gateway_pb2.WRITE_MODE_APPEND,
    "overwrite": gateway_pb2.WRITE_MODE_OVERWRITE,
}
SHOWN_MODES = ("inspiration", "sampling", "annotate", "prompts")  # "annotate_only" is accepted as an alias


def parse_strategy(text: str) -> common_pb2.Strategy:
    """'low_prior' or 'e4e_strict_prior:coarse=0.2,fine=0.1' -> Strategy (ValueError saying what is wrong)."""
    name, _, params = text.partition(":")
    strategy = common_pb2.Strategy(name=name.strip())
    if not strategy.name:
        raise ValueError(f"strategy {text!r}: no name (write NAME or NAME:key=value,...)")
    for pair in filter(None, (p.strip() for p in params.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"strategy {text!r}: parameter {pair!r} is not key=value (e.g. steps=30)")
        try:
            strategy.params[key.strip()] = float(value)
        except ValueError:
            raise ValueError(
                f"strategy {text!r}: parameter {key.strip()!r} must be a number, got {value!r}"
            ) from None
    return strategy


def image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expands folders into their image files (sorted), keeps files as given.

    FileNotFoundError names a path that does not exist, or a folder with no images in it."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if not found:
                raise FileNotFoundError(f"no images in {p} (looked for {', '.join(IMAGE_EXTENSIONS)})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    return out


def _absolute(uri: str) -> str:
    """A local relative path made absolute against the caller's working directory (URLs unchanged)."""
    return os.path.abspath(uri) if uri and "://" not in uri and not os.path.isabs(uri) else uri


def build_spec(
    *,
    mode: str = "inspiration",
    images: Sequence[str | os.PathLike | bytes] = (),
    input_folder: str = "",
    strategies: Sequence[str | common_pb2.Strategy] = (),
    samples: int = 0,
    first_seed: int = 0,
    psi_min: float = 0.0,
    psi_max: float = 0.0,
    corrections: Sequence[str | common_pb2.Strategy] = (),
    taste_model: str = "",
    accept_threshold: float | None = None,
    dedup_threshold: float | None = None,
    disable_dedup: bool = False,
    reject_threshold: float | None = None,
    output_uri: str = "",
    part: int = 0,
    image_size: int = 0,
    annotation_size: int = 0,
    seed: int = 0,
    name: str = "",
    write_mode: str = "new",
    landmark_convention: str = "",
    prompts: gateway_pb2.PromptSpec | None = None,
) -> gateway_pb2.JobSpec:
    """A JobSpec from plain arguments; local image files are sent inline.

    `write_mode`: "new" (refuse a folder that holds anything), "append" (add to the dataset there),
    "overwrite" (replace it). `corrections` (sampling): several corrections, one candidate each,
    e.g. `["encoder_truncation:coarse=0.2,middle=0.3,fine=0.4", ...]`. `prompts` (prompts mode): a
    PromptSpec, e.g. from `sfhq.prompts.prompt_spec`. A relative local `output_uri` is made absolute here, against the
    caller's working directory (the services would otherwise each resolve it against theirs)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: must be one of {', '.join(SHOWN_MODES)}")
    if write_mode not in WRITE_MODES:
        raise ValueError(f"write mode {write_mode!r}: must be one of {', '.join(WRITE_MODES)}")
    output_uri = _absolute(output_uri)
    spec = gateway_pb2.JobSpec(name=name, mode=MODES[mode], input_folder=input_folder, seed=seed)
    for image in images:
        if isinstance(image, bytes):
            spec.inputs.add(data=image)
        elif isinstance(image, str) and "://" in image:
            spec.inputs.add(uri=image, name=image)
        else:
            spec.inputs.add(data=Path(image).read_bytes(), name=Path(image).name)
    for s in strategies:
        spec.strategies.append(parse_strategy(s) if isinstance(s, str) else s)
    if mode == "sampling":
        spec.sampling.count = samples
        spec.sampling.first_seed = first_seed
        spec.sampling.psi_min = psi_min
        spec.sampling.psi_max = psi_max
        for c in corrections:
            spec.sampling.corrections.append(parse_strategy(c) if isinstance(c, str) else c)
    if mode == "prompts":
        spec.prompts.CopyFrom(prompts or gateway_pb2.PromptSpec())
    elif prompts is not None:
        raise ValueError(f"prompts: only the prompts mode takes prompts (mode is {mode!r})")
    spec.curation.taste_model = taste_model
    if accept_threshold is not None:
        spec.curation.accept_threshold = accept_threshold
    if dedup_threshold is not None:
        spec.curation.dedup_threshold = dedup_threshold
    if reject_threshold is not None:
        spec.curation.reject_threshold = reject_threshold
    spec.curation.disable_dedup = disable_dedup
    spec.output.dataset_uri = output_uri
    spec.output.part = part
    spec.output.image_size = image_size
    spec.output.annotation_size = annotation_size
    spec.output.write_mode = WRITE_MODES[write_mode]
    spec.output.landmark_convention = landmark_convention  # "" = the gateway's default ("sfhq")
    return spec


AngleBounds = tuple[float | None, float | None]


def set_angle_ranges(message: Any, **ranges: AngleBounds | None) -> None:
    """Fill a request's `yaw` / `pitch` / `roll` AngleRange fields from (min, max) pairs."""
    for angle, bounds in ranges.items():
        if bounds is None:
            continue
        low, high = bounds
        field = getattr(message, angle)
        field.SetInParent()
        if low is not None:
            field.min = low
        if high is not None:
            field.max = high


def search_request(
    text: str | None = None,
    image: bytes | str | os.PathLike | None = None,
    vector: np.ndarray | None = None,
    *,
    top_k: int = 10,
    job_id: str = "",
    source: str = "",
    min_taste_score: float | None = None,
    max_taste_score: float | None = None,
    yaw: AngleBounds | None = None,
    pitch: AngleBounds | None = None,
    roll: AngleBounds | None = None,
) -> search_pb2.SearchRequest:
    """`yaw`, `pitch`, `roll`: (min, max) head pose ranges in degrees (None bounds are open)."""
    if sum(x is not None for x in (text, image, vector)) != 1:
        raise ValueError("give exactly one of text, image or vector")
    request = search_pb2.SearchRequest(
        top_k=top_k, filter=search_pb2.SearchFilter(job_id=job_id, source=source)
    )
    if min_taste_score is not None:
        request.filter.min_taste_score = min_taste_score
    if max_taste_score is not None:
        request.filter.max_taste_score = max_taste_score
    set_angle_ranges(request.filter, yaw=yaw, pitch=pitch, roll=roll)
    if text is not None:
        request.text = text
    elif vector is not None:
        request.vector.CopyFrom(numpy_to_tensor(np.asarray(vector)))
    elif image is not None:
        request.image.data = image if isinstance(image, bytes) else Path(image).read_bytes()
    else:
        raise ValueError("give a text, an image or a vector to search with")
    return request


def with_trace(metadata: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """`metadata` plus the caller's OpenTelemetry trace context (W3C `traceparent`), when the
    application uses OpenTelemetry: the job's spans in every service then join the caller's trace.
    The SDK does not need OpenTelemetry; without it this returns `metadata` unchanged."""
    try:
        from opentelemetry import propagate
    except ImportError:
        return metadata
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return (*metadata, *carrier.items())


def _channel_options(max_message_mb: int) -> list[tuple[str, Any]]:
    size = max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        # servers refuse pings more often than every 30 s (GOAWAY too_many_pings)
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def _credentials(
    token: str | None,
    root_certificates: bytes | None,
    tls: bool,
    client_cert: tuple[bytes, bytes] | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials (None = plaintext); `client_cert` = (certificate chain PEM, private key PEM) for mTLS."""
    if not tls and root_certificates is None and client_cert is None:
        return None
    chain, key = client_cert or (None, None)
    creds = grpc.ssl_channel_credentials(
        root_certificates=root_certificates, private_key=key, certificate_chain=chain
    )
    if token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return creds


@dataclass(frozen=True)
class Call:
    """One gateway call, the same for both clients: the RPC, its request and its deadline."""

    method: str
    request: Any
    timeout: float | None = None  # None: the client's default
    retry: bool = True  # False for a client stream: a retry could not send what was sent again


class Requests:
    """What each client method sends. `Client` and `AsyncClient` only run these calls, so the
    two clients cannot drift apart (tests/unit/test_sdk.py compares their signatures too)."""

    @staticmethod
    def submit(spec: gateway_pb2.JobSpec, request_id: str | None) -> Call:
        # The request_id makes retries safe: the same id returns the same job.
        request = gateway_pb2.SubmitJobRequest(spec=spec, request_id=request_id or os.urandom(12).hex())
        return Call("SubmitJob", request, SLOW_CALL_S)

    @staticmethod
    def get_job(job_id: str) -> Call:
        return Call("GetJob", gateway_pb2.GetJobRequest(job_id=job_id))

    @staticmethod
    def cancel(job_id: str) -> Call:
        return Call("CancelJob", gateway_pb2.CancelJobRequest(job_id=job_id))

    @staticmethod
    def list_jobs(limit: int, state: gateway_pb2.JobState) -> Call:
        return Call("ListJobs", gateway_pb2.ListJobsRequest(limit=limit, state=state))

    @staticmethod
    def list_items(job_id: str, state: str, limit: int, offset: int, **poses: AngleBounds | None) -> Call:
        request = gateway_pb2.ListItemsRequest(job_id=job_id, state=state, limit=limit, offset=offset)
        set_angle_ranges(request, **poses)
        return Call("ListItems", request)

    @staticmethod
    def get_item(job_id: str, item_id: str, image: bool, annotations: bool) -> Call:
        request = gateway_pb2.GetItemRequest(
            job_id=job_id, item_id=item_id, include_image=image, include_annotations=annotations
        )
        return Call("GetItem", request, 60.0)

    @staticmethod
    def search(
        text: str | None, image: ImageSource | None, vector: np.ndarray | None, **filters: Any
    ) -> Call:
        return Call("Search", search_request(text, image, vector, **filters))

    @staticmethod
    def label(labels: Mapping[str, bool | None], taste_model: str, labeler: str, job_id: str = "") -> Call:
        """`job_id`: the ids are that job's (item ids as in its manifest, or stems). None: take back."""
        request = search_pb2.LabelRequest(taste_model=taste_model)
        for item_id, positive in labels.items():
            qualified = f"{job_id}/{item_id.removeprefix(job_id + '/')}" if job_id else item_id
            request.labels.add(
                item_id=qualified, positive=bool(positive), labeler=labeler, clear=positive is None
            )
        return Call("Label", request)

    # curation
    @staticmethod
    def train_taste(taste_model: str, family: str, feature_keys: Sequence[str] = ()) -> Call:
        request = search_pb2.TrainTasteRequest(
            taste_model=taste_model, family=family, feature_keys=list(feature_keys)
        )
        return Call("TrainTaste", request, LONG_CALL_S)

    @staticmethod
    def list_taste_models() -> Call:
        return Call("ListTasteModels", search_pb2.ListTasteModelsRequest())

    @staticmethod
    def get_taste_model(taste_model: str) -> Call:
        return Call("GetTasteModel", search_pb2.GetTasteModelRequest(taste_model=taste_model))

    @staticmethod
    def score_items(taste_model: str, job_id: str, dataset_uri: str, limit: int) -> Call:
        request = gateway_pb2.ScoreItemsRequest(
            taste_model=taste_model, job_id=job_id, dataset_uri=_absolute(dataset_uri), limit=limit
        )
        return Call("ScoreItems", request, LONG_CALL_S)

    @staticmethod
    def review_queue(job_id: str, count: int, images: bool) -> Call:
        return Call(
            "ReviewQueue",
            gateway_pb2.ReviewQueueRequest(job_id=job_id, count=count, include_images=images),
            60.0,
        )

    @staticmethod
    def review(job_id: str, item_id: str, accept: bool, labeler: str) -> Call:
        return Call(
            "Review",
            gateway_pb2.ReviewRequest(job_id=job_id, item_id=item_id, accept=accept, labeler=labeler),
        )

    @staticmethod
    def curate_dataset(dataset_uri: str, taste_model: str, threshold: float | None, dry_run: bool) -> Call:
        request = gateway_pb2.CurateDatasetRequest(
            dataset_uri=_absolute(dataset_uri), taste_model=taste_model, dry_run=dry_run
        )
        if threshold is not None:
            request.threshold = threshold
        return Call("CurateDataset", request, LONG_CALL_S)

    @staticmethod
    def dedup_dataset(dataset_uri: str, threshold: float | None, dry_run: bool, include_public: bool) -> Call:
        request = gateway_pb2.DedupDatasetRequest(
            dataset_uri=_absolute(dataset_uri), dry_run=dry_run, include_public=include_public
        )
        if threshold is not None:
            request.threshold = threshold
        return Call("DedupDataset", request, LONG_CALL_S)

    @staticmethod
    def import_items(items: Iterable[search_pb2.IndexedItem], batch_size: int) -> Call:
        if not 1 <= batch_size <= IMPORT_BATCH_LIMIT:
            raise ValueError(f"batch_size: must be in [1, {IMPORT_BATCH_LIMIT}]")

        def batches() -> Iterator[gateway_pb2.ImportItemsRequest]:
            batch: list[search_pb2.IndexedItem] = []
            for item in items:
                batch.append(item)
                if len(batch) >= batch_size:
                    yield gateway_pb2.ImportItemsRequest(items=batch)
                    batch = []
            if batch:
                yield gateway_pb2.ImportItemsRequest(items=batch)

        return Call("ImportItems", batches(), 3600.0, retry=False)

    @staticmethod
    def watch(job_id: str, after_event_id: str) -> gateway_pb2.WatchJobRequest:
        return gateway_pb2.WatchJobRequest(job_id=job_id, after_event_id=after_event_id)


ImageSource = bytes | str | os.PathLike


class Client:
    """Synchronous client. Retries UNAVAILABLE with exponential backoff; every call has a deadline.

    TLS: `tls=True` (system roots) or `root_certificates`; a gateway that requires mutual TLS
    also needs `client_cert=(certificate_chain_pem, private_key_pem)`.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_cert: tuple[bytes, bytes] | None = None,
        max_message_mb: int = 64,
        token_from_env: bool = True,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.retries = retries
        # A server acting for its users (the studio) passes token_from_env=False: its own SFHQ_TOKEN
        # must never stand in for a user who has none.
        token = token or (os.environ.get("SFHQ_TOKEN") if token_from_env else None) or None
        creds = _credentials(token, root_certificates, tls, client_cert)
        options = _channel_options(max_message_mb)
        self._channel = (
            grpc.secure_channel(address, creds, options) if creds else grpc.insecure_channel(address, options)
        )
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        # Without TLS the token travels as plain metadata (loopback / trusted networks only).
        self._metadata = (("authorization", f"Bearer {token}"),) if token and not creds else ()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _run(self, call: Call) -> Any:
        timeout = max(self.timeout, call.timeout or 0.0)
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                return getattr(self._stub, call.method)(
                    call.request, timeout=timeout, metadata=with_trace(self._metadata)
                )
            except grpc.RpcError as exc:
                if exc.code() in RETRYABLE and attempt < self.retries and call.retry:
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 5.0)
                    continue
                raise SfhqError(exc.code(), exc.details() or "") from None
        raise AssertionError("unreachable")

    # jobs
    def submit(self, spec: gateway_pb2.JobSpec, *, request_id: str | None = None) -> gateway_pb2.Job:
        """Submits a job. The request_id makes retries safe: the same id returns the same job."""
        return self._run(Requests.submit(spec, request_id))

    def submit_images(self, paths: Iterable[str | os.PathLike], **options: Any) -> gateway_pb2.Job:
        """Uploads local images (files or folders) as an inspiration (or `mode=`) job."""
        return self.submit(build_spec(images=image_files(paths), **options))

    def submit_prompts(self, prompts: gateway_pb2.PromptSpec, **options: Any) -> gateway_pb2.Job:
        """A prompts job (Stable Diffusion inspirations); `prompts` from `sfhq.prompts.prompt_spec`."""
        return self.submit(build_spec(mode="prompts", prompts=prompts, **options))

    def get_job(self, job_id: str) -> gateway_pb2.Job:
        return self._run(Requests.get_job(job_id))

    def cancel(self, job_id: str) -> gateway_pb2.Job:
        return self._run(Requests.cancel(job_id))

    def list_jobs(
        self, limit: int = 50, state: gateway_pb2.JobState = gateway_pb2.JOB_STATE_UNSPECIFIED
    ) -> list[gateway_pb2.Job]:
        return list(self._run(Requests.list_jobs(limit, state)).jobs)

    def watch(self, job_id: str, after_event_id: str = "") -> Iterator[gateway_pb2.JobEvent]:
        """Progress events until the job ends; reconnects and resumes after the last event seen."""
        last, failures = after_event_id, 0
        while True:
            try:
                for event in self._stub.WatchJob(
                    Requests.watch(job_id, last), metadata=with_trace(self._metadata)
                ):
                    last, failures = event.event_id, 0
                    yield event
                return
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or failures >= self.retries * 4:
                    raise SfhqError(exc.code(), exc.details() or "") from None
                failures += 1
                time.sleep(min(0.2 * 2**failures, 5.0))

    def wait(self, job_id: str, timeout: float | None = None) -> gateway_pb2.Job:
        """Blocks until the job is finished (or `timeout` seconds pass: TimeoutError)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in self.watch(job_id):
            _check_deadline(deadline, job_id, timeout)
        job = self.get_job(job_id)
        while job.state not in TERMINAL_STATES:  # the stream ended early (e.g. state lost): poll
            _check_deadline(deadline, job_id, timeout)
            time.sleep(0.5)
            job = self.get_job(job_id)
        return job

    # items
    def list_items(
        self,
        job_id: str,
        state: str = "",
        limit: int = 10000,
        offset: int = 0,
        *,
        yaw: AngleBounds | None = None,
        pitch: AngleBounds | None = None,
        roll: AngleBounds | None = None,
    ) -> list[gateway_pb2.Item]:
        """A job's items; `yaw` / `pitch` / `roll` (min, max) keep written items of those head poses."""
        call = Requests.list_items(job_id, state, limit, offset, yaw=yaw, pitch=pitch, roll=roll)
        return list(self._run(call).items)

    def get_item(
        self, job_id: str, item_id: str, *, image: bool = True, annotations: bool = True
    ) -> gateway_pb2.Item:
        return self._run(Requests.get_item(job_id, item_id, image, annotations))

    def download(
        self,
        job_id: str,
        dest: str | os.PathLike,
        *,
        item_ids: Sequence[str] | None = None,
        query: str | None = None,
        top_k: int = 100,
    ) -> list[Path]:
        """Fetches items of a job into `dest` in the SFHQ layout (by ids, by a text query, or all written),
        with manifest, dataset_info.json, a Hugging Face parquet and a dataset card (`sfhq.export`)."""
        if item_ids is None and query is not None:
            item_ids = [hit.item_id for hit in self.search(query, job_id=job_id, top_k=top_k).hits]
        if item_ids is None:
            item_ids = [i.item_id for i in self.list_items(job_id, state="written")]
        exporter = Exporter(dest)
        paths = [exporter.add(self.get_item(job_id, item_id)) for item_id in item_ids]
        exporter.finish()
        return paths

    # search and labels
    def search(
        self,
        text: str | None = None,
        *,
        image: ImageSource | None = None,
        vector: np.ndarray | None = None,
        top_k: int = 10,
        job_id: str = "",
        source: str = "",
        min_taste_score: float | None = None,
        max_taste_score: float | None = None,
        yaw: AngleBounds | None = None,
        pitch: AngleBounds | None = None,
        roll: AngleBounds | None = None,
    ) -> search_pb2.SearchResponse:
        """`yaw` / `pitch` / `roll`: (min, max) head pose ranges in degrees (None bounds are open)."""
        filters = dict(
            top_k=top_k,
            job_id=job_id,
            source=source,
            min_taste_score=min_taste_score,
            max_taste_score=max_taste_score,
            yaw=yaw,
            pitch=pitch,
            roll=roll,
        )
        return self._run(Requests.search(text, image, vector, **filters))

    def label(
        self,
        labels: Mapping[str, bool | None],
        *,
        taste_model: str = "default",
        labeler: str = "",
        job_id: str = "",
    ) -> search_pb2.LabelResponse:
        """Labels items as good (True) or bad (False) for a taste model, or takes a label back (None):
        index ids ("<job>/<item>", an imported stem), or with `job_id` that job's item ids or stems."""
        return self._run(Requests.label(labels, taste_model, labeler, job_id))

    # curation (docs/curation.md)
    def train_taste(
        self, taste_model: str = "default", *, family: str = "", feature_keys: Sequence[str] = ()
    ) -> search_pb2.TasteModelInfo:
        """Trains a new version from your labels; returns its cross-validated metrics and thresholds.
        `feature_keys`: train on these feature sets (default CLIP ViT-L/14@336 alone)."""
        return self._run(Requests.train_taste(taste_model, family, feature_keys))

    def list_taste_models(self) -> list[search_pb2.TasteModelInfo]:
        return list((self._run(Requests.list_taste_models())).models)

    def get_taste_model(self, taste_model: str = "default") -> search_pb2.TasteModelInfo:
        return self._run(Requests.get_taste_model(taste_model))

    def score_items(
        self, taste_model: str = "default", *, job_id: str = "", dataset_uri: str = "", limit: int = 0
    ) -> gateway_pb2.ScoreItemsResponse:
        """Scores a job's candidates or a dataset's items with a taste model (and a histogram)."""
        return self._run(Requests.score_items(taste_model, job_id, dataset_uri, limit))

    def review_queue(
        self, job_id: str, *, count: int = 20, images: bool = False
    ) -> gateway_pb2.ReviewQueueResponse:
        """The job's items waiting for a verdict, the most informative first (active learning)."""
        return self._run(Requests.review_queue(job_id, count, images))

    def review(self, job_id: str, item_id: str, accept: bool, *, labeler: str = "") -> gateway_pb2.Item:
        """A person's verdict: accepted items are written into the dataset; both become labels."""
        return self._run(Requests.review(job_id, item_id, accept, labeler))

    def curate_dataset(
        self,
        dataset_uri: str,
        taste_model: str = "default",
        *,
        threshold: float | None = None,
        dry_run: bool = False,
    ) -> gateway_pb2.CurateDatasetResponse:
        """Re-scores a dataset; items below the threshold move to its rejected/ folder."""
        return self._run(Requests.curate_dataset(dataset_uri, taste_model, threshold, dry_run))

    def dedup_dataset(
        self,
        dataset_uri: str,
        *,
        threshold: float | None = None,
        dry_run: bool = False,
        include_public: bool = False,
    ) -> gateway_pb2.DedupDatasetResponse:
        """Near-duplicate groups of a dataset; the worse copies move to its rejected/ folder."""
        return self._run(Requests.dedup_dataset(dataset_uri, threshold, dry_run, include_public))

    def import_items(
        self, items: Iterable[search_pb2.IndexedItem], *, batch_size: int = 256
    ) -> gateway_pb2.ImportItemsResponse:
        """Streams features made elsewhere (e.g. a downloaded SFHQ part) into the running search index."""
        return self._run(Requests.import_items(items, batch_size))


def _check_deadline(deadline: float | None, job_id: str, timeout: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f"job {job_id} still running after {timeout} s")


class AsyncClient:
    """asyncio client with exactly the methods of `Client` (awaitables; `watch` is an async iterator)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_cert: tuple[bytes, bytes] | None = None,
        max_message_mb: int = 64,
        token_from_env: bool = True,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.retries = retries
        # A server acting for its users (the studio) passes token_from_env=False: its own SFHQ_TOKEN
        # must never stand in for a user who has none.
        token = token or (os.environ.get("SFHQ_TOKEN") if token_from_env else None) or None
        creds = _credentials(token, root_certificates, tls, client_cert)
        options = _channel_options(max_message_mb)
        self._channel = (
            grpc.aio.secure_channel(address, creds, options)
            if creds
            else grpc.aio.insecure_channel(address, options)
        )
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token and not creds else ()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _run(self, call: Call) -> Any:
        timeout = max(self.timeout, call.timeout or 0.0)
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                return await getattr(self._stub, call.method)(
                    call.request, timeout=timeout, metadata=with_trace(self._metadata)
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() in RETRYABLE and attempt < self.retries and call.retry:
                    await asyncio.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 5.0)
                    continue
                raise SfhqError(exc.code(), exc.details() or "") from None
        raise AssertionError("unreachable")

    # jobs
    async def submit(self, spec: gateway_pb2.JobSpec, *, request_id: str | None = None) -> gateway_pb2.Job:
        """Submits a job. The request_id makes retries safe: the same id returns the same job."""
        return await self._run(Requests.submit(spec, request_id))

    async def submit_images(self, paths: Iterable[str | os.PathLike], **options: Any) -> gateway_pb2.Job:
        """Uploads local images (files or folders) as an inspiration (or `mode=`) job."""
        return await self.submit(build_spec(images=image_files(paths), **options))

    async def submit_prompts(self, prompts: gateway_pb2.PromptSpec, **options: Any) -> gateway_pb2.Job:
        """A prompts job (Stable Diffusion inspirations); `prompts` from `sfhq.prompts.prompt_spec`."""
        return await self.submit(build_spec(mode="prompts", prompts=prompts, **options))

    async def get_job(self, job_id: str) -> gateway_pb2.Job:
        return await self._run(Requests.get_job(job_id))

    async def cancel(self, job_id: str) -> gateway_pb2.Job:
        return await self._run(Requests.cancel(job_id))

    async def list_jobs(
        self, limit: int = 50, state: gateway_pb2.JobState = gateway_pb2.JOB_STATE_UNSPECIFIED
    ) -> list[gateway_pb2.Job]:
        return list((await self._run(Requests.list_jobs(limit, state))).jobs)

    async def watch(self, job_id: str, after_event_id: str = "") -> AsyncIterator[gateway_pb2.JobEvent]:
        """Progress events until the job ends; reconnects and resumes after the last event seen."""
        last, failures = after_event_id, 0
        while True:
            try:
                async for event in self._stub.WatchJob(
                    Requests.watch(job_id, last), metadata=with_trace(self._metadata)
                ):
                    last, failures = event.event_id, 0
                    yield event
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or failures >= self.retries * 4:
                    raise SfhqError(exc.code(), exc.details() or "") from None
                failures += 1
                await asyncio.sleep(min(0.2 * 2**failures, 5.0))

    async def wait(self, job_id: str, timeout: float | None = None) -> gateway_pb2.Job:
        """Waits until the job is finished (or `timeout` seconds pass: TimeoutError)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        async for _ in self.watch(job_id):
            _check_deadline(deadline, job_id, timeout)
        job = await self.get_job(job_id)
        while job.state not in TERMINAL_STATES:
            _check_deadline(deadline, job_id, timeout)
            await asyncio.sleep(0.5)
            job = await self.get_job(job_id)
        return job

    # items
    async def list_items(
        self,
        job_id: str,
        state: str = "",
        limit: int = 10000,
        offset: int = 0,
        *,
        yaw: AngleBounds | None = None,
        pitch: AngleBounds | None = None,
        roll: AngleBounds | None = None,
    ) -> list[gateway_pb2.Item]:
        call = Requests.list_items(job_id, state, limit, offset, yaw=yaw, pitch=pitch, roll=roll)
        return list((await self._run(call)).items)

    async def get_item(
        self, job_id: str, item_id: str, *, image: bool = True, annotations: bool = True
    ) -> gateway_pb2.Item:
        return await self._run(Requests.get_item(job_id, item_id, image, annotations))

    async def download(
        self,
        job_id: str,
        dest: str | os.PathLike,
        *,
        item_ids: Sequence[str] | None = None,
        query: str | None = None,
        top_k: int = 100,
    ) -> list[Path]:
        """Fetches items of a job into `dest` in the SFHQ layout (by ids, by a text query, or all written),
        with manifest, dataset_info.json, a Hugging Face parquet and a dataset card (`sfhq.export`)."""
        if item_ids is None and query is not None:
            item_ids = [hit.item_id for hit in (await self.search(query, job_id=job_id, top_k=top_k)).hits]
        if item_ids is None:
            item_ids = [i.item_id for i in await self.list_items(job_id, state="written")]
        items = await asyncio.gather(*(self.get_item(job_id, item_id) for item_id in item_ids))
        exporter = Exporter(dest)
        paths = [exporter.add(item) for item in items]
        exporter.finish()
        return paths

    # search and labels
    async def search(
        self,
        text: str | None = None,
        *,
        image: ImageSource | None = None,
        vector: np.ndarray | None = None,
        top_k: int = 10,
        job_id: str = "",
        source: str = "",
        min_taste_score: float | None = None,
        max_taste_score: float | None = None,
        yaw: AngleBounds | None = None,
        pitch: AngleBounds | None = None,
        roll: AngleBounds | None = None,
    ) -> search_pb2.SearchResponse:
        """`yaw` / `pitch` / `roll`: (min, max) head pose ranges in degrees (None bounds are open)."""
        filters = dict(
            top_k=top_k,
            job_id=job_id,
            source=source,
            min_taste_score=min_taste_score,
            max_taste_score=max_taste_score,
            yaw=yaw,
            pitch=pitch,
            roll=roll,
        )
        return await self._run(Requests.search(text, image, vector, **filters))

    async def label(
        self,
        labels: Mapping[str, bool | None],
        *,
        taste_model: str = "default",
        labeler: str = "",
        job_id: str = "",
    ) -> search_pb2.LabelResponse:
        """Labels items as good (True) or bad (False) for a taste model, or takes a label back (None):
        index ids ("<job>/<item>", an imported stem), or with `job_id` that job's item ids or stems."""
        return await self._run(Requests.label(labels, taste_model, labeler, job_id))

    # curation (docs/curation.md)
    async def train_taste(
        self, taste_model: str = "default", *, family: str = "", feature_keys: Sequence[str] = ()
    ) -> search_pb2.TasteModelInfo:
        """Trains a new version from your labels; returns its cross-validated metrics and thresholds.
        `feature_keys`: train on these feature sets (default CLIP ViT-L/14@336 alone)."""
        return await self._run(Requests.train_taste(taste_model, family, feature_keys))

    async def list_taste_models(self) -> list[search_pb2.TasteModelInfo]:
        return list((await self._run(Requests.list_taste_models())).models)

    async def get_taste_model(self, taste_model: str = "default") -> search_pb2.TasteModelInfo:
        return await self._run(Requests.get_taste_model(taste_model))

    async def score_items(
        self, taste_model: str = "default", *, job_id: str = "", dataset_uri: str = "", limit: int = 0
    ) -> gateway_pb2.ScoreItemsResponse:
        """Scores a job's candidates or a dataset's items with a taste model (and a histogram)."""
        return await self._run(Requests.score_items(taste_model, job_id, dataset_uri, limit))

    async def review_queue(
        self, job_id: str, *, count: int = 20, images: bool = False
    ) -> gateway_pb2.ReviewQueueResponse:
        """The job's items waiting for a verdict, the most informative first (active learning)."""
        return await self._run(Requests.review_queue(job_id, count, images))

    async def review(self, job_id: str, item_id: str, accept: bool, *, labeler: str = "") -> gateway_pb2.Item:
        """A person's verdict: accepted items are written into the dataset; both become labels."""
        return await self._run(Requests.review(job_id, item_id, accept, labeler))

    async def curate_dataset(
        self,
        dataset_uri: str,
        taste_model: str = "default",
        *,
        threshold: float | None = None,
        dry_run: bool = False,
    ) -> gateway_pb2.CurateDatasetResponse:
        """Re-scores a dataset; items below the threshold move to its rejected/ folder."""
        return await self._run(Requests.curate_dataset(dataset_uri, taste_model, threshold, dry_run))

    async def dedup_dataset(
        self,
        dataset_uri: str,
        *,
        threshold: float | None = None,
        dry_run: bool = False,
        include_public: bool = False,
    ) -> gateway_pb2.DedupDatasetResponse:
        """Near-duplicate groups of a dataset; the worse copies move to its rejected/ folder."""
        return await self._run(Requests.dedup_dataset(dataset_uri, threshold, dry_run, include_public))

    async def import_items(
        self, items: Iterable[search_pb2.IndexedItem], *, batch_size: int = 256
    ) -> gateway_pb2.ImportItemsResponse:
        """Streams features made elsewhere (e.g. a downloaded SFHQ part) into the running search index."""
        return await self._run(Requests.import_items(items, batch_size))
