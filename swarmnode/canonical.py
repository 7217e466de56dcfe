"""The canonical vector: the one definition of "a model's weights" that every part agrees on.

The commitment a node puts on chain, the segments each participant owns in the segmented
all-reduce, the digest of the merged model and the check a catching-up node makes all read
the model through this module, so no two parts can disagree on what was hashed or sent
(docs/canonical-vector.md).

Definition (any change here is a protocol change; tests/test_canonical.py pins literals):

- The vector: the floating-point tensors of a model's state_dict, in state_dict order, each
  flattened in row-major order, as little-endian float32. float16, bfloat16, float64 (and the
  float8 kinds) are converted to float32. Integer and bool tensors (BatchNorm's
  num_batches_tracked) and non-tensor entries (extra state) are not in it and keep their
  local value.
- Chunks of chunk_elements(numel) elements: a power of two from 16 to 4096 (CHUNK_ELEMENTS)
  that depends on the vector's size only, 2**floor(log2(numel // 1024)) clamped to that
  range, so a vector has about 1024 chunks (at most numel / 4096 for large ones); the last
  chunk may be shorter. A chunk hash is BLAKE3 (32-byte output) of the chunk's little-endian
  float32 bytes. The digest is the Merkle root over the chunk hashes (swarmnode/merkle.py);
  an empty vector has zero chunks and digest SHA-256(b""). The chunk hashes cover every
  byte a receiver checks, so they take the fast hash; the tree hashes only the list, so its
  speed does not matter and it is SHA-256, which contracts and other tools recompute.
- Segments are whole-chunk ranges in participant order whose sizes differ by at most one
  chunk: the first ``num_chunks % n`` segments get one chunk more; with fewer chunks than
  participants the trailing segments are empty.
- A sender ships the chunk hashes of a segment and their Merkle proof beside it. The
  receiver checks them against the sender's commitment once (merkle.verify_range) and each
  received range of chunks against them (verify_chunks), so a segment is checked on its own.
  A whole vector's list is checked with verify_hash_list (catch-up).

Errors: data that came from a peer and fails a check (size, hash, non-finite value) raises
PeerError naming what was wrong; misuse by the calling code (a vector of the wrong dtype, a
model whose layout is not the expected one) raises ConfigError.

This module runs on the GPU machine too (torch 2.11 there): it uses no torch API newer than
that and imports neither web3 nor grpc. blake3 is imported only when chunks are hashed, so
training code that never hashes imports without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from swarmnode import merkle
from swarmnode.exceptions import ConfigError, PeerError

__all__ = [
    "CHUNK_BYTES",
    "CHUNK_ELEMENTS",
    "CHUNK_HASH",
    "CHUNK_RULE",
    "COMMITMENT",
    "ELEMENT_BYTES",
    "EMPTY_DIGEST",
    "HASH_BYTES",
    "MIN_CHUNK_ELEMENTS",
    "ORDER_KEY",
    "Entry",
    "Layout",
    "VectorLike",
    "arrays_state",
    "check_finite",
    "chunk_elements",
    "chunk_hashes",
    "chunk_of",
    "digest",
    "digest_from_chunk_hashes",
    "element_range",
    "flatten",
    "flatten_arrays",
    "from_le_bytes",
    "layout_of",
    "load_model_file",
    "model_file_digest",
    "num_chunks",
    "save_model_file",
    "segments",
    "to_le_bytes",
    "unflatten_into",
    "vector_for",
    "verify_chunks",
    "verify_hash_list",
    "verify_segment_hashes",
]

CHUNK_ELEMENTS = 4096
"""The largest chunk (elements), for bounds; a vector's own is chunk_elements(numel)."""
MIN_CHUNK_ELEMENTS = 16
"""The smallest chunk (elements): vectors under 16 Ki elements have chunks of 16."""
ELEMENT_BYTES = 4
"""Bytes per element: the vector is float32."""
CHUNK_BYTES = CHUNK_ELEMENTS * ELEMENT_BYTES
"""16 KiB, the largest chunk: small enough that a hash list costs 0.2% of the data, large
enough that the per-chunk Python overhead (about a microsecond) is noise next to hashing it."""
CHUNK_RULE = "pow2(numel/1024) in 16..4096"
"""The chunk-size rule's name, written into deployment files and checkpoint headers."""
COMMITMENT = "merkle"
"""How a digest is made from the chunk hashes: the Merkle root of swarmnode/merkle.py."""
CHUNK_HASH = "blake3"
"""The chunk hash's name, written into checkpoint headers so that a file hashed under another
scheme is recognised as such (docs/canonical-vector.md#checkpoints)."""
HASH_BYTES = 32
"""Chunk hash and digest size (BLAKE3's default output, SHA-256's); a hash list is
HASH_BYTES x num_chunks bytes."""
EMPTY_DIGEST = merkle.EMPTY_ROOT
"""The digest of a vector with no elements (a model with no floating-point tensors)."""

