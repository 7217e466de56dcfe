"""Where a swarm lives, as a file any node can be handed: chain id, address, block, parameters."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from swarmnode.exceptions import ConfigError
from swarmnode.rules import Rule, SecureAggregation, SwarmParams

CHUNK_HASH = "blake3"
"""The chunk hash this code's data plane uses; equal to canonical.CHUNK_HASH (a test pins it).
Repeated here rather than imported so that reading a deployment file does not import torch."""
CHUNK_ELEMENTS = "pow2(numel/1024) in 16..4096"
"""The chunk-size rule this code's data plane uses; equal to canonical.CHUNK_RULE."""
COMMITMENT = "merkle"
"""How digests are made from chunk hashes; equal to canonical.COMMITMENT."""
LEGACY_CHUNK_HASH = "sha256"
"""What a deployment file that names no chunk hash was deployed with (before they named it)."""
LEGACY_CHUNK_ELEMENTS = 4096
"""The fixed chunk size of files that name none."""
LEGACY_COMMITMENT = "sha256-list"
"""What a file that names no commitment was deployed with: SHA-256 of the whole hash list."""


@dataclass(frozen=True)
class _RuleFile:
    id: int
    params: tuple[int, int, int, int]


@dataclass(frozen=True)
class _SecureAggregationFile:
    bound: int
    fraction_bits: int
    max_weight: int


@dataclass(frozen=True)
class _ParamsFile:
    min_peers: int
    max_peers: int
    join_window: int
    transfer_deadline: int
    round_deadline: int
    merge_rule: _RuleFile
    sync_policy: _RuleFile
    initial_model_digest: str
    restricted: bool
    checked_merge: bool = True  # files written before the switch: every swarm was checked
    # files written before secure aggregation existed: no swarm used it
    secure_aggregation: _SecureAggregationFile | None = None


@dataclass(frozen=True)
class _DeploymentFile:
    chain_id: int
    address: str
    block: int
    params: _ParamsFile
    rpc: str | None = None
    chunk_hash: str | None = None
    chunk_elements: int | str | None = None
    commitment: str | None = None


@dataclasses.dataclass(frozen=True)
class Deployment:
    """A deployed swarm. `rpc` is where it was deployed, when known (a hint, not a rule)."""

    chain_id: int
    address: str
    block: int
    params: SwarmParams
    rpc: str | None = None

    def to_dict(self) -> dict[str, Any]:
        params = dataclasses.asdict(self.params)
        params["initial_model_digest"] = "0x" + self.params.initial_model_digest.hex()
        return {
            "chain_id": self.chain_id,
            "address": self.address,
            "block": self.block,
            "rpc": self.rpc,
            "chunk_hash": CHUNK_HASH,
            "chunk_elements": CHUNK_ELEMENTS,
            "commitment": COMMITMENT,
            "params": params,
        }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Deployment:
        """Reads a deployment file; a missing or malformed one is a ConfigError naming it."""
        try:
            text = path.read_text()
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such deployment file") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from exc
        try:
            data = TypeAdapter(_DeploymentFile).validate_python(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise ConfigError(f"{path}: field {where}: {first['msg']}") from exc
        _check_scheme(path, data)
        p = data.params
        try:
            digest = bytes.fromhex(p.initial_model_digest.removeprefix("0x"))
        except ValueError as exc:
            raise ConfigError(f"{path}: field params.initial_model_digest: not hex") from exc
        params = SwarmParams(
            min_peers=p.min_peers,
            max_peers=p.max_peers,
            join_window=p.join_window,
            transfer_deadline=p.transfer_deadline,
            round_deadline=p.round_deadline,
            merge_rule=Rule(p.merge_rule.id, p.merge_rule.params),
            sync_policy=Rule(p.sync_policy.id, p.sync_policy.params),
            initial_model_digest=digest,
            restricted=p.restricted,
            checked_merge=p.checked_merge,
            secure_aggregation=_secure_aggregation(path, p.secure_aggregation),
        )
        return cls(data.chain_id, data.address, data.block, params, data.rpc)


def _secure_aggregation(path: Path, s: _SecureAggregationFile | None) -> SecureAggregation | None:
    if s is None:
        return None
    try:
        return SecureAggregation(s.bound, s.fraction_bits, s.max_weight)
    except ConfigError as exc:
        raise ConfigError(f"{path}: field params.secure_aggregation: {exc}") from exc


def _check_scheme(path: Path, data: _DeploymentFile) -> None:
    """Refuses, in one line, a swarm whose chunks are hashed, sized or committed to
    differently from this node's: its commitments mean something else, so it is another
    protocol (a new swarm), never a peer this node can check
    (docs/canonical-vector.md#chunks-and-hashes)."""
    theirs = (
        data.chunk_hash or LEGACY_CHUNK_HASH,
        data.chunk_elements or LEGACY_CHUNK_ELEMENTS,
        data.commitment or LEGACY_COMMITMENT,
    )
    ours = (CHUNK_HASH, CHUNK_ELEMENTS, COMMITMENT)
    if theirs == ours:
        return
    named = "" if data.chunk_hash else " (it names none: deployed before files named it)"
    raise ConfigError(
        f"{path}: the swarm uses {_scheme(*theirs)}{named}; this node uses {_scheme(*ours)}"
    )


def _scheme(chunk_hash: str, chunk_elements: int | str, commitment: str) -> str:
    size = f"{chunk_elements}-element" if isinstance(chunk_elements, int) else chunk_elements
    return f"{chunk_hash} chunk hashes over {size} chunks with a {commitment} commitment"
