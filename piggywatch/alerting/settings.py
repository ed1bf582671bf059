"""Configuration of alert delivery: receivers, the route tree, escalations, inhibition,
time intervals. Alertmanager's shapes and names wherever it has the same idea."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator

from piggywatch.alerting.channels import CHANNELS, Channel, ChannelConfig
from piggywatch.alerting.matchers import parse_matcher
from piggywatch.alerting.time_intervals import TimeInterval
from piggywatch.config_types import Duration, DurationOrZero
from piggywatch.yamlpos import KeyPath, dotted


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class _ReceiverFields(_Strict):
    """A named destination with exactly one channel (one key per entry of ``CHANNELS``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                      description="The name routes and escalations refer to.")
    send_resolved: bool = Field(True, description="Whether resolved notifications are sent "
                                "too.")

    @model_validator(mode="after")
    def _one_channel(self) -> _ReceiverFields:
        if sum(getattr(self, kind, None) is not None for kind in CHANNELS) != 1:
            raise ValueError(f"a receiver has exactly one of {', '.join(CHANNELS)}")
        return self

    @property
    def kind(self) -> str:
        """The key of its channel: ``slack``, ``pagerduty``, …"""
        return next(kind for kind in CHANNELS if getattr(self, kind, None) is not None)

    @property
    def channel(self) -> Channel[Any]:
        """Its channel's declaration (throttle, timeout, secrets, notifier)."""
        return CHANNELS[self.kind]

    @property
    def channel_config(self) -> ChannelConfig:
        """Its channel's block (``slack: {...}``)."""
        config: ChannelConfig = getattr(self, self.kind)
        return config

    def config_of(self, model: type[_C]) -> _C | None:
        """Its channel's block if that is a ``model``, else None."""
        config = self.channel_config
        return config if isinstance(config, model) else None


_C = TypeVar("_C", bound=ChannelConfig)

if TYPE_CHECKING:
    Receiver = _ReceiverFields
else:
    # One optional field per registered channel, described by the channel itself.
    Receiver = create_model(
        "Receiver", __base__=_ReceiverFields, __module__=__name__,
        __doc__=_ReceiverFields.__doc__,
        **{kind: (channel.config | None, Field(None, description=channel.description))
           for kind, channel in CHANNELS.items()})


def _valid_matcher(text: str) -> str:
    parse_matcher(text)  # MatcherError is a ValueError: pydantic reports its message
    return text


# An Alertmanager matcher string: severity="critical", severity=~"high|critical".
Matcher = Annotated[str, AfterValidator(_valid_matcher)]
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Route(_Strict):
    """A node of the routing tree (Alertmanager semantics)."""

    receiver: str | None = None
    """The receiver notified for alerts this route matches."""
    escalation: str | None = None
    """The escalation policy followed instead of a single receiver."""
    matchers: list[Matcher] = []
    """Alertmanager matchers the alert must all satisfy, e.g. `severity=~"high|critical"`."""
    group_by: list[str] | None = None
    """Labels alerts are grouped by into one notification; `...`: every label. Unset: inherited from
    the parent."""
    group_wait: DurationOrZero | None = None  # 0s: notify at once
    """How long a new group waits for more alerts before the first notification (0s: at once)."""
    group_interval: Duration | None = None
    """How long to wait before notifying about changes to a group."""
    repeat_interval: Duration | None = None
    """How long before a still-firing group is notified again."""
    continue_: bool = Field(default=False, alias="continue")
    """Whether matching continues with the next sibling route."""
    active_time_intervals: list[str] = []
    """Time intervals (by name) outside which it is muted."""
    mute_time_intervals: list[str] = []
    """Time intervals (by name) during which it is muted."""
    routes: list[Route] = []
    """Child routes, tried in order; same keys as `route`."""

    @model_validator(mode="after")
    def _one_target(self) -> Route:
        if self.receiver is not None and self.escalation is not None:
            raise ValueError("a route has a receiver or an escalation, not both")
        return self

    @model_validator(mode="after")
    def _group_by_labels(self) -> Route:
        names = self.group_by or []
        if "..." in names and len(names) > 1:
            raise ValueError("group_by: '...' (every label) stands alone")
        for name in names:
            if name != "..." and not _LABEL_NAME.match(name):
                raise ValueError(f"group_by: {name!r} is not a label name")
        if len(set(names)) != len(names):
            raise ValueError("group_by names a label twice")
        return self


class EscalationStep(_Strict):
    """Notify these receivers; if still unacknowledged after ``wait``, go to the next step
    (or, on the last step, notify it again up to ``repeat`` more times)."""

    notify: list[str] = Field(min_length=1)
    """The receivers notified at this step."""
    wait: Duration | None = None
    """How long without an acknowledgement before the next step."""
    repeat: int = Field(default=0, ge=0)
    """How many more times this step repeats before moving on."""


class InhibitRule(_Strict):
    """While an alert matching ``source_matchers`` fires, mute alerts matching
    ``target_matchers`` that have the same values for the ``equal`` labels."""

    source_matchers: list[Matcher] = Field(min_length=1)
    """Matchers of the alerts that mute."""
    target_matchers: list[Matcher] = Field(min_length=1)
    """Matchers of the alerts that are muted."""
    equal: list[str] = []
    """Labels whose values must be equal in source and target."""

    @model_validator(mode="after")
    def _equal_labels(self) -> InhibitRule:
        for name in self.equal:
            if not _LABEL_NAME.match(name):
                raise ValueError(f"equal: {name!r} is not a label name")
        return self


