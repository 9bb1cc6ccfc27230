from sfhq.v1 import common_pb2 as _common_pb2
from sfhq.v1 import search_pb2 as _search_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_MODE_UNSPECIFIED: _ClassVar[JobMode]
    JOB_MODE_INSPIRATION: _ClassVar[JobMode]
    JOB_MODE_SAMPLING: _ClassVar[JobMode]
    JOB_MODE_ANNOTATE_ONLY: _ClassVar[JobMode]
    JOB_MODE_PROMPTS: _ClassVar[JobMode]

class WriteMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WRITE_MODE_NEW: _ClassVar[WriteMode]
    WRITE_MODE_APPEND: _ClassVar[WriteMode]
    WRITE_MODE_OVERWRITE: _ClassVar[WriteMode]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_CANCELLING: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
JOB_MODE_UNSPECIFIED: JobMode
JOB_MODE_INSPIRATION: JobMode
JOB_MODE_SAMPLING: JobMode
JOB_MODE_ANNOTATE_ONLY: JobMode
JOB_MODE_PROMPTS: JobMode
WRITE_MODE_NEW: WriteMode
WRITE_MODE_APPEND: WriteMode
WRITE_MODE_OVERWRITE: WriteMode
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_CANCELLING: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState

class SlotValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class PromptSpec(_message.Message):
    __slots__ = ("prompts", "template", "slots", "negative_prompt", "images_per_prompt", "first_seed", "guidance_scale", "steps", "width", "height", "pipeline")
    class SlotsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SlotValues
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SlotValues, _Mapping]] = ...) -> None: ...
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEED_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    template: str
    slots: _containers.MessageMap[str, SlotValues]
    negative_prompt: str
    images_per_prompt: int
    first_seed: int
    guidance_scale: float
    steps: int
    width: int
    height: int
    pipeline: str
    def __init__(self, prompts: _Optional[_Iterable[str]] = ..., template: _Optional[str] = ..., slots: _Optional[_Mapping[str, SlotValues]] = ..., negative_prompt: _Optional[str] = ..., images_per_prompt: _Optional[int] = ..., first_seed: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., steps: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., pipeline: _Optional[str] = ...) -> None: ...

class SamplingSpec(_message.Message):
    __slots__ = ("count", "first_seed", "psi_min", "psi_max", "correction", "corrections")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEED_FIELD_NUMBER: _ClassVar[int]
    PSI_MIN_FIELD_NUMBER: _ClassVar[int]
    PSI_MAX_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    count: int
    first_seed: int
    psi_min: float
    psi_max: float
    correction: _common_pb2.Strategy
    corrections: _containers.RepeatedCompositeFieldContainer[_common_pb2.Strategy]
    def __init__(self, count: _Optional[int] = ..., first_seed: _Optional[int] = ..., psi_min: _Optional[float] = ..., psi_max: _Optional[float] = ..., correction: _Optional[_Union[_common_pb2.Strategy, _Mapping]] = ..., corrections: _Optional[_Iterable[_Union[_common_pb2.Strategy, _Mapping]]] = ...) -> None: ...

class CurationSpec(_message.Message):
    __slots__ = ("taste_model", "accept_threshold", "dedup_threshold", "disable_dedup", "reject_threshold")
    TASTE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEDUP_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DISABLE_DEDUP_FIELD_NUMBER: _ClassVar[int]
    REJECT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    taste_model: str
    accept_threshold: float
    dedup_threshold: float
    disable_dedup: bool
    reject_threshold: float
    def __init__(self, taste_model: _Optional[str] = ..., accept_threshold: _Optional[float] = ..., dedup_threshold: _Optional[float] = ..., disable_dedup: _Optional[bool] = ..., reject_threshold: _Optional[float] = ...) -> None: ...

