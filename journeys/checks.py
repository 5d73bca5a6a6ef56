"""Rules of the journey language that a JSON Schema cannot express.

Runs on a document that already passed the schema, so shapes are known; every rule
reports at the line of the node that breaks it and names what would fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from actions.registry import SEND_CHANNELS, is_known, known_action_names
from journeys import expressions
from journeys.durations import DurationSyntaxError, parse_ms
from journeys.errors import Diagnostic, PathPart
from journeys.events import is_reserved, unknown_reserved
from journeys.secrets import looks_like_secret
from journeys.yamlsrc import Document, strings_in

Path = tuple[PathPart, ...]

# Inputs that are names or fixed words, not templates.
_NOT_TEMPLATES = frozenset({"template", "method", "channels"})


def _hint(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def transitions_of(spec: Any) -> list[tuple[int | None, dict[str, Any]]]:
    """Normalize the three spellings of a transition to ``[(index or None, {to, when, do})]``."""
    if isinstance(spec, str):
        return [(None, {"to": spec})]
    if isinstance(spec, dict):
        return [(None, spec)]
    return [(i, t) for i, t in enumerate(spec)]


def timer_target(spec: Any) -> dict[str, Any]:
    return {"to": spec} if isinstance(spec, str) else dict(spec)


class JourneyChecker:
    """Collects every semantic problem of one schema-valid journey document."""

    def __init__(self, doc: Document, templates: Mapping[str, set[str]] | None = None) -> None:
        self.doc = doc
        self.data: dict[str, Any] = doc.data
        self.states: dict[str, Any] = self.data["states"]
        self.policies: dict[str, Any] = self.data.get("retry", {})
        self.var_names = list(self.data.get("vars", {}))
        # channel -> template names found under templates/<channel>/; None: not in a deployment
        self.templates = templates
        self.out: list[Diagnostic] = []

    def error(self, path: Path, message: str, *, key: bool = False, code: str = "invalid") -> None:
        self.out.append(self.doc.diagnostic(path, message, key=key, code=code))

    def warn(self, path: Path, message: str, *, key: bool = False) -> None:
        self.out.append(self.doc.diagnostic(path, message, key=key, severity="warning", code="warning"))

    def run(self) -> list[Diagnostic]:
        version = self.data["version"]
        if not isinstance(version, int) or isinstance(version, bool):
            self.error(("version",), f"version must be a whole number like 3, not {version!r}")
        initial_ok = self.check_target(("initial",), self.data["initial"], "initial")
        self.check_subject()
        self.check_triggers()
        self.check_vars()
        self.check_exits()
        self.check_goal()
        self.check_policies()
        for name, state in self.states.items():
            self.check_state(name, state)
        if initial_ok:  # without a start, every state would be reported unreachable
            self.check_reachable()
        return self.out

    # -- names -------------------------------------------------------------------

    def check_target(self, path: Path, target: str, what: str) -> bool:
        if target in self.states:
            return True
        known = ", ".join(self.states)
        self.error(path, f"{what} goes to state {target!r}, which is not defined{_hint(target, self.states)}; "
                   f"states: {known}", code="unknown-state")
        return False

    # -- expressions -------------------------------------------------------------

    def check_expression(
        self, path: Path, source: str, names: frozenset[str], known_vars: Iterable[str] | None = None
    ) -> None:
        for problem in expressions.check(source, template=False, names=names, known_vars=known_vars):
            where = self.doc.locate_in_text(path, problem.line)
            self.out.append(self.doc.diagnostic(path, problem.message, code="expression", location=where))

    def check_template(
        self,
        path: Path,
        source: str,
        names: frozenset[str],
        known_vars: Iterable[str] | None = None,
        later_vars: Iterable[str] = (),
    ) -> None:
        for problem in expressions.check(
            source, template=True, names=names, known_vars=known_vars, later_vars=later_vars
        ):
            where = self.doc.locate_in_text(path, problem.line)
            self.out.append(self.doc.diagnostic(path, problem.message, code="template", location=where))
        what = looks_like_secret(source)
        if what:
            self.error(path, f"this looks like {what}: secrets must not live in git; "
                       "keep them in the environment of the deployment", code="secret-literal")

    def check_event_type(self, path: Path, event_type: str, *, key: bool = False) -> None:
        reason = unknown_reserved(event_type)
        if reason:
            self.error(path, reason, key=key, code="unknown-event")

    def check_subject(self) -> None:
        subject = self.data.get("subject", "contact")
        if subject not in ("contact", "conversation"):
            self.check_expression(("subject",), subject, expressions.TRIGGER_NAMES)

    def check_triggers(self) -> None:
        triggers = self.data["trigger"]
        items = [(("trigger",), triggers)] if isinstance(triggers, dict) else [
            (("trigger", i), t) for i, t in enumerate(triggers)
        ]
        for path, trigger in items:
            self.check_event_type((*path, "on"), trigger["on"])
            if "when" in trigger:
                # vars do not exist yet when a trigger is tested
                self.check_expression((*path, "when"), trigger["when"], expressions.TRIGGER_NAMES)

    def check_vars(self) -> None:
        names = list(self.data.get("vars", {}))
        for i, (name, value) in enumerate(self.data.get("vars", {}).items()):
            if isinstance(value, str):
                # a var may use the ones captured before it, in file order
                self.check_template(("vars", name), value, expressions.VARS_NAMES, names[:i], names[i:])

    def check_exits(self) -> None:
        for i, rule in enumerate(self.data.get("exit", [])):
            self.check_event_type(("exit", i, "on"), rule["on"])
            if "when" in rule:
                self.check_expression(("exit", i, "when"), rule["when"], expressions.ALL_NAMES, self.var_names)
            target = rule.get("to")
            if (
                target is not None
                and self.check_target(("exit", i, "to"), target, "exit")
                and not self.states[target].get("final", False)
            ):
                self.error(("exit", i, "to"), f"exit goes to {target!r}, which is not final: "
                           "an exit ends the instance, so its state must have final: true")

    def check_goal(self) -> None:
        goal = self.data.get("goal")
        if goal:
            self.check_event_type(("goal", "on"), goal["on"])
        if goal and "when" in goal:
            self.check_expression(("goal", "when"), goal["when"], expressions.ALL_NAMES, self.var_names)

    def check_policies(self) -> None:
        for name, policy in self.policies.items():
            self.check_policy(("retry", name), f"retry policy {name!r}", policy)

    def check_policy(self, path: Path, what: str, policy: dict[str, Any]) -> None:
        initial = parse_ms(policy.get("initial", "1s"))
        most = parse_ms(policy.get("max", "5m"))
        if initial > most:
            where = (*path, "initial") if "initial" in policy else path
            self.error(where, f"{what}: initial ({policy.get('initial', '1s')}) is longer than max "
                       f"({policy.get('max', '5m')})")
        if parse_ms(policy.get("timeout", "10s")) == 0:
            self.error((*path, "timeout"), f"{what}: a timeout of 0 would fail every attempt")
        attempts = policy.get("max_attempts", 5)
        if isinstance(attempts, float):
            self.error((*path, "max_attempts"), f"max_attempts must be a whole number, not {attempts!r}")

    # -- states ------------------------------------------------------------------

    def check_state(self, name: str, state: dict[str, Any]) -> None:
        base: Path = ("states", name)
        final = state.get("final", False)
        on: dict[str, Any] = state.get("on", {})
        after: dict[str, Any] = state.get("after", {})
        for i, action in enumerate(state.get("enter", [])):
            self.check_action((*base, "enter", i), action)
        if final:
            for key in ("on", "after"):
                if state.get(key):
                    self.error((*base, key), f"state {name!r} is final, so it cannot have {key!r}: "
                               "nothing happens after a final state (remove final or the transitions)", key=True)
            return
        if not on and not after:
            if self.data.get("exit"):
                self.warn(base, f"state {name!r} has no transitions or timers of its own: "
                          "only an exit rule can end it", key=True)
            else:
                self.error(base, f"state {name!r} is not final and has no way out (no on, no after): "
                           "an instance there would wait forever; add a transition or a timer, "
                           "or mark it final: true", key=True, code="dead-end")
        for event, spec in on.items():
            self.check_event_type((*base, "on", event), event, key=True)
            entries = transitions_of(spec)
            unguarded_at: int | None = None
            for index, entry in entries:
                path: Path = (*base, "on", event) if index is None else (*base, "on", event, index)
                if unguarded_at is not None:
                    self.error(path, f"this transition on {event!r} is never tried: the one before it "
                               "has no when, and the first match wins")
                if "when" not in entry:
                    unguarded_at = index if index is not None else 0
                to_path = path if isinstance(spec, str) else (*path, "to")
                self.check_target(to_path, entry["to"], f"the transition on {event!r}")
                if "when" in entry:
                    self.check_expression((*path, "when"), entry["when"], expressions.ALL_NAMES, self.var_names)
                for j, action in enumerate(entry.get("do", [])):
                    self.check_action((*path, "do", j), action)
        for text, spec in after.items():
            path = (*base, "after", text)
            try:
                delay = parse_ms(text)
            except DurationSyntaxError as exc:  # the schema already refuses these; kept for safety
                self.error(path, str(exc), key=True)
                continue
            if delay == 0:
                self.error(path, "a timer of 0 fires at once: use a transition instead", key=True)
            entry = timer_target(spec)
            self.check_target(path if isinstance(spec, str) else (*path, "to"), entry["to"], f"the timer {text}")
            for j, action in enumerate(entry.get("do", [])):
                self.check_action((*path, "do", j), action)

    def check_action(self, path: Path, action: dict[str, Any]) -> None:
        name = action["action"]
        if not is_known(name):
            names = known_action_names()
            self.error((*path, "action"), f"unknown action {name!r}{_hint(name, names)}; "
                       f"known actions: {', '.join(names)}", code="unknown-action")
        retry = action.get("retry")
        if isinstance(retry, dict):
            self.check_policy((*path, "retry"), "this retry policy", retry)
        if isinstance(retry, str) and retry != "default" and retry not in self.policies:
            defined = ", ".join(self.policies) or "none"
            self.error((*path, "retry"), f"retry policy {retry!r} is not defined in this file's retry "
                       f"section{_hint(retry, self.policies)} (defined: {defined})", code="unknown-policy")
        inputs = action.get("with", {})
        for sub, value in strings_in(inputs):
            if sub and sub[0] in _NOT_TEMPLATES:
                continue
            self.check_template((*path, "with", *sub), value, expressions.ALL_NAMES, self.var_names)
        if name == "emit" and isinstance(inputs.get("type"), str) and is_reserved(inputs["type"]):
            self.error((*path, "with", "type"), f"emit raises business events; {inputs['type']!r} is in a "
                       "namespace that only providers and the engine produce")
        channel = SEND_CHANNELS.get(name)
        template = inputs.get("template")
        known_templates = None if self.templates is None or not channel else self.templates.get(channel, set())
        if isinstance(template, str) and known_templates is not None and template not in known_templates:
            self.error((*path, "with", "template"), f"no template {template!r} for {channel}: expected a "
                       f"file templates/{channel}/{template}.* in the deployment", code="unknown-template")

    def check_reachable(self) -> None:
        seen: set[str] = set()
        todo = [self.data["initial"]]
        # An exit can fire from any state, so its target is reachable once anything is.
        todo += [rule["to"] for rule in self.data.get("exit", []) if "to" in rule]
        while todo:
            name = todo.pop()
            if name in seen or name not in self.states:
                continue
            seen.add(name)
            state = self.states[name]
            for spec in state.get("on", {}).values():
                todo += [entry["to"] for _, entry in transitions_of(spec)]
            todo += [timer_target(spec)["to"] for spec in state.get("after", {}).values()]
        for name in self.states:
            if name not in seen:
                self.error(("states", name), f"state {name!r} cannot be reached from the initial state "
                           f"{self.data['initial']!r}", key=True, code="unreachable")


def check_journey(doc: Document, templates: Mapping[str, set[str]] | None = None) -> list[Diagnostic]:
    """Semantic problems of a schema-valid journey document."""
    return JourneyChecker(doc, templates).run()
