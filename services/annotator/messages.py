"""Protobuf <-> Python for the Annotator API: detected faces, aligned faces, annotations."""

from __future__ import annotations

from services.annotator.detect import FaceLandmarks
from services.annotator.faces import AlignedFace, Annotation
from services.annotator.formats import segmentation_to_png
from services.common.blobs import BlobStore
from services.common.images import encode_image
from services.common.rpc import OutputFormat
from sfhq.tensors import numpy_to_tensor
from sfhq.v1 import annotator_pb2, common_pb2


def detection(faces: list[FaceLandmarks]) -> annotator_pb2.Detection:
    return annotator_pb2.Detection(
        faces=[
            annotator_pb2.Face(
                left=face.box.left,
                top=face.box.top,
                right=face.box.right,
                bottom=face.box.bottom,
                score=face.box.score,
                landmarks68=numpy_to_tensor(face.landmarks68),
            )
            for face in faces
        ]
    )


def aligned_face(aligned: AlignedFace, output: OutputFormat, blobs: BlobStore) -> annotator_pb2.AlignedFace:
    return annotator_pb2.AlignedFace(
        image=output.message(aligned.image, blobs, "annotator"),
        landmarks68=numpy_to_tensor(aligned.landmarks68),
        transform=numpy_to_tensor(aligned.transform),
        face_count=aligned.face_count,
    )


def annotation(result: Annotation) -> annotator_pb2.Annotation:
    message = annotator_pb2.Annotation(
        segmentation=common_pb2.Image(data=segmentation_to_png(result.label_map)),
        landmarks=numpy_to_tensor(result.landmarks),
        face_count=result.face_count,
    )
    if result.pose is not None:
        message.pose.CopyFrom(
            common_pb2.HeadPose(yaw=result.pose.yaw, pitch=result.pose.pitch, roll=result.pose.roll)
        )
    if result.overlay is not None:
        message.overlay.data = encode_image(result.overlay, "png")
    return message
