"""The routing tree: which receiver or escalation hears about an alert, and how it is grouped.

Alertmanager's semantics: the root matches every alert; an alert descends depth first into
the first child whose matchers all hold, and stops there unless that child says
``continue: true``, in which case its later siblings are tried too. A node none of whose
children match handles the alert itself. A child inherits ``group_by``, the three timings
and its receiver or escalation from its parent when it does not set them; active and mute
time intervals are *not* inherited (as in Alertmanager), they apply to the node naming them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from piggywatch.alerting.matchers import matches, parse_matchers
from piggywatch.store.series import LabelMatcher

if TYPE_CHECKING:
    from piggywatch.alerting.settings import Route

__all__ = [
    "DEFAULT_GROUP_INTERVAL",
    "DEFAULT_GROUP_WAIT",
    "DEFAULT_REPEAT_INTERVAL",
    "GROUP_BY_ALL",
    "RoutePlan",
    "Router",
    "group_labels",
]

DEFAULT_GROUP_WAIT = 30.0
DEFAULT_GROUP_INTERVAL = 5 * 60.0
DEFAULT_REPEAT_INTERVAL = 4 * 3600.0
GROUP_BY_ALL = "..."  # group_by: ['...'] puts every distinct label set in its own group


@dataclass(frozen=True)
class RoutePlan:
    """What one matching route decided for an alert: who hears, how alerts group, when.

    ``route_id`` is the node's path in the tree ("0" the root, "0.1" its second child), so
    it is stable while the tree's shape is. ``group_by`` ``None`` means every label.
    """

    route_id: str
    receiver: str | None
    escalation: str | None
    group_by: tuple[str, ...] | None
    group_wait: float
    group_interval: float
    repeat_interval: float
    active_time_intervals: tuple[str, ...] = ()
    mute_time_intervals: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (for persisted alert groups)."""
        return {
            "route_id": self.route_id,
            "receiver": self.receiver,
            "escalation": self.escalation,
            "group_by": None if self.group_by is None else list(self.group_by),
            "group_wait": self.group_wait,
            "group_interval": self.group_interval,
            "repeat_interval": self.repeat_interval,
            "active_time_intervals": list(self.active_time_intervals),
            "mute_time_intervals": list(self.mute_time_intervals),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoutePlan:
        """The inverse of ``to_dict``."""
        group_by = data.get("group_by")
        return cls(
            route_id=str(data["route_id"]),
            receiver=data.get("receiver"),
            escalation=data.get("escalation"),
            group_by=None if group_by is None else tuple(str(g) for g in group_by),
            group_wait=float(data["group_wait"]),
            group_interval=float(data["group_interval"]),
            repeat_interval=float(data["repeat_interval"]),
            active_time_intervals=tuple(data.get("active_time_intervals", ())),
            mute_time_intervals=tuple(data.get("mute_time_intervals", ())),
        )


@dataclass(frozen=True)
class _Node:
    plan: RoutePlan
    matchers: tuple[LabelMatcher, ...]
    continue_: bool
    children: tuple[_Node, ...]


class Router:
    """The compiled routing tree; ``match`` gives the plans an alert's labels lead to."""

    def __init__(self, route: Route) -> None:
        if route.receiver is None and route.escalation is None:
            raise ValueError("the root route needs a receiver or an escalation")
        self._root = _compile(route, None, "0")
        self._by_id = {node.plan.route_id: node.plan for node in _walk(self._root)}

    def match(self, labels: Mapping[str, str]) -> list[RoutePlan]:
        """The plans of every route that handles these labels, in tree order (never empty)."""
        # The root matches everything, whatever matchers it may carry.
        return self._descend(self._root, labels) or [self._root.plan]

    def plan(self, route_id: str) -> RoutePlan | None:
        """The plan of the node with this id, if the tree has one."""
        return self._by_id.get(route_id)

    def plans(self) -> list[RoutePlan]:
        """Every node's plan, depth first (for listing the tree)."""
        return list(self._by_id.values())

    def _descend(self, node: _Node, labels: Mapping[str, str]) -> list[RoutePlan]:
        found: list[RoutePlan] = []
        for child in node.children:
            if not matches(child.matchers, labels):
                continue
            found.extend(self._descend(child, labels) or [child.plan])
            if not child.continue_:
                break
        return found


def group_labels(plan: RoutePlan, labels: Mapping[str, str]) -> dict[str, str]:
    """The labels that identify an alert's group under ``plan`` (absent labels left out)."""
    if plan.group_by is None:
        return dict(labels)
    return {name: labels[name] for name in plan.group_by if name in labels}


def _compile(route: Route, parent: RoutePlan | None, route_id: str) -> _Node:
    if route.receiver is not None or route.escalation is not None:
        receiver, escalation = route.receiver, route.escalation
    else:
        assert parent is not None  # the root is checked by Router
        receiver, escalation = parent.receiver, parent.escalation
    if route.group_by is not None:
        group_by = _group_by(route.group_by)
    else:
        group_by = () if parent is None else parent.group_by
    plan = RoutePlan(
        route_id=route_id,
        receiver=receiver,
        escalation=escalation,
        group_by=group_by,
        group_wait=_pick(route.group_wait, parent.group_wait if parent else None,
                         DEFAULT_GROUP_WAIT),
        group_interval=_pick(route.group_interval, parent.group_interval if parent else None,
                             DEFAULT_GROUP_INTERVAL),
        repeat_interval=_pick(route.repeat_interval,
                              parent.repeat_interval if parent else None,
                              DEFAULT_REPEAT_INTERVAL),
        active_time_intervals=tuple(route.active_time_intervals),
        mute_time_intervals=tuple(route.mute_time_intervals),
    )
    children = tuple(_compile(child, plan, f"{route_id}.{i}")
                     for i, child in enumerate(route.routes))
    return _Node(plan, parse_matchers(route.matchers), route.continue_, children)


def _group_by(names: Sequence[str]) -> tuple[str, ...] | None:
    return None if GROUP_BY_ALL in names else tuple(names)


def _pick(own: float | None, inherited: float | None, default: float) -> float:
    if own is not None:
        return own
    return inherited if inherited is not None else default


def _walk(node: _Node) -> Iterator[_Node]:
    yield node
    for child in node.children:
        yield from _walk(child)
