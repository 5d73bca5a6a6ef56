"""Benchmark: decisions per second of the pure interpreter against the `transitions` library,
and memory per compiled journey and per instance.

Run by hand (not collected by pytest):
    python tests/benchmarks/bench_interpreter.py [--rounds N] [--events N] [--profile]

Target (issue): ``decide`` on examples/journeys/payment-reminder.yaml makes at least 1.5x the
decisions per second of ``transitions.Machine`` driving the same state machine.

Fairness rules, printed with the results:
- every Event, Contact and ``message_status`` for journeys is built before timing; so is every
  ``transitions`` model and Machine: ``compile_journey`` and Machine construction are both
  excluded from the decision rates (Machine construction is reported on its own);
- both sides process the same sequence: one call (``decide`` or a trigger) per event;
- ``transitions`` runs the same states and transitions, generated from the compiled journey,
  with timers as plain triggers, exits as transitions from every non-final state, and two
  extra states: ``new`` (before the start trigger) and ``exited`` (an exit without ``to``).
  It evaluates no guards and renders no templates: a guarded branch is a trigger of its own
  (``message_received__when0``), and the sequence calls the branch journeys actually took;
  an event journeys ignores is a trigger that is invalid in that state (ignored by the Machine).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import platform
import pstats
import statistics
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from types import MappingProxyType
from typing import Any

from transitions import Machine

from engine.compiled import CompiledJourney, compile_journey
from engine.decision import Decision, TimerSet
from engine.events import Event
from engine.instance import Contact, Instance
from engine.interpreter import decide
from journeys.events import TIMER_FIRED
from journeys.loader import load_journey

ROOT = Path(__file__).resolve().parents[2]
JOURNEY = ROOT / "examples" / "journeys" / "payment-reminder.yaml"
TARGET = 1.5
START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
NEW, EXITED = "new", "exited"

# -- the realistic traffic -----------------------------------------------------------------

# One scenario is the life of one instance: (kind, argument) per event.
#   overdue: amount due        delivered/failed/opened: channel of the message
#   received: reply text       timer: delay text of a timer the current state set
#   paid: -                    redeliver: the previous event again (a provider retry)
Scenario = tuple[tuple[str, Any], ...]
SCENARIOS: tuple[Scenario, ...] = (
    # SMS delivered (the webhook arrives twice), a question that needs no help, then paid.
    (("overdue", 40), ("delivered", "sms"), ("redeliver", None), ("received", "When is it due exactly?"),
     ("paid", None)),
    # SMS fails, the email is opened, nothing paid: second reminder after three days.
    (("overdue", 12.5), ("failed", "sms"), ("opened", "email"), ("timer", "3d")),
    # A reply asking for help opens a ticket.
    (("overdue", 99), ("received", "Help, I already paid")),
    # No reaction at all for a day.
    (("overdue", 25), ("timer", "24h")),
    # SMS and email both fail: a ticket.
    (("overdue", 310), ("failed", "sms"), ("failed", "email")),
    # A plain reply, then paid.
    (("overdue", 18.9), ("received", "ok, will pay tomorrow"), ("paid", None)),
    # SMS fails, the email is never opened: a ticket after two days.
    (("overdue", 57), ("failed", "sms"), ("timer", "2d")),
    # Delivered, no payment: second reminder after three days.
    (("overdue", 74), ("delivered", "sms"), ("timer", "3d")),
)

GAP = {"delivered": timedelta(seconds=40), "failed": timedelta(minutes=1), "opened": timedelta(hours=3),
       "received": timedelta(hours=2), "paid": timedelta(days=1), "redeliver": timedelta(seconds=5)}


@dataclass
class Life:
    """One instance's events, built before timing, and what each side must do with them."""

    contact: Contact
    steps: list[tuple[Event, str | None]] = field(default_factory=list)  # (event, message_status)
    triggers: list[str] = field(default_factory=list)  # the transitions trigger of each event
    states: list[str] = field(default_factory=list)  # journeys' state after each event
    outcomes: list[str] = field(default_factory=list)  # journeys' outcome of each event


