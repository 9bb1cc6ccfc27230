from sfhq.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbedRequest(_message.Message):
    __slots__ = ("images", "texts")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., texts: _Optional[_Iterable[str]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("image_features", "text_features")
    IMAGE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    image_features: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    text_features: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    def __init__(self, image_features: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., text_features: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ...) -> None: ...

class SearchFilter(_message.Message):
    __slots__ = ("job_id", "source", "min_taste_score", "max_taste_score", "owner", "dataset_id", "decisions", "yaw", "pitch", "roll")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MIN_TASTE_SCORE_FIELD_NUMBER: _ClassVar[int]
    MAX_TASTE_SCORE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    YAW_FIELD_NUMBER: _ClassVar[int]
    PITCH_FIELD_NUMBER: _ClassVar[int]
    ROLL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    source: str
    min_taste_score: float
    max_taste_score: float
    owner: str
    dataset_id: str
    decisions: _containers.RepeatedScalarFieldContainer[str]
    yaw: _common_pb2.AngleRange
    pitch: _common_pb2.AngleRange
    roll: _common_pb2.AngleRange
    def __init__(self, job_id: _Optional[str] = ..., source: _Optional[str] = ..., min_taste_score: _Optional[float] = ..., max_taste_score: _Optional[float] = ..., owner: _Optional[str] = ..., dataset_id: _Optional[str] = ..., decisions: _Optional[_Iterable[str]] = ..., yaw: _Optional[_Union[_common_pb2.AngleRange, _Mapping]] = ..., pitch: _Optional[_Union[_common_pb2.AngleRange, _Mapping]] = ..., roll: _Optional[_Union[_common_pb2.AngleRange, _Mapping]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("text", "image", "vector", "top_k", "filter")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: _common_pb2.Image
    vector: _common_pb2.Tensor
    top_k: int
    filter: SearchFilter
    def __init__(self, text: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., vector: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[SearchFilter, _Mapping]] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("item_id", "score", "image_uri", "job_id", "source", "taste_score", "decision", "dataset_id", "pose")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URI_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TASTE_SCORE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    POSE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    image_uri: str
    job_id: str
    source: str
    taste_score: float
    decision: str
    dataset_id: str
    pose: _common_pb2.HeadPose
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., image_uri: _Optional[str] = ..., job_id: _Optional[str] = ..., source: _Optional[str] = ..., taste_score: _Optional[float] = ..., decision: _Optional[str] = ..., dataset_id: _Optional[str] = ..., pose: _Optional[_Union[_common_pb2.HeadPose, _Mapping]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ...) -> None: ...

class IndexedItem(_message.Message):
    __slots__ = ("item_id", "vector", "image_uri", "job_id", "source", "taste_score", "owner", "dataset_id", "decision", "pose")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URI_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TASTE_SCORE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    POSE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    vector: _common_pb2.Tensor
    image_uri: str
    job_id: str
    source: str
    taste_score: float
    owner: str
    dataset_id: str
    decision: str
    pose: _common_pb2.HeadPose
    def __init__(self, item_id: _Optional[str] = ..., vector: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., image_uri: _Optional[str] = ..., job_id: _Optional[str] = ..., source: _Optional[str] = ..., taste_score: _Optional[float] = ..., owner: _Optional[str] = ..., dataset_id: _Optional[str] = ..., decision: _Optional[str] = ..., pose: _Optional[_Union[_common_pb2.HeadPose, _Mapping]] = ...) -> None: ...

class AddRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[IndexedItem]
    def __init__(self, items: _Optional[_Iterable[_Union[IndexedItem, _Mapping]]] = ...) -> None: ...

class AddResponse(_message.Message):
    __slots__ = ("index_size",)
    INDEX_SIZE_FIELD_NUMBER: _ClassVar[int]
    index_size: int
    def __init__(self, index_size: _Optional[int] = ...) -> None: ...

class RemoveRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoveResponse(_message.Message):
    __slots__ = ("removed", "index_size")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    INDEX_SIZE_FIELD_NUMBER: _ClassVar[int]
    removed: int
    index_size: int
    def __init__(self, removed: _Optional[int] = ..., index_size: _Optional[int] = ...) -> None: ...

class DedupRequest(_message.Message):
    __slots__ = ("vectors", "scores", "threshold", "worst_first", "against_index")
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WORST_FIRST_FIELD_NUMBER: _ClassVar[int]
    AGAINST_INDEX_FIELD_NUMBER: _ClassVar[int]
    vectors: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    scores: _containers.RepeatedScalarFieldContainer[float]
    threshold: float
    worst_first: bool
    against_index: bool
    def __init__(self, vectors: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., scores: _Optional[_Iterable[float]] = ..., threshold: _Optional[float] = ..., worst_first: _Optional[bool] = ..., against_index: _Optional[bool] = ...) -> None: ...

class Duplicate(_message.Message):
    __slots__ = ("index", "duplicate_of", "similarity")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_OF_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    index: int
    duplicate_of: str
    similarity: float
    def __init__(self, index: _Optional[int] = ..., duplicate_of: _Optional[str] = ..., similarity: _Optional[float] = ...) -> None: ...

class DedupResponse(_message.Message):
    __slots__ = ("kept", "duplicates")
    KEPT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    kept: _containers.RepeatedScalarFieldContainer[int]
    duplicates: _containers.RepeatedCompositeFieldContainer[Duplicate]
    def __init__(self, kept: _Optional[_Iterable[int]] = ..., duplicates: _Optional[_Iterable[_Union[Duplicate, _Mapping]]] = ...) -> None: ...

class ItemLabel(_message.Message):
    __slots__ = ("item_id", "vector", "positive", "labeler", "clear")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    LABELER_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    vector: _common_pb2.Tensor
    positive: bool
    labeler: str
    clear: bool
    def __init__(self, item_id: _Optional[str] = ..., vector: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., positive: _Optional[bool] = ..., labeler: _Optional[str] = ..., clear: _Optional[bool] = ...) -> None: ...

class LabelRequest(_message.Message):
    __slots__ = ("taste_model", "labels", "owner")
    TASTE_MODEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    taste_model: str
    labels: _containers.RepeatedCompositeFieldContainer[ItemLabel]
    owner: str
    def __init__(self, taste_model: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[ItemLabel, _Mapping]]] = ..., owner: _Optional[str] = ...) -> None: ...

class LabelResponse(_message.Message):
    __slots__ = ("positives", "negatives")
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    NEGATIVES_FIELD_NUMBER: _ClassVar[int]
    positives: int
    negatives: int
    def __init__(self, positives: _Optional[int] = ..., negatives: _Optional[int] = ...) -> None: ...

class TrainTasteRequest(_message.Message):
    __slots__ = ("taste_model", "owner", "family", "feature_keys")
    TASTE_MODEL_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    FEATURE_KEYS_FIELD_NUMBER: _ClassVar[int]
    taste_model: str
    owner: str
    family: str
    feature_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, taste_model: _Optional[str] = ..., owner: _Optional[str] = ..., family: _Optional[str] = ..., feature_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class TasteModelInfo(_message.Message):
    __slots__ = ("name", "version", "positives", "negatives", "cv_accuracy", "cv_auc", "low_threshold", "high_threshold", "created_at", "owner", "family", "member_weights", "member_auc", "train_seconds", "feature_keys")
    class MemberWeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class MemberAucEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    NEGATIVES_FIELD_NUMBER: _ClassVar[int]
    CV_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CV_AUC_FIELD_NUMBER: _ClassVar[int]
    LOW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    HIGH_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    MEMBER_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    MEMBER_AUC_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_KEYS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    positives: int
    negatives: int
    cv_accuracy: float
    cv_auc: float
    low_threshold: float
    high_threshold: float
    created_at: str
    owner: str
    family: str
    member_weights: _containers.ScalarMap[str, float]
    member_auc: _containers.ScalarMap[str, float]
    train_seconds: float
    feature_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., positives: _Optional[int] = ..., negatives: _Optional[int] = ..., cv_accuracy: _Optional[float] = ..., cv_auc: _Optional[float] = ..., low_threshold: _Optional[float] = ..., high_threshold: _Optional[float] = ..., created_at: _Optional[str] = ..., owner: _Optional[str] = ..., family: _Optional[str] = ..., member_weights: _Optional[_Mapping[str, float]] = ..., member_auc: _Optional[_Mapping[str, float]] = ..., train_seconds: _Optional[float] = ..., feature_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("taste_model", "vectors", "images", "owner", "item_ids")
    TASTE_MODEL_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    taste_model: str
    vectors: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    owner: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, taste_model: _Optional[str] = ..., vectors: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., owner: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores", "model", "uncertainty")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    model: TasteModelInfo
    uncertainty: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., model: _Optional[_Union[TasteModelInfo, _Mapping]] = ..., uncertainty: _Optional[_Iterable[float]] = ...) -> None: ...

