"""Draw a journey: Mermaid ``stateDiagram-v2`` or Graphviz DOT, from the model only.

Every state, every transition labelled with its event and guard, timers as ``after 24h``,
exit rules from a pseudo-state "any state", and final states into the end marker.
"""

from __future__ import annotations

from collections.abc import Iterator

from journeys.model import Journey

ANY = "any_state"


def _edges(journey: Journey) -> Iterator[tuple[str, str, str, str]]:
    """(from, to, label, kind) for every edge; kind is on | after | exit."""
    for state in journey.states.values():
        for event, transitions in state.on.items():
            for t in transitions:
                label = event if t.when is None else f"{event} [{t.when}]"
                if t.do:
                    label += " / " + ", ".join(a.action for a in t.do)
                yield state.name, t.to, label, "on"
        for timer in state.after:
            label = f"after {timer.text}"
            if timer.do:
                label += " / " + ", ".join(a.action for a in timer.do)
            yield state.name, timer.to, label, "after"


def _exit_label(on: str, when: str | None) -> str:
    return f"exit on {on}" if when is None else f"exit on {on} [{when}]"


def _mermaid_text(text: str) -> str:
    # Mermaid labels end at ';' or a newline and read '#...;' as entities.
    replacements = {"#": "#35;", ";": "#59;", '"': "#quot;", "\n": " ", ":": "#58;"}
    return "".join(replacements.get(c, c) for c in text)


def mermaid(journey: Journey) -> str:
    lines = ["stateDiagram-v2", f"    %% {journey.id} v{journey.version}"]
    for name, state in journey.states.items():
        if state.description:
            lines.append(f"    {name}: {_mermaid_text(state.description)}")
    lines.append(f"    [*] --> {journey.initial}")
    for src, dst, label, _ in _edges(journey):
        lines.append(f"    {src} --> {dst}: {_mermaid_text(label)}")
    if journey.exit:
        lines.append(f'    state "any state" as {ANY}')
        for rule in journey.exit:
            target = rule.to if rule.to is not None else "[*]"
            lines.append(f"    {ANY} --> {target}: {_mermaid_text(_exit_label(rule.on, rule.when))}")
    for name, state in journey.states.items():
        if state.final:
            lines.append(f"    {name} --> [*]")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def dot(journey: Journey) -> str:
    lines = [
        f'digraph "{_dot_text(journey.id)}" {{',
        f'    label="{_dot_text(journey.id)} v{journey.version}"; labelloc=t; rankdir=LR;',
        "    node [shape=box, style=rounded];",
        '    "__start" [shape=point, label=""];',
        '    "__end" [shape=doublecircle, label="", width=0.2];',
    ]
    for name, state in journey.states.items():
        attrs = "shape=doublecircle" if state.final else "shape=box, style=rounded"
        lines.append(f'    "{name}" [{attrs}];')
    lines.append(f'    "__start" -> "{journey.initial}";')
    for src, dst, label, kind in _edges(journey):
        style = ", style=dashed" if kind == "after" else ""
        lines.append(f'    "{src}" -> "{dst}" [label="{_dot_text(label)}"{style}];')
    if journey.exit:
        lines.append(f'    "{ANY}" [label="any state", shape=note];')
        for rule in journey.exit:
            target = rule.to if rule.to is not None else "__end"
            label = _dot_text(_exit_label(rule.on, rule.when))
            lines.append(f'    "{ANY}" -> "{target}" [label="{label}", style=dotted];')
    lines.append("}")
    return "\n".join(lines) + "\n"


FORMATS = {"mermaid": mermaid, "dot": dot}