class OutputSpec(_message.Message):
    __slots__ = ("dataset_uri", "part", "image_size", "jpeg_quality", "annotation_size", "write_mode", "landmark_convention")
    DATASET_URI_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    ANNOTATION_SIZE_FIELD_NUMBER: _ClassVar[int]
    WRITE_MODE_FIELD_NUMBER: _ClassVar[int]
    LANDMARK_CONVENTION_FIELD_NUMBER: _ClassVar[int]
    dataset_uri: str
    part: int
    image_size: int
    jpeg_quality: int
    annotation_size: int
    write_mode: WriteMode
    landmark_convention: str
    def __init__(self, dataset_uri: _Optional[str] = ..., part: _Optional[int] = ..., image_size: _Optional[int] = ..., jpeg_quality: _Optional[int] = ..., annotation_size: _Optional[int] = ..., write_mode: _Optional[_Union[WriteMode, str]] = ..., landmark_convention: _Optional[str] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("name", "mode", "inputs", "input_folder", "sampling", "strategies", "curation", "output", "seed", "labels", "prompts")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FOLDER_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    CURATION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    mode: JobMode
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    input_folder: str
    sampling: SamplingSpec
    strategies: _containers.RepeatedCompositeFieldContainer[_common_pb2.Strategy]
    curation: CurationSpec
    output: OutputSpec
    seed: int
    labels: _containers.ScalarMap[str, str]
    prompts: PromptSpec
    def __init__(self, name: _Optional[str] = ..., mode: _Optional[_Union[JobMode, str]] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., input_folder: _Optional[str] = ..., sampling: _Optional[_Union[SamplingSpec, _Mapping]] = ..., strategies: _Optional[_Iterable[_Union[_common_pb2.Strategy, _Mapping]]] = ..., curation: _Optional[_Union[CurationSpec, _Mapping]] = ..., output: _Optional[_Union[OutputSpec, _Mapping]] = ..., seed: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., prompts: _Optional[_Union[PromptSpec, _Mapping]] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    request_id: str
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class JobCounts(_message.Message):
    __slots__ = ("inputs", "items", "candidates", "accepted", "rejected_taste", "rejected_duplicate", "failed", "in_flight", "done_by_stage", "written", "cancelled", "review")
    class DoneByStageEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_TASTE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    DONE_BY_STAGE_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    inputs: int
    items: int
    candidates: int
    accepted: int
    rejected_taste: int
    rejected_duplicate: int
    failed: int
    in_flight: int
    done_by_stage: _containers.ScalarMap[str, int]
    written: int
    cancelled: int
    review: int
    def __init__(self, inputs: _Optional[int] = ..., items: _Optional[int] = ..., candidates: _Optional[int] = ..., accepted: _Optional[int] = ..., rejected_taste: _Optional[int] = ..., rejected_duplicate: _Optional[int] = ..., failed: _Optional[int] = ..., in_flight: _Optional[int] = ..., done_by_stage: _Optional[_Mapping[str, int]] = ..., written: _Optional[int] = ..., cancelled: _Optional[int] = ..., review: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "spec", "state", "counts", "dataset_uri", "created_at", "updated_at", "error", "owner", "name", "mode", "dataset_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    DATASET_URI_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec: JobSpec
    state: JobState
    counts: JobCounts
    dataset_uri: str
    created_at: str
    updated_at: str
    error: str
    owner: str
    name: str
    mode: JobMode
    dataset_id: str
    def __init__(self, job_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., counts: _Optional[_Union[JobCounts, _Mapping]] = ..., dataset_uri: _Optional[str] = ..., created_at: _Optional[str] = ..., updated_at: _Optional[str] = ..., error: _Optional[str] = ..., owner: _Optional[str] = ..., name: _Optional[str] = ..., mode: _Optional[_Union[JobMode, str]] = ..., dataset_id: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "after_event_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_event_id: str
    def __init__(self, job_id: _Optional[str] = ..., after_event_id: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("event_id", "job_id", "kind", "item_id", "stage", "state", "counts", "error", "message", "time_ms")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    job_id: str
    kind: str
    item_id: str
    stage: _common_pb2.Stage
    state: JobState
    counts: JobCounts
    error: _common_pb2.Error
    message: str
    time_ms: int
    def __init__(self, event_id: _Optional[str] = ..., job_id: _Optional[str] = ..., kind: _Optional[str] = ..., item_id: _Optional[str] = ..., stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., counts: _Optional[_Union[JobCounts, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., message: _Optional[str] = ..., time_ms: _Optional[int] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("limit", "state")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    limit: int
    state: JobState
    def __init__(self, limit: _Optional[int] = ..., state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class ListItemsRequest(_message.Message):
    __slots__ = ("job_id", "state", "limit", "offset", "yaw", "pitch", "roll")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    YAW_FIELD_NUMBER: _ClassVar[int]
    PITCH_FIELD_NUMBER: _ClassVar[int]
    ROLL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    limit: int
    offset: int
    yaw: _common_pb2.AngleRange
    pitch: _common_pb2.AngleRange
    roll: _common_pb2.AngleRange
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., yaw: _Optional[_Union[_common_pb2.AngleRange, _Mapping]] = ..., pitch: _Optional[_Union[_common_pb2.AngleRange, _Mapping]] = ..., roll: _Optional[_Union[_common_pb2.AngleRange, _Mapping]] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "job_id", "parent_id", "state", "stage", "stem", "image", "segmentation", "landmarks", "latent", "taste_score", "duplicate_of", "provenance_json", "error", "features", "dataset_id", "manifest_json", "pose")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    TASTE_SCORE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_OF_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    POSE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    job_id: str
    parent_id: str
    state: str
    stage: _common_pb2.Stage
    stem: str
    image: _common_pb2.Image
    segmentation: _common_pb2.Image
    landmarks: _common_pb2.Tensor
    latent: _common_pb2.Tensor
    taste_score: float
    duplicate_of: str
    provenance_json: str
    error: _common_pb2.Error
    features: _containers.MessageMap[str, _common_pb2.Tensor]
    dataset_id: str
    manifest_json: str
    pose: _common_pb2.HeadPose
    def __init__(self, item_id: _Optional[str] = ..., job_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., state: _Optional[str] = ..., stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., stem: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., segmentation: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., landmarks: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., latent: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., taste_score: _Optional[float] = ..., duplicate_of: _Optional[str] = ..., provenance_json: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., features: _Optional[_Mapping[str, _common_pb2.Tensor]] = ..., dataset_id: _Optional[str] = ..., manifest_json: _Optional[str] = ..., pose: _Optional[_Union[_common_pb2.HeadPose, _Mapping]] = ...) -> None: ...

class ListItemsResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class GetItemRequest(_message.Message):
    __slots__ = ("job_id", "item_id", "include_image", "include_annotations")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    item_id: str
    include_image: bool
    include_annotations: bool
    def __init__(self, job_id: _Optional[str] = ..., item_id: _Optional[str] = ..., include_image: _Optional[bool] = ..., include_annotations: _Optional[bool] = ...) -> None: ...

class ImportItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_search_pb2.IndexedItem]
    def __init__(self, items: _Optional[_Iterable[_Union[_search_pb2.IndexedItem, _Mapping]]] = ...) -> None: ...

class ImportItemsResponse(_message.Message):
    __slots__ = ("added", "index_size", "batches")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    INDEX_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    added: int
    index_size: int
    batches: int
    def __init__(self, added: _Optional[int] = ..., index_size: _Optional[int] = ..., batches: _Optional[int] = ...) -> None: ...

class ScoreItemsRequest(_message.Message):
    __slots__ = ("taste_model", "job_id", "dataset_uri", "limit")
    TASTE_MODEL_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_URI_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    taste_model: str
    job_id: str
    dataset_uri: str
    limit: int
    def __init__(self, taste_model: _Optional[str] = ..., job_id: _Optional[str] = ..., dataset_uri: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "stem", "score", "decision")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    STEM_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    stem: str
    score: float
    decision: str
    def __init__(self, item_id: _Optional[str] = ..., stem: _Optional[str] = ..., score: _Optional[float] = ..., decision: _Optional[str] = ...) -> None: ...

class ScoreItemsResponse(_message.Message):
    __slots__ = ("items", "model", "histogram")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model: _search_pb2.TasteModelInfo
    histogram: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model: _Optional[_Union[_search_pb2.TasteModelInfo, _Mapping]] = ..., histogram: _Optional[_Iterable[int]] = ...) -> None: ...

class ReviewQueueRequest(_message.Message):
    __slots__ = ("job_id", "count", "include_images")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    count: int
    include_images: bool
    def __init__(self, job_id: _Optional[str] = ..., count: _Optional[int] = ..., include_images: _Optional[bool] = ...) -> None: ...

class ReviewEntry(_message.Message):
    __slots__ = ("item", "score", "uncertainty")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    item: Item
    score: float
    uncertainty: float
    def __init__(self, item: _Optional[_Union[Item, _Mapping]] = ..., score: _Optional[float] = ..., uncertainty: _Optional[float] = ...) -> None: ...

class ReviewQueueResponse(_message.Message):
    __slots__ = ("items", "waiting")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ReviewEntry]
    waiting: int
    def __init__(self, items: _Optional[_Iterable[_Union[ReviewEntry, _Mapping]]] = ..., waiting: _Optional[int] = ...) -> None: ...

class ReviewRequest(_message.Message):
    __slots__ = ("job_id", "item_id", "accept", "labeler")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    LABELER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    item_id: str
    accept: bool
    labeler: str
    def __init__(self, job_id: _Optional[str] = ..., item_id: _Optional[str] = ..., accept: _Optional[bool] = ..., labeler: _Optional[str] = ...) -> None: ...

class CurateDatasetRequest(_message.Message):
    __slots__ = ("dataset_uri", "taste_model", "threshold", "dry_run")
    DATASET_URI_FIELD_NUMBER: _ClassVar[int]
    TASTE_MODEL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dataset_uri: str
    taste_model: str
    threshold: float
    dry_run: bool
    def __init__(self, dataset_uri: _Optional[str] = ..., taste_model: _Optional[str] = ..., threshold: _Optional[float] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class MovedItem(_message.Message):
    __slots__ = ("stem", "score", "reason", "duplicate_of", "similarity")
    STEM_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_OF_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    stem: str
    score: float
    reason: str
    duplicate_of: str
    similarity: float
    def __init__(self, stem: _Optional[str] = ..., score: _Optional[float] = ..., reason: _Optional[str] = ..., duplicate_of: _Optional[str] = ..., similarity: _Optional[float] = ...) -> None: ...

class CurateDatasetResponse(_message.Message):
    __slots__ = ("scored", "kept", "moved", "threshold", "model", "dry_run")
    SCORED_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    scored: int
    kept: int
    moved: _containers.RepeatedCompositeFieldContainer[MovedItem]
    threshold: float
    model: _search_pb2.TasteModelInfo
    dry_run: bool
    def __init__(self, scored: _Optional[int] = ..., kept: _Optional[int] = ..., moved: _Optional[_Iterable[_Union[MovedItem, _Mapping]]] = ..., threshold: _Optional[float] = ..., model: _Optional[_Union[_search_pb2.TasteModelInfo, _Mapping]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class DedupDatasetRequest(_message.Message):
    __slots__ = ("dataset_uri", "threshold", "dry_run", "include_public")
    DATASET_URI_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    dataset_uri: str
    threshold: float
    dry_run: bool
    include_public: bool
    def __init__(self, dataset_uri: _Optional[str] = ..., threshold: _Optional[float] = ..., dry_run: _Optional[bool] = ..., include_public: _Optional[bool] = ...) -> None: ...

class DedupDatasetResponse(_message.Message):
    __slots__ = ("groups", "items", "moved", "dry_run", "seconds")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[_search_pb2.DuplicateGroup]
    items: int
    moved: _containers.RepeatedCompositeFieldContainer[MovedItem]
    dry_run: bool
    seconds: float
    def __init__(self, groups: _Optional[_Iterable[_Union[_search_pb2.DuplicateGroup, _Mapping]]] = ..., items: _Optional[int] = ..., moved: _Optional[_Iterable[_Union[MovedItem, _Mapping]]] = ..., dry_run: _Optional[bool] = ..., seconds: _Optional[float] = ...) -> None: ...