class ListTasteModelsRequest(_message.Message):
    __slots__ = ("owner",)
    OWNER_FIELD_NUMBER: _ClassVar[int]
    owner: str
    def __init__(self, owner: _Optional[str] = ...) -> None: ...

class ListTasteModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[TasteModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[TasteModelInfo, _Mapping]]] = ...) -> None: ...

class GetTasteModelRequest(_message.Message):
    __slots__ = ("taste_model", "owner")
    TASTE_MODEL_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    taste_model: str
    owner: str
    def __init__(self, taste_model: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class NextReviewRequest(_message.Message):
    __slots__ = ("taste_model", "owner", "filter", "count")
    TASTE_MODEL_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    taste_model: str
    owner: str
    filter: SearchFilter
    count: int
    def __init__(self, taste_model: _Optional[str] = ..., owner: _Optional[str] = ..., filter: _Optional[_Union[SearchFilter, _Mapping]] = ..., count: _Optional[int] = ...) -> None: ...

class ReviewCandidate(_message.Message):
    __slots__ = ("item_id", "score", "uncertainty", "image_uri", "job_id", "decision")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URI_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    uncertainty: float
    image_uri: str
    job_id: str
    decision: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., uncertainty: _Optional[float] = ..., image_uri: _Optional[str] = ..., job_id: _Optional[str] = ..., decision: _Optional[str] = ...) -> None: ...