# Hashing a large vector is spread over threads: blake3 releases the GIL while it hashes a
# buffer, so chunk hashing scales with cores. Below this size the thread start-up is not
# worth it.
_PARALLEL_MIN_BYTES = 8 * 1024 * 1024
_MAX_WORKERS = 8

StateDict: TypeAlias = Mapping[str, Any]
"""A state_dict: names to tensors (and, for modules with extra state, other objects)."""
VectorLike: TypeAlias = torch.Tensor | npt.NDArray[Any] | bytes | bytearray | memoryview
"""A canonical vector or a range of one: a 1-D float32 tensor (any device), a 1-D float32
numpy array (any byte order), or its little-endian float32 bytes as received off the wire."""


# --------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True)
class Entry:
    """One state_dict tensor inside the vector: where it sits and what to cast back to."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    numel: int

    @property
    def stop(self) -> int:
        """One past the entry's last element in the vector."""
        return self.offset + self.numel


@dataclass(frozen=True)
class Layout:
    """Which state_dict entries make up the vector, in order, with shapes, dtypes and offsets.

    A node builds it from its own model; it tells unflatten_into where each tensor's values
    are, and tells a receiver how many elements a peer's vector must have. ``local`` names
    the entries that stay out of the vector and keep their local value.
    """

    entries: tuple[Entry, ...]
    local: tuple[str, ...]
    numel: int

    @classmethod
    def from_state_dict(cls, state: StateDict) -> Layout:
        """Reads the layout off a state_dict; refuses tensors it cannot place (ConfigError)."""
        entries: list[Entry] = []
        local: list[str] = []
        offset = 0
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                local.append(name)  # extra state: not weights, never merged
                continue
            if value.layout != torch.strided or value.is_quantized:
                raise ConfigError(
                    f"state_dict entry {name!r} is a {value.layout} / {value.dtype} tensor; "
                    "the canonical vector holds dense floating-point tensors only"
                )
            if value.is_complex():
                # Leaving it out would silently never merge it; putting it in needs a definition.
                raise ConfigError(
                    f"state_dict entry {name!r} is complex ({value.dtype}); the canonical "
                    "vector has no definition for complex tensors"
                )
            if not value.is_floating_point():
                local.append(name)  # integer and bool buffers keep their local value
                continue
            if value.device.type == "meta":
                raise ConfigError(f"state_dict entry {name!r} is on the meta device (no data)")
            numel = value.numel()
            entries.append(Entry(name, tuple(value.shape), value.dtype, offset, numel))
            offset += numel
        return cls(tuple(entries), tuple(local), offset)

    @property
    def num_chunks(self) -> int:
        """Chunks in a vector of this layout."""
        return num_chunks(self.numel)

    @property
    def names(self) -> tuple[str, ...]:
        """The vector's entries, in vector order."""
        return tuple(entry.name for entry in self.entries)

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 over the entries' names and shapes, so two nodes can tell that their
        vectors mean the same thing (equal sizes alone do not say that). Dtypes are left out
        on purpose: a node keeping a float16 copy produces the same float32 vector."""
        text = "".join(
            f"{entry.name}\0{','.join(map(str, entry.shape))}\n" for entry in self.entries
        )
        return hashlib.sha256(text.encode()).digest()

    def check_vector(self, vector: VectorLike, *, what: str = "vector") -> None:
        """Refuses a received vector whose size does not match this layout (PeerError)."""
        got = _element_count(vector, what=what)
        if got != self.numel:
            raise PeerError(
                f"{what} has {got} elements, expected {self.numel} "
                f"({len(self.entries)} floating-point tensors)"
            )

    def require_same(self, other: Layout, *, what: str = "model") -> None:
        """Raises ConfigError naming the first difference between two layouts."""
        if self == other:
            return
        for index, (mine, theirs) in enumerate(zip(self.entries, other.entries, strict=False)):
            if mine != theirs:
                raise ConfigError(
                    f"{what} differs from the expected layout at entry {index}: "
                    f"expected {_describe(mine)}, found {_describe(theirs)}"
                )
        if len(self.entries) != len(other.entries):
            raise ConfigError(
                f"{what} has {len(other.entries)} floating-point tensors, "
                f"expected {len(self.entries)}"
            )
        raise ConfigError(
            f"{what} keeps different local entries: expected {self.local}, found {other.local}"
        )


def _describe(entry: Entry) -> str:
    return f"{entry.name!r} {list(entry.shape)} {entry.dtype} at {entry.offset}"


def _state(source: nn.Module | StateDict) -> StateDict:
    """A module's own state_dict (whose tensors share the module's storage), or the mapping."""
    if isinstance(source, nn.Module):
        return source.state_dict()
    return source


def layout_of(source: nn.Module | StateDict) -> Layout:
    """The layout of a module's or a state_dict's canonical vector."""
    return Layout.from_state_dict(_state(source))


def _checked_layout(state: StateDict, layout: Layout | None) -> Layout:
    actual = Layout.from_state_dict(state)
    if layout is not None:
        layout.require_same(actual)
    return actual


# --------------------------------------------------------------------------------------------
# Flatten / unflatten


def flatten(source: nn.Module | StateDict, layout: Layout | None = None) -> torch.Tensor:
    """The canonical vector of a model: 1-D float32, on the CPU, contiguous, freshly allocated.

    Each tensor is copied once, straight from its device and dtype into its slice of the
    output (copy_ casts and transfers in one step, and follows the source's strides, so no
    intermediate contiguous or float32 copy is made on the device). The conversions to
    float32 are exact for float16/bfloat16 and round to nearest even for float64, on the CPU
    and on CUDA alike, so every device yields the same bits. With ``layout`` given, a model
    whose layout differs is refused (ConfigError).
    """
    state = _state(source)
    actual = _checked_layout(state, layout)
    out = torch.empty(actual.numel, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        for entry in actual.entries:
            out[entry.offset : entry.stop].view(entry.shape).copy_(state[entry.name])
    return out


def unflatten_into(
    vector: torch.Tensor, target: nn.Module | StateDict, layout: Layout | None = None
) -> None:
    """Writes a canonical vector back into a model or state_dict, in place.

    Each floating-point tensor receives its slice cast to its own dtype and device; integer,
    bool and non-tensor entries are not touched. For a module this writes through
    ``module.state_dict()``, whose tensors are the module's own storage, so parameters keep
    their identity (optimizers holding them stay valid). A vector of the wrong size, dtype or
    shape, or a target whose layout differs from ``layout``, is a ConfigError: by the time a
    vector is written back it has been checked, so a mismatch is a bug or a wrong model.
    """
    state = _state(target)
    actual = _checked_layout(state, layout)
    if not isinstance(vector, torch.Tensor) or vector.dtype != torch.float32 or vector.dim() != 1:
        raise ConfigError(f"a canonical vector is a 1-D float32 tensor, got {_kind(vector)}")
    if vector.numel() != actual.numel:
        raise ConfigError(
            f"vector has {vector.numel()} elements, the model's layout needs {actual.numel}"
        )
    with torch.no_grad():
        source = vector.detach()
        for entry in actual.entries:
            state[entry.name].copy_(source[entry.offset : entry.stop].view(entry.shape))


# --------------------------------------------------------------------------------------------
# Lists of arrays and model files


def arrays_state(arrays: Sequence[npt.ArrayLike]) -> dict[str, torch.Tensor]:
    """A list of NumPy arrays (a Flower client's parameters) as a state_dict named "0",
    "1", ...: the form every function here reads. The tensors share the arrays' memory where
    the arrays are contiguous and in native byte order, and are copies otherwise."""
    state: dict[str, torch.Tensor] = {}
    for index, value in enumerate(arrays):
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise ConfigError(
                f"array {index} is {array.dtype}: the canonical vector reads numeric arrays only"
            )
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        if not array.flags.c_contiguous:
            array = array.copy(order="C")  # not np.ascontiguousarray: it makes 0-D arrays 1-D
        state[str(index)] = torch.from_numpy(array)
    return state


def flatten_arrays(arrays: Sequence[npt.ArrayLike]) -> npt.NDArray[np.float32]:
    """The canonical vector of a list of NumPy arrays of any shapes, in list order.

    The same vector as ``flatten`` of the state_dict the list came from
    (``[t.numpy() for t in model.state_dict().values()]``): floating-point arrays, each
    flattened row-major, as float32; integer and bool arrays (BatchNorm's
    num_batches_tracked) are left out. ``np.concatenate`` of the list is not that: it fails
    on arrays of different ranks (any CNN) and keeps the integer ones.
    """
    return flatten(arrays_state(arrays)).numpy()


ORDER_KEY = "swarmnode.order"
"""The safetensors metadata entry that records a state_dict's order (a JSON list of names):
safetensors stores tensors sorted by dtype and name, and the canonical vector follows the
state_dict's order (docs/canonical-vector.md#initial-model-files)."""


def save_model_file(source: nn.Module | StateDict, path: str | Path) -> None:
    """Writes a model's state_dict to ``path``: safetensors (the order recorded under
    ORDER_KEY) when the name ends in .safetensors, else ``torch.save``. Either file gives
    ``swarmnode deploy --initial-model`` the model's own digest."""
    state = {k: v for k, v in _state(source).items() if isinstance(v, torch.Tensor)}
    target = Path(path)
    if target.suffix == ".safetensors":
        from safetensors.torch import save_file  # here: only this file kind needs it

        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, str(target), metadata={ORDER_KEY: json.dumps(list(tensors))})
    else:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, target)


