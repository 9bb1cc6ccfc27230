"""Taste models on feature sets beyond CLIP: the curate stage keeps an item's extra vectors, a model
trains on CLIP + an extra set (over gRPC, from labels by item id) and scores with them everywhere.

The labels here depend on the extra set only (the CLIP vectors are noise), so a model that really
uses the extra set separates them and a CLIP-only one cannot."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from services.common.blobs import BlobStore, item_key
from services.common.queue import Task
from services.common.weights import WeightsRegistry
from services.search.curate import Curator
from services.search.curation import CurationDesk
from services.search.feature_sets import FeatureSets, MissingFeatures
from services.search.random_weights import write_random_clip_folder
from services.search.service import build_process, curate_stage
from services.search.state import IndexState
from services.search.taste import TasteCache, TasteModel, TasteStore
from sfhq.tensors import numpy_to_tensor
from sfhq.v1 import search_pb2, search_pb2_grpc
from tests.helpers.services import ServedProcess, settings_for

CLIP, EXTRA = "CLIP_ViTL_14@336", "ConvNext_XL_Imagenet21k"
DIM, EXTRA_DIM, N = 32, 16, 160


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    clip = rng.standard_normal((N, DIM)).astype(np.float32)  # says nothing about the label
    extra = rng.standard_normal((N, EXTRA_DIM)).astype(np.float32)
    good = extra @ rng.standard_normal(EXTRA_DIM) > 0  # the extra set decides
    return clip, extra, good


def curate_task(blobs: BlobStore, job: str, item: str, clip, extra=None, **payload) -> Task:
    features = item_key(job, item, "embed", "features.npy")
    blobs.put_npy(features, clip)
    extras = {}
    if extra is not None:
        extras[EXTRA] = blobs.put_npy(item_key(job, item, "embed", f"features-{EXTRA}.npy"), extra)
    body = {"features": features, "image": "x.png", "extra_features": extras, **payload}
    return Task.make(job, item, "curate", body)


def test_curate_keeps_the_extra_vectors_and_a_feature_set_model_scores_with_them(
    redis_client, tmp_path, data
):
    clip, extra, good = data
    blobs = BlobStore(tmp_path / "blobs")
    tastes = TasteStore(blobs)
    curator = Curator(redis_client, IndexState(blobs), blobs, TasteCache(tastes), lock_wait_s=20)
    handle = curate_stage(curator)
    results = handle([curate_task(blobs, "jobF", f"i{n}", clip[n], extra[n]) for n in range(N)])
    assert all(r.ok for r in results)
    sets = FeatureSets(blobs)
    np.testing.assert_array_equal(sets.get("jobF/i3")[EXTRA], extra[3])

    ids = [f"jobF/i{n}" for n in range(N)]
    inputs, kept = sets.training_sets([CLIP, EXTRA], ids + [None], np.vstack([clip, clip[:1]]))
    assert len(kept) == N and inputs[EXTRA].shape == (N, EXTRA_DIM)  # the bare-vector label is left out
    both = TasteModel.train(inputs, good, name="default/sets", family="lr")
    clip_only = TasteModel.train(clip, good, name="default/clip", family="lr")
    assert both.feature_keys == [CLIP, EXTRA] and both.cv_auc > 0.9 and clip_only.cv_auc < 0.7
    tastes.save(both)

    scored = handle(
        [curate_task(blobs, "jobG", "new", clip[0], extra[0], taste_model="sets", accept_threshold=0.5)]
    )[0]
    expected = both.predict_proba({CLIP: clip[:1], EXTRA: extra[:1]})[0]
    assert scored.ok and scored.output["taste_score"] == pytest.approx(expected, abs=1e-6)
    lacking = handle([curate_task(blobs, "jobG", "old", clip[1], None, taste_model="sets")])[0]
    assert lacking.error_code == "FAILED_PRECONDITION" and "SFHQ_EXTRA_FEATURES" in lacking.error_message

    desk = CurationDesk(curator.state, TasteCache(tastes), curator)
    scores, _ = desk.score_ids(tastes.latest("default/sets"), ids[:10])
    np.testing.assert_allclose(scores, both.predict_proba({CLIP: clip[:10], EXTRA: extra[:10]}), atol=1e-4)
    assert handle([curate_task(blobs, "jobG", "plain", clip[2])])[0].ok  # indexed, without the extra set
    with pytest.raises(MissingFeatures, match="'jobG/plain'"):
        desk.score_ids(tastes.latest("default/sets"), ["jobG/plain"])


def test_train_taste_on_a_feature_set_from_labels_by_item_id(tmp_path: Path, data):
    clip, extra, good = data
    settings = settings_for(tmp_path)
    write_random_clip_folder(WeightsRegistry(settings.weights_dir).expected_path("clip-vit-l-14-336"), seed=2)
    sets = FeatureSets(BlobStore(settings.blob_url))
    for n in range(N - 10):  # the last ten items were embedded without the extra set
        sets.put(f"job1/i{n}", {EXTRA: extra[n]})
    running = ServedProcess(
        build_process(settings, save_debounce_s=0.2), search_pb2_grpc.SearchStub, grace_s=1
    )
    try:
        stub = running.stub
        items = [
            search_pb2.IndexedItem(item_id=f"job1/i{n}", vector=numpy_to_tensor(clip[n])) for n in range(N)
        ]
        stub.Add(search_pb2.AddRequest(items=items))
        labels = [search_pb2.ItemLabel(item_id=f"job1/i{n}", positive=bool(good[n])) for n in range(N)]
        stub.Label(search_pb2.LabelRequest(labels=labels, taste_model="sets"))
        info = stub.TrainTaste(
            search_pb2.TrainTasteRequest(taste_model="sets", family="lr", feature_keys=[CLIP, EXTRA])
        )
        assert list(info.feature_keys) == [CLIP, EXTRA] and info.cv_auc > 0.9
        assert info.positives + info.negatives == N - 10  # only the items with every set
        plain = stub.TrainTaste(search_pb2.TrainTasteRequest(taste_model="sets", family="lr"))
        assert list(plain.feature_keys) == [CLIP] and plain.cv_auc < 0.7
        scores = stub.Score(search_pb2.ScoreRequest(taste_model="sets@1", item_ids=["job1/i0", "job1/i1"]))
        assert len(scores.scores) == 2
        with pytest.raises(grpc.RpcError) as refused:
            stub.TrainTaste(
                search_pb2.TrainTasteRequest(taste_model="sets", feature_keys=[CLIP, "DINO_ViTS_8"])
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "none of the" in refused.value.details()
        with pytest.raises(grpc.RpcError) as too_many:
            stub.TrainTaste(search_pb2.TrainTasteRequest(taste_model="sets", feature_keys=[EXTRA] * 2))
        assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        running.close()
