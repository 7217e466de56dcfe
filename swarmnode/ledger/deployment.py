"""Where a swarm lives, as a file any node can be handed: chain id, address, block, parameters."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from swarmnode.exceptions import ConfigError
from swarmnode.rules import Rule, SwarmParams


@dataclass(frozen=True)
class _RuleFile:
    id: int
    params: tuple[int, int, int, int]


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


@dataclass(frozen=True)
class _DeploymentFile:
    chain_id: int
    address: str
    block: int
    params: _ParamsFile
    rpc: str | None = None


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
        )
        return cls(data.chain_id, data.address, data.block, params, data.rpc)
