"""Pictures and files of items, always fetched through the gateway (the studio never opens a path):
WebP thumbnails cached by content hash, full images, parsing overlays, downloads."""

from __future__ import annotations

import io
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from sfhq.sdk import Client
from sfhq.tensors import tensor_to_numpy
from sfhq.v1 import gateway_pb2
from studio.context import current_session, studio_of
from studio.imaging import THUMB_SIZES, parse_classes, parsing_overlay
from studio.session import Session

router = APIRouter()
SessionDep = Annotated[Session, Depends(current_session)]
DOWNLOADS = ("image", "segmentation", "landmarks", "latent", "features")


def _image_type(data: bytes) -> str:
    return "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"


def _item(client: Client, job_id: str, item_id: str, *, image: bool, annotations: bool) -> gateway_pb2.Item:
    if len(job_id) > 128 or len(item_id) > 200:
        raise HTTPException(400, "job_id/item_id: too long")
    return client.get_item(job_id, item_id, image=image, annotations=annotations)


@router.get("/thumb/{job_id}/{item_id}")
def thumbnail(
    request: Request,
    session: SessionDep,
    job_id: str,
    item_id: str,
    size: Annotated[int, Query()] = 256,
) -> Response:
    if size not in THUMB_SIZES:
        raise HTTPException(400, f"size: one of {', '.join(map(str, THUMB_SIZES))}")
    studio = studio_of(request)
    key = (session.user_key, job_id, item_id)
    digest = studio.digests.get(key)
    headers = {"cache-control": "private, max-age=60"}
    if digest is not None:
        if request.headers.get("if-none-match") == f'"{digest}-{size}"':
            return Response(status_code=304, headers={**headers, "etag": f'"{digest}-{size}"'})
        cached = studio.thumbs.get(digest, size)
        if cached is not None:
            return Response(
                cached, media_type="image/webp", headers={**headers, "etag": f'"{digest}-{size}"'}
            )
    item = _item(studio.client(session), job_id, item_id, image=True, annotations=False)
    if not item.image.data:
        raise HTTPException(404, f"item {job_id}/{item_id} has no image (yet)")
    digest, webp = studio.thumbs.thumbnail(item.image.data, size)
    studio.digests.put(key, digest)
    return Response(webp, media_type="image/webp", headers={**headers, "etag": f'"{digest}-{size}"'})


@router.get("/media/{job_id}/{item_id}/image")
def full_image(request: Request, session: SessionDep, job_id: str, item_id: str) -> Response:
    item = _item(studio_of(request).client(session), job_id, item_id, image=True, annotations=False)
    if not item.image.data:
        raise HTTPException(404, f"item {job_id}/{item_id} has no image (yet)")
    return Response(
        item.image.data,
        media_type=_image_type(item.image.data),
        headers={"cache-control": "private, max-age=60"},
    )


@router.get("/media/{job_id}/{item_id}/parsing.png")
def parsing(
    request: Request,
    session: SessionDep,
    job_id: str,
    item_id: str,
    classes: Annotated[str, Query(max_length=100)] = "all",
    size: Annotated[int, Query(ge=64, le=1024)] = 1024,
) -> Response:
    """The parsing map as a transparent overlay: the chosen classes in their legend colours."""
    try:
        chosen = parse_classes(classes)
    except ValueError as error:
        raise HTTPException(400, str(error)) from None
    item = _item(studio_of(request).client(session), job_id, item_id, image=False, annotations=True)
    if not item.segmentation.data:
        raise HTTPException(404, f"item {job_id}/{item_id} has no parsing map (it is not annotated)")
    return Response(
        parsing_overlay(item.segmentation.data, chosen, size),
        media_type="image/png",
        headers={"cache-control": "private, max-age=60"},
    )


@router.get("/media/{job_id}/{item_id}/download/{kind}")
def download(request: Request, session: SessionDep, job_id: str, item_id: str, kind: str) -> Response:
    if kind not in DOWNLOADS:
        raise HTTPException(404, f"kind: one of {', '.join(DOWNLOADS)}")
    item = _item(studio_of(request).client(session), job_id, item_id, image=kind == "image", annotations=True)
    name = item.stem or f"{job_id}_{item_id}"
    if kind == "image":
        data, media = item.image.data, _image_type(item.image.data)
        ext = ".jpg" if media == "image/jpeg" else ".png"
    elif kind == "segmentation":
        data, media, ext = item.segmentation.data, "image/png", ".png"
    elif kind in ("landmarks", "latent"):
        tensor = item.landmarks if kind == "landmarks" else item.latent
        data = _npy(tensor_to_numpy(tensor)) if tensor.shape else b""
        media, ext = "application/octet-stream", ".npy"
    else:
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {k: tensor_to_numpy(v) for k, v in item.features.items()}
        np.savez(buffer, **arrays)
        data, media, ext = (buffer.getvalue() if item.features else b""), "application/octet-stream", ".npz"
    if not data:
        raise HTTPException(404, f"item {job_id}/{item_id} has no {kind}")
    return Response(
        data, media_type=media, headers={"content-disposition": f'attachment; filename="{name}_{kind}{ext}"'}
    )


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