def load_model_file(path: str | Path, *, ordered: bool = False) -> dict[str, torch.Tensor]:
    """The state_dict in a model file: ``torch.save(model.state_dict(), path)`` or a
    safetensors file (told apart by their contents, not their names), on the CPU.

    ``ordered=True`` also needs the state_dict's order, which the digest follows: a
    safetensors file without ORDER_KEY does not keep it, and is refused. Anything else
    (no such file, a pickled module, a checkpoint holding more than a state_dict) is a
    ConfigError of one line naming the file.
    """
    source = Path(path)
    try:
        with source.open("rb") as file:
            head = file.read(9)
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such model file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it ({exc.strerror or exc})") from None
    if len(head) == 9 and head[8:9] == b"{":
        return _load_safetensors(source, ordered)
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds here; all mean "not a state_dict file"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"{source}: not a state_dict file (torch.save(model.state_dict(), FILE) or "
            f"safetensors): {first[:160]}"
        ) from None
    return _as_state_dict(loaded, source)


def _load_safetensors(source: Path, ordered: bool) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open  # here: only this file kind needs it

    try:
        with safe_open(str(source), framework="pt", device="cpu") as file:
            names = list(file.keys())
            order = (file.metadata() or {}).get(ORDER_KEY)
            tensors = {name: file.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{source}: not a readable safetensors file ({exc})") from None
    if order is None:
        if ordered:
            raise ConfigError(
                f"{source}: a safetensors file does not keep the state_dict's order, which the "
                "digest follows: write it with swarmnode.canonical.save_model_file(model, "
                "FILE), which records the order, or use torch.save(model.state_dict(), FILE)"
            )
        return tensors
    try:
        listed = json.loads(order)
    except json.JSONDecodeError:
        listed = None
    if not isinstance(listed, list) or sorted(map(str, listed)) != sorted(names):
        raise ConfigError(f"{source}: its {ORDER_KEY} metadata does not list its tensors")
    return {str(name): tensors[str(name)] for name in listed}


def _as_state_dict(loaded: object, source: Path) -> dict[str, torch.Tensor]:
    if (
        isinstance(loaded, Mapping)
        and loaded
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items())
    ):
        return dict(loaded)
    hint = ""
    if isinstance(loaded, Mapping):
        inner = [k for k, v in loaded.items() if isinstance(v, Mapping)]
        if inner:
            hint = f" (it holds {inner[0]!r}: save that state_dict alone)"
    raise ConfigError(
        f"{source}: not a state_dict (a mapping of names to tensors) but a "
        f"{type(loaded).__name__}{hint}"
    )


