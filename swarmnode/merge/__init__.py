"""Merge rules: pure functions over stacked float32 tensors, segment by segment; no I/O.

`make_rule(rule)` turns the swarm's on-chain Rule (id + four uint64, fractions in PPM) into a
MergeRule, refusing bad parameters with ConfigError at configuration time. A segment owner then
calls `rule.merge_segment(...)`, which decides from that segment's rows only (no partial sums
from peers, docs/round-protocol.md#partial-sums); `rule.merge` treats a whole vector as one
segment.

| id | rule | params[0] | params[1] | weights used |
|---|---|---|---|---|
| 0 | Mean | - | - | yes |
| 1 | Median | - | - | no |
| 2 | TrimmedMean | beta_ppm cut from each side | - | no |
| 3 | Krum | f tolerated | m averaged (0, 1: Krum) | multi-Krum average |
| 4 | GeometricMedian | tolerance_ppm: step / median distance | max_iterations | no |
| 5 | CenteredClipping | tau_ppm: L2 radius x 1e6 | iterations | no |
"""

from __future__ import annotations

from swarmnode.exceptions import ConfigError
from swarmnode.merge.base import (
    FinishedMerge,
    MergeRule,
    SegmentMerge,
    WeightsLike,
    combine_partials,
    contribution_weights,
    drive,
)
from swarmnode.merge.centered_clipping import CenteredClipping, CenteredClippingMerge
from swarmnode.merge.coordinate import Mean, Median, TrimmedMean
from swarmnode.merge.geometric_median import GeometricMedian, WeiszfeldMerge
from swarmnode.merge.krum import Krum, KrumMerge
from swarmnode.rules import MergeRuleId, Rule, merge_rule_needs

RULES: dict[MergeRuleId, type[MergeRule]] = {
    cls.rule_id: cls for cls in (Mean, Median, TrimmedMean, Krum, GeometricMedian, CenteredClipping)
}


def make_rule(rule: Rule) -> MergeRule:
    """The merge rule for the swarm's Rule; ConfigError if its id or parameters cannot work."""
    merge_rule_needs(rule)
    try:
        cls = RULES[MergeRuleId(rule.id)]
    except ValueError:
        raise ConfigError(f"unknown merge rule id {rule.id}") from None
    return cls(rule)


__all__ = [
    "RULES",
    "CenteredClipping",
    "CenteredClippingMerge",
    "FinishedMerge",
    "GeometricMedian",
    "Krum",
    "KrumMerge",
    "Mean",
    "Median",
    "MergeRule",
    "SegmentMerge",
    "TrimmedMean",
    "WeightsLike",
    "WeiszfeldMerge",
    "combine_partials",
    "contribution_weights",
    "drive",
    "make_rule",
]