# -- the same state machine for `transitions` ----------------------------------------------


def trigger_name(event_type: str, index: int, guarded: bool) -> str:
    base = event_type.replace(".", "_")
    return f"{base}__when{index}" if guarded else base


@dataclass
class Spec:
    states: list[dict[str, Any]]
    transitions: list[dict[str, Any]]
    # (event type, source, dest) -> trigger, in the order transitions tries them
    by_move: dict[tuple[str, str, str], str]
    invalid: dict[str, set[str]]  # trigger -> states where it is invalid


def machine_spec(cj: CompiledJourney) -> Spec:
    finals = {name for name, s in cj.states.items() if s.state.final}
    live = [name for name in cj.states if name not in finals]
    states: list[dict[str, Any]] = [{"name": NEW}, {"name": EXITED, "final": True}]
    states += [{"name": name, "final": True} if name in finals else {"name": name} for name in cj.states]
    moves: list[tuple[str, str, list[str], str]] = []  # (event type, trigger, sources, dest)
    for event_type, rules in cj.triggers.items():
        for i, rule in enumerate(rules):
            moves.append((event_type, trigger_name(event_type, i, rule.guard is not None), [NEW], cj.journey.initial))
    # Exits first: for one trigger and source, transitions tries transitions in the order added.
    for event_type, rules in cj.exits.items():
        for i, rule in enumerate(rules):
            moves.append((event_type, trigger_name(event_type, i, rule.guard is not None), live, rule.to or EXITED))
    for name, compiled in cj.states.items():
        for event_type, branches in compiled.on.items():
            for i, branch in enumerate(branches):
                moves.append((event_type, trigger_name(event_type, i, branch.guard is not None), [name], branch.to))
        for t in compiled.timers:
            moves.append((TIMER_FIRED, f"after_{t.timer.text}", [name], t.timer.to))
    by_move: dict[tuple[str, str, str], str] = {}
    valid: dict[str, set[str]] = {}
    for event_type, trigger, sources, dest in moves:
        valid.setdefault(trigger, set()).update(sources)
        for source in sources:
            by_move.setdefault((event_type, source, dest), trigger)
    every = {s["name"] for s in states}
    transitions = [{"trigger": t, "source": s if len(s) > 1 else s[0], "dest": d} for _, t, s, d in moves]
    return Spec(states, transitions, by_move, {t: every - v for t, v in valid.items()})


class Invoice:
    """The model object a `transitions` user writes: the Machine adds ``state`` and triggers."""

    state: str

    def __init__(self, invoice_id: str) -> None:
        self.invoice_id = invoice_id


def new_machine(spec: Spec, model: Any) -> Machine:
    return Machine(model=model, states=spec.states, transitions=spec.transitions, initial=NEW,
                   ignore_invalid_triggers=True)


# -- building the traffic ------------------------------------------------------------------


def message_event(eid: str, kind: str, channel: str, at: datetime, contact: Contact, message_id: str) -> Event:
    return Event(id=eid, type=f"message.{kind}", occurred_at=at, source="webhook", provider="twilio",
                 channel=channel, contact_id=contact.id, conversation_id=f"{channel}:{contact.phone}",
                 message_id=message_id, provider_message_id=f"SM{message_id}", received_at=at,
                 status=kind)