class AlertingSettings(_Strict):
    """The delivery half of the configuration (merged into the top-level settings)."""

    receivers: list[Receiver] = []
    route: Route | None = None
    escalations: dict[str, list[EscalationStep]] = {}
    inhibit_rules: list[InhibitRule] = []
    time_intervals: list[TimeInterval] = []

    @model_validator(mode="after")
    def _references(self) -> AlertingSettings:
        check_alerting_references(self)
        return self

    @classmethod
    def of(cls, fields: AlertingFields) -> AlertingSettings:
        """The alerting settings held by an already validated model (the top-level
        settings), handed on as they are: validated once, where they were loaded."""
        return cls.model_construct(receivers=list(fields.receivers), route=fields.route,
                                   escalations={k: list(v) for k, v in
                                                fields.escalations.items()},
                                   inhibit_rules=list(fields.inhibit_rules),
                                   time_intervals=list(fields.time_intervals))


# --- cross references ----------------------------------------------------------------


class AlertingFields(Protocol):
    """Anything holding the alerting settings under their usual names (this model, or the
    top-level settings)."""

    @property
    def receivers(self) -> Sequence[Receiver]: ...
    @property
    def route(self) -> Route | None: ...
    @property
    def escalations(self) -> Mapping[str, Sequence[EscalationStep]]: ...
    @property
    def inhibit_rules(self) -> Sequence[InhibitRule]: ...
    @property
    def time_intervals(self) -> Sequence[TimeInterval]: ...


def check_alerting_references(config: AlertingFields) -> None:
    """Raise ValueError listing every broken cross reference (for model validators)."""
    problems = alerting_problems(config.receivers, config.route, config.escalations,
                                 config.inhibit_rules, config.time_intervals)
    if problems:
        raise ValueError("; ".join(problems))


def alerting_problems(receivers: Sequence[Receiver], route: Route | None,
                      escalations: Mapping[str, Sequence[EscalationStep]],
                      inhibit_rules: Sequence[InhibitRule],
                      time_intervals: Sequence[TimeInterval]) -> list[str]:
    """Every broken cross reference, as ``key.path: what is wrong`` lines."""
    return [f"{dotted(path)}: {message}" for path, message in
            alerting_problem_locations(receivers, route, escalations, inhibit_rules,
                                       time_intervals)]


def alerting_problem_locations(
        receivers: Sequence[Receiver], route: Route | None,
        escalations: Mapping[str, Sequence[EscalationStep]],
        inhibit_rules: Sequence[InhibitRule],
        time_intervals: Sequence[TimeInterval]) -> list[tuple[KeyPath, str]]:
    """``alerting_problems`` with each key path as a tuple, to look its line up."""
    problems: list[tuple[KeyPath, str]] = []
    receiver_names: set[str] = set()
    for i, receiver in enumerate(receivers):
        if receiver.name in receiver_names:
            problems.append((("receivers", i, "name"),
                             f"receiver name {receiver.name!r} is used twice"))
        receiver_names.add(receiver.name)
    interval_names = {interval.name for interval in time_intervals}
    for name, steps in escalations.items():
        if not steps:
            problems.append((("escalations", name), "an escalation needs at least one step"))
        for i, step in enumerate(steps):
            for j, receiver_name in enumerate(step.notify):
                problem = _unknown(receiver_name, receiver_names, "receiver")
                if problem:
                    problems.append((("escalations", name, i, "notify", j), problem))
    if route is not None:
        problems.extend(_root_problems(route))
        problems.extend(_route_problems(route, ("route",), receiver_names, set(escalations),
                                        interval_names))
    # Matchers are not looked at here: the Matcher type has checked each one already.
    return problems


def _root_problems(route: Route) -> list[tuple[KeyPath, str]]:
    problems: list[tuple[KeyPath, str]] = []
    if route.receiver is None and route.escalation is None:
        problems.append((("route",), "the root route needs a receiver or an escalation: it "
                                     "takes every alert no child route takes"))
    if route.matchers:
        problems.append((("route", "matchers"), "the root route takes every alert; put "
                                                "matchers on its child routes"))
    if route.continue_:
        problems.append((("route", "continue"), "the root route has no siblings to "
                                                "continue to"))
    for key in ("active_time_intervals", "mute_time_intervals"):
        if getattr(route, key):
            problems.append((("route", key), "the root route cannot have time intervals "
                                             "(they are not inherited); set them on child "
                                             "routes"))
    return problems


def _route_problems(route: Route, path: KeyPath, receivers: set[str], escalations: set[str],
                    intervals: set[str]) -> list[tuple[KeyPath, str]]:
    problems: list[tuple[KeyPath, str]] = []
    if route.receiver is not None:
        problem = _unknown(route.receiver, receivers, "receiver")
        if problem:
            problems.append(((*path, "receiver"), problem))
    if route.escalation is not None:
        problem = _unknown(route.escalation, escalations, "escalation")
        if problem:
            problems.append(((*path, "escalation"), problem))
    for key in ("active_time_intervals", "mute_time_intervals"):
        for j, name in enumerate(getattr(route, key)):
            problem = _unknown(name, intervals, "time interval")
            if problem:
                problems.append(((*path, key, j), problem))
    for i, child in enumerate(route.routes):
        problems.extend(_route_problems(child, (*path, "routes", i), receivers, escalations,
                                        intervals))
    return problems


def _unknown(name: str, known: set[str], what: str) -> str | None:
    if name in known:
        return None
    message = f"there is no {what} named {name!r}"
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    if close:
        return f"{message}; did you mean {close[0]!r}?"
    if known:
        return f"{message}; known: {', '.join(sorted(known))}"
    return f"{message} (none is defined)"
