from sfhq.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NoiseMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NOISE_MODE_UNSPECIFIED: _ClassVar[NoiseMode]
    NOISE_MODE_CONST: _ClassVar[NoiseMode]
    NOISE_MODE_RANDOM: _ClassVar[NoiseMode]
    NOISE_MODE_NONE: _ClassVar[NoiseMode]
NOISE_MODE_UNSPECIFIED: NoiseMode
NOISE_MODE_CONST: NoiseMode
NOISE_MODE_RANDOM: NoiseMode
NOISE_MODE_NONE: NoiseMode

class SynthesizeRequest(_message.Message):
    __slots__ = ("latents", "truncation_psi", "truncation_cutoff", "noise_mode", "output")
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_PSI_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_CUTOFF_FIELD_NUMBER: _ClassVar[int]
    NOISE_MODE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    latents: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    truncation_psi: float
    truncation_cutoff: int
    noise_mode: NoiseMode
    output: _common_pb2.OutputOptions
    def __init__(self, latents: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., truncation_psi: _Optional[float] = ..., truncation_cutoff: _Optional[int] = ..., noise_mode: _Optional[_Union[NoiseMode, str]] = ..., output: _Optional[_Union[_common_pb2.OutputOptions, _Mapping]] = ...) -> None: ...

class SynthesizeResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    def __init__(self, images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("seeds", "psi", "truncation_cutoff", "noise_mode", "output")
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_CUTOFF_FIELD_NUMBER: _ClassVar[int]
    NOISE_MODE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    seeds: _containers.RepeatedScalarFieldContainer[int]
    psi: float
    truncation_cutoff: int
    noise_mode: NoiseMode
    output: _common_pb2.OutputOptions
    def __init__(self, seeds: _Optional[_Iterable[int]] = ..., psi: _Optional[float] = ..., truncation_cutoff: _Optional[int] = ..., noise_mode: _Optional[_Union[NoiseMode, str]] = ..., output: _Optional[_Union[_common_pb2.OutputOptions, _Mapping]] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("seed", "w", "image")
    SEED_FIELD_NUMBER: _ClassVar[int]
    W_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    seed: int
    w: _common_pb2.Tensor
    image: _common_pb2.Image
    def __init__(self, seed: _Optional[int] = ..., w: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("samples",)
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    def __init__(self, samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ...) -> None: ...

class CandidatesRequest(_message.Message):
    __slots__ = ("latent", "strategies", "target", "sampled_w", "output")
    LATENT_FIELD_NUMBER: _ClassVar[int]
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_W_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    latent: _common_pb2.Tensor
    strategies: _containers.RepeatedCompositeFieldContainer[_common_pb2.Strategy]
    target: _common_pb2.Image
    sampled_w: _common_pb2.Tensor
    output: _common_pb2.OutputOptions
    def __init__(self, latent: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., strategies: _Optional[_Iterable[_Union[_common_pb2.Strategy, _Mapping]]] = ..., target: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., sampled_w: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., output: _Optional[_Union[_common_pb2.OutputOptions, _Mapping]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("strategy", "image", "latent")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    strategy: _common_pb2.Strategy
    image: _common_pb2.Image
    latent: _common_pb2.Tensor
    def __init__(self, strategy: _Optional[_Union[_common_pb2.Strategy, _Mapping]] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., latent: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class CandidatesResponse(_message.Message):
    __slots__ = ("candidates",)
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...