def build(cj: CompiledJourney, spec: Spec, target_events: int) -> list[Life]:
    """Lives of instances until *target_events* events; timers come from decision.timers_set."""
    lives: list[Life] = []
    total = 0
    k = 0
    while total < target_events:
        scenario = SCENARIOS[k % len(SCENARIOS)]
        contact = Contact(id=f"c-{k}", phone=f"+49151{k:08d}", email=f"c{k}@example.com", timezone="Europe/Berlin")
        life = Life(contact)
        at = START + timedelta(seconds=7 * k)
        instance: Instance | None = None
        timers: tuple[TimerSet, ...] = ()
        source = NEW
        messages = 0
        previous: tuple[Event, str | None] | None = None
        for j, (kind, arg) in enumerate(scenario):
            eid = f"e-{k}-{j}"
            status: str | None = None
            if kind == "overdue":
                event = Event(id=eid, type="invoice.overdue", occurred_at=at, source="billing", contact_id=contact.id,
                              data=MappingProxyType({"invoice_id": f"INV-{k:06d}", "amount_due": arg,
                                                     "currency": "EUR"}))
            elif kind in ("delivered", "failed", "opened"):
                messages += 1
                at += GAP[kind]
                event = message_event(eid, kind, arg, at, contact, f"m-{k}-{messages}")
                status = "sent"
            elif kind == "received":
                at += GAP[kind]
                event = Event(id=eid, type="message.received", occurred_at=at, source="webhook", provider="twilio",
                              channel="sms", contact_id=contact.id, conversation_id=f"sms:{contact.phone}",
                              text=arg, data=MappingProxyType({"from": contact.phone}))
            elif kind == "timer":
                timer = next(t for t in timers if t.delay == arg)
                at = timer.due_at
                event = Event(id=f"timer:{timer.id}", type=TIMER_FIRED, occurred_at=at, source="timer",
                              contact_id=contact.id,
                              data=MappingProxyType({"instance_id": timer.instance_id, "state": timer.state,
                                                     "seq": timer.seq, "index": timer.idx,
                                                     "timer_id": timer.id}))
            elif kind == "paid":
                at += GAP[kind]
                event = Event(id=eid, type="invoice.paid", occurred_at=at, source="billing", contact_id=contact.id,
                              data=MappingProxyType({"invoice_id": f"INV-{k:06d}"}))
            elif kind == "redeliver":
                assert previous is not None
                event, status = previous
            else:
                raise ValueError(kind)
            decision = decide(cj, instance, event, event.occurred_at, contact, message_status=status)
            if decision.outcome in ("not_started", "failed"):
                sys.exit(f"scenario {k % len(SCENARIOS)} event {j}: {decision.outcome}: {decision.reason}")
            life.steps.append((event, status))
            life.triggers.append(transitions_trigger(spec, event.type, source, decision))
            instance = decision.instance
            assert instance is not None
            dest = instance.state if instance.status != "exited" else EXITED
            if decision.changed:
                timers = decision.timers_set
            source = dest
            life.states.append(dest)
            life.outcomes.append(decision.outcome)
            previous = (event, status)
        lives.append(life)
        total += len(life.steps)
        k += 1
    return lives


def transitions_trigger(spec: Spec, event_type: str, source: str, decision: Decision) -> str:
    """The trigger that makes the Machine do what journeys decided."""
    instance = decision.instance
    assert instance is not None
    if decision.outcome not in ("ignored", "duplicate", "not_started"):
        dest = instance.state if instance.status != "exited" else EXITED
        return spec.by_move[(event_type, source, dest)]
    # Ignored by journeys (no guard held, duplicate): a trigger the Machine ignores in *source*.
    name = trigger_name(event_type, 0, False)
    if source not in spec.invalid.get(name, set()):
        sys.exit(f"no trigger that is a no-op for {event_type} in {source}")
    return name


def verify(lives: Sequence[Life], spec: Spec) -> None:
    """Both sides go through the same states, event by event."""
    machine = new_machine(spec, None)
    for life in lives:
        model = Invoice(life.contact.id)
        machine.add_model(model)
        for trigger, expected in zip(life.triggers, life.states, strict=True):
            getattr(model, trigger)()
            if model.state != expected:
                sys.exit(f"{life.contact.id}: transitions reached {model.state} where journeys reached {expected}")
        machine.remove_model(model)


# -- timing --------------------------------------------------------------------------------


def run_journeys(cj: CompiledJourney, lives: Sequence[Life]) -> float:
    gc.collect()
    start = time.perf_counter()
    for life in lives:
        contact = life.contact
        instance: Instance | None = None
        for event, status in life.steps:
            instance = decide(cj, instance, event, event.occurred_at, contact, message_status=status).instance
    return time.perf_counter() - start


CHUNK = 500  # instances whose models/Machines are built (untimed) before their triggers are timed


