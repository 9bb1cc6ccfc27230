"""SFHQ import: plain, Kaggle-nested and zip layouts; hostile pickles, links and names are refused."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.search.index import SearchFilter, VectorIndex
from services.search.sfhq_import import SfhqImportError, import_sfhq

DIM = 32
KEY = "CLIP_ViTL_14@336"


class RunsACommand:
    """Unpickling this would run a shell command: the importer must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def feature(stem: str) -> np.ndarray:
    seed = int(stem.rsplit("_", 1)[-1])
    return np.random.default_rng(seed).standard_normal((1, DIM)).astype(np.float16)  # SFHQ's (1, D) float16


def write_part(root: Path, stems: list[str], *, nested: bool = False) -> dict[str, Path]:
    folders = {}
    for kind in ("images", "pretrained_features", "landmarks", "segmentations"):
        folders[kind] = root / kind / kind if nested else root / kind
        folders[kind].mkdir(parents=True)
    for stem in stems:
        Image.new("RGB", (8, 8), (40, 50, 60)).save(folders["images"] / f"{stem}.jpg")
        features = {KEY: feature(stem), "CLIP_ResNet50x64": np.zeros((1, 8), np.float16)}
        (folders["pretrained_features"] / f"{stem}.pickle").write_bytes(pickle.dumps(features))
        np.savez(folders["landmarks"] / f"{stem}.npz", landmarks=np.zeros((110, 2), np.float32))
        Image.new("L", (8, 8)).save(folders["segmentations"] / f"{stem}.png")
    return folders


def test_plain_layout_with_hostile_and_broken_files(tmp_path: Path) -> None:
    root = tmp_path / "SFHQ_part3"
    stems = [f"SFHQ_pt3_{i:08d}" for i in range(1, 7)]
    folders = write_part(root, stems)
    marker = tmp_path / "pwned"
    (folders["pretrained_features"] / f"{stems[0]}.pickle").write_bytes(
        pickle.dumps({KEY: RunsACommand(marker)})
    )
    (folders["pretrained_features"] / f"{stems[1]}.pickle").unlink()  # missing features
    (folders["pretrained_features"] / f"{stems[2]}.pickle").write_bytes(
        pickle.dumps({"DINO_ViTS_8": feature(stems[2])})
    )
    (folders["pretrained_features"] / f"{stems[3]}.pickle").write_bytes(
        pickle.dumps({KEY: np.zeros((1, DIM + 1), np.float16)})
    )
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (8, 8)).save(outside)
    (folders["images"] / "SFHQ_pt3_00000099.jpg").symlink_to(outside)
    (folders["pretrained_features"] / "SFHQ_pt3_00000099.pickle").write_bytes(
        pickle.dumps({KEY: feature("x_99")})
    )
    sample = root / "tiny sample (30 images)"
    sample.mkdir()
    Image.new("RGB", (8, 8)).save(sample / "SFHQ_pt3_00000500.jpg")  # sample folders are not the dataset

    index = VectorIndex(DIM)
    report = import_sfhq(root, index)
    assert not marker.exists()  # the hostile pickle never ran
    assert report.layout == "plain" and report.part == 3 and report.source == "sfhq_part3"
    assert report.images == 6 and report.indexed == 2
    assert (report.bad_pickles, report.missing_features, report.missing_key, report.wrong_dim) == (1, 1, 1, 1)
    assert report.skipped_symlinks == 1 and report.with_landmarks == 6 and report.with_segmentation == 6
    assert "forbidden global" in report.examples["bad_pickles"][0]
    assert sorted(index.item_ids()) == stems[4:]
    meta = index.get_meta(stems[4])
    assert meta.source == "sfhq_part3" and meta.image_uri == (folders["images"] / f"{stems[4]}.jpg").as_uri()
    np.testing.assert_allclose(
        index.get_vector(stems[5]),
        feature(stems[5])[0] / np.linalg.norm(feature(stems[5]).astype(np.float32)),
        atol=1e-3,
    )


def test_kaggle_nested_layout_under_an_extra_folder(tmp_path: Path) -> None:
    stems = [f"SFHQ_pt2_{i:08d}" for i in range(10, 14)]
    write_part(tmp_path / "download" / "archive", stems, nested=True)
    linked = tmp_path / "elsewhere"
    linked.mkdir()
    (tmp_path / "download" / "archive" / "images" / "linked").symlink_to(linked, target_is_directory=True)
    index = VectorIndex(DIM)
    report = import_sfhq(tmp_path / "download", index)
    assert report.layout == "kaggle-nested" and report.part == 2  # part from the stems
    assert report.indexed == 4 and report.skipped_symlinks == 1
    # Text search over SFHQ needs only the stored features: a query equal to one item finds it first.
    hits = index.search(feature(stems[2]).astype(np.float32), k=2, filter=SearchFilter(source="sfhq_part2"))[
        0
    ]
    assert hits[0].item_id == stems[2] and hits[0].score > 0.99


def test_zip_archive_with_path_traversal_and_link_members(tmp_path: Path) -> None:
    source = tmp_path / "src"
    stems = [f"SFHQ_pt1_{i:08d}" for i in range(3)]
    write_part(source, stems, nested=True)
    archive = tmp_path / "synthetic-faces-high-quality-sfhq-part-1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(source).as_posix())
        zf.writestr("../pretrained_features/SFHQ_pt1_00000009.pickle", pickle.dumps({KEY: feature("x_9")}))
        zf.writestr("images/images/..\\evil.jpg", b"x")
        link = zipfile.ZipInfo("images/images/SFHQ_pt1_00000007.jpg")
        link.external_attr = 0o120777 << 16  # a symbolic link member
        zf.writestr(link, "/etc/passwd")
    index = VectorIndex(DIM)
    report = import_sfhq(archive, index)
    assert report.layout == "zip" and report.part == 1
    assert report.indexed == 3 and report.skipped_unsafe_names == 2 and report.skipped_symlinks == 1
    assert index.get_meta(stems[0]).image_uri.startswith("zip://images/images/SFHQ_pt1_00000000.jpg::file://")


def test_not_an_sfhq_part(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(SfhqImportError, match="pretrained_features"):
        import_sfhq(tmp_path, VectorIndex(DIM))
    with pytest.raises(SfhqImportError, match="neither"):
        import_sfhq(tmp_path / "missing", VectorIndex(DIM))