def model_file_digest(path: str | Path) -> bytes:
    """The digest of the model in a file, as a node holding that model computes it."""
    vector = flatten(load_model_file(path, ordered=True))
    if vector.numel() == 0:
        raise ConfigError(f"{path}: holds no floating-point tensors")
    return digest(vector)


def vector_for(state: StateDict, layout: Layout, *, what: str = "model file") -> torch.Tensor:
    """The canonical vector of a model of ``layout`` holding ``state``'s values.

    Tensors are matched by name; where the names differ (a Flower client's parameters are
    named "0", "1", ...) by position among the floating-point tensors. Either way every
    shape must match, else ConfigError naming the first difference.
    """
    floats = Layout.from_state_dict(state)
    by_name = {entry.name: entry for entry in floats.entries}
    if set(by_name) == set(layout.names):
        sources = [by_name[entry.name] for entry in layout.entries]
    else:
        sources = list(floats.entries)
    if len(sources) != len(layout.entries):
        raise ConfigError(
            f"{what} has {len(sources)} floating-point tensors, the model has {len(layout.entries)}"
        )
    for mine, theirs in zip(layout.entries, sources, strict=True):
        if mine.shape != theirs.shape:
            raise ConfigError(
                f"{what}: {theirs.name!r} is {list(theirs.shape)}, the model's "
                f"{mine.name!r} is {list(mine.shape)}"
            )
    out = torch.empty(layout.numel, dtype=torch.float32)
    with torch.no_grad():
        for mine, theirs in zip(layout.entries, sources, strict=True):
            out[mine.offset : mine.stop].view(mine.shape).copy_(state[theirs.name])
    return out


