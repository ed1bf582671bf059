"""The settings model: one typed model for the whole configuration, checked as it is built.

Reading it from a file (YAML, ${ENV} interpolation, PIGGYWATCH_* overrides, problems with
file and line) is ``piggywatch.config_file``'s.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from piggywatch.config_lazy import lazy
from piggywatch.config_types import Duration
from piggywatch.http_server import DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT_SECONDS
from piggywatch.yamlpos import (
    KeyPath,
)

if TYPE_CHECKING:
    from piggywatch.alerting.settings import EscalationStep, InhibitRule, Receiver, Route
    from piggywatch.alerting.time_intervals import TimeInterval
    from piggywatch.collectors.cost import CostConfig
    from piggywatch.collectors.custom_sql import CustomQueryConfig
    from piggywatch.collectors.edge_functions import EdgeFunctionsConfig
    from piggywatch.collectors.growth import GrowthConfig
    from piggywatch.collectors.probes import ProbeConfig
    from piggywatch.collectors.redis_cache import RedisConfig
    from piggywatch.collectors.system_memory import SystemMemoryConfig
else:
    # Imported when a configuration has the section (see config_lazy): a PostgreSQL-only
    # daemon never loads the channels', routes' and other sources' models.
    EscalationStep = lazy("piggywatch.alerting.settings", "EscalationStep")
    InhibitRule = lazy("piggywatch.alerting.settings", "InhibitRule")
    Receiver = lazy("piggywatch.alerting.settings", "Receiver")
    Route = lazy("piggywatch.alerting.settings", "Route")
    TimeInterval = lazy("piggywatch.alerting.time_intervals", "TimeInterval")
    CostConfig = lazy("piggywatch.collectors.cost", "CostConfig")
    CustomQueryConfig = lazy("piggywatch.collectors.custom_sql", "CustomQueryConfig")
    EdgeFunctionsConfig = lazy("piggywatch.collectors.edge_functions", "EdgeFunctionsConfig")
    GrowthConfig = lazy("piggywatch.collectors.growth", "GrowthConfig")
    ProbeConfig = lazy("piggywatch.collectors.probes", "ProbeConfig")
    RedisConfig = lazy("piggywatch.collectors.redis_cache", "RedisConfig")
    SystemMemoryConfig = lazy("piggywatch.collectors.system_memory", "SystemMemoryConfig")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class BasicAuth(_Strict):
    """A user name and password for HTTP basic auth."""

    username: str = Field(min_length=1)
    """The user name."""
    password: SecretStr
    """The password."""

    @field_validator("password")
    @classmethod
    def _password_set(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("the password is empty (is its ${VARIABLE} set?)")
        return value


class TlsConfig(_Strict):
    """A PEM certificate (with its chain) and its private key."""

    cert_file: str
    """Path of the PEM certificate, with its chain."""
    key_file: str
    """Path of the PEM private key."""


_LISTEN = r"^\[?[0-9A-Za-z.:_-]*\]?:\d{1,5}$"
# Shorter API tokens are refused: they can be guessed.
MIN_API_TOKEN_LENGTH = 16


def check_listen(value: str) -> str:
    """``HOST:PORT`` with a port from 1 to 65535, or ValueError saying what is wrong."""
    if not re.match(_LISTEN, value):
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 0.0.0.0:9790 or [::1]:9790)")
    port = int(value.rpartition(":")[2])
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1 to 65535")
    return value


def _warn(info: ValidationInfo, path: KeyPath, message: str) -> None:
    """Note something loaded but worth saying (printed by check, logged by run)."""
    if info.context is not None:
        info.context.setdefault("warnings", []).append((path, message))


class ServerConfig(_Strict):
    """Where the daemon listens, and who may call it."""

    listen: str = Field(default="0.0.0.0:9790", pattern=_LISTEN)
    """The `host:port` the HTTP server (metrics, health, API) binds."""
    api_token: SecretStr = SecretStr("")
    """Bearer token every /api/v1/* call must carry; empty: the API answers 401 to all."""
    metrics_basic_auth: BasicAuth | None = None
    """Unset: /metrics is open, as Prometheus scrapes usually are."""
    tls: TlsConfig | None = None
    """Unset: plain HTTP. Set: every endpoint is served over TLS only."""

    @field_validator("listen")
    @classmethod
    def _port_in_range(cls, value: str) -> str:
        return check_listen(value)

    @field_validator("api_token", mode="before")
    @classmethod
    def _token_without_newline(cls, value: Any, info: ValidationInfo) -> Any:
        # Kubernetes Secrets made with `echo token | kubectl create secret` end in one.
        if isinstance(value, str) and value != value.rstrip("\r\n"):
            _warn(info, ("server", "api_token"), "the token ends with a newline (as a "
                  "Kubernetes Secret made with echo does); the newline was removed")
            return value.rstrip("\r\n")
        return value

    @field_validator("api_token")
    @classmethod
    def _token_long_enough(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value()
        if token and len(token) < MIN_API_TOKEN_LENGTH:
            raise ValueError(f"the token must be at least {MIN_API_TOKEN_LENGTH} characters "
                             "long, or empty to refuse every API call (make one with: "
                             "openssl rand -hex 32)")
        return value
    max_connections: int = Field(default=DEFAULT_MAX_CONNECTIONS, ge=1, le=10000)
    """Open connections at most; at the limit a client still sending its request makes room for a
    new one, and when every connection is being answered a new one gets 503."""
    request_timeout: Duration = Field(default=DEFAULT_REQUEST_TIMEOUT_SECONDS, gt=0.0,
                                      le=600.0)
    """A request (TLS handshake, head and body) must arrive in full within this time of connecting,
    and its response be sent within it; slower clients are disconnected."""


class HaConfig(_Strict):
    """Several replicas on one PostgreSQL state database: one leads, the others stand by."""

    takeover_after: Duration = Field(default=15.0, ge=1.0, le=600.0)
    """A standby takes over within this time once the leader is gone."""
    advertise_url: str = Field(default="", pattern=r"^(|https?://\S+)$")
    """How the other replicas reach this one's API (they forward /api/v1 calls to the leader);
    empty: http(s)://<this host's name>:<listen port>."""
    ca_file: str = ""
    """With `server.tls`: the CA bundle that signed the other replicas' certificates, to verify them
    when forwarding; empty: the system's CAs."""


class CollectorOptions(_Strict):
    """Options every collector has."""

    enabled: bool = True
    """Whether this runs at all."""
    interval: Duration = 30.0
    """How often it is sampled."""
    timeout: Duration = 5.0
    """Bounds each query (statement_timeout) and the whole sampling cycle."""


class ConnectionsOptions(CollectorOptions):
    """pg_stat_activity and connection limits."""

    interval: Duration = 15.0
    """How often it is sampled."""
    top_n: int = Field(default=10, ge=1, le=1000)
    """How many of the largest items are exported (the rest are summed)."""


class DatabaseOptions(CollectorOptions):
    """pg_stat_database, database sizes, cache hit ratio, replication lag."""


class StatementsOptions(CollectorOptions):
    """pg_stat_statements, exported as deltas of the top K statements."""

    timeout: Duration = 10.0
    """How long one attempt may take before it counts as failed."""
    top_k: int = Field(default=100, ge=1, le=10000)
    """How many statements (by total time) are exported."""
    schema_name: str | None = Field(default=None, alias="schema")
    """None: look in the schemas where the extension usually lives (extensions, public, ...)."""


class TablesOptions(CollectorOptions):
    """Size and row estimates of the largest tables (a slow, heavier query)."""

    interval: Duration = 300.0
    """How often it is sampled."""
    timeout: Duration = 30.0
    """How long one attempt may take before it counts as failed."""
    top_n: int = Field(default=20, ge=1, le=1000)
    """How many of the largest items are exported (the rest are summed)."""


class CompatOptions(CollectorOptions):
    """postgres_exporter's other default families (settings, bgwriter, archiver, locks...).

    On by default so a postgres_exporter user's dashboards and rules keep working; turn it
    off for a smaller exposition.
    """

    interval: Duration = 15.0
    """How often it is sampled."""


class PostgresCollectors(_Strict):
    """The PostgreSQL collectors of one target, each with its own interval."""

    connections: ConnectionsOptions = ConnectionsOptions()
    database: DatabaseOptions = DatabaseOptions()
    statements: StatementsOptions = StatementsOptions()
    tables: TablesOptions = TablesOptions()
    compat: CompatOptions = CompatOptions()


class TargetConfig(_Strict):
    """One monitored PostgreSQL database."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Its name; unique among its kind."""
    dsn: SecretStr
    """The libpq connection string or URI (a secret; use ${VARIABLE})."""
    connect_timeout: Duration = 5.0
    """How long connecting may take."""
    collectors: PostgresCollectors = PostgresCollectors()
    """The PostgreSQL collectors of this target."""
    job: str = Field(default="postgres", pattern=r"^\S(.*\S)?$")
    """The labels rules written for Prometheus group and print by ({{ $labels.instance }}): every
    series of this target carries them in PiggyWatch's own evaluation. Empty instance: the DSN's
    host:port, as Prometheus scraping postgres_exporter would see it."""
    instance: str = Field("", description="The `instance` label (see `job`); empty: the "
                                          "DSN's host:port.")

    @field_validator("dsn")
    @classmethod
    def _dsn_is_postgres(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        raw = value.get_secret_value()
        if not raw.strip():
            raise ValueError("the DSN is empty (is its ${VARIABLE} set?)")
        from piggywatch.dsn import dsn_problem

        # libpq's own message would quote the string, password included.
        problem = dsn_problem(raw)
        if problem:
            raise ValueError(f"target {info.data.get('name', '?')}: the DSN cannot be used: "
                             f"{problem}")
        return value


class AckLinksConfig(_Strict):
    """Acknowledge and Silence links in mails: ``{external_url}/ack/{token}``, the token
    signed with ``secret`` and valid for ``ttl``."""

    secret: SecretStr = Field(description="The key the links are signed with (at least 32 "
                                          "characters; a secret).")
    ttl: Duration = Field(86400.0, description="How long a link stays valid.")

    @field_validator("secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 32:
            raise ValueError("ack_links.secret needs at least 32 characters (for example "
                             "the output of: openssl rand -hex 32)")
        return value


class SentryConfig(_Strict):
    """Where the daemon's own errors go; an empty dsn sends nothing."""

    dsn: SecretStr = SecretStr("")
    """The Sentry DSN; empty sends nothing."""
    environment: str = "production"
    """The Sentry environment tag."""


class LoggingConfig(_Strict):
    """Log level and format; ``auto`` is JSON unless stderr is a terminal."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """The lowest level logged."""
    format: Literal["auto", "json", "text"] = "auto"
    """`json`, `text`, or `auto` (JSON unless stderr is a terminal)."""


class SourcesConfig(_Strict):
    """App telemetry besides the PostgreSQL collectors."""

    edge_functions: EdgeFunctionsConfig | None = None
    """Edge-function invocations, errors and latency."""
    growth: list[GrowthConfig] = []
    """Growth and business metrics, one entry per target."""
    cost: list[CostConfig] = []
    """Cost and budget, one entry per target."""
    custom_sql: list[CustomQueryConfig] = []
    """User-defined queries exported as metrics."""
    redis: list[RedisConfig] = []
    """Redis instances to watch."""
    probes: list[ProbeConfig] = []
    """HTTP smoke tests."""
    system_memory: SystemMemoryConfig | None = None
    """Memory of the container or host."""

    @field_validator("custom_sql", "redis", "probes")
    @classmethod
    def _unique_names(cls, items: list[Any]) -> list[Any]:
        names = [item.name for item in items]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"names used twice: {', '.join(twice)}")
        return items


NoDataPolicy = Literal["keep_last", "alert", "ok"]


class NoDataConfig(_Strict):
    """What alerting rules do when their query fails or their target is down.

    keep_last holds every alert as it was; alert treats missing data as the condition
    being true; ok treats it as false (alerts resolve). Per rule group overrides.
    """

    default: NoDataPolicy = "keep_last"
    """The policy of every rule group not named in `groups`."""
    groups: dict[str, NoDataPolicy] = {}
    """Per rule group overrides: group name to policy."""


class Settings(_Strict):
    """The whole configuration file."""

    server: ServerConfig = ServerConfig()
    """Where the daemon listens, and who may call it."""
    targets: list[TargetConfig] = Field(min_length=1)
    """The PostgreSQL databases to monitor (at least one)."""
    # What loading noticed and corrected, each "file:line: key: what" (see load_warnings).
    _warnings: list[str] = PrivateAttr(default_factory=list)
    sources: SourcesConfig = SourcesConfig()
    """App telemetry besides the PostgreSQL collectors."""
    rule_files: list[str] = []
    """Prometheus-style rule files (globs allowed), relative to the config file's directory."""
    evaluation_interval: Duration = 15.0
    """How often alerting and recording rules are evaluated."""
    state: str = Field(default="sqlite:///var/lib/piggywatch/state.db",
                       pattern=r"^(sqlite:///.+|postgres(ql)?://.+)")
    """Alert state and long-range history; a path relative to the config file's directory is written
    sqlite:///./state.db. postgresql://… puts it in a schema of a PostgreSQL database instead,
    which several replicas can share (see `ha`)."""
    state_schema: str = Field(default="piggywatch", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """The schema that holds PiggyWatch's tables when `state` is a PostgreSQL URL; created and
    migrated by the daemon."""
    ha: HaConfig = HaConfig()
    """Leader election between replicas sharing a PostgreSQL `state`."""
    no_data: NoDataConfig = NoDataConfig()
    """What alerting rules do when their data is missing."""
    external_url: str = Field(default="", pattern=r"^(https?://\S+)?$")
    """How PagerDuty, Slack and mail readers reach PiggyWatch (links, hooks)."""
    ack_links: AckLinksConfig | None = None
    external_labels: dict[str, str] = {}
    """Labels added to every alert sent out."""
    receivers: list[Receiver] = []
    """Where notifications go: one channel per receiver."""
    route: Route | None = None
    """The routing tree deciding which receiver (or escalation) gets an alert."""
    escalations: dict[str, list[EscalationStep]] = {}
    """Named escalation policies: steps notified in turn until someone acknowledges."""
    inhibit_rules: list[InhibitRule] = []
    """Alerts that mute other alerts while they fire."""
    time_intervals: list[TimeInterval] = []
    """Named time windows for routes' active and mute intervals."""
    sentry: SentryConfig = SentryConfig()
    """Where the daemon's own errors go."""
    logging: LoggingConfig = LoggingConfig()
    """Log level and format."""

    @field_validator("state")
    @classmethod
    def _state_url_parses(cls, value: str) -> str:
        if value.startswith(("postgresql://", "postgres://")):
            from piggywatch.dsn import dsn_problem

            problem = dsn_problem(value)
            if problem:
                raise ValueError(f"the PostgreSQL URL cannot be used: {problem}")
        return value

    @model_validator(mode="after")
    def _delivery_references(self) -> Settings:
        # Each problem is its own error at its own key path, so it is reported with its
        # line, like any other; the chains' timing is checked beside the cross references.
        if not (self.receivers or self.route or self.escalations or self.inhibit_rules
                or self.time_intervals):
            return self  # nothing to cross-check, and no alerting module to import
        from piggywatch.alerting.escalation import policy_problems
        from piggywatch.alerting.settings import alerting_problem_locations

        found = alerting_problem_locations(self.receivers, self.route, self.escalations,
                                           self.inhibit_rules, self.time_intervals)
        found += policy_problems(self.escalations)
        if found:
            raise ValidationError.from_exception_data("Settings", [
                InitErrorDetails(type=PydanticCustomError("alerting", "{message}",
                                                          {"message": message}),
                                 loc=path, input=None)
                for path, message in found])
        return self

    @model_validator(mode="after")
    def _ack_links_need_external_url(self) -> Settings:
        if self.ack_links is not None and not self.external_url:
            raise ValueError("ack_links needs external_url: the links in mails point there "
                             "(for example https://piggywatch.example.com)")
        return self

    @field_validator("targets")
    @classmethod
    def _unique_target_names(cls, targets: list[TargetConfig]) -> list[TargetConfig]:
        seen: set[str] = set()
        for target in targets:
            if target.name in seen:
                raise ValueError(f"target name {target.name!r} is used twice")
            seen.add(target.name)
        return targets

    @model_validator(mode="after")
    def _sources_name_targets(self) -> Settings:
        names = {t.name for t in self.targets}
        sources = self.sources
        used = [*(q.target for q in sources.custom_sql), *(g.target for g in sources.growth),
                *(c.target for c in sources.cost)]
        if sources.edge_functions is not None and sources.edge_functions.sql is not None:
            used.append(sources.edge_functions.sql.target)
        unknown = sorted({t for t in used if t not in names})
        if unknown:
            raise ValueError(f"sources name targets that do not exist: {', '.join(unknown)}")
        kinds: list[tuple[str, list[str]]] = [
            ("growth", [g.target for g in sources.growth]),
            ("cost", [c.target for c in sources.cost])]
        for kind, per_target in kinds:
            twice = sorted({t for t in per_target if per_target.count(t) > 1})
            if twice:
                raise ValueError(f"sources.{kind}: one entry per target ({', '.join(twice)} "
                                 "has more)")
        return self

    def load_warnings(self) -> list[str]:
        """What loading the file noticed and corrected (check prints them, run logs them)."""
        return list(self._warnings)

    def secrets(self) -> list[str]:
        """Every secret value in the configuration, for log and error scrubbing."""
        found = [t.dsn.get_secret_value() for t in self.targets]
        found.append(urlsplit(self.state).password or "")
        found.append(self.sentry.dsn.get_secret_value())
        found.append(self.server.api_token.get_secret_value())
        edge = self.sources.edge_functions
        if edge is not None and edge.http is not None:
            found.append(edge.http.access_token.get_secret_value())
        for redis in self.sources.redis:
            found.extend(redis.secrets())
        for probe in self.sources.probes:
            found.extend(probe.secrets())
        if self.server.metrics_basic_auth is not None:
            found.append(self.server.metrics_basic_auth.password.get_secret_value())
        for receiver in self.receivers:
            found.extend(receiver.channel.secrets(receiver.channel_config))
        if self.ack_links is not None:
            found.append(self.ack_links.secret.get_secret_value())
        return [s for s in found if s]
