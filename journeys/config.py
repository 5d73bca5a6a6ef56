"""config.yaml: webhook sources, sending channels and policies of one deployment.

Secrets never live in the file. Any string value may be ``env:NAME``, read from the
environment when the deployment starts (a missing variable stops the start, naming it);
``journeys validate`` never needs the variables, and flags literals that look like
secrets so they do not reach git.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from journeys import schema
from journeys.durations import parse_ms
from journeys.errors import ConfigError, DefinitionError, Diagnostic, PathPart
from journeys.secrets import looks_like_secret
from journeys.yamlsrc import Document, load_file, strings_in

ENV_PREFIX = "env:"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Fields whose value is a credential: they must be env:NAME.
SECRET_FIELDS = frozenset({"secret", "public_key", "verify_token", "auth_token", "api_key", "password"})

# Fields that are addresses, not credentials, however long they are.
_PLAIN_FIELDS = frozenset({"public_url", "api_base", "from", "host", "username", "messaging_service_sid",
                           "status_source", "provider", "account_sid"})

DEFAULT_OPT_OUT = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT")
DEFAULT_OPT_IN = ("START", "UNSTOP")
CHANNELS = ("sms", "email", "whatsapp", "push", "voice")


@dataclass(frozen=True)
class SourceConfig:
    name: str
    provider: str
    secrets: tuple[str, ...] = ()
    public_keys: tuple[str, ...] = ()
    verify_token: str | None = None
    public_url: str | None = None
    tolerance_ms: int = 300_000
    max_body_bytes: int = 1_048_576
    max_batch: int = 1_000
    # (requests, per milliseconds), or None for no limit
    rate_limit: tuple[int, int] | None = None


@dataclass(frozen=True)
class ChannelConfig:
    name: str
    provider: str
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Policies:
    quiet_hours: tuple[str, str] | None = None
    quiet_hours_timezone: str = "UTC"
    frequency_cap: tuple[int, int] | None = None
    opt_out_keywords: tuple[str, ...] = DEFAULT_OPT_OUT
    opt_in_keywords: tuple[str, ...] = DEFAULT_OPT_IN
    opt_out_scope: tuple[str, ...] = CHANNELS
    store_message_bodies: bool = False
    http_allow_networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    sources: Mapping[str, SourceConfig]
    channels: Mapping[str, ChannelConfig]
    policies: Policies
    file: str = ""


def _field_of(path: tuple[PathPart, ...]) -> str:
    for part in reversed(path):
        if isinstance(part, str):
            return part
    return ""


def check_config(doc: Document) -> list[Diagnostic]:
    """Rules beyond the schema: secrets as env:NAME, references between sections, policies."""
    out: list[Diagnostic] = []
    data: dict[str, Any] = doc.data
    for path, value in strings_in(data):
        name = _field_of(path)
        if value.startswith(ENV_PREFIX):
            if not _ENV_NAME.match(value[len(ENV_PREFIX):]):
                out.append(doc.diagnostic(path, f"{value!r} is not a valid env:NAME reference "
                                          "(letters, digits and '_')"))
            continue
        if name in SECRET_FIELDS:
            out.append(doc.diagnostic(path, f"{name} is written as a literal: secrets must not live in git; "
                                      f"write env:NAME and set NAME in the environment", code="secret-literal"))
            continue
        if name in _PLAIN_FIELDS:
            continue
        what = looks_like_secret(value)
        if what:
            out.append(doc.diagnostic(path, f"this looks like {what}: secrets must not live in git; "
                                      "write env:NAME instead", code="secret-literal"))
    sources: dict[str, Any] = data.get("sources", {})
    for channel, spec in data.get("channels", {}).items():
        status_source = spec.get("status_source")
        if status_source is None:
            continue
        path = ("channels", channel, "status_source")
        if status_source not in sources:
            listed = ", ".join(sources) or "none"
            out.append(doc.diagnostic(path, f"status_source {status_source!r} is not a source in this "
                                      f"file (sources: {listed})"))
        elif sources[status_source].get("provider") != spec.get("provider"):
            out.append(doc.diagnostic(path, f"status_source {status_source!r} has provider "
                                      f"{sources[status_source].get('provider')!r}, but this channel sends "
                                      f"with {spec.get('provider')!r}"))
    policies: dict[str, Any] = data.get("policies", {})
    outs = {k.upper() for k in policies.get("opt_out_keywords", DEFAULT_OPT_OUT)}
    for i, word in enumerate(policies.get("opt_in_keywords", [])):
        if word.upper() in outs:
            out.append(doc.diagnostic(("policies", "opt_in_keywords", i),
                                      f"{word!r} is both an opt-out and an opt-in keyword"))
    for i, cidr in enumerate(policies.get("http_allow_networks", [])):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            out.append(doc.diagnostic(("policies", "http_allow_networks", i),
                                      f"{cidr!r} is not a network: write a CIDR like 10.0.0.0/8"))
    quiet = policies.get("quiet_hours")
    if quiet and quiet["start"] == quiet["end"]:
        out.append(doc.diagnostic(("policies", "quiet_hours"), "quiet hours start and end at the same time"))
    return out


def read_config(doc: Document) -> list[Diagnostic]:
    """All problems of a config document: the schema first, then the rules."""
    found = schema.check(doc, "config")
    if any(d.severity == "error" for d in found):
        return found
    return found + check_config(doc)


class _Resolver:
    def __init__(self, doc: Document, environ: Mapping[str, str]) -> None:
        self.doc = doc
        self.environ = environ

    def value(self, value: Any, path: tuple[PathPart, ...]) -> Any:
        if isinstance(value, str) and value.startswith(ENV_PREFIX):
            name = value[len(ENV_PREFIX):]
            if name not in self.environ:
                where = self.doc.locate(path)
                raise ConfigError(f"{where}: environment variable {name} is not set "
                                  f"(config.yaml asks for it as {value})")
            return self.environ[name]
        if isinstance(value, dict):
            return {k: self.value(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, (*path, i)) for i, v in enumerate(value)]
        return value


def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (value,)


def config_from_document(doc: Document, environ: Mapping[str, str]) -> Config:
    """A running deployment's config: validated, with every env:NAME resolved."""
    problems = [d for d in read_config(doc) if d.severity == "error"]
    if problems:
        raise DefinitionError(problems)
    data = _Resolver(doc, environ).value(doc.data, ())
    sources = {}
    for name, spec in data.get("sources", {}).items():
        rate = spec.get("rate_limit")
        sources[name] = SourceConfig(
            name=name,
            provider=spec["provider"],
            secrets=_as_tuple(spec.get("secret")),
            public_keys=_as_tuple(spec.get("public_key")),
            verify_token=spec.get("verify_token"),
            public_url=spec.get("public_url"),
            tolerance_ms=parse_ms(spec.get("tolerance", "5m")),
            max_body_bytes=spec.get("max_body_bytes", 1_048_576),
            max_batch=spec.get("max_batch", 1_000),
            rate_limit=None if rate is None else (rate["requests"], parse_ms(rate["per"])),
        )
    channels = {
        name: ChannelConfig(name, spec["provider"], MappingProxyType(dict(spec)))
        for name, spec in data.get("channels", {}).items()
    }
    for name in ("sms", "email", "whatsapp"):
        # Local runs send nowhere: an unconfigured channel prints and records.
        channels.setdefault(name, ChannelConfig(name, "console", MappingProxyType({"provider": "console"})))
    pol = data.get("policies", {})
    quiet = pol.get("quiet_hours")
    cap = pol.get("frequency_cap")
    scope = pol.get("opt_out_scope", "all")
    policies = Policies(
        quiet_hours=None if quiet is None else (quiet["start"], quiet["end"]),
        quiet_hours_timezone=(quiet or {}).get("default_timezone", "UTC"),
        frequency_cap=None if cap is None else (cap["max"], parse_ms(cap["per"])),
        opt_out_keywords=tuple(k.upper() for k in pol.get("opt_out_keywords", DEFAULT_OPT_OUT)),
        opt_in_keywords=tuple(k.upper() for k in pol.get("opt_in_keywords", DEFAULT_OPT_IN)),
        opt_out_scope=CHANNELS if scope == "all" else tuple(scope),
        store_message_bodies=bool(pol.get("store_message_bodies", False)),
        http_allow_networks=tuple(pol.get("http_allow_networks", [])),
    )
    return Config(MappingProxyType(sources), MappingProxyType(channels), policies, doc.file)


def load_config(path: str, environ: Mapping[str, str]) -> Config:
    return config_from_document(load_file(path), environ)


def default_config() -> Config:
    """The config of a deployment without config.yaml: console channels, no sources."""
    return config_from_document(Document("<defaults>", {}), {})