def _kind(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dim()}-D {value.dtype} tensor on {value.device}"
    if isinstance(value, np.ndarray):
        return f"a {value.ndim}-D {value.dtype} array"
    return type(value).__name__


# --------------------------------------------------------------------------------------------
# Bytes


def _le_array(data: VectorLike, *, what: str) -> npt.NDArray[Any]:
    """A 1-D little-endian float32 numpy view of the data; no copy on little-endian hosts.

    On a big-endian host (or for a big-endian numpy array) the values are byte-swapped into a
    copy first, so every host hashes and sends the same bytes.
    """
    if isinstance(data, torch.Tensor):
        if data.dtype != torch.float32 or data.dim() != 1:
            raise ConfigError(f"{what} must be a 1-D float32 tensor, got {_kind(data)}")
        array: npt.NDArray[Any] = data.detach().cpu().contiguous().numpy()
    elif isinstance(data, np.ndarray):
        if data.dtype.kind != "f" or data.dtype.itemsize != ELEMENT_BYTES or data.ndim != 1:
            raise ConfigError(f"{what} must be a 1-D float32 array, got {_kind(data)}")
        array = data
    elif isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        if not view.c_contiguous:
            raise ConfigError(f"{what} must be a contiguous buffer")
        size = view.nbytes
        if size % ELEMENT_BYTES:
            raise PeerError(f"{what} has {size} bytes, not a whole number of float32 values")
        return np.frombuffer(view.cast("B"), dtype="<f4")
    else:
        raise ConfigError(f"{what} must be a tensor, an array or bytes, got {_kind(data)}")
    return np.ascontiguousarray(array, dtype="<f4")


def _le_bytes(data: VectorLike, *, what: str) -> memoryview:
    """The data's little-endian float32 bytes as a flat memoryview (zero-copy when possible)."""
    return _le_array(data, what=what).view(np.uint8).data


def _element_count(data: VectorLike, *, what: str) -> int:
    """Elements in the data, without copying a tensor off its device just to count them."""
    if isinstance(data, torch.Tensor):
        if data.dtype != torch.float32 or data.dim() != 1:
            raise ConfigError(f"{what} must be a 1-D float32 tensor, got {_kind(data)}")
        return data.numel()
    return len(_le_array(data, what=what))


