"""Every provider against its published test vectors and real payload shapes (tests/ingest/vectors/).

Signatures: each official or SDK-made vector verifies, and the same request with one byte
changed, a signature of another secret, or a stale timestamp does not. Payloads: each
normalizes to the canonical events the vector file expects (type, ids, channel, contact,
our message id, reason and permanence of failures).
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from ingest.errors import IngestError, SignatureError
from ingest.optout import with_keywords
from ingest.providers import PROVIDERS, get
from journeys.config import Policies
from tests.ingest.vectors import PROVIDERS as NAMES
from tests.ingest.vectors import load, request, signed_at, source, twilio_vector_request


def vector_cases() -> list[Any]:
    cases = []
    for name in NAMES:
        for n, vector in enumerate(load(name)["signature_vectors"]):
            if vector["kind"] in ("shape_only", "behaviour"):
                continue
            cases.append(pytest.param(name, vector, id=f"{name}-{n}"))
    return cases


def payload_cases() -> list[Any]:
    return [pytest.param(name, p, id=f"{name}-{n}") for name in NAMES for n, p in enumerate(load(name)["payloads"])]


def vector_request(name: str, vector: dict[str, Any]) -> tuple[Any, Any]:
    if name == "twilio":
        return twilio_vector_request(vector), source(name, vector, vector["url"])
    if name == "mailgun":
        body = json.dumps({"signature": vector["signature_object"], "event-data": {"event": "delivered"}})
        return request(body, {}, "application/json"), source(name, vector)
    if name == "sendgrid":
        headers = dict(vector["headers"])
        headers.setdefault("X-Twilio-Email-Event-Webhook-Timestamp", vector["timestamp"])
        at = signed_at({"x-twilio-email-event-webhook-timestamp": vector["timestamp"]}, "", 1600112502) \
            if vector["timestamp"].isdigit() else None
        return request(vector["body"], headers, "application/json", at=at), source(name, vector)
    if name == "vonage":
        return request(vector.get("body", "{}"), vector["headers"], "application/json"), source(name, vector)
    return request(vector["body"], vector["headers"], vector.get("content_type", "application/json")), \
        source(name, vector)


@pytest.mark.parametrize(("name", "vector"), vector_cases())
def test_signature_vectors(name: str, vector: dict[str, Any]) -> None:
    raw, config = vector_request(name, vector)
    provider = get(name)
    if name == "vonage" and "payload_hash" not in vector.get("claims", {}):
        # Vonage's own SDK vector has no payload_hash: we require it, so the body is bound
        with pytest.raises(SignatureError, match=r"Vonage JWT|payload_hash"):
            provider.verify(raw, config)
        return
    if vector.get("expected_valid") is False:
        with pytest.raises(SignatureError):
            provider.verify(raw, config)
        return
    provider.verify(raw, config)
    # one byte more in the body, and it no longer verifies
    tampered = replace(raw, body=raw.body + b" ")
    if name != "mailgun":  # Mailgun signs timestamp+token, not the body (the body carries them)
        with pytest.raises(SignatureError):
            provider.verify(tampered, config)


@pytest.mark.parametrize(("name", "payload"), payload_cases())
def test_payloads_verify_and_normalize(name: str, payload: dict[str, Any]) -> None:
    url = payload.get("url", "")
    headers = payload["signed_with"].get("headers", {})
    raw = request(payload["body"], headers, payload["content_type"], url=url)
    config = source(name, payload, url)
    provider = PROVIDERS[name]
    provider.verify(raw, config)
    items = with_keywords(provider.normalize(raw, config), Policies())
    if "duplicate_of" in payload["expected"]:
        return  # the same events again: the store counts it as a duplicate (tests/ingest/test_endpoint.py)
    expected = [e for e in payload["expected"].get("events", []) if e.get("type")]
    got = [i for i in items if i.type]
    assert [i.type for i in got] == [e["type"] for e in expected], [i.type for i in got]
    for item, want in zip(got, expected, strict=True):
        if "provider_event_id" in want and want["provider_event_id"] and "derived_from" not in want:
            assert item.provider_event_id == want["provider_event_id"]
        if "channel" in want:
            # MMS is SMS among the canonical channels
            assert item.channel == {"mms": "sms"}.get(want["channel"], want["channel"])
        if want.get("status"):
            assert item.status == want["status"]
        if want.get("provider_message_id") and "derived_from" not in want:
            assert item.provider_message_id == want["provider_message_id"]
        if want.get("contact_phone"):
            assert item.contact is not None and item.contact.phone is not None
            assert item.contact.phone.lstrip("+").removeprefix("whatsapp:") == want["contact_phone"].lstrip("+")
        if want.get("contact_email"):
            assert item.contact is not None and item.contact.email == want["contact_email"]
        if want.get("contact_id"):
            assert item.contact is not None and item.contact.id == want["contact_id"]
        ours = (want.get("message_id_from_url") or want.get("message_id_from_custom_args")
                or want.get("message_id_from_user_variables") or want.get("message_id_from_client_ref"))
        if ours:
            assert item.message_id == ours
        if want.get("text") is not None:
            assert item.text == want["text"]
        for key in ("reason", "permanent", "url"):
            if isinstance(want.get("data"), dict) and key in want["data"]:
                assert item.data.get(key) == want["data"][key], (key, dict(item.data))


def test_every_provider_has_vectors() -> None:
    assert set(PROVIDERS) == set(NAMES)
    for name in NAMES:
        kinds = {v["kind"] for v in load(name)["signature_vectors"]}
        assert kinds & {"official", "sdk_generated", "generated"}, name


def test_stale_and_future_timestamps_are_refused() -> None:
    payload = load("events")["payloads"][0]
    raw = request(payload["body"], payload["signed_with"]["headers"], "application/json")
    config = source("events", payload)
    get("events").verify(raw, config)
    for shift in (timedelta(minutes=6), -timedelta(minutes=6)):
        with pytest.raises(SignatureError, match="stale or replayed"):
            get("events").verify(replace(raw, received_at=raw.received_at + shift), config)


def test_a_second_secret_is_accepted_for_rotation() -> None:
    payload = load("events")["payloads"][0]
    raw = request(payload["body"], payload["signed_with"]["headers"], "application/json")
    config = source("events", payload)
    other = "whsec_" + base64.b64encode(b"x" * 24).decode()
    get("events").verify(raw, replace(config, secrets=(other, config.secrets[0])))
    with pytest.raises(SignatureError):
        get("events").verify(raw, replace(config, secrets=(other,)))


@pytest.mark.parametrize("name", NAMES)
def test_missing_signature_is_refused(name: str) -> None:
    payload = load(name)["payloads"][0]
    body = payload["body"]
    if name == "mailgun":  # its signature travels in the body
        body = json.dumps({k: v for k, v in json.loads(body).items() if k != "signature"})
    raw = request(body, {}, payload["content_type"], url=payload.get("url", ""))
    with pytest.raises(SignatureError):
        get(name).verify(raw, source(name, payload, payload.get("url", "")))


@pytest.mark.parametrize(("name", "header"), [("sendgrid", "X-Twilio-Email-Event-Webhook-Signature"),
                                              ("telnyx", "telnyx-signature-ed25519")])
def test_a_signature_that_is_not_base64_is_refused(name: str, header: str) -> None:
    payload = load(name)["payloads"][0]
    headers = {k: v for k, v in payload["signed_with"]["headers"].items() if k.lower() != header.lower()}
    config = source(name, payload)
    with pytest.raises(SignatureError, match="does not match"):  # base64, but not the signature
        get(name).verify(request(payload["body"], headers | {header: "c2ln"}, payload["content_type"]), config)
    with pytest.raises(SignatureError, match="signature is not base64"):
        get(name).verify(request(payload["body"], headers | {header: "not base64!"}, payload["content_type"]),
                         config)


def test_whatsapp_handshake() -> None:
    [vector] = [v for v in load("whatsapp")["signature_vectors"] if v["kind"] == "behaviour"]
    config = source("whatsapp", {"secret": "x", "verify_token": vector["verify_token"]})
    provider = get("whatsapp")
    for case in vector["requests"]:
        raw = replace(request("", {}, "text/plain"), query=case["query"], method="GET")
        if case["expect_status"] == 200:
            assert provider.handshake(raw, config) == case["expect_body"].encode()  # type: ignore[attr-defined]
        else:
            with pytest.raises(SignatureError):
                provider.handshake(raw, config)  # type: ignore[attr-defined]


@pytest.mark.parametrize("body", [b"\xff\xfe not utf-8", b"{not json", b"[" * 40 + b"]" * 40, b"42"])
def test_malformed_bodies(body: bytes) -> None:
    raw = request(body, {}, "application/json")
    with pytest.raises(IngestError) as info:
        get("events").normalize(raw, source("events", {"secret": "whsec_eA=="}))
    assert info.value.status_code == 400


def test_wrong_content_type() -> None:
    raw = request(b"a=1", {}, "application/x-www-form-urlencoded")
    with pytest.raises(IngestError) as info:
        get("events").normalize(raw, source("events", {"secret": "whsec_eA=="}))
    assert info.value.status_code == 415


@pytest.mark.parametrize("payload", load("sendgrid")["payloads"], ids=lambda p: p["description"][:40])
def test_sendgrid_agrees_with_sendgrids_own_library(payload: dict[str, Any]) -> None:
    """SendGrid's Python library as the real verifier: it and we accept the same requests and
    refuse the same tampered ones."""
    from sendgrid.helpers.eventwebhook import EventWebhook

    headers = {k.lower(): v for k, v in payload["signed_with"]["headers"].items()}
    signature = headers["x-twilio-email-event-webhook-signature"]
    stamp = headers["x-twilio-email-event-webhook-timestamp"]
    hook = EventWebhook()
    key = hook.convert_public_key_to_ecdsa(payload["signed_with"]["public_key"])
    raw = request(payload["body"], payload["signed_with"]["headers"], payload["content_type"])
    config = source("sendgrid", payload)
    assert hook.verify_signature(payload["body"], signature, stamp, key)
    get("sendgrid").verify(raw, config)
    tampered = payload["body"] + " "
    assert not hook.verify_signature(tampered, signature, stamp, key)
    with pytest.raises(SignatureError):
        get("sendgrid").verify(replace(raw, body=tampered.encode()), config)
