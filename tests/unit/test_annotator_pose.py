"""Head pose from 68 points: known rotations of the generic face are recovered (with and without
landmark noise, and on faces shaped unlike the model), the signs are the documented ones, the
index filters on it and a served search answers pose ranges."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from services.annotator.pose import GENERIC_FACE_68, HeadPose, estimate_head_pose, project_model
from services.common.errors import InvalidInput
from services.search.index import ItemMeta, SearchFilter, VectorIndex
from services.search.service import build_process
from sfhq.tensors import numpy_to_tensor
from sfhq.v1 import common_pb2, search_pb2, search_pb2_grpc
from tests.helpers.services import ServedProcess, settings_for

SIZE = (1024, 1024)
DISTANCE_MM = 300.0  # the generic face then spans about 450 px of 1024, as an FFHQ crop does


def errors(count: int, noise_px: float, seed: int = 0, shape_mm: float = 0.0) -> np.ndarray:
    """|estimated - true| (yaw, pitch, roll) over `count` random poses within ±45/±25/±20 degrees."""
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(count):
        true = HeadPose(*rng.uniform([-45, -25, -20], [45, 25, 20]))
        model = GENERIC_FACE_68 + rng.normal(0, shape_mm, GENERIC_FACE_68.shape) if shape_mm else None
        points = project_model(true, SIZE, distance_mm=DISTANCE_MM, model=model)
        points = points + rng.normal(0, noise_px, points.shape)
        estimate = estimate_head_pose(points, SIZE)
        found.append([estimate.yaw - true.yaw, estimate.pitch - true.pitch, estimate.roll - true.roll])
    return np.abs(np.array(found))


def test_exact_points_give_the_exact_pose() -> None:
    assert errors(50, 0.0).max() < 1e-6


@pytest.mark.parametrize(("noise_px", "mean_limit", "max_limit"), [(1.0, 0.25, 1.5), (4.0, 1.0, 5.0)])
def test_noisy_points_give_the_pose_within_a_degree_or_so(
    noise_px: float, mean_limit: float, max_limit: float
) -> None:
    found = errors(200, noise_px, seed=1)
    assert found.mean(axis=0).max() < mean_limit, found.mean(axis=0)
    assert found.max() < max_limit


def test_faces_shaped_unlike_the_model_cost_a_few_degrees_at_most() -> None:
    found = errors(200, 1.0, seed=2, shape_mm=3.0)  # each 3D point off by 3 mm (sd) from the model
    assert found.mean(axis=0).max() < 3.0, found.mean(axis=0)


def test_signs_follow_the_documented_convention() -> None:
    frontal = project_model(HeadPose(0, 0, 0), SIZE, distance_mm=DISTANCE_MM)
    eyes_mid = (frontal[36] + frontal[45]) / 2
    right = project_model(HeadPose(30, 0, 0), SIZE, distance_mm=DISTANCE_MM)
    assert right[30, 0] - (right[36, 0] + right[45, 0]) / 2 > 10  # yaw > 0: the nose tip moves image-right
    up = project_model(HeadPose(0, 20, 0), SIZE, distance_mm=DISTANCE_MM)
    assert (up[8, 1] - up[27, 1]) < (frontal[8, 1] - frontal[27, 1])  # pitch up: the face foreshortens
    clockwise = project_model(HeadPose(0, 0, 15), SIZE, distance_mm=DISTANCE_MM)
    assert clockwise[45, 1] > clockwise[36, 1]  # roll > 0: the image-right eye drops on screen
    assert abs(eyes_mid[0] - SIZE[0] / 2) < 1
    assert estimate_head_pose(right, SIZE).yaw == pytest.approx(30, abs=1e-4)


def test_the_pose_of_110_points_uses_their_first_68() -> None:
    points = project_model(HeadPose(10, -5, 3), SIZE, distance_mm=DISTANCE_MM)
    extended = np.concatenate([points, np.zeros((42, 2))])
    assert estimate_head_pose(extended, SIZE).yaw == pytest.approx(10, abs=1e-4)


@pytest.mark.parametrize("bad", [np.zeros((5, 2)), np.full((68, 2), np.nan), np.zeros((68, 3))])
def test_bad_points_are_invalid_input(bad: np.ndarray) -> None:
    with pytest.raises(InvalidInput, match="landmarks68"):
        estimate_head_pose(bad, SIZE)


def _index_with_poses() -> VectorIndex:
    rng = np.random.default_rng(0)
    index = VectorIndex(8)
    poses = [(-40.0, 0.0, 0.0), (-5.0, 10.0, 2.0), (5.0, -10.0, -2.0), (40.0, 0.0, 0.0)]
    index.add(
        [f"j/{n}" for n in range(5)],
        rng.normal(size=(5, 8)).astype(np.float32),
        [ItemMeta(job_id="j", pose=pose) for pose in poses] + [ItemMeta(job_id="j")],
    )
    return index


def test_the_index_filters_by_pose_ranges_and_keeps_poses_across_save_and_load(tmp_path: Path) -> None:
    from services.common.blobs import BlobStore

    index = _index_with_poses()
    frontal = SearchFilter(pose_ranges=(("yaw", -10.0, 10.0),))
    assert sorted(i for i, _ in index.items_where(frontal)) == ["j/1", "j/2"]
    looking_up = SearchFilter(pose_ranges=(("yaw", -10.0, 10.0), ("pitch", 0.0, None)))
    assert [i for i, _ in index.items_where(looking_up)] == ["j/1"]
    assert index.set_poses(["j/4", "missing"], np.array([[1.0, 1.0, 1.0], [0, 0, 0]])) == 1
    assert sorted(i for i, _ in index.items_where(frontal)) == ["j/1", "j/2", "j/4"]
    store = BlobStore(str(tmp_path / "blobs"))
    index.save(store)
    loaded = VectorIndex.load(store)
    assert loaded.get_meta("j/4").pose == pytest.approx((1.0, 1.0, 1.0))
    assert loaded.get_meta("j/0").pose == pytest.approx((-40.0, 0.0, 0.0))
    hits = loaded.search(np.ones((1, 8), np.float32), 10, frontal)[0]
    assert sorted(h.item_id for h in hits) == ["j/1", "j/2", "j/4"] and all(h.pose for h in hits)
    with pytest.raises(InvalidInput, match="poses"):
        index.set_poses(["j/1"], np.array([[400.0, 0, 0]]))


def test_a_served_search_takes_poses_and_filters_by_them(tmp_path: Path) -> None:
    served = ServedProcess(build_process(settings_for(tmp_path)), search_pb2_grpc.SearchStub, grace_s=1)
    try:
        stub = served.stub
        rng = np.random.default_rng(3)
        stub.Add(
            search_pb2.AddRequest(
                items=[
                    search_pb2.IndexedItem(item_id=f"job/{n}", job_id="job", vector=numpy_to_tensor(v))
                    for n, v in enumerate(rng.normal(size=(4, 16)).astype(np.float32))
                ]
            )
        )
        poses = [common_pb2.HeadPose(yaw=y, pitch=0, roll=0) for y in (-30.0, -3.0, 4.0)]
        reply = stub.SetPoses(search_pb2.SetPosesRequest(item_ids=["job/0", "job/1", "job/2"], poses=poses))
        assert reply.updated == 3
        query = search_pb2.SearchRequest(
            vector=numpy_to_tensor(np.ones(16, np.float32)),
            top_k=10,
            filter=search_pb2.SearchFilter(yaw=common_pb2.AngleRange(min=-10, max=10)),
        )
        hits = stub.Search(query).hits
        assert sorted(h.item_id for h in hits) == ["job/1", "job/2"]
        assert {round(h.pose.yaw) for h in hits} == {-3, 4}
        bad = search_pb2.SearchRequest(
            vector=numpy_to_tensor(np.ones(16, np.float32)),
            filter=search_pb2.SearchFilter(yaw=common_pb2.AngleRange(min=10, max=-10)),
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "filter.yaw" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            stub.SetPoses(search_pb2.SetPosesRequest(item_ids=["job/0"], poses=[]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "poses" in caught.value.details()
    finally:
        served.close()