def to_le_bytes(vector: VectorLike) -> memoryview:
    """The wire form of a vector (or a range of one): little-endian float32 bytes.

    Zero-copy on little-endian hosts: the memoryview reads the tensor's own memory, so the
    tensor must not change while the view is in use.
    """
    return _le_bytes(vector, what="vector")


def from_le_bytes(data: bytes | bytearray | memoryview) -> torch.Tensor:
    """A fresh, writable 1-D float32 CPU tensor from received little-endian float32 bytes.

    Copies once: received buffers are often read-only or reused by the transport, and the
    tensor must own its memory (native byte order) to be merged. A length that is not a
    multiple of 4 bytes is a PeerError.
    """
    array = _le_array(data, what="received data")
    return torch.from_numpy(array.astype(np.float32, copy=True))


# --------------------------------------------------------------------------------------------
# Chunks, hashes, digests


def chunk_elements(numel: int) -> int:
    """Elements per chunk of a vector of ``numel`` elements: the power of two
    2**floor(log2(numel // 1024)), clamped to 16..4096, the same on every node of a swarm.

    Why it depends on the size: a segment is whole chunks, so a model with fewer chunks than
    participants leaves owners without a segment while others own a whole model's worth;
    about 1024 chunks keep segments even up to hundreds of nodes, and the chunk-hash list
    about 32 KiB. Large vectors keep 16 KiB chunks (a list of 0.2 % of the data)."""
    if numel < 0:
        raise ConfigError(f"a vector cannot have {numel} elements")
    scaled = numel // 1024
    if scaled < MIN_CHUNK_ELEMENTS:
        return MIN_CHUNK_ELEMENTS
    return min(CHUNK_ELEMENTS, 1 << (scaled.bit_length() - 1))


def num_chunks(numel: int) -> int:
    """Chunks in a vector of ``numel`` elements (the last one may be short)."""
    return -(-numel // chunk_elements(numel))


def _chunk_hasher() -> Any:
    """The blake3 constructor, imported here rather than at module import: training code
    imports this module on machines without blake3 and never hashes there."""
    try:
        from blake3 import blake3
    except ImportError as exc:
        raise ConfigError(
            "hashing chunks needs the blake3 package (pip install 'blake3>=1.0,<2')"
        ) from exc
    return blake3


def _hash_range(view: memoryview, size: int, first: int, stop: int) -> bytes:
    """Concatenated BLAKE3 hashes (32 bytes each) of chunks [first, stop) of `size` bytes of
    the byte view."""
    blake3 = _chunk_hasher()
    return b"".join(blake3(view[i * size : (i + 1) * size]).digest() for i in range(first, stop))


def _worker_count(nbytes: int, chunks: int, workers: int | None) -> int:
    if workers is not None:
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        return min(workers, max(chunks, 1))
    if nbytes < _PARALLEL_MIN_BYTES:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MAX_WORKERS, chunks))


