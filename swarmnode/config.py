"""A node's configuration file (node.toml), validated field by field.

A wrong field is one line naming the file and the field (ConfigError), never a traceback.
Relative paths are relative to the file's folder, so a node folder can be moved whole.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from swarmnode.distributed_dp import DEFAULT_COLLUDERS, MeanPrivacySettings
from swarmnode.exceptions import ConfigError
from swarmnode.privacy import DEFAULT_DELTA, PrivacySettings


class PrivacyConfig(BaseModel):
    """node.toml's `[privacy]`: local DP-SGD (noise_multiplier, max_grad_norm) or distributed
    DP for the mean (mean_noise_multiplier, mean_clip_norm, assumed_colluders), and the
    budget (docs/privacy.md#settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    mean_noise_multiplier: float | None = None
    mean_clip_norm: float | None = None
    assumed_colluders: int = DEFAULT_COLLUDERS
    delta: float = DEFAULT_DELTA
    epsilon_budget: float | None = None

    @model_validator(mode="after")
    def _checked(self) -> PrivacyConfig:
        local = self.noise_multiplier is not None or self.max_grad_norm is not None
        mean = self.mean_noise_multiplier is not None or self.mean_clip_norm is not None
        if local and mean:
            raise ConfigError(
                "privacy: local DP-SGD (noise_multiplier) and distributed DP "
                "(mean_noise_multiplier) cannot both be on: pick one "
                "(docs/privacy.md#both-kinds)"
            )
        if not (local or mean):
            raise ConfigError(
                "privacy needs noise_multiplier and max_grad_norm (local DP-SGD) or "
                "mean_noise_multiplier and mean_clip_norm (distributed DP)"
            )
        for first, second in (
            ("noise_multiplier", "max_grad_norm"),
            ("mean_noise_multiplier", "mean_clip_norm"),
        ):
            given = [name for name in (first, second) if getattr(self, name) is not None]
            if len(given) == 1:
                missing = second if given[0] == first else first
                raise ConfigError(f"privacy {given[0]} needs {missing} too")
        self.settings()  # the project's own checks, one line each (ConfigError)
        self.mean_settings()
        return self

    def settings(self) -> PrivacySettings | None:
        """Local DP-SGD's settings; None with distributed DP instead."""
        if self.noise_multiplier is None or self.max_grad_norm is None:
            return None
        return PrivacySettings(
            self.noise_multiplier, self.max_grad_norm, self.delta, self.epsilon_budget
        )

    def mean_settings(self) -> MeanPrivacySettings | None:
        """Distributed DP's settings; None with local DP-SGD instead."""
        if self.mean_noise_multiplier is None or self.mean_clip_norm is None:
            return None
        return MeanPrivacySettings(
            self.mean_noise_multiplier,
            self.mean_clip_norm,
            self.assumed_colluders,
            self.delta,
            self.epsilon_budget,
        )


class NodeConfig(BaseModel):
    """What `swarmnode run` and a node folder's other ways in (swarmnode.peer) read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    identity_dir: Path
    deployment: Path
    # None: the node trains in a loop of its own (SwarmCallback / FlowerNode.from_node_dir);
    # `swarmnode run` needs one
    task: str | None = Field(
        None, description="module:attribute of a Task, or of a function returning one"
    )
    task_args: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments for the task's function"
    )
    rpc: str | None = None  # default: the URL recorded in the deployment file
    listen: str = "127.0.0.1:0"
    # Prometheus metrics (swarmnode/metrics.py) at http://HOST:PORT/metrics while `swarmnode
    # run` runs: "PORT" (on 127.0.0.1) or "HOST:PORT"; port 0: any free one, logged at start.
    # None (the default): no metrics served.
    metrics_listen: str | None = None
    checkpoint_dir: Path | None = None  # default: identity_dir / "checkpoints"
    rounds: int = Field(0, ge=0, description="rounds to take part in; 0: until stopped")
    seed: int = 0
    init_seed: int = 0
    # the swarm's initial model (a state_dict or safetensors file) for a node whose own model
    # starts elsewhere; checked against the chain (docs/canonical-vector.md#initial-model-files)
    initial_model: Path | None = None
    device: str = "auto"
    log_file: Path | None = None  # default: identity_dir / "node.jsonl"
    # After SIGTERM, how long the node may go on with the round it is in before it withdraws
    # from it instead. Default (None): twice the swarm's transfer deadline, what the protocol
    # takes to vote out one silent peer and run the attempt again without it.
    stop_grace: float | None = Field(None, ge=0)
    # Sites that start together: before its first round the node waits (at most
    # START_WITH_WAIT seconds) until this many nodes, itself included, are registered, so a
    # round does not close on the first few to register (a round closes once every
    # registered node joined). 0: start at once.
    start_with: int = Field(0, ge=0, le=256)
    # Fault injection, for fault tests and the process simulator: after `die_after_rounds`
    # final rounds, the process SIGKILLs itself at this point of its next round (a phase as
    # swarmnode.p2p.faults.Fault parses it, e.g. "reduce_scatter:after_frames=1").
    die_at: str | None = None
    die_after_rounds: int = Field(0, ge=0)
    # Local differential privacy (docs/privacy.md): `[privacy]` beside `[node]`; None: none
    privacy: PrivacyConfig | None = None

    @field_validator("task")
    @classmethod
    def _module_attribute(cls, value: str | None) -> str | None:
        if value is None:
            return None
        module, _, attribute = value.partition(":")
        if not module or not attribute:
            raise ValueError("write module:attribute, e.g. mypackage.tasks:hospital_task")
        return value

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("write host:port, e.g. 127.0.0.1:50051 (port 0: any free one)")
        return value

    @field_validator("metrics_listen", mode="before")
    @classmethod
    def _metrics_address(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):  # metrics_listen = 9100
            value = str(value)
        if isinstance(value, str):
            split_address(value, METRICS_HOST)
        return value

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        data = read_toml_table(path, "node", "config", beside=("privacy",))
        base = path.resolve().parent
        for key in ("identity_dir", "deployment", "checkpoint_dir", "log_file", "initial_model"):
            if isinstance(data.get(key), str):
                data[key] = str(base / data[key])
        return validated(cls, data, str(path), "node")

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir or self.identity_dir / "checkpoints"

    @property
    def log_path(self) -> Path:
        return self.log_file or self.identity_dir / "node.jsonl"

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) the metrics are served on; None when they are off."""
        if self.metrics_listen is None:
            return None
        return split_address(self.metrics_listen, METRICS_HOST)


# Where metrics are served when metrics_listen names a port alone: this machine only. A
# scraper elsewhere needs the operator to say so (metrics_listen = "0.0.0.0:9100").
METRICS_HOST = "127.0.0.1"


def split_address(value: str, default_host: str) -> tuple[str, int]:
    """`PORT` or `HOST:PORT` (`[::1]:PORT` for IPv6) as (host, port); ValueError (which a
    field validator reports as one line) for anything else."""
    host, colon, port = value.rpartition(":")
    if not colon:
        host = default_host
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("write PORT or HOST:PORT, e.g. 9100 or 0.0.0.0:9100 (0: any free port)")
    return host.removeprefix("[").removesuffix("]"), int(port)


def read_toml_table(
    path: Path, table: str, what: str, beside: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`[table]` of a TOML file, or the whole file when it has no such table. Beside the
    table, only the tables named in `beside` (read as keys of it, e.g. node.toml's
    `[privacy]`): a key above it (or a table of another name) would be read by no one, so
    a misplaced `rounds = 3` is refused in one line rather than silently ignored."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what} file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not TOML ({exc})") from None
    if table not in raw:
        return dict(raw)
    data = dict(raw[table])
    for name in beside:
        if name in raw and name in data:
            raise ConfigError(f"{path}: [{name}] given twice, beside [{table}] and in it")
        if name in raw:
            data[name] = raw[name]
    others = sorted(key for key in raw if key != table and key not in beside)
    if others:
        raise ConfigError(
            f"{path}: {', '.join(others)}: unknown outside [{table}] (put every setting "
            f"under [{table}])"
        )
    return data


Model = TypeVar("Model", bound=BaseModel)


def validated(model: type[Model], data: dict[str, Any], where: str, whole: str) -> Model:
    """`data` as `model`; the first thing wrong is one line naming `where` (and the field)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or whole  # a check of several fields
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}: field {field}: {message}") from None
    except ConfigError as exc:  # a validator that checks with the project's own rules
        raise ConfigError(f"{where}: {exc}") from None
