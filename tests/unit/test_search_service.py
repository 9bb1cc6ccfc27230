"""Search service: the gRPC API over a real server, the embed stage, and curate decisions on a real Redis."""

from __future__ import annotations

import io
import pickle
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from services.common.blobs import BlobStore, item_key
from services.common.contracts import CuratePayload
from services.common.model_holder import LazyModel
from services.common.queue import RedisQueue, Task, connect_redis
from services.common.weights import WeightsRegistry
from services.search.clip_model import load_clip
from services.search.curate import CurateRequest, Curator, JobLock, LockUnavailable, decisions_key
from services.search.dedup import dataset_groups
from services.search.embed_stage import embed_stage
from services.search.index import KEPT_DECISIONS, ItemMeta, SearchFilter, VectorIndex
from services.search.random_weights import write_random_clip_folder
from services.search.service import build_process, clip_provenance, curate_stage
from services.search.sfhq_import import import_sfhq
from services.search.state import IndexState
from services.search.taste import TasteCache, TasteModel, TasteStore
from sfhq.tensors import numpy_to_tensor, tensor_to_numpy
from sfhq.v1 import common_pb2, search_pb2, search_pb2_grpc
from tests.helpers.data import face_bytes
from tests.helpers.services import ServedProcess, settings_for
from tests.helpers.synthetic import clustered_features, normalized

DIM = 32  # the tiny CLIP's projection size


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_clip_folder(tmp_path_factory.mktemp("clip") / "clip", seed=11)


def jpeg(index: int) -> bytes:
    return face_bytes(index)


def code_of(call) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a call that must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def Server(settings) -> ServedProcess:  # noqa: N802 - reads like the class it returns
    return ServedProcess(build_process(settings, save_debounce_s=0.2), search_pb2_grpc.SearchStub, grace_s=1)


@pytest.fixture()
def server(tmp_path: Path, clip_folder: Path):
    settings = settings_for(tmp_path)
    write_random_clip_folder(
        WeightsRegistry(settings.weights_dir).expected_path("clip-vit-l-14-336"), seed=11
    )
    running = Server(settings)
    yield running
    running.close()


