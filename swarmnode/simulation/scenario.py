"""A simulation scenario: every setting validated, from a TOML file and command-line flags.

A wrong field is named with its file and field in one line (ConfigError), never a pydantic
traceback.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swarmnode.exceptions import ConfigError

MERGE_RULES = ("mean", "median", "trimmed_mean", "krum", "geometric_median", "centered_clip")


class Scenario(BaseModel):
    """What to simulate. Defaults are the README's demo: 8 nodes on digits, Dirichlet 0.5."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "demo"
    dataset: Literal["digits", "breast_cancer"] = "digits"
    nodes: int = Field(8, ge=2, le=64)
    partition: Literal["iid", "dirichlet", "shards", "quantity"] = "dirichlet"
    alpha: float = Field(0.5, gt=0)
    shards_per_node: int = Field(2, ge=1)
    rounds: int = Field(25, ge=1, le=1000)
    local_batches: int = Field(10, ge=1, description="batches each node trains between syncs")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    hidden: int = Field(64, ge=1)
    merge_rule: Literal[
        "mean", "median", "trimmed_mean", "krum", "geometric_median", "centered_clip"
    ] = "mean"
    merge_params: tuple[int, int, int, int] = (0, 0, 0, 0)
    seed: int = 0
    test_fraction: float = Field(0.2, gt=0, lt=1)
    byzantine: int = Field(0, ge=0, description="nodes that poison their contributions")
    attack: Literal["none", "sign_flip", "noise"] = "none"
    attack_scale: float = Field(4.0, gt=0)

    @model_validator(mode="after")
    def _rule_parameters(self) -> Scenario:
        from swarmnode.rules import merge_rule_needs

        if self.byzantine >= self.nodes:
            raise ValueError("byzantine must leave at least one honest node")
        if self.byzantine and self.attack == "none":
            raise ValueError("byzantine nodes need an attack (sign_flip or noise)")
        rule = self.rule()
        needs = merge_rule_needs(rule)
        if needs > self.nodes:
            raise ValueError(f"merge rule {self.merge_rule} needs at least {needs} nodes")
        return self

    def rule(self) -> Any:
        from swarmnode.rules import MergeRuleId, Rule

        return Rule(MergeRuleId[self.merge_rule.upper()], self.merge_params)

    @classmethod
    def load(cls, path: Path | None, overrides: dict[str, Any] | None = None) -> Scenario:
        """The scenario in `path` (or the defaults), with `overrides` (flags) on top."""
        data: dict[str, Any] = {}
        where = "flags"
        if path is not None:
            where = str(path)
            try:
                data = tomllib.loads(path.read_text())
            except FileNotFoundError:
                raise ConfigError(f"{path}: no such scenario file") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not TOML ({exc})") from None
            data = data.get("scenario", data)
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "scenario"
            raise ConfigError(f"{where}: field {field}: {first['msg']}") from None
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