def chunks(lives: Sequence[Life]) -> Iterator[Sequence[Life]]:
    for i in range(0, len(lives), CHUNK):
        yield lives[i:i + CHUNK]


def fire(models: Sequence[Invoice], part: Sequence[Life]) -> float:
    start = time.perf_counter()
    for model, life in zip(models, part, strict=True):
        for trigger in life.triggers:
            getattr(model, trigger)()
    return time.perf_counter() - start


def run_machine_per_instance(spec: Spec, lives: Sequence[Life], machines: Sequence[tuple[Invoice, Machine]]) -> float:
    """Trigger time on a Machine per model. The Machines were built before (their construction is timed
    apart); each is reset to the start state and reused for the next chunk of instances, outside the timed loop.
    """
    gc.collect()
    triggers = 0.0
    for part in chunks(lives):
        models = []
        for (model, machine), life in zip(machines, part, strict=False):
            model.invoice_id = life.contact.id
            machine.set_state(NEW, model)
            models.append(model)
        triggers += fire(models, part)
    return triggers


def build_machines(spec: Spec, count: int) -> tuple[list[tuple[Invoice, Machine]], float]:
    """*count* models with a Machine each, as a user writes it; and the time it took per instance."""
    gc.collect()
    start = time.perf_counter()
    machines = []
    for k in range(count):
        model = Invoice(f"c-{k}")
        machines.append((model, new_machine(spec, model)))
    return machines, (time.perf_counter() - start) / count


def run_add_model(spec: Spec, lives: Sequence[Life]) -> tuple[float, float]:
    """(trigger time, add_model time): one shared Machine; models added outside the timed loop."""
    gc.collect()
    machine = new_machine(spec, None)
    triggers = adding = 0.0
    for part in chunks(lives):
        start = time.perf_counter()
        models = [Invoice(life.contact.id) for life in part]
        machine.add_model(models)
        adding += time.perf_counter() - start
        triggers += fire(models, part)
        machine.remove_model(models)
    return triggers, adding