def test_embed_search_add_and_remove_over_grpc(server: Server, tmp_path: Path) -> None:
    stub = server.stub
    images = [common_pb2.Image(data=jpeg(i)) for i in range(3)]
    embedded = stub.Embed(search_pb2.EmbedRequest(images=images, texts=["a smiling woman"]))
    vectors = [tensor_to_numpy(t) for t in embedded.image_features]
    assert len(vectors) == 3 and vectors[0].shape == (DIM,) and embedded.text_features[0].shape == [DIM]

    items = [
        search_pb2.IndexedItem(
            item_id=f"face{i}",
            vector=numpy_to_tensor(v),
            image_uri=f"file:///f{i}.jpg",
            job_id="j1" if i < 2 else "j2",
            source="job:j1" if i < 2 else "sfhq_part1",
            taste_score=0.1 * i,
        )
        for i, v in enumerate(vectors)
    ]
    assert stub.Add(search_pb2.AddRequest(items=items)).index_size == 3

    by_image = stub.Search(search_pb2.SearchRequest(image=images[2], top_k=2)).hits
    assert by_image[0].item_id == "face2" and by_image[0].score > 0.999 and by_image[0].source == "sfhq_part1"
    filtered = stub.Search(
        search_pb2.SearchRequest(
            vector=numpy_to_tensor(vectors[2]), top_k=5, filter=search_pb2.SearchFilter(job_id="j1")
        )
    ).hits
    assert {h.item_id for h in filtered} == {"face0", "face1"}
    scored = stub.Search(
        search_pb2.SearchRequest(
            vector=numpy_to_tensor(vectors[0]), filter=search_pb2.SearchFilter(min_taste_score=0.05)
        )
    ).hits
    assert {h.item_id for h in scored} == {"face1", "face2"} and scored[0].HasField("taste_score")
    assert len(stub.Search(search_pb2.SearchRequest(text="a smiling woman")).hits) == 3

    removed = stub.Remove(search_pb2.RemoveRequest(item_ids=["face0", "nope"]))
    assert (removed.removed, removed.index_size) == (1, 2)

    # Bad requests name their problem.
    code, details = code_of(lambda: stub.Search(search_pb2.SearchRequest(text="x", top_k=5000)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in details
    code, details = code_of(lambda: stub.Search(search_pb2.SearchRequest(top_k=3)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no query" in details
    code, details = code_of(
        lambda: stub.Embed(search_pb2.EmbedRequest(images=[common_pb2.Image(data=b"no image")]))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "image 0" in details
    nan = numpy_to_tensor(np.full(DIM, np.nan, np.float32))
    code, details = code_of(lambda: stub.Search(search_pb2.SearchRequest(vector=nan)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in details
    wrong = numpy_to_tensor(np.ones(DIM + 1, np.float32))
    code, details = code_of(
        lambda: stub.Add(search_pb2.AddRequest(items=[search_pb2.IndexedItem(item_id="w", vector=wrong)]))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "dimension" in details


def test_dedup_label_train_and_score_over_grpc(server: Server) -> None:
    stub = server.stub
    base = normalized(np.random.default_rng(0).standard_normal((3, DIM)))
    stub.Add(
        search_pb2.AddRequest(items=[search_pb2.IndexedItem(item_id="kept", vector=numpy_to_tensor(base[0]))])
    )
    candidates = [base[0] + 0.01, base[1], base[1] + 0.01, base[2]]
    reply = stub.Dedup(
        search_pb2.DedupRequest(
            vectors=[numpy_to_tensor(v.astype(np.float32)) for v in candidates], against_index=True
        )
    )
    assert list(reply.kept) == [1, 3]
    assert {(d.index, d.duplicate_of) for d in reply.duplicates} == {(0, "kept"), (2, "#1")}
    worst_first = stub.Dedup(
        search_pb2.DedupRequest(
            vectors=[numpy_to_tensor(v.astype(np.float32)) for v in candidates],
            scores=[0.5, 0.1, 0.9, 0.5],
            worst_first=True,
        )
    )
    assert list(worst_first.kept) == [0, 2, 3]

    vectors = clustered_features(120, DIM, seed=3).vectors
    good = normalized(vectors) @ np.random.default_rng(4).standard_normal(DIM) > 0
    labels = [
        search_pb2.ItemLabel(vector=numpy_to_tensor(v), positive=bool(g), labeler="ana")
        for v, g in zip(vectors, good, strict=True)
    ]
    counts = stub.Label(search_pb2.LabelRequest(labels=labels))
    assert (counts.positives, counts.negatives) == (int(good.sum()), int((~good).sum()))
    by_item = stub.Label(
        search_pb2.LabelRequest(labels=[search_pb2.ItemLabel(item_id="kept", positive=True)])
    )
    assert by_item.positives == counts.positives + 1

    info = stub.TrainTaste(search_pb2.TrainTasteRequest())
    assert info.name == "default" and info.version == 1 and info.cv_auc > 0.8
    assert info.low_threshold <= 0.35 + 1e-6 and info.high_threshold >= 0.65 - 1e-6  # float32 on the wire
    scores = stub.Score(
        search_pb2.ScoreRequest(taste_model="default@1", vectors=[numpy_to_tensor(v) for v in vectors[:20]])
    )
    assert scores.model.version == 1 and len(scores.scores) == 20
    assert (np.array(scores.scores) >= 0.5).astype(bool).tolist().count(True) > 0
    assert np.mean((np.array(scores.scores) >= 0.5) == good[:20]) > 0.7
    with_image = stub.Score(search_pb2.ScoreRequest(images=[common_pb2.Image(data=jpeg(0))]))
    assert len(with_image.scores) == 1

    code, details = code_of(
        lambda: stub.Score(
            search_pb2.ScoreRequest(taste_model="nobody", vectors=[numpy_to_tensor(vectors[0])])
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND and "nobody" in details
    code, details = code_of(lambda: stub.TrainTaste(search_pb2.TrainTasteRequest(taste_model="empty")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "at least" in details
    code, details = code_of(
        lambda: stub.Label(search_pb2.LabelRequest(labels=[search_pb2.ItemLabel(item_id="zz")]))
    )
    assert code == grpc.StatusCode.NOT_FOUND and "no indexed item 'zz'" in details


def test_the_index_survives_a_restart(tmp_path: Path, clip_folder: Path) -> None:
    settings = settings_for(tmp_path)
    first = Server(settings)
    vector = numpy_to_tensor(np.ones(DIM, np.float32))
    first.stub.Add(search_pb2.AddRequest(items=[search_pb2.IndexedItem(item_id="persisted", vector=vector)]))
    first.close()  # saves on stop
    second = Server(settings)
    try:
        hits = second.stub.Search(search_pb2.SearchRequest(vector=vector, top_k=1)).hits
        assert hits[0].item_id == "persisted"
    finally:
        second.close()


def test_missing_clip_weights_fail_precondition_but_vector_search_works(tmp_path: Path) -> None:
    running = Server(settings_for(tmp_path))  # no CLIP in the weights folder
    try:
        code, details = code_of(lambda: running.stub.Search(search_pb2.SearchRequest(text="a face")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "sfhq weights" in details
        vector = numpy_to_tensor(np.ones(DIM, np.float32))
        running.stub.Add(search_pb2.AddRequest(items=[search_pb2.IndexedItem(item_id="v", vector=vector)]))
        assert running.stub.Search(search_pb2.SearchRequest(vector=vector)).hits[0].item_id == "v"
    finally:
        running.close()


def test_embed_stage_writes_raw_features(tmp_path: Path, clip_folder: Path) -> None:
    settings = settings_for(tmp_path)
    blobs = BlobStore(settings.blob_url)
    embedder = load_clip(clip_folder)
    blobs.put("inputs/face.jpg", jpeg(1))
    blobs.put("inputs/broken.jpg", b"not an image")
    tasks = [
        Task.make("job1", "i1", "embed", {"image": "inputs/face.jpg"}),
        Task.make("job1", "i2", "embed", {"image": "inputs/broken.jpg"}),
        Task.make("job1", "i3", "embed", {"image": "inputs/missing.jpg"}),
        Task.make("job1", "i4", "embed", {}),
    ]
    results = embed_stage(LazyModel.ready("clip", embedder, clip_provenance(embedder)), blobs, settings)(
        tasks
    )
    assert [r.ok for r in results] == [True, False, False, False]
    output = dict(results[0].output)
    provenance = output.pop("provenance")
    assert output == {
        "features": item_key("job1", "i1", "embed", "features.npy"),
        "feature_key": "CLIP_ViTL_14@336",
        "dim": DIM,
        "extra_features": {},  # none configured
    }
    assert provenance["clip"]["random_weights"] is True and len(provenance["clip"]["sha256"]) == 64
    expected = embedder.embed_images([Image.open(io.BytesIO(jpeg(1))).convert("RGB")])[0]
    np.testing.assert_allclose(blobs.get_npy(results[0].output["features"]), expected, atol=1e-5)
    assert [r.error_code for r in results[1:]] == ["INVALID_ARGUMENT", "NOT_FOUND", "INVALID_ARGUMENT"]


# ---- curate ------------------------------------------------------------------------------------------


def put_features(blobs: BlobStore, job: str, item: str, vector: np.ndarray) -> dict:
    key = item_key(job, item, "embed", "features.npy")
    blobs.put_npy(key, vector.astype(np.float32))
    return {"features": key, "image": item_key(job, item, "synthesize", "image.png")}


def make_curator(redis_client, blobs: BlobStore, tastes: TasteCache | None = None) -> Curator:
    return Curator(
        redis_client, IndexState(blobs), blobs, tastes or TasteCache(TasteStore(blobs)), lock_wait_s=20
    )


def test_curate_decides_by_taste_with_a_review_band_indexes_everything_and_is_idempotent(
    redis_client, tmp_path: Path
) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    features = clustered_features(120, DIM, seed=8).vectors
    good = normalized(features) @ np.random.default_rng(9).standard_normal(DIM) > 0
    tastes = TasteStore(blobs)
    model = TasteModel.train(features, good, name="default/taste", family="lr")
    tastes.save(model)
    curator = make_curator(redis_client, blobs, TasteCache(tastes))
    handle = curate_stage(curator)
    scores = model.predict_proba(features)
    best, worst, middle = int(np.argmax(scores)), int(np.argmin(scores)), int(np.argmin(np.abs(scores - 0.5)))
    taste = {"taste_model": "taste", "accept_threshold": 0.55, "reject_threshold": 0.45, "dataset_id": "d1"}
    tasks = [
        Task.make("jobA", "a", "curate", {**put_features(blobs, "jobA", "a", features[best]), **taste}),
        Task.make("jobA", "b", "curate", {**put_features(blobs, "jobA", "b", features[worst]), **taste}),
        Task.make("jobA", "c", "curate", {**put_features(blobs, "jobA", "c", features[middle]), **taste}),
        Task.make("jobA", "d", "curate", put_features(blobs, "jobA", "d", features[worst])),  # no taste model
        Task.make("jobA", "f", "curate", {"features": "missing/features.npy", "image": "x.png"}),
        Task.make("jobA", "g", "curate", {"image": "x.png"}),
    ]
    results = handle(tasks)
    assert [r.output.get("decision") for r in results] == [
        "accepted",
        "rejected_taste",
        "review",
        "accepted",
        None,
        None,
    ]
    assert results[2].output["taste_score"] == pytest.approx(scores[middle], abs=1e-6)
    assert [(r.ok, r.error_code) for r in results[4:]] == [(False, "NOT_FOUND"), (False, "INVALID_ARGUMENT")]
    index = curator.state.index
    # every decided candidate is indexed with its decision and dataset, rejected ones too
    assert {i: index.get_meta(i).decision for i in index.item_ids()} == {
        "jobA/a": "accepted",
        "jobA/b": "rejected_taste",
        "jobA/c": "review",
        "jobA/d": "accepted",
    }
    assert index.get_meta("jobA/a").dataset_id == "d1" and index.get_meta("jobA/a").source == "job:jobA"
    kept = index.search(features[worst], k=10, filter=SearchFilter(decisions=KEPT_DECISIONS))[0]
    assert {h.item_id for h in kept} == {"jobA/a", "jobA/d"}

    # Redelivery: the recorded decision comes back.
    again = handle(tasks[:3])
    assert [r.output["decision"] for r in again] == ["accepted", "rejected_taste", "review"]
    assert redis_client.hlen(decisions_key("jobA")) == 4  # the failed tasks decide nothing

    # A person's later verdict is recorded in the index and survives a restart from Redis.
    assert curator.record_decisions(["jobA/c"], "accepted") == 1
    fresh = make_curator(redis_client, blobs)
    fresh.catch_up_all()
    assert fresh.state.index.get_meta("jobA/c").decision == "accepted"


def test_dataset_wide_duplicates_keep_the_best_scored_copy_whatever_the_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    centres = normalized(rng.standard_normal((5, DIM)))
    rows = []
    for g in range(5):
        for copy in range(3):  # three near-identical candidates per group, from two jobs
            vector = centres[g] + 0.005 * rng.standard_normal(DIM)
            rows.append((f"job{copy % 2}/g{g}-{copy}", vector, float(rng.random())))
    rows.append(("SFHQ_pt1_00000009", centres[0] + 0.004 * rng.standard_normal(DIM), None))  # imported
    outcomes = []
    for order in (rows, rows[::-1], [rows[i] for i in rng.permutation(len(rows))]):
        index = VectorIndex(DIM)
        for item_id, vector, score in order:
            meta = ItemMeta(
                job_id="" if score is None else item_id.split("/")[0],
                taste_score=score,
                dataset_id="" if score is None else "d1",
                decision="" if score is None else "accepted",
                owner="" if score is None else "ann",
            )
            index.add([item_id], vector[None, :], [meta])
        dataset = SearchFilter(dataset_id="d1", decisions=KEPT_DECISIONS)
        groups, compared = dataset_groups(index, dataset)
        assert compared == 15 and len(groups) == 5
        for group in groups:  # the best-scored member stays
            members = [(group.kept_score, group.kept)] + [(score, i) for i, score, _ in group.removed]
            assert group.kept_score == max(score for score, _ in members)
        outcomes.append(sorted((g.kept, sorted(i for i, _, _ in g.removed)) for g in groups))
        with_public, _ = dataset_groups(index, dataset, include_public=True)
        first = next(g for g in with_public if g.kept == "SFHQ_pt1_00000009")
        assert len(first.removed) == 3  # an imported SFHQ image stays and removes its twins
        only = dataset_groups(index, dataset, candidate_ids=["job1/g2-1"])[0]
        assert [g.kept for g in only] == [next(g.kept for g in groups if "g2-" in g.kept)]
    assert outcomes[0] == outcomes[1] == outcomes[2]


def test_a_restarted_worker_recovers_decided_items_from_redis(redis_client, tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    first = make_curator(redis_client, blobs)
    vectors = normalized(np.random.default_rng(13).standard_normal((3, DIM)))
    curate_stage(first)(
        [
            Task.make("jobD", f"x{i}", "curate", put_features(blobs, "jobD", f"x{i}", v))
            for i, v in enumerate(vectors)
        ]
    )
    # A crash before the debounced save: a fresh process starts from an empty index.
    second = make_curator(redis_client, blobs)
    assert second.catch_up_all() == 3
    assert set(second.state.index.item_ids()) == {"jobD/x0", "jobD/x1", "jobD/x2"}


def test_a_lost_lock_cannot_commit(redis_client, tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    curator = make_curator(redis_client, blobs)
    request_payload = put_features(blobs, "jobE", "y", np.ones(DIM))
    request = CurateRequest("jobE", "y", CuratePayload.parse(request_payload))
    with JobLock(redis_client, "jobE", ttl_ms=5000) as lock:
        redis_client.set(lock.key, "someone-else")  # our lock expired and another worker took it
        with pytest.raises(LockUnavailable):
            curator.decide(request, lock)
    assert redis_client.hget(decisions_key("jobE"), "y") is None


# ---- SFHQ import into the store ------------------------------------------------------------------------


def test_import_sfhq_then_search_it_by_text(tmp_path: Path, clip_folder: Path) -> None:
    text_only = load_clip(clip_folder, towers="text")  # what searching SFHQ needs: no image tower, no GPU
    query = "an old man with a gray beard"
    planted = text_only.embed_texts([query])[0]
    part = tmp_path / "SFHQ_part4"
    (part / "images").mkdir(parents=True)
    (part / "pretrained_features").mkdir()
    rng = np.random.default_rng(14)
    for i in range(20):
        stem = f"SFHQ_pt4_{i:08d}"
        Image.new("RGB", (4, 4)).save(part / "images" / f"{stem}.jpg")
        vector = planted if i == 7 else rng.standard_normal(DIM)
        (part / "pretrained_features" / f"{stem}.pickle").write_bytes(
            pickle.dumps({"CLIP_ViTL_14@336": vector.astype(np.float16)[None, :]})
        )
    index = VectorIndex(DIM)
    report = import_sfhq(part, index)
    assert report.indexed == 20 and report.source == "sfhq_part4" and len(index) == 20
    hits = index.search(text_only.embed_texts([query]), k=3)[0]
    assert hits[0].item_id == "SFHQ_pt4_00000007" and hits[0].source == "sfhq_part4"


def test_queue_workers_embed_and_curate_through_redis(sfhq_settings) -> None:
    write_random_clip_folder(
        WeightsRegistry(sfhq_settings.weights_dir).expected_path("clip-vit-l-14-336"), seed=2
    )
    process = build_process(sfhq_settings, save_debounce_s=0.2)
    port = process.start()
    queue = RedisQueue.from_settings(sfhq_settings, connect_redis(sfhq_settings.redis_url))
    blobs = BlobStore(sfhq_settings.blob_url)
    try:
        blobs.put("jobs/jobQ/inputs/face.jpg", jpeg(2))
        queue.enqueue(Task.make("jobQ", "i1", "embed", {"image": "jobQ/none.jpg"}))  # missing: fails alone
        queue.enqueue(Task.make("jobQ", "i2", "embed", {"image": "jobs/jobQ/inputs/face.jpg"}))
        results = wait_for_results(queue, 2)
        assert (results["i1"].ok, results["i1"].error_code) == (False, "NOT_FOUND")
        features = results["i2"].output["features"]
        payload = {
            "features": features,
            "image": "jobs/jobQ/inputs/face.jpg",
            "taste_model": "",
            "accept_threshold": None,
            "dedup_threshold": None,
        }
        queue.enqueue(Task.make("jobQ", "i2", "curate", payload))
        queue.enqueue(Task.make("jobQ", "i3", "curate", payload))  # the same features again
        results = wait_for_results(queue, 2)
        # curate decides taste only (none here): duplicates are the dataset-wide pass's business
        assert results["i2"].output["decision"] == results["i3"].output["decision"] == "accepted"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            hits = (
                search_pb2_grpc.SearchStub(channel)
                .Search(
                    search_pb2.SearchRequest(
                        image=common_pb2.Image(uri="jobs/jobQ/inputs/face.jpg"),
                        filter=search_pb2.SearchFilter(source="job"),
                    )
                )
                .hits
            )
        assert hits[0].item_id == "jobQ/i2" and hits[0].job_id == "jobQ" and hits[0].source == "job:jobQ"
        assert hits[0].image_uri == blobs.uri("jobs/jobQ/inputs/face.jpg")
    finally:
        process.stop(grace=2)


def wait_for_results(queue, count: int, timeout_s: float = 60.0) -> dict:
    found: dict = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < count and time.monotonic() < deadline:
        for entry_id, result in queue.read_results("test", count=10, block_ms=200):
            found[result.item_id] = result
            queue.ack_results([entry_id])
    assert len(found) == count, found
    return found


def test_index_state_saves_debounced_and_on_close(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    state = IndexState(blobs, debounce_s=0.3)
    assert state.load() is None  # nothing saved yet
    index = state.index_for(DIM)
    index.add(["a"], np.ones((1, DIM)))
    state.mark_dirty()
    assert not state.save_if_due()  # a burst of changes waits for the debounce
    time.sleep(0.35)
    assert state.save_if_due() and state.saves == 1
    assert not state.save_if_due()  # nothing new
    index.add(["b"], np.arange(DIM, dtype=np.float32)[None, :] + 1)
    state.mark_dirty()
    state.close()  # shutdown saves what is pending
    assert state.saves == 2 and "b" in IndexState(blobs).load()