def _hash_chunks(
    view: memoryview, chunk: int, workers: int | None, item_bytes: int = ELEMENT_BYTES
) -> bytes:
    """The hashes of `view`'s chunks of `chunk` elements of `item_bytes` bytes each."""
    size = chunk * item_bytes
    count = -(-view.nbytes // size)
    threads = _worker_count(view.nbytes, count, workers)
    if threads <= 1:
        return _hash_range(view, size, 0, count)
    bounds = [count * k // threads for k in range(threads + 1)]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="chunk-hash") as pool:
        parts = pool.map(_hash_range, [view] * threads, [size] * threads, bounds[:-1], bounds[1:])
        return b"".join(parts)


def chunk_hashes(
    vector: VectorLike, *, numel: int | None = None, workers: int | None = None
) -> bytes:
    """The chunk hashes of a vector, concatenated: HASH_BYTES x num_chunks bytes.

    ``numel`` is the size of the whole vector when ``vector`` is a range of whole chunks of
    one (a segment): the chunk size comes from the whole vector's size, never the range's.
    One bytes object rather than a list of 32-byte objects: it is exactly what goes on the
    wire beside a segment and what the root is built over, so it is never joined or split
    again, and it avoids one Python object per chunk (chunk i is
    ``hashes[32 * i : 32 * i + 32]``). Chunks are hashed over zero-copy slices of the
    vector's memory. Vectors of 8 MiB and up are hashed on several threads unless
    ``workers`` says how many to use (1: this thread).
    """
    view = _le_bytes(vector, what="vector")
    whole = view.nbytes // ELEMENT_BYTES if numel is None else numel
    return _hash_chunks(view, chunk_elements(whole), workers)


def word_chunk_hashes(
    words: npt.NDArray[np.unsignedinteger], *, numel: int | None = None, workers: int | None = None
) -> bytes:
    """chunk_hashes for a vector of 4- or 8-byte unsigned words (secure aggregation's masked
    vector, docs/secure-aggregation.md#in-a-round): chunks hold as many ELEMENTS as the
    float32 vector of the same length would, each hashed over its little-endian words."""
    if not isinstance(words, np.ndarray) or words.ndim != 1 or words.dtype.kind != "u":
        raise ConfigError(
            f"word chunk hashes need a 1-D unsigned integer array, got {_kind(words)}"
        )
    data = np.ascontiguousarray(words, dtype=words.dtype.newbyteorder("<"))
    whole = len(data) if numel is None else numel
    view = data.view(np.uint8).data  # zero-copy when already contiguous little-endian
    return _hash_chunks(view, chunk_elements(whole), workers, data.itemsize)


def digest_from_chunk_hashes(hashes: bytes | bytearray | memoryview | Sequence[bytes]) -> bytes:
    """The digest from a hash list (concatenated, or one 32-byte hash per chunk): the
    Merkle root over it (swarmnode/merkle.py)."""
    if isinstance(hashes, bytes | bytearray | memoryview):
        joined = bytes(hashes)
    else:
        joined = b"".join(hashes)
        if any(len(item) != HASH_BYTES for item in hashes):
            raise ConfigError(f"every chunk hash must be {HASH_BYTES} bytes")
    if len(joined) % HASH_BYTES:
        raise ConfigError(f"a hash list is a multiple of {HASH_BYTES} bytes, got {len(joined)}")
    return merkle.root(joined)


def digest(vector: VectorLike, *, workers: int | None = None) -> bytes:
    """The vector's digest: the Merkle root over its BLAKE3 chunk hashes (the commitment)."""
    return merkle.root(chunk_hashes(vector, workers=workers))


# --------------------------------------------------------------------------------------------
# Checking what a peer sent


def verify_hash_list(hashes: bytes | bytearray | memoryview, commitment: bytes, numel: int) -> None:
    """Checks a sender's whole chunk-hash list against a digest on chain (PeerError if not).

    ``numel`` is the size the receiver expects (its own layout's), so a list for a vector of
    another size is refused even before the root is compared. For a whole model (catch-up);
    a segment comes with its own hashes and a proof instead (verify_segment_hashes).
    """
    expected_chunks = num_chunks(numel)
    if len(hashes) != expected_chunks * HASH_BYTES:
        raise PeerError(
            f"chunk-hash list has {len(hashes)} bytes, expected {expected_chunks * HASH_BYTES} "
            f"({expected_chunks} chunks of a {numel}-element vector)"
        )
    got = merkle.root(hashes)
    if got != commitment:
        raise PeerError(
            f"chunk-hash list has root {got.hex()}, "
            f"but the sender committed to {bytes(commitment).hex()}"
        )


def verify_segment_hashes(
    chunks: range,
    hashes: bytes | bytearray | memoryview,
    proof: bytes | bytearray | memoryview,
    commitment: bytes,
    numel: int,
) -> None:
    """Checks the chunk hashes of `chunks` of a ``numel``-element vector, with their Merkle
    proof, against the sender's commitment (PeerError naming what is wrong)."""
    try:
        merkle.verify_range(commitment, num_chunks(numel), chunks, hashes, proof)
    except merkle.ProofError as exc:
        raise PeerError(f"segment hashes: {exc}") from exc


def verify_chunks(
    first_chunk: int,
    data: VectorLike,
    hashes: bytes | bytearray | memoryview,
    numel: int,
    *,
    finite: bool = True,
    workers: int | None = None,
) -> None:
    """Checks a received range of whole chunks, starting at ``first_chunk``, against hashes.

    ``hashes`` are the already checked hashes of exactly the chunks the data covers
    (verify_hash_list or verify_segment_hashes checked them), ``numel`` the full vector's
    size. The data must cover whole chunks, the last chunk of the vector being short when
    the vector's size says so. Raises PeerError naming the first chunk that does not match
    its hash, or (with ``finite``) the first element that is NaN or infinite, by its index
    in the whole vector.
    """
    total = num_chunks(numel)
    chunk = chunk_elements(numel)
    if not 0 <= first_chunk <= total:
        raise PeerError(f"chunk range starts at chunk {first_chunk}, outside 0..{total}")
    array = _le_array(data, what="received data")
    count = -(-len(array) // chunk)
    span = element_range(range(first_chunk, min(first_chunk + count, total)), numel)
    if first_chunk + count > total or len(array) != len(span):
        raise PeerError(
            f"received {len(array)} elements starting at chunk {first_chunk}: not a whole "
            f"range of chunks of a {numel}-element vector ({total} chunks)"
        )
    if len(hashes) != count * HASH_BYTES:
        raise PeerError(
            f"{len(hashes)} bytes of chunk hashes for {count} chunks from chunk {first_chunk}"
        )
    view = array.view(np.uint8).data
    got = _hash_chunks(view, chunk, workers)
    want = bytes(hashes)
    if got != want:
        bad = next(
            i
            for i in range(count)
            if got[i * HASH_BYTES : (i + 1) * HASH_BYTES]
            != want[i * HASH_BYTES : (i + 1) * HASH_BYTES]
        )
        start = (first_chunk + bad) * chunk
        stop = min(start + chunk, numel)
        raise PeerError(
            f"chunk {first_chunk + bad} (elements {start}..{stop - 1}) does not match "
            "the sender's chunk hash"
        )
    if finite:
        check_finite(array, what="received data", offset=span.start)


def check_finite(data: VectorLike, *, what: str = "vector", offset: int = 0) -> None:
    """Refuses data holding NaN or infinity (PeerError), naming the first such element.

    ``offset`` is the data's position in the whole vector, so the index in the message is
    the one the sender would recognise. Used on every received range: the merge rules and
    the final digest assume finite values (a NaN would poison a mean and never compare equal).
    """
    array = _le_array(data, what=what)
    finite = np.isfinite(array)
    if not finite.all():
        index = int(np.argmin(finite))
        raise PeerError(
            f"{what} holds a non-finite value ({float(array[index])}) at element {offset + index}"
        )


# --------------------------------------------------------------------------------------------
# Segments


def segments(chunk_count: int, n: int) -> list[range]:
    """Chunk ranges owned by participants 0..n-1 of an attempt, in participant order.

    Sizes differ by at most one chunk: the first ``chunk_count % n`` segments get one more.
    With fewer chunks than participants the trailing segments are empty ranges (their owners
    merge nothing but still take part). Every node derives the same split from the
    on-chain live list, so no split is ever sent.
    """
    if n < 1:
        raise ConfigError(f"a round needs at least one participant, got {n}")
    if chunk_count < 0:
        raise ConfigError(f"a vector cannot have {chunk_count} chunks")
    base, extra = divmod(chunk_count, n)
    out: list[range] = []
    start = 0
    for index in range(n):
        stop = start + base + (1 if index < extra else 0)
        out.append(range(start, stop))
        start = stop
    return out


def element_range(chunks: range, numel: int) -> range:
    """The elements [start, stop) of the vector covered by a range of chunks.

    The last chunk may be short, and an empty range of chunks at the end of the vector maps
    to an empty range at ``numel``. A range that is not a forward, step-1 range inside the
    vector is a ConfigError.
    """
    total = num_chunks(numel)
    if chunks.step != 1 or not 0 <= chunks.start <= chunks.stop <= total:
        raise ConfigError(f"{chunks} is not a chunk range of a {total}-chunk vector")
    chunk = chunk_elements(numel)
    return range(min(chunks.start * chunk, numel), min(chunks.stop * chunk, numel))


def chunk_of(element: int, numel: int) -> int:
    """The chunk holding element ``element`` of a ``numel``-element vector (the chunk an
    element offset starts, for offsets at chunk boundaries)."""
    return element // chunk_elements(numel)