@dataclass
class Rates:
    name: str
    samples: list[float] = field(default_factory=list)  # decisions per second, one per round

    @property
    def best(self) -> float:
        return max(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


# -- memory --------------------------------------------------------------------------------


def traced(make: Callable[[], list[Any]]) -> tuple[int, list[Any]]:
    """Bytes still allocated after *make* (its garbage collected): what its result keeps alive."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = make()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, kept


def deep_size(obj: Any, seen: set[int]) -> int:
    """Bytes of *obj* and what it references (dataclass fields, containers), each object once in *seen*."""
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, MappingProxyType):
        size += sum(deep_size(ref, seen) for ref in gc.get_referents(obj))  # the dict behind it
    elif isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, tuple | list):
        size += sum(deep_size(v, seen) for v in obj)
    elif hasattr(obj, "__dict__"):
        size += deep_size(vars(obj), seen)
    return size


def kib(n: float) -> str:
    return f"{n:,.0f} B ({n / 1024:,.1f} KiB)"


# -- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per contender (default 5)")
    parser.add_argument("--events", type=int, default=12_000, help="events (decisions) per round (default 12000)")
    parser.add_argument("--journeys", type=int, default=200, help="compiled copies for the memory figure")
    parser.add_argument("--instances", type=int, default=50_000,
                        help="instances for the memory figure (default 50000; 100000 gives the same figure, "
                             "in ~40 s: decide runs ~6x slower under tracemalloc)")
    parser.add_argument("--profile", action="store_true", help="also profile one journeys round (cProfile)")
    args = parser.parse_args()
    wall = time.perf_counter()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()} "
          f"({platform.python_implementation()}), {platform.platform()}")
    print(f"libraries: transitions {version('transitions')}, jinja2 {version('jinja2')}")

    journey = load_journey(str(JOURNEY))
    cj = compile_journey(journey)
    spec = machine_spec(cj)
    lives = build(cj, spec, args.events)
    verify(lives, spec)
    events = sum(len(life.steps) for life in lives)
    print(f"journey: {JOURNEY.relative_to(ROOT)}: {len(cj.states)} states (+ '{NEW}', '{EXITED}' for transitions), "
          f"{len(spec.transitions)} transition rules for transitions.Machine")
    print(f"traffic: {events} events per round = {len(lives)} instances of {len(SCENARIOS)} scenarios in turn; "
          f"{args.rounds} rounds; both sides checked to reach the same state after every event")
    outcomes = Counter(o for life in lives for o in life.outcomes)
    print("decisions per round: " + ", ".join(f"{n} {o}" for o, n in outcomes.most_common())
          + f"; {sum(isinstance(e.data.get('seq'), int) for life in lives for e, _ in life.steps)} of them timers")
    print("excluded from the rates: compile_journey, Event/Contact building, Machine construction / add_model "
          "(reported apart)")

    journeys = Rates("journeys decide()")
    per_instance = Rates("transitions, Machine per instance")
    shared = Rates("transitions, one Machine + add_model")
    with_construction = Rates("transitions, Machine per instance, construction included")
    construction_each: list[float] = []
    add_each: list[float] = []
    for _ in range(args.rounds):
        # Interleaved, so a slow moment of the machine hurts every contender alike.
        journeys.samples.append(events / run_journeys(cj, lives))
        machines, built = build_machines(spec, CHUNK)
        construction_each.append(built)
        fired = run_machine_per_instance(spec, lives, machines)
        del machines
        per_instance.samples.append(events / fired)
        with_construction.samples.append(events / (fired + built * len(lives)))
        fired, added = run_add_model(spec, lives)
        shared.samples.append(events / fired)
        add_each.append(added / len(lives))

    print()
    print(f"{'decisions/s':<58}{'best':>12}{'median':>12}")
    for rates in (journeys, per_instance, shared, with_construction):
        print(f"{rates.name:<58}{rates.best:>12,.0f}{rates.median:>12,.0f}")
    print(f"Machine construction: {statistics.median(construction_each) * 1e6:,.0f} us per instance (median); "
          f"add_model: {statistics.median(add_each) * 1e6:,.1f} us per instance")
    print(f"journeys decide(): {1e6 / journeys.median:,.1f} us per decision (median)")

    print()
    for other in (per_instance, shared):
        ratio = journeys.median / other.median
        verdict = "MET" if ratio >= TARGET else "NOT MET"
        print(f"ratio journeys / {other.name}: {ratio:.2f}x median, {journeys.best / other.best:.2f}x best "
              f"(target >= {TARGET}x: {verdict})")
    ratio = journeys.median / with_construction.median
    print(f"ratio journeys / {with_construction.name}: {ratio:.2f}x median (for information)")

    print()
    copies, _ = traced(lambda: [compile_journey(journey) for _ in range(args.journeys)])
    print(f"memory per compiled journey (tracemalloc, {args.journeys} copies of compile_journey): "
          f"{kib(copies / args.journeys)}")
    starts = [(Event(id=f"m-{k}", type="invoice.overdue", occurred_at=START + timedelta(seconds=k), source="billing",
                     contact_id=f"c-{k}", data=MappingProxyType({"invoice_id": f"INV-{k:06d}", "amount_due": 40})),
               Contact(id=f"c-{k}", phone=f"+49151{k:08d}")) for k in range(args.instances)]

    def start_all() -> list[Any]:
        return [decide(cj, None, e, e.occurred_at, c).instance for e, c in starts]

    held, instances = traced(start_all)
    print(f"memory per instance (tracemalloc, {args.instances:,} started instances kept from decide; "
          f"strings and datetimes shared with the event not counted): {kib(held / args.instances)}")
    seen: set[int] = set()
    sample = instances[: min(1000, len(instances))]
    own = sum(deep_size(i, seen) for i in sample) / len(sample)
    print(f"memory per instance, everything it references (sys.getsizeof, deep, {len(sample)} instances): "
          f"{kib(own)}")

    if args.profile:
        print()
        profiler = cProfile.Profile()
        profiler.enable()
        run_journeys(cj, lives)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)

    print(f"\ntotal run time: {time.perf_counter() - wall:.1f} s")


if __name__ == "__main__":
    main()
