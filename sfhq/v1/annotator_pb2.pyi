from sfhq.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Face(_message.Message):
    __slots__ = ("left", "top", "right", "bottom", "score", "landmarks68")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS68_FIELD_NUMBER: _ClassVar[int]
    left: float
    top: float
    right: float
    bottom: float
    score: float
    landmarks68: _common_pb2.Tensor
    def __init__(self, left: _Optional[float] = ..., top: _Optional[float] = ..., right: _Optional[float] = ..., bottom: _Optional[float] = ..., score: _Optional[float] = ..., landmarks68: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    def __init__(self, images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("faces",)
    FACES_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[Face]
    def __init__(self, faces: _Optional[_Iterable[_Union[Face, _Mapping]]] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("detections",)
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    def __init__(self, detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ...) -> None: ...

class AlignRequest(_message.Message):
    __slots__ = ("images", "output_size", "transform_size", "disable_padding", "output")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_SIZE_FIELD_NUMBER: _ClassVar[int]
    DISABLE_PADDING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    output_size: int
    transform_size: int
    disable_padding: bool
    output: _common_pb2.OutputOptions
    def __init__(self, images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., output_size: _Optional[int] = ..., transform_size: _Optional[int] = ..., disable_padding: _Optional[bool] = ..., output: _Optional[_Union[_common_pb2.OutputOptions, _Mapping]] = ...) -> None: ...

class AlignedFace(_message.Message):
    __slots__ = ("image", "landmarks68", "transform", "face_count")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS68_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    FACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    landmarks68: _common_pb2.Tensor
    transform: _common_pb2.Tensor
    face_count: int
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., landmarks68: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., transform: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., face_count: _Optional[int] = ...) -> None: ...

class AlignResponse(_message.Message):
    __slots__ = ("faces",)
    FACES_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[AlignedFace]
    def __init__(self, faces: _Optional[_Iterable[_Union[AlignedFace, _Mapping]]] = ...) -> None: ...

class AnnotateRequest(_message.Message):
    __slots__ = ("images", "detect_faces", "working_size", "include_overlay")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    DETECT_FACES_FIELD_NUMBER: _ClassVar[int]
    WORKING_SIZE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_OVERLAY_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    detect_faces: bool
    working_size: int
    include_overlay: bool
    def __init__(self, images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., detect_faces: _Optional[bool] = ..., working_size: _Optional[int] = ..., include_overlay: _Optional[bool] = ...) -> None: ...

class Annotation(_message.Message):
    __slots__ = ("segmentation", "landmarks", "overlay", "face_count", "pose")
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    FACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    POSE_FIELD_NUMBER: _ClassVar[int]
    segmentation: _common_pb2.Image
    landmarks: _common_pb2.Tensor
    overlay: _common_pb2.Image
    face_count: int
    pose: _common_pb2.HeadPose
    def __init__(self, segmentation: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., landmarks: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., overlay: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., face_count: _Optional[int] = ..., pose: _Optional[_Union[_common_pb2.HeadPose, _Mapping]] = ...) -> None: ...

class AnnotateResponse(_message.Message):
    __slots__ = ("annotations",)
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    annotations: _containers.RepeatedCompositeFieldContainer[Annotation]
    def __init__(self, annotations: _Optional[_Iterable[_Union[Annotation, _Mapping]]] = ...) -> None: ...
