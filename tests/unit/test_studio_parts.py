"""The studio's pieces that need no cluster: sessions and CSRF, thumbnails, overlays, gallery filters."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from sfhq.annotations import PARSING_COLORS
from studio.imaging import ThumbnailCache, parse_classes, parsing_overlay
from studio.listing import Filters, select
from studio.session import Session, Sessions
from tests.helpers.data import face_bytes


def test_a_session_cookie_is_signed_and_expires():
    sessions = Sessions("s" * 32, max_age_s=1)
    session, cookie = sessions.new("alice-token")
    assert sessions.read(cookie) == session
    assert sessions.read(cookie[:-2] + "xx") is None  # tampered
    assert Sessions("t" * 32, 60).read(cookie) is None  # another secret
    assert sessions.read("") is None and sessions.read("x" * 5000) is None
    time.sleep(2.1)
    assert sessions.read(cookie) is None  # expired


def test_csrf_tokens_are_bound_to_their_session():
    sessions = Sessions("s" * 32, 60)
    one, _ = sessions.new("tok")
    two, _ = sessions.new("tok")
    assert sessions.csrf_ok(one, sessions.csrf_token(one))
    assert not sessions.csrf_ok(one, sessions.csrf_token(two))
    assert not sessions.csrf_ok(one, "") and not sessions.csrf_ok(one, None)
    assert Session("tok", "a").user_key == Session("tok", "b").user_key != Session("other", "a").user_key


def test_thumbnails_are_webp_at_the_size_and_cached_by_content():
    cache = ThumbnailCache(max_bytes=10 << 20)
    digest, webp = cache.thumbnail(face_bytes(0), 128)
    picture = Image.open(io.BytesIO(webp))
    assert picture.format == "WEBP" and max(picture.size) == 128
    again_digest, again = cache.thumbnail(face_bytes(0), 128)
    assert (again_digest, again) == (digest, webp) and cache.hits == 1
    assert cache.thumbnail(face_bytes(1), 128)[0] != digest


def test_the_thumbnail_cache_stays_within_its_bytes():
    cache = ThumbnailCache(max_bytes=20_000)
    for n in range(6):
        cache.thumbnail(face_bytes(n), 256)
    assert cache._bytes <= 20_000 and len(cache._entries) < 6


def test_the_parsing_overlay_paints_only_the_chosen_classes():
    labels = np.zeros((64, 64), np.uint8)
    labels[:32] = 1  # skin
    labels[32:, :32] = 17  # hair
    buffer = io.BytesIO()
    Image.fromarray(labels, "L").save(buffer, "PNG")
    overlay = np.asarray(Image.open(io.BytesIO(parsing_overlay(buffer.getvalue(), [17], 128))))
    assert overlay.shape == (128, 128, 4)
    assert tuple(overlay[100, 10, :3]) == PARSING_COLORS[17] and overlay[100, 10, 3] == 255
    assert overlay[10, 10, 3] == 0 and overlay[100, 100, 3] == 0  # skin and background: clear
    assert parse_classes("all") == list(range(1, 19))
    with pytest.raises(ValueError, match="classes"):
        parse_classes("1,19")


def rows():
    return [
        {"id": "i000000", "parent": "", "state": "done", "score": None, "strategy": "", "duplicate_of": ""},
        {
            "id": "i000000-c0",
            "yaw": -12.0,
            "pitch": 3.0,
            "parent": "i000000",
            "state": "written",
            "score": 0.9,
            "strategy": "a",
            "duplicate_of": "",
        },
        {
            "id": "i000000-c1",
            "parent": "i000000",
            "state": "review",
            "score": 0.5,
            "strategy": "b",
            "duplicate_of": "",
        },
        {
            "id": "i000001-c0",
            "yaw": 31.0,
            "pitch": -4.0,
            "parent": "i000001",
            "state": "rejected_duplicate",
            "score": 0.2,
            "strategy": "a",
            "duplicate_of": "SFHQ_pt1_00000000",
        },
        {
            "id": "i000001-c1",
            "parent": "i000001",
            "state": "failed",
            "score": None,
            "strategy": "b",
            "duplicate_of": "",
        },
    ]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(), ["i000000-c0", "i000000-c1", "i000001-c0", "i000001-c1"]),
        (Filters(state="inputs"), ["i000000"]),
        (Filters(state="review"), ["i000000-c1"]),
        (Filters(strategy="a"), ["i000000-c0", "i000001-c0"]),
        (Filters(parent="i000001"), ["i000001-c0", "i000001-c1"]),
        (Filters(min_score=0.4, max_score=0.95), ["i000000-c0", "i000000-c1"]),
        (Filters(duplicate_of="*"), ["i000001-c0"]),
        (Filters(sort="score"), ["i000000-c0", "i000000-c1", "i000001-c0", "i000001-c1"]),
        (Filters(sort="-score"), ["i000001-c0", "i000000-c1", "i000000-c0", "i000001-c1"]),
        (Filters(max_abs_yaw=20), ["i000000-c0"]),  # posed items only, |yaw| within the limit
        (Filters(max_abs_pitch=5), ["i000000-c0", "i000001-c0"]),
    ],
)
def test_gallery_filters_and_sorting(filters, expected):
    assert [r["id"] for r in select(rows(), filters)] == expected