class NextReviewResponse(_message.Message):
    __slots__ = ("items", "waiting")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ReviewCandidate]
    waiting: int
    def __init__(self, items: _Optional[_Iterable[_Union[ReviewCandidate, _Mapping]]] = ..., waiting: _Optional[int] = ...) -> None: ...

class SetDecisionsRequest(_message.Message):
    __slots__ = ("item_ids", "decision")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    decision: str
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., decision: _Optional[str] = ...) -> None: ...

class SetDecisionsResponse(_message.Message):
    __slots__ = ("updated",)
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    updated: int
    def __init__(self, updated: _Optional[int] = ...) -> None: ...

class SetPosesRequest(_message.Message):
    __slots__ = ("item_ids", "poses")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    POSES_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    poses: _containers.RepeatedCompositeFieldContainer[_common_pb2.HeadPose]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., poses: _Optional[_Iterable[_Union[_common_pb2.HeadPose, _Mapping]]] = ...) -> None: ...

class SetPosesResponse(_message.Message):
    __slots__ = ("updated",)
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    updated: int
    def __init__(self, updated: _Optional[int] = ...) -> None: ...

class DedupGroupsRequest(_message.Message):
    __slots__ = ("filter", "threshold", "candidate_ids", "include_public")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    filter: SearchFilter
    threshold: float
    candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    include_public: bool
    def __init__(self, filter: _Optional[_Union[SearchFilter, _Mapping]] = ..., threshold: _Optional[float] = ..., candidate_ids: _Optional[_Iterable[str]] = ..., include_public: _Optional[bool] = ...) -> None: ...

class GroupMember(_message.Message):
    __slots__ = ("item_id", "taste_score", "similarity")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TASTE_SCORE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    taste_score: float
    similarity: float
    def __init__(self, item_id: _Optional[str] = ..., taste_score: _Optional[float] = ..., similarity: _Optional[float] = ...) -> None: ...

class DuplicateGroup(_message.Message):
    __slots__ = ("kept", "removed")
    KEPT_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    kept: GroupMember
    removed: _containers.RepeatedCompositeFieldContainer[GroupMember]
    def __init__(self, kept: _Optional[_Union[GroupMember, _Mapping]] = ..., removed: _Optional[_Iterable[_Union[GroupMember, _Mapping]]] = ...) -> None: ...

class DedupGroupsResponse(_message.Message):
    __slots__ = ("groups", "items", "seconds")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[DuplicateGroup]
    items: int
    seconds: float
    def __init__(self, groups: _Optional[_Iterable[_Union[DuplicateGroup, _Mapping]]] = ..., items: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...
