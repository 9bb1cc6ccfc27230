"""The curation RPCs of the gateway, as plain methods for one caller (docs/curation.md).

Taste models are the caller's own (trained from their labels, versioned). The review band: a job's
items the taste model was unsure about wait in state `review`; `review_queue` serves the ones a
verdict teaches most (the search service's active learning), `review` applies a person's verdict
(the item is annotated into the dataset, or stays out) and records it as a label. Dataset passes
(`curate_dataset`, `dedup_dataset`) take items out of a dataset into its rejected/ folder, never
deleting them, and rebuild the manifest.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np

from gateway import jobs, messages
from gateway.coordinator import JobStore
from gateway.datasets import DatasetBook
from gateway.jobs import ResolvedSpec
from gateway.locations import Locations
from gateway.pipeline import Plan, review_verdict
from gateway.search_client import SearchClient
from services.common.auth import Principal
from services.common.contracts import ItemState
from services.common.dataset import FOLDERS, DatasetWriter
from services.common.errors import FailedPrecondition, InvalidInput, NotFound, Unavailable
from services.common.safe_pickle import UnsafePickleError, load_feature_pickle
from sfhq.v1 import gateway_pb2, search_pb2

log = logging.getLogger("sfhq.gateway")

DEFAULT_MODEL = "default"
MAX_SCORED = 100_000
REVIEWABLE = {ItemState.REVIEW, ItemState.REJECTED_TASTE}  # a person may also rescue a taste reject
HISTOGRAM_BINS = 20


def model_name(spec: str) -> str:
    """'name@3' -> 'name' (labels train a name; versions are what training makes)."""
    return spec.partition("@")[0] or DEFAULT_MODEL


class Curation:
    def __init__(
        self,
        store: JobStore,
        datasets: DatasetBook,
        locations: Locations,
        search: SearchClient,
        job_for: Any,  # GatewayCore.job_for: (job_id, caller) -> the job's record, or NOT_FOUND
        get_item: Any,  # GatewayCore.get_item
    ) -> None:
        self.store = store
        self.datasets = datasets
        self.locations = locations
        self.search = search
        self.job_for = job_for
        self.get_item = get_item

    # ---- taste models ---------------------------------------------------------------------------

    def check_model(self, spec: ResolvedSpec) -> ResolvedSpec:
        """At submit: the job's taste model must exist; the job records the version it will use."""
        if not spec.taste_model:
            return spec
        try:
            info = self.search.taste_model(spec.owner, spec.taste_model)
        except Exception as exc:
            if getattr(exc, "code", "") in ("NOT_FOUND", "INVALID_ARGUMENT"):
                raise InvalidInput(
                    f"curation.taste_model: {exc}; train one first (`sfhq taste train "
                    f"{model_name(spec.taste_model)}`)"
                ) from None
            raise
        from dataclasses import replace

        return replace(spec, taste_model=f"{info.name}@{info.version}")

    def train(self, request: search_pb2.TrainTasteRequest, caller: Principal) -> search_pb2.TasteModelInfo:
        request.owner = caller.name
        return self.search.train(request)

    def list_models(self, caller: Principal) -> search_pb2.ListTasteModelsResponse:
        return self.search.list_models("" if caller.is_admin else caller.name)

    def get_model(
        self, request: search_pb2.GetTasteModelRequest, caller: Principal
    ) -> search_pb2.TasteModelInfo:
        return self.search.taste_model(caller.name, request.taste_model or DEFAULT_MODEL)

    # ---- scores ---------------------------------------------------------------------------------

    def score_items(
        self, request: gateway_pb2.ScoreItemsRequest, caller: Principal
    ) -> gateway_pb2.ScoreItemsResponse:
        limit = request.limit or 10_000
        if not 1 <= limit <= MAX_SCORED:
            raise InvalidInput(f"limit: must be in [1, {MAX_SCORED}]")
        model = request.taste_model or DEFAULT_MODEL
        reply = gateway_pb2.ScoreItemsResponse()
        if request.job_id and not request.dataset_uri:
            self.job_for(request.job_id, caller)
            decided = [i for i in self.store.items(request.job_id) if "curate" in i["outputs"]][:limit]
            ids = [f"{request.job_id}/{i['id']}" for i in decided]
            scores, info = (
                self.search.score_ids(caller.name, model, ids)
                if ids
                else ([], self.search.taste_model(caller.name, model))
            )
            for record, index_id, score in zip(decided, ids, scores, strict=True):
                reply.items.add(item_id=index_id, stem=record["stem"], score=score, decision=record["state"])
        elif request.dataset_uri and not request.job_id:
            stems, vectors, rows = self._dataset_features(request.dataset_uri, caller, limit)
            scores, info = self.search.score_vectors(caller.name, model, vectors)
            for stem, score in zip(stems, scores, strict=True):
                row = rows.get(stem, {})
                reply.items.add(
                    item_id=f"{row.get('job_id')}/{row.get('item_id')}" if row else stem,
                    stem=stem,
                    score=score,
                    decision="kept",
                )
        else:
            raise InvalidInput("job_id / dataset_uri: give exactly one")
        reply.model.CopyFrom(info)
        counts, _ = np.histogram([i.score for i in reply.items], bins=HISTOGRAM_BINS, range=(0.0, 1.0))
        reply.histogram.extend(int(c) for c in counts)
        return reply

    def _dataset_features(
        self, uri: str, caller: Principal, limit: int
    ) -> tuple[list[str], np.ndarray, dict[str, dict[str, Any]]]:
        """(stems, CLIP features [N, D], manifest rows by stem) of a dataset folder (ours or an SFHQ part)."""
        self.locations.place("dataset_uri", uri, caller.name)
        writer = DatasetWriter(uri)
        folder = FOLDERS["features"][0]
        keys = [k for k in writer.store.list(f"{folder}/") if k.endswith(".pickle")][: limit + 1]
        if len(keys) > limit:
            raise InvalidInput(
                f"dataset_uri: more than {limit} items; pass a larger limit (at most {MAX_SCORED})"
            )
        if not keys:
            raise FailedPrecondition(f"dataset_uri: {uri} has no {folder}/*.pickle to score")
        stems, vectors = [], []
        for key in keys:
            try:
                features = load_feature_pickle(writer.store.get(key))
            except (UnsafePickleError, ValueError, EOFError) as exc:
                raise InvalidInput(f"dataset_uri: {key} is not a feature pickle ({exc})") from None
            vector = features.get("CLIP_ViTL_14@336")
            if vector is None:
                raise InvalidInput(f"dataset_uri: {key} has no CLIP_ViTL_14@336 features")
            stems.append(key.rsplit("/", 1)[-1].removesuffix(".pickle"))
            vectors.append(np.asarray(vector, np.float32).reshape(-1))
        rows = {str(r.get("stem")): r for r in writer.all_rows()}
        return stems, np.stack(vectors), rows

    # ---- the review band ------------------------------------------------------------------------

    def review_queue(
        self, request: gateway_pb2.ReviewQueueRequest, caller: Principal
    ) -> gateway_pb2.ReviewQueueResponse:
        job = self.job_for(request.job_id, caller)
        spec = ResolvedSpec.from_json(job["resolved"])
        picks = self.search.next_review(
            search_pb2.NextReviewRequest(
                taste_model=spec.taste_model,
                owner=spec.owner,
                filter=search_pb2.SearchFilter(job_id=request.job_id, decisions=["review"]),
                count=request.count or 20,
            )
        )
        reply = gateway_pb2.ReviewQueueResponse(waiting=picks.waiting)
        for pick in picks.items:
            item = self.get_item(
                gateway_pb2.GetItemRequest(
                    job_id=request.job_id, item_id=pick.item_id, include_image=request.include_images
                ),
                caller,
            )
            reply.items.add(item=item, score=pick.score, uncertainty=pick.uncertainty)
        return reply

    def review(self, request: gateway_pb2.ReviewRequest, caller: Principal) -> gateway_pb2.Item:
        job = self.job_for(request.job_id, caller)
        spec = ResolvedSpec.from_json(job["resolved"])
        item_id = request.item_id.removeprefix(f"{request.job_id}/")
        record = self.store.item(request.job_id, item_id)
        if record is None:
            raise NotFound(f"item_id: no item {request.item_id!r} in job {request.job_id!r}")
        if record["state"] not in REVIEWABLE:
            raise FailedPrecondition(
                f"item_id: {item_id} is {record['state']}; only items in review (or rejected by the taste "
                "model) take a verdict"
            )
        state = job.get("state")
        if state == jobs.FINALIZING or state == jobs.QUEUED:
            raise Unavailable(f"job {request.job_id} is {state.lower()}; retry in a few seconds")
        if state in (jobs.CANCELLING, jobs.CANCELLED) or job.get("cancel_requested") == "1":
            raise FailedPrecondition(f"job {request.job_id} was cancelled: its items take no verdicts")
        if len(request.labeler) > 64:
            raise InvalidInput("labeler: at most 64 characters")
        index_id = f"{request.job_id}/{item_id}"
        self.search.label(
            search_pb2.LabelRequest(
                taste_model=model_name(spec.taste_model),
                owner=spec.owner,
                labels=[
                    search_pb2.ItemLabel(
                        item_id=index_id, positive=request.accept, labeler=request.labeler or caller.name
                    )
                ],
            )
        )
        self.search.set_decisions([index_id], "accepted" if request.accept else "rejected_taste")
        plan = review_verdict(spec, request.job_id, record, request.accept)
        if state in (jobs.SUCCEEDED, jobs.FAILED):  # a finished job takes the item in: it runs again
            self.store.set_state(request.job_id, jobs.RUNNING, only_from={jobs.SUCCEEDED, jobs.FAILED})
        self.store.apply(request.job_id, plan, task_id=f"{index_id}/review/{uuid.uuid4().hex[:8]}")
        self.store.apply(request.job_id, Plan())  # nothing in flight: finalizes (dedup, annotate) again
        return messages.item(request.job_id, self.store.item(request.job_id, item_id) or record)

    # ---- dataset passes -------------------------------------------------------------------------

    def curate_dataset(
        self, request: gateway_pb2.CurateDatasetRequest, caller: Principal
    ) -> gateway_pb2.CurateDatasetResponse:
        model = request.taste_model or DEFAULT_MODEL
        stems, vectors, rows = self._dataset_features(request.dataset_uri, caller, MAX_SCORED)
        scores, info = self.search.score_vectors(caller.name, model, vectors)
        threshold = request.threshold if request.HasField("threshold") else info.low_threshold
        if not 0.0 <= threshold <= 1.0:
            raise InvalidInput(f"threshold: {threshold} is outside [0, 1]")
        reply = gateway_pb2.CurateDatasetResponse(
            scored=len(stems), threshold=threshold, dry_run=request.dry_run, model=info
        )
        leaving = [(stem, score) for stem, score in zip(stems, scores, strict=True) if score < threshold]
        reply.kept = len(stems) - len(leaving)
        for stem, score in leaving:
            reply.moved.add(stem=stem, score=score, reason="taste")
        if not request.dry_run and leaving:
            taken = [
                {
                    **_origin(rows.get(stem)),
                    "stem": stem,
                    "reason": "taste",
                    "taste_score": score,
                    "model": f"{info.name}@{info.version}",
                }
                for stem, score in leaving
            ]
            self._take_out(request.dataset_uri, taken)
            index_ids = [f"{r['job_id']}/{r['item_id']}" for r in taken if r.get("job_id")]
            self.search.set_decisions(index_ids, "rejected_taste")
        return reply

    def dedup_dataset(
        self, request: gateway_pb2.DedupDatasetRequest, caller: Principal
    ) -> gateway_pb2.DedupDatasetResponse:
        self.locations.place("dataset_uri", request.dataset_uri, caller.name)
        record = self.datasets.find(self.locations.canonical("dataset_uri", request.dataset_uri))
        if record is None:
            raise FailedPrecondition(
                f"dataset_uri: {request.dataset_uri} is not a dataset of this system (its items are not indexed by dataset)"
            )
        if not caller.owns(record.owner):
            raise NotFound(f"dataset_uri: no dataset at {request.dataset_uri}")
        threshold = request.threshold if request.HasField("threshold") else 0.92
        if not 0.0 < threshold < 1.0:
            raise InvalidInput(f"threshold: {threshold} is not a cosine in (0, 1)")
        writer = DatasetWriter(request.dataset_uri)
        rows = {f"{r.get('job_id')}/{r.get('item_id')}": r for r in writer.all_rows()}
        _, groups = self.search.dedup_groups(
            record.dataset_id, threshold, include_public=request.include_public
        )
        reply = gateway_pb2.DedupDatasetResponse(
            items=groups.items, dry_run=request.dry_run, seconds=groups.seconds
        )
        taken = []
        for group in groups.groups:
            kept_stem = rows.get(group.kept.item_id, {}).get("stem", group.kept.item_id)
            out = reply.groups.add()
            out.kept.CopyFrom(group.kept)
            out.kept.item_id = kept_stem
            for member in group.removed:
                row = rows.get(member.item_id)
                if row is None:
                    continue  # not written (another job's candidate): its own pass decides
                entry = out.removed.add()
                entry.CopyFrom(member)
                entry.item_id = row["stem"]
                reply.moved.add(
                    stem=row["stem"],
                    score=member.taste_score,
                    reason="duplicate",
                    duplicate_of=kept_stem,
                    similarity=member.similarity,
                )
                taken.append(
                    {
                        **_origin(row),
                        "stem": row["stem"],
                        "reason": "duplicate",
                        "duplicate_of": kept_stem,
                        "similarity": member.similarity,
                    }
                )
        if not request.dry_run and taken:
            self._take_out(request.dataset_uri, taken)
            self.search.set_decisions([f"{t['job_id']}/{t['item_id']}" for t in taken], "rejected_duplicate")
        return reply

    def _take_out(self, uri: str, rows: list[dict[str, Any]]) -> None:
        writer = DatasetWriter(uri)
        record = self.datasets.find(self.locations.canonical("dataset_uri", uri))
        lock = (
            self.datasets.lock(record.dataset_id)
            if record
            else self.store.redis.lock(f"sfhq:dataset-uri-lock:{uri}", timeout=120)
        )
        with lock:
            writer.move_to_rejected(rows)
            if record is not None:
                writer.merge(record.identity())
        log.info("took %d items out of %s into rejected/", len(rows), uri)


def _origin(row: dict[str, Any] | None) -> dict[str, Any]:
    return {"job_id": (row or {}).get("job_id", ""), "item_id": (row or {}).get("item_id", "")}
