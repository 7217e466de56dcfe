from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    KIND_UPDATE: _ClassVar[Kind]
    KIND_MERGED: _ClassVar[Kind]
    KIND_MODEL: _ClassVar[Kind]
    KIND_MERGED_HASHES: _ClassVar[Kind]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_UINT32: _ClassVar[DType]
    DTYPE_UINT64: _ClassVar[DType]

class SecAggKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SECAGG_KIND_UNSPECIFIED: _ClassVar[SecAggKind]
    SECAGG_ANNOUNCE: _ClassVar[SecAggKind]
    SECAGG_MASKED_ROOT: _ClassVar[SecAggKind]
    SECAGG_ROWS_COMPLETE: _ClassVar[SecAggKind]
    SECAGG_REVEAL: _ClassVar[SecAggKind]
    SECAGG_FETCH_ANNOUNCEMENT: _ClassVar[SecAggKind]
KIND_UNSPECIFIED: Kind
KIND_UPDATE: Kind
KIND_MERGED: Kind
KIND_MODEL: Kind
KIND_MERGED_HASHES: Kind
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_UINT32: DType
DTYPE_UINT64: DType
SECAGG_KIND_UNSPECIFIED: SecAggKind
SECAGG_ANNOUNCE: SecAggKind
SECAGG_MASKED_ROOT: SecAggKind
SECAGG_ROWS_COMPLETE: SecAggKind
SECAGG_REVEAL: SecAggKind
SECAGG_FETCH_ANNOUNCEMENT: SecAggKind

class FrameHeader(_message.Message):
    __slots__ = ("kind", "round", "attempt", "segment", "first_chunk", "elements", "dtype", "vector_elements", "chunk_hashes", "sender", "proof")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    FIRST_CHUNK_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_HASHES_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    kind: Kind
    round: int
    attempt: int
    segment: int
    first_chunk: int
    elements: int
    dtype: DType
    vector_elements: int
    chunk_hashes: bytes
    sender: str
    proof: bytes
    def __init__(self, kind: _Optional[_Union[Kind, str]] = ..., round: _Optional[int] = ..., attempt: _Optional[int] = ..., segment: _Optional[int] = ..., first_chunk: _Optional[int] = ..., elements: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., vector_elements: _Optional[int] = ..., chunk_hashes: _Optional[bytes] = ..., sender: _Optional[str] = ..., proof: _Optional[bytes] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("header", "payload")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    header: FrameHeader
    payload: bytes
    def __init__(self, header: _Optional[_Union[FrameHeader, _Mapping]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("elements",)
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    elements: int
    def __init__(self, elements: _Optional[int] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ("round",)
    ROUND_FIELD_NUMBER: _ClassVar[int]
    round: int
    def __init__(self, round: _Optional[int] = ...) -> None: ...

class InfoReply(_message.Message):
    __slots__ = ("account", "round", "version", "serving", "waiting_for")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    account: str
    round: int
    version: str
    serving: bool
    waiting_for: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, account: _Optional[str] = ..., round: _Optional[int] = ..., version: _Optional[str] = ..., serving: _Optional[bool] = ..., waiting_for: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelRequest(_message.Message):
    __slots__ = ("round",)
    ROUND_FIELD_NUMBER: _ClassVar[int]
    round: int
    def __init__(self, round: _Optional[int] = ...) -> None: ...

class UpdateRequest(_message.Message):
    __slots__ = ("round", "sender", "first_chunk", "chunks")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    FIRST_CHUNK_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    round: int
    sender: str
    first_chunk: int
    chunks: int
    def __init__(self, round: _Optional[int] = ..., sender: _Optional[str] = ..., first_chunk: _Optional[int] = ..., chunks: _Optional[int] = ...) -> None: ...

class SecAggRequest(_message.Message):
    __slots__ = ("round", "attempt", "kind", "body")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    round: int
    attempt: int
    kind: SecAggKind
    body: bytes
    def __init__(self, round: _Optional[int] = ..., attempt: _Optional[int] = ..., kind: _Optional[_Union[SecAggKind, str]] = ..., body: _Optional[bytes] = ...) -> None: ...

class SecAggReply(_message.Message):
    __slots__ = ("body",)
    BODY_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    def __init__(self, body: _Optional[bytes] = ...) -> None: ...
