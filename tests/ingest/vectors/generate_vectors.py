"""Regenerate and re-verify the webhook signature vectors and payload samples in this folder.

Not a test module and not run by CI. It needs the providers' SDKs, which are not project
dependencies:

    .venv/bin/pip install twilio sendgrid standardwebhooks "telnyx[webhooks]" cryptography pyjwt multidict
    .venv/bin/python tests/ingest/vectors/generate_vectors.py

Every expected signature written to the JSON files is checked here by an independent computation
(hashlib / hmac / cryptography) and, where the provider's official SDK can verify offline, by the
SDK too. Each check is recorded in the vector's "verified_by" list; the script stops if any fails.
Official vectors are copied verbatim from the place named in their "source"; the others are
marked "sdk_generated" or "generated" and are deterministic (fixed keys, fixed timestamps).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent


class Checks:
    """Collects named checks for one vector; every check must pass."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def run(self, vector: dict[str, Any], name: str, fn: Callable[[], bool], expect: bool = True) -> None:
        try:
            got = bool(fn())
        except Exception as exc:  # a raising verifier counts as "rejected"
            got = False
            name = f"{name} (raised {type(exc).__name__}: {exc})"
        ok = got == expect
        verdict = ("accepts" if expect else "rejects") + (": passed" if ok else ": FAILED")
        vector.setdefault("verified_by", []).append(f"{name} {verdict}")
        if not ok:
            self.failed.append(f"{vector.get('description')}: {name}")


CHECKS = Checks()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def write(name: str, doc: dict[str, Any]) -> None:
    path = HERE / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(HERE.parent.parent.parent)}")


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# Twilio
# --------------------------------------------------------------------------------------------


def twilio_indep(secret: str, url: str, params: list[tuple[str, str]], digest: Any = hashlib.sha1) -> str:
    """Twilio's documented scheme: URL + each POST param name+value, sorted by name (then value)."""
    s = url
    for key in sorted({k for k, _ in params}):
        for value in sorted({v for k, v in params if k == key}):
            s += key + value
    return b64(hmac.new(secret.encode(), s.encode(), digest).digest())


def twilio() -> None:
    from multidict import MultiDict
    from twilio.request_validator import RequestValidator

    py_src = "twilio/twilio-python tests/unit/test_request_validator.py (commit 306691e793f4)"
    node_src = "twilio/twilio-node spec/validation.spec.js (commit 45d3d65a4ea8)"
    token = "12345"
    uri = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
        "Caller": "+14158675309",
    }
    plist = list(params.items())
    body = '{"property": "value", "boolean": true}'
    body_hash = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
    v = RequestValidator(token)
    vectors: list[dict[str, Any]] = []

    def form_vector(
        desc: str,
        src: str,
        url: str,
        plist: list[tuple[str, str]],
        sig: str,
        signed_url: str,
        sdk_params: Any = None,
        sdk_ok: bool = True,
        note: str | None = None,
    ) -> None:
        vec: dict[str, Any] = {
            "description": desc,
            "source": src,
            "kind": "official",
            "secret": token,
            "url": url,
            "params": [list(p) for p in plist],
            "content_type": "application/x-www-form-urlencoded",
            "headers": {"X-Twilio-Signature": sig},
            "expected_signature": sig,
            "string_that_was_signed_url_part": signed_url,
        }
        if note:
            vec["note"] = note
        CHECKS.run(
            vec,
            f"independent HMAC-SHA1 over {signed_url!r} + sorted params",
            lambda: twilio_indep(token, signed_url, plist) == sig,
        )
        CHECKS.run(
            vec,
            f"twilio {version('twilio')} RequestValidator.validate(url, params, signature)",
            lambda: v.validate(url, sdk_params if sdk_params is not None else dict(plist), sig),
            sdk_ok,
        )
        vectors.append(vec)

    form_vector("form POST, the SDK's reference vector", py_src, uri, plist, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", uri)
    form_vector(
        "https URL received with an explicit non-default port :1234; Twilio's signature is over the URL "
        "without the port, so validators must also try the URL with the port removed",
        py_src,
        uri.replace(".com", ".com:1234"),
        plist,
        "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
        uri,
    )
    form_vector(
        "http URL with port :1234: signed over the URL exactly as configured, port kept",
        py_src,
        uri.replace(".com", ".com:1234").replace("https", "http"),
        plist,
        "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
        uri.replace(".com", ".com:1234").replace("https", "http"),
    )
    form_vector(
        "https URL without a port, signature computed by Twilio over the URL WITH :443 added; validators "
        "must try both forms",
        py_src,
        uri,
        plist,
        "kvajT1Ptam85bY51eRf/AJRuM3w=",
        uri.replace(".com", ".com:443"),
    )
    form_vector(
        "http URL without a port, signature over the URL with :80 added",
        py_src,
        uri.replace("https", "http"),
        plist,
        "0ZXoZLH/DfblKGATFgpif+LLRf4=",
        uri.replace("https", "http").replace(".com", ".com:80"),
    )
    dup = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234"), ("Digits", "1234")]
    form_vector(
        "repeated form keys: names sorted, each name's values sorted AND de-duplicated (the SDKs drop the "
        "repeated Digits=1234)",
        py_src + " and " + node_src,
        uri,
        dup,
        "IK+Dwps556ElfBT0I3Rgjkr1wJU=",
        uri,
        sdk_params=MultiDict(dup),
    )
    vectors[-1]["verified_by"].append(
        "without de-duplication the HMAC differs ("
        + b64(
            hmac.new(
                token.encode(), (uri + "Digits1234Digits1234Digits5678SidCA123SidAccountAC123").encode(), hashlib.sha1
            ).digest()
        )
        + "): de-duplication is required to match the SDK vector"
    )
    arr = [("MessagingBinding.Address", "+1325xxxxxxx"), ("MessagingBinding.Address", "+1415xxxxxxx")]
    form_vector(
        "array parameter (two values for one key), order-independent",
        node_src,
        uri,
        arr,
        "83O6e2vORAoJHUNzJjDWN1jz+BA=",
        uri,
        sdk_params=MultiDict(arr),
    )
    form_vector(
        "query string with a character that URL parsers re-encode: Twilio signed the URL with ' as %27 "
        "(WHATWG normalisation). twilio-node tries the raw and re-encoded forms; twilio-python only tries "
        "the string it is given, so it rejects the raw form",
        node_src,
        uri + "&Body=It's+amazing",
        plist,
        "TfZzewPq8wqrGlMfyAud8+/IvJ0=",
        uri + "&Body=It%27s+amazing",
        sdk_ok=False,
    )
    form_vector(
        "same, validator given the %27 form",
        node_src,
        uri + "&Body=It%27s+amazing",
        plist,
        "TfZzewPq8wqrGlMfyAud8+/IvJ0=",
        uri + "&Body=It%27s+amazing",
    )
    form_vector(
        "URL with user:pass@ credentials (kept in the signed string)",
        node_src,
        "https://user:pass@mycompany.com/myapp.php?foo=1&bar=2",
        plist,
        "CukzLTc1tT5dXEDIHm/tKBanW10=",
        "https://user:pass@mycompany.com/myapp.php?foo=1&bar=2",
    )
    form_vector(
        "URL with credentials, signed with :443 added",
        node_src,
        "https://user:pass@mycompany.com/myapp.php?foo=1&bar=2",
        plist,
        "ZQFR1PTIZXF2MXB8ZnKCvnnA+rI=",
        "https://user:pass@mycompany.com:443/myapp.php?foo=1&bar=2",
    )
    form_vector(
        "URL with only a user name",
        node_src,
        "https://user@mycompany.com/myapp.php?foo=1&bar=2",
        plist,
        "2YRLlVAflCqxaNicjMpJcSTgzSs=",
        "https://user@mycompany.com/myapp.php?foo=1&bar=2",
    )

    def json_vector(desc: str, src: str, url: str, body: str, sig: str, signed_url: str, bhash: str) -> None:
        vec: dict[str, Any] = {
            "description": desc,
            "source": src,
            "kind": "official",
            "secret": token,
            "url": url,
            "body": body,
            "content_type": "application/json",
            "headers": {"X-Twilio-Signature": sig},
            "expected_signature": sig,
            "body_sha256_hex": bhash,
            "string_that_was_signed_url_part": signed_url,
        }
        CHECKS.run(
            vec,
            "independent sha256(body).hexdigest() == bodySHA256 query value",
            lambda: hashlib.sha256(body.encode()).hexdigest() == bhash,
        )
        CHECKS.run(
            vec,
            f"independent HMAC-SHA1 over {signed_url!r} alone (no params for JSON bodies)",
            lambda: twilio_indep(token, signed_url, []) == sig,
        )
        CHECKS.run(
            vec,
            f"twilio {version('twilio')} RequestValidator.validate(url, raw_body_str, signature)",
            lambda: v.validate(url, body, sig),
        )
        CHECKS.run(
            vec,
            "twilio RequestValidator.validate rejects a tampered body",
            lambda: v.validate(url, body + " ", sig),
            expect=False,
        )
        vectors.append(vec)

    json_vector(
        "JSON body: bodySHA256=<hex sha256 of the raw body> is appended to the URL and the signature covers "
        "the full URL only",
        py_src + " and " + node_src,
        uri + "&bodySHA256=" + body_hash,
        body,
        "a9nBmqA0ju/hNViExpshrM61xv4=",
        uri + "&bodySHA256=" + body_hash,
        body_hash,
    )
    empty_hash = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    json_vector(
        "JSON body '{}': this SDK vector only matches the :443 form of the URL",
        node_src,
        uri + "&bodySHA256=" + empty_hash,
        "{}",
        "Ldidvp12m26NI7eqEvxnEpkd9Hc=",
        uri.replace(".com", ".com:443") + "&bodySHA256=" + empty_hash,
        empty_hash,
    )
    json_vector(
        "JSON body with bodySHA256 as the only query parameter",
        node_src,
        "https://mycompany.com/myapp.php?bodySHA256=" + body_hash,
        body,
        "y77kIzt2vzLz71DgmJGsen2scGs=",
        "https://mycompany.com/myapp.php?bodySHA256=" + body_hash,
        body_hash,
    )

    # SDK-generated: Webhook Rules / SharedKey signing with HMAC-SHA256 (twilio>=9.13 supports it).
    shared = "journeys-test-shared-key-secret"
    sig256 = v.__class__(shared).compute_signature(uri, params, algorithm="HMAC_SHA256")
    vec = {
        "description": "HMAC-SHA256 variant: when a Twilio Webhooks Rule matches, Twilio signs with the rule's "
        "SharedKey secret and the header X-Twilio-Webhooks-Signature-Settings names the algorithm. "
        "No official vector found; generated with the SDK",
        "source": "sdk_generated with twilio " + version("twilio") + " RequestValidator.compute_signature(..., "
        "algorithm='HMAC_SHA256'); header described in twilio-node examples/WebhookSignatureValidation.md",
        "kind": "sdk_generated",
        "secret": shared,
        "url": uri,
        "params": [list(p) for p in plist],
        "content_type": "application/x-www-form-urlencoded",
        "headers": {
            "X-Twilio-Signature": sig256,
            "X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_TEST,algorithm=HMAC_SHA256",
        },
        "expected_signature": sig256,
    }
    CHECKS.run(
        vec,
        "independent HMAC-SHA256 over URL + sorted params",
        lambda: twilio_indep(shared, uri, plist, hashlib.sha256) == sig256,
    )
    CHECKS.run(
        vec,
        "twilio RequestValidator(shared).validate(..., algorithm='HMAC_SHA256')",
        lambda: RequestValidator(shared).validate(uri, params, sig256, algorithm="HMAC_SHA256"),
    )
    vectors.append(vec)

    # Payloads. Form bodies composed from Twilio's documented webhook parameters; signed with the SDK.
    public_url = "https://hooks.example.com/ingest/twilio"
    acct = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    svc = "MGbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
    ours = "+15005550006"
    them = "+4915112345678"
    payloads: list[dict[str, Any]] = []

    def status(sid: str, st: str, extra: list[tuple[str, str]], frm: str = ours, to: str = them) -> list:
        base = [
            ("SmsSid", sid),
            ("SmsStatus", st),
            ("MessageStatus", st),
            ("To", to),
            ("MessagingServiceSid", svc),
            ("MessageSid", sid),
            ("AccountSid", acct),
            ("From", frm),
            ("ApiVersion", "2010-04-01"),
        ]
        return base + extra

    def add(desc: str, url: str, plist: list[tuple[str, str]], expected: dict[str, Any], src: str) -> None:
        raw = urlencode(plist)
        sig = RequestValidator(token).compute_signature(url, dict(plist))
        p: dict[str, Any] = {
            "description": desc,
            "source": src,
            "content_type": "application/x-www-form-urlencoded",
            "method": "POST",
            "url": url,
            "body": raw,
            "signed_with": {
                "secret": token,
                "headers": {"X-Twilio-Signature": sig},
                "kind": "sdk_generated (twilio RequestValidator.compute_signature)",
            },
            "expected": expected,
        }
        CHECKS.run(p, "independent HMAC-SHA1", lambda: twilio_indep(token, url, plist) == sig)
        CHECKS.run(
            p, "twilio RequestValidator.validate", lambda: RequestValidator(token).validate(url, dict(plist), sig)
        )
        payloads.append(p)

    doc_status = (
        "composed from the status callback parameters documented at "
        "https://www.twilio.com/docs/messaging/guides/outbound-message-status-in-status-callbacks and "
        "https://www.twilio.com/docs/usage/webhooks/messaging-webhooks (SmsSid, SmsStatus, MessageStatus, "
        "To, From, MessageSid, AccountSid, MessagingServiceSid, ApiVersion, ErrorCode, RawDlrDoneDate)"
    )
    doc_inbound = (
        "composed from the incoming-message parameters documented at "
        "https://www.twilio.com/docs/messaging/guides/webhook-request (MessageSid, SmsSid, SmsMessageSid, "
        "AccountSid, MessagingServiceSid, From, To, Body, NumMedia, NumSegments, From*/To* geo fields, "
        "ApiVersion) plus OptOutType, which Twilio adds when a Messaging Service's Advanced Opt-Out matches a keyword "
        "(https://www.twilio.com/docs/messaging/tutorials/advanced-opt-out; the parameter name is from memory "
        "of that page and was not re-confirmed in the excerpts available here: key opt-outs on Body too)"
    )
    sid = "SM0123456789abcdef0123456789abcdef"
    cb = public_url + "?message_id=m-0001"

    def st_exp(t: str | None, st: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        e: dict[str, Any] = {
            "events": [
                {
                    "type": t,
                    "channel": "sms",
                    "status": st,
                    "provider_message_id": sid,
                    "provider_event_id": f"{sid}:{st}",
                    "message_id_from_url": "m-0001",
                    "contact_phone": them,
                }
            ]
        }
        if extra:
            e["events"][0].update(extra)
        return e

    add(
        "status callback: queued",
        cb,
        status(sid, "queued", []),
        {
            **st_exp(None, "queued"),
            "note": "SPEC section 5 has no 'queued' type: store in the log, no journey event "
            "(decision for the ingest owner)",
        },
        doc_status,
    )
    add("status callback: sent", cb, status(sid, "sent", []), st_exp("message.sent", "sent"), doc_status)
    add(
        "status callback: delivered (with RawDlrDoneDate YYMMDDhhmm, no timezone)",
        cb,
        status(sid, "delivered", [("RawDlrDoneDate", "2601051002")]),
        st_exp("message.delivered", "delivered"),
        doc_status + "; RawDlrDoneDate per https://twilio.com/en-us/changelog/"
        "addition-of-rawdlrdonedate-to-delivered-and-undelivered-status-webhooks",
    )
    add(
        "status callback: undelivered, ErrorCode 30003 (unreachable handset)",
        cb,
        status(sid, "undelivered", [("ErrorCode", "30003"), ("RawDlrDoneDate", "2601051003")]),
        st_exp("message.failed", "undelivered", {"data": {"reason": "30003", "permanent": False}}),
        doc_status,
    )
    add(
        "status callback: undelivered, ErrorCode 30006 (landline or unreachable carrier)",
        cb,
        status(sid, "undelivered", [("ErrorCode", "30006")]),
        st_exp("message.failed", "undelivered", {"data": {"reason": "30006", "permanent": True}}),
        doc_status,
    )
    add(
        "status callback: failed, ErrorCode 21610 (recipient replied STOP earlier)",
        cb,
        status(sid, "failed", [("ErrorCode", "21610")]),
        st_exp(
            "message.failed",
            "failed",
            {
                "data": {"reason": "21610", "permanent": True},
                "note": "21610 also implies the contact is opted out at Twilio",
            },
        ),
        doc_status,
    )
    wa_sid = "SM11111111111111111111111111111111"
    add(
        "status callback: read (WhatsApp through Twilio, addresses prefixed whatsapp:)",
        public_url,
        status(wa_sid, "read", [], frm="whatsapp:" + ours, to="whatsapp:" + them),
        {
            "events": [
                {
                    "type": "message.read",
                    "channel": "whatsapp",
                    "status": "read",
                    "provider_message_id": wa_sid,
                    "provider_event_id": f"{wa_sid}:read",
                    "contact_phone": them,
                    "note": "strip the 'whatsapp:' prefix before E.164 lookup",
                }
            ]
        },
        doc_status,
    )

    def inbound(msid: str, text: str, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [
            ("ToCountry", "US"),
            ("ToState", "CA"),
            ("SmsMessageSid", msid),
            ("NumMedia", "0"),
            ("ToCity", ""),
            ("FromZip", ""),
            ("SmsSid", msid),
            ("FromState", ""),
            ("SmsStatus", "received"),
            ("FromCity", ""),
            ("Body", text),
            ("FromCountry", "DE"),
            ("To", ours),
            ("MessagingServiceSid", svc),
            ("ToZip", ""),
            ("NumSegments", "1"),
            ("MessageSid", msid),
            ("AccountSid", acct),
            ("From", them),
            ("ApiVersion", "2010-04-01"),
            *extra,
        ]

    in1, in2, in3 = (
        "SM22222222222222222222222222222222",
        "SM33333333333333333333333333333333",
        "SM44444444444444444444444444444444",
    )
    add(
        "inbound SMS (reply 'Help please, I paid already')",
        public_url,
        inbound(in1, "Help please, I paid already", []),
        {
            "response": "empty TwiML <Response/> (SPEC section 7)",
            "events": [
                {
                    "type": "message.received",
                    "channel": "sms",
                    "status": "received",
                    "text": "Help please, I paid already",
                    "provider_message_id": in1,
                    "provider_event_id": f"{in1}:received",
                    "contact_phone": them,
                }
            ],
        },
        doc_inbound,
    )
    add(
        "inbound SMS 'STOP' with OptOutType=STOP (Advanced Opt-Out)",
        public_url,
        inbound(in2, "STOP", [("OptOutType", "STOP")]),
        {
            "response": "empty TwiML <Response/>",
            "events": [
                {
                    "type": "message.received",
                    "channel": "sms",
                    "text": "STOP",
                    "provider_message_id": in2,
                    "provider_event_id": f"{in2}:received",
                    "contact_phone": them,
                },
                {"type": "contact.opted_out", "derived_from": "message.received", "contact_phone": them},
            ],
        },
        doc_inbound,
    )
    add(
        "inbound SMS 'start' (lower case) with OptOutType=START",
        public_url,
        inbound(in3, "start", [("OptOutType", "START")]),
        {
            "response": "empty TwiML <Response/>",
            "events": [
                {
                    "type": "message.received",
                    "channel": "sms",
                    "text": "start",
                    "provider_message_id": in3,
                    "provider_event_id": f"{in3}:received",
                    "contact_phone": them,
                },
                {"type": "contact.opted_in", "derived_from": "message.received", "contact_phone": them},
            ],
        },
        doc_inbound,
    )

    # JSON variant: Event Streams webhook sinks post a JSON array of CloudEvents, signed with bodySHA256.
    es_body = compact(
        [
            {
                "specversion": "1.0",
                "type": "com.twilio.eventstreams.test-event",
                "source": "Sink",
                "id": "AC11111111111111111111111111111111",
                "dataschema": "https://events-schemas.twilio.com/EventStreams.TestSink/1.json",
                "datacontenttype": "application/json",
                "time": "2026-06-10T06:02:54.377Z",
                "data": {"test_id": "cae2f9e2-c277-4612-8ad3-93c1a7a3ef88"},
            }
        ]
    )
    es_url = public_url + "?bodySHA256=" + hashlib.sha256(es_body.encode()).hexdigest()
    es_sig = RequestValidator(token).compute_signature(es_url, {})
    p = {
        "description": "JSON variant: Event Streams webhook sink test event (array of CloudEvents). Programmable "
        "Messaging callbacks themselves are form-encoded; JSON bodies arrive with ?bodySHA256=",
        "source": "body from the Twilio blog 'How to Validate Twilio Event Streams Webhooks in Rust' (2026-06-24), "
        "minified; signature sdk_generated",
        "content_type": "application/json",
        "method": "POST",
        "url": es_url,
        "body": es_body,
        "signed_with": {"secret": token, "headers": {"X-Twilio-Signature": es_sig}, "kind": "sdk_generated"},
        "expected": {
            "events": [],
            "note": "not a messaging status; a 'twilio' source would store or reject it (ingest owner's choice)",
        },
    }
    CHECKS.run(p, "independent HMAC-SHA1 over URL incl. bodySHA256", lambda: twilio_indep(token, es_url, []) == es_sig)
    CHECKS.run(
        p,
        "twilio RequestValidator.validate(url, raw_body, sig)",
        lambda: RequestValidator(token).validate(es_url, es_body, es_sig),
    )
    payloads.append(p)

    write(
        "twilio",
        {
            "provider": "twilio",
            "source": {
                "official_vectors": [py_src, node_src],
                "algorithm": "https://www.twilio.com/docs/usage/webhooks/webhooks-security: HMAC-SHA1 (base64) "
                "keyed by "
                "the Auth Token over the full URL followed by every POST parameter name+value sorted by name",
                "payloads": [doc_status, doc_inbound],
            },
            "notes": [
                "Validators must try the URL both with and without the default port (:443/:80) and with an explicit "
                "port removed: both twilio-python and twilio-node do, and official vectors exist for each form.",
                "Repeated form keys: values sorted and de-duplicated (SDK behaviour, not stated in Twilio's prose).",
                "JSON bodies: the signature covers only the URL (which contains bodySHA256); the body is checked by "
                "comparing sha256 hex with the bodySHA256 query value.",
                "twilio>=9.13 (installed " + version("twilio") + ") supports HMAC_SHA256 signing via Webhooks Rules; "
                "detect it from the X-Twilio-Webhooks-Signature-Settings header.",
            ],
            "signature_vectors": vectors,
            "payloads": payloads,
        },
    )


# --------------------------------------------------------------------------------------------
# SendGrid
# --------------------------------------------------------------------------------------------


def sendgrid() -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from sendgrid.helpers.eventwebhook import EventWebhook

    src = "sendgrid/sendgrid-python test/unit/test_eventwebhook.py (commit 76788e70a76b)"
    pk = (
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaIN"
        "XvVpiglSI8eNEc6wEA3F+g=="
    )
    sig = "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
    ts = "1600112502"
    payload = (
        json.dumps(
            [
                {
                    "email": "hello@world.com",
                    "event": "dropped",
                    "reason": "Bounced Address",
                    "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
                    "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
                    "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
                    "timestamp": 1600112492,
                }
            ],
            sort_keys=True,
            separators=(",", ":"),
        )
        + "\r\n"
    )

    def indep(pub_b64: str, signature: str, timestamp: str, body: str) -> bool:
        key = serialization.load_der_public_key(base64.b64decode(pub_b64))
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        try:
            key.verify(base64.b64decode(signature), (timestamp + body).encode(), ec.ECDSA(hashes.SHA256()))
            return True
        except InvalidSignature:
            return False

    def sdk(pub_b64: str, signature: str, timestamp: str, body: str) -> bool:
        return bool(EventWebhook(pub_b64).verify_signature(body, signature, timestamp))

    r, s = decode_dss_signature(base64.b64decode(sig))
    vectors: list[dict[str, Any]] = []
    vec: dict[str, Any] = {
        "description": "signed Event Webhook, the SDK's reference vector (payload ends with \\r\\n, which is signed)",
        "source": src,
        "kind": "official",
        "public_key": pk,
        "timestamp": ts,
        "body": payload,
        "content_type": "application/json",
        "headers": {"X-Twilio-Email-Event-Webhook-Signature": sig, "X-Twilio-Email-Event-Webhook-Timestamp": ts},
        "expected_signature": sig,
        "signature_encoding": f"base64 of an ASN.1 DER ECDSA-Sig-Value SEQUENCE{{r, s}} (r={r:x}, s={s:x}); "
        "not raw r||s",
    }
    vsg = f"sendgrid {version('sendgrid')} EventWebhook.verify_signature"
    CHECKS.run(
        vec,
        "independent: cryptography load_der_public_key(b64decode(key)), ECDSA P-256/SHA-256 over timestamp+body",
        lambda: indep(pk, sig, ts, payload),
    )
    CHECKS.run(vec, vsg, lambda: sdk(pk, sig, ts, payload))
    CHECKS.run(
        vec,
        "independent: same body without the trailing \\r\\n",
        lambda: indep(pk, sig, ts, payload[:-2]),
        expect=False,
    )
    vectors.append(vec)
    bad_key = (
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj"
        "+y7GjUuFDb/R1NGe1OPzpA=="
    )
    bad_sig = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0="
    for desc, k, sg, t, body in [
        ("negative: other public key", bad_key, sig, ts, payload),
        ("negative: payload 'payload'", pk, sig, ts, "payload"),
        ("negative: other signature", pk, bad_sig, ts, payload),
        ("negative: timestamp 'timestamp'", pk, sig, "timestamp", payload),
    ]:
        nv: dict[str, Any] = {
            "description": desc,
            "source": src,
            "kind": "official",
            "public_key": k,
            "timestamp": t,
            "body": body,
            "headers": {"X-Twilio-Email-Event-Webhook-Signature": sg, "X-Twilio-Email-Event-Webhook-Timestamp": t},
            "expected_valid": False,
        }
        CHECKS.run(
            nv,
            "independent cryptography verify",
            lambda k=k, sg=sg, t=t, body=body: indep(k, sg, t, body),
            expect=False,
        )
        CHECKS.run(nv, vsg, lambda k=k, sg=sg, t=t, body=body: sdk(k, sg, t, body), expect=False)
        vectors.append(nv)

    # Generated key for payload samples (deterministic private scalar, RFC 6979 signatures).
    priv = ec.derive_private_key(
        int.from_bytes(hashlib.sha256(b"journeys sendgrid test key").digest(), "big"), ec.SECP256R1()
    )
    gen_pk = b64(
        priv.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    gen_priv_pem = priv.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()

    docs = (
        "sendgrid/docs content/docs/for-developers/tracking-events/event.md (commit c3eb3fef6132, the "
        "'Example webhook response' of each event), one event per request, minified, + \\r\\n"
    )
    payloads: list[dict[str, Any]] = []
    base = {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "category": "cat facts",
    }
    mid = "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0"

    def add(
        desc: str,
        events: list[dict[str, Any]],
        expected: list[dict[str, Any]],
        source: str = docs,
        gen_ts: str = "1513299600",
    ) -> None:
        body = compact(events) + "\r\n"
        # RFC 6979 deterministic ECDSA so that re-running this script gives the same files
        signature = b64(priv.sign((gen_ts + body).encode(), ec.ECDSA(hashes.SHA256(), deterministic_signing=True)))
        p: dict[str, Any] = {
            "description": desc,
            "source": source,
            "content_type": "application/json",
            "method": "POST",
            "body": body,
            "signed_with": {
                "public_key": gen_pk,
                "kind": "generated (cryptography, test key below)",
                "headers": {
                    "X-Twilio-Email-Event-Webhook-Signature": signature,
                    "X-Twilio-Email-Event-Webhook-Timestamp": gen_ts,
                },
            },
            "expected": {"events": expected},
        }
        CHECKS.run(p, "independent cryptography verify", lambda: indep(gen_pk, signature, gen_ts, body))
        CHECKS.run(p, vsg, lambda: sdk(gen_pk, signature, gen_ts, body))
        payloads.append(p)

    def ev(name: str, eid: str, **extra: Any) -> dict[str, Any]:
        return {**base, "event": name, "sg_event_id": eid, "sg_message_id": mid, **extra}

    def ex(t: str, eid: str, **extra: Any) -> dict[str, Any]:
        return {
            "type": t,
            "channel": "email",
            "provider_event_id": eid,
            "provider_message_id": mid,
            "x_message_id": "14c5d75ce93.dfd.64b469",
            "contact_email": "example@test.com",
            "occurred_at": "2017-12-15T00:59:29Z",
            **extra,
        }

    processed = {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "pool": {"name": "new_MY_test", "id": 210},
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "processed",
        "category": "cat facts",
        "sg_event_id": "rbtnWrG1DVDGGGFHFyun0A==",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000",
    }
    add(
        "processed",
        [processed],
        [
            {
                **ex("message.sent", "rbtnWrG1DVDGGGFHFyun0A=="),
                "provider_message_id": processed["sg_message_id"],
                "note": "processed = accepted by SendGrid; proposed mapping message.sent",
            }
        ],
    )
    add(
        "delivered",
        [ev("delivered", "rWVYmVk90MjZJ9iohOBa3w==", response="250 OK")],
        [ex("message.delivered", "rWVYmVk90MjZJ9iohOBa3w==")],
    )
    add(
        "deferred",
        [ev("deferred", "t7LEShmowp86DTdUW8M-GQ==", response="400 try again later", attempt="5")],
        [ex("message.deferred", "t7LEShmowp86DTdUW8M-GQ==", data={"reason": "400 try again later"})],
    )
    add(
        "bounce (type bounce: permanent)",
        [ev("bounce", "6g4ZI7SA-xmRDv57GoPIPw==", reason="500 unknown recipient", status="5.0.0", type="bounce")],
        [ex("message.failed", "6g4ZI7SA-xmRDv57GoPIPw==", data={"reason": "500 unknown recipient", "permanent": True})],
    )
    add(
        "bounce with type blocked (temporary per SendGrid's description). The docs reuse the bounce example's "
        "sg_event_id; changed here to keep ids unique",
        [
            ev(
                "bounce",
                "6g4ZI7SA-xmRDv57GoPIPw==-blocked",
                reason="500 unknown recipient",
                status="5.0.0",
                type="blocked",
            )
        ],
        [
            ex(
                "message.failed",
                "6g4ZI7SA-xmRDv57GoPIPw==-blocked",
                data={"reason": "500 unknown recipient", "permanent": False},
            )
        ],
    )
    add(
        "dropped",
        [ev("dropped", "zmzJhfJgAfUSOW80yEbPyw==", reason="Bounced Address", status="5.0.0")],
        [ex("message.failed", "zmzJhfJgAfUSOW80yEbPyw==", data={"reason": "Bounced Address", "permanent": True})],
    )
    ua = "Mozilla/4.0 (compatible; MSIE 6.1; Windows XP; .NET CLR 1.1.4322; .NET CLR 2.0.50727)"
    add(
        "open",
        [ev("open", "FOTFFO0ecsBE-zxFXfs6WA==", useragent=ua, ip="255.255.255.255")],
        [ex("message.opened", "FOTFFO0ecsBE-zxFXfs6WA==")],
    )
    add(
        "click",
        [ev("click", "kCAi1KttyQdEKHhdC-nuEA==", useragent=ua, ip="255.255.255.255", url="http://www.sendgrid.com/")],
        [ex("message.clicked", "kCAi1KttyQdEKHhdC-nuEA==", data={"url": "http://www.sendgrid.com/"})],
    )
    add(
        "spamreport",
        [ev("spamreport", "37nvH5QBz858KGVYCM4uOA==")],
        [ex("contact.complained", "37nvH5QBz858KGVYCM4uOA==", note="updates the suppression list (SPEC 5)")],
    )
    add(
        "unsubscribe",
        [ev("unsubscribe", "zz_BjPgU_5pS-J8vlfB1sg==")],
        [ex("contact.opted_out", "zz_BjPgU_5pS-J8vlfB1sg==")],
    )
    add(
        "group_unsubscribe",
        [
            ev(
                "group_unsubscribe",
                "ahSCB7xYcXFb-hEaawsPRw==",
                useragent=ua,
                ip="255.255.255.255",
                url="http://www.sendgrid.com/",
                asm_group_id=10,
            )
        ],
        [
            ex(
                "contact.opted_out",
                "ahSCB7xYcXFb-hEaawsPRw==",
                data={"asm_group_id": 10},
                note="unsubscribe from one suppression group only: whether it suppresses the whole email channel "
                "is a policy decision",
            )
        ],
    )
    batch = [
        processed,
        ev("delivered", "rWVYmVk90MjZJ9iohOBa3w==", response="250 OK"),
        ev("open", "FOTFFO0ecsBE-zxFXfs6WA==", useragent=ua, ip="255.255.255.255"),
    ]
    add(
        "batch: three events in one POST (SendGrid batches events; each has its own sg_event_id)",
        batch,
        [
            {**ex("message.sent", "rbtnWrG1DVDGGGFHFyun0A=="), "provider_message_id": processed["sg_message_id"]},
            ex("message.delivered", "rWVYmVk90MjZJ9iohOBa3w=="),
            ex("message.opened", "FOTFFO0ecsBE-zxFXfs6WA=="),
        ],
    )
    add(
        "custom_args: v3 Mail Send personalizations[].custom_args come back as TOP-LEVEL keys of each event "
        "(not nested); here our message id",
        [ev("delivered", "c3VzdG9tLWFyZ3MtZXhhbXBsZQ==", response="250 OK", journeys_message_id="m-0002")],
        [ex("message.delivered", "c3VzdG9tLWFyZ3MtZXhhbXBsZQ==", message_id_from_custom_args="m-0002")],
        source=docs + "; flattening per the same page's 'Custom Arguments' section; the custom key and the "
        "sg_event_id are ours",
    )

    write(
        "sendgrid",
        {
            "provider": "sendgrid",
            "source": {
                "official_vectors": [src],
                "payloads": docs,
                "algorithm": "sendgrid/docs content/docs/for-developers/tracking-events/"
                "getting-started-event-webhook-security-features.md: ECDSA (P-256) over "
                "SHA-256(timestamp header + raw body bytes); signature base64 of ASN.1 DER",
            },
            "notes": [
                "The public key as SendGrid shows it is base64 of a DER SubjectPublicKeyInfo; the SDK wraps it in "
                "PEM armour, cryptography.load_der_public_key(b64decode(key)) works directly.",
                "Verify over the exact raw body bytes: SendGrid's body ends with \\r\\n and it is part of the signed "
                "data.",
                "No timestamp tolerance in the SDK; SendGrid documents none. Any replay window is ours to choose.",
                "sg_message_id = <X-Message-Id returned by Mail Send>.<filter/recvd suffix>; old-style ids contain "
                "dots themselves (14c5d75ce93.dfd.64b469), so match by prefix, not by splitting at the first dot.",
                "The sg_event_id of 'blocked' in the docs duplicates the 'bounce' one; dedupe keys from docs are not "
                "guaranteed unique across examples.",
            ],
            "generated_test_key": {
                "public_key": gen_pk,
                "private_key_pem": gen_priv_pem,
                "derivation": "ec.derive_private_key(int(sha256(b'journeys sendgrid test key')), SECP256R1)",
            },
            "signature_vectors": vectors,
            "payloads": payloads,
        },
    )


# --------------------------------------------------------------------------------------------
# Mailgun
# --------------------------------------------------------------------------------------------


def mailgun() -> None:
    src = "mailgun/mailgun-php tests/Api/WebhookTest.php (commit 5024827b4ba1)"
    key = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"

    def indep(k: str, ts: str, tok: str) -> str:
        return hmac.new(k.encode(), (ts + tok).encode(), hashlib.sha256).hexdigest()

    vectors: list[dict[str, Any]] = []
    good = {
        "timestamp": "1403645220",
        "token": "5egbgr1vjgqxtrnp65xfznchgdccwh5d6i09vijqi3whgowmn6",
        "signature": "9cfc5c41582e51246e73c88d34db3af0a3a2692a76fbab81492842f000256d33",
    }
    vec: dict[str, Any] = {
        "description": "testVerifyWebhookGood",
        "source": src,
        "kind": "official",
        "secret": key,
        "signature_object": good,
        "expected_signature": good["signature"],
    }
    CHECKS.run(
        vec,
        "independent hex HMAC-SHA256(key, timestamp+token)",
        lambda: hmac.compare_digest(indep(key, good["timestamp"], good["token"]), good["signature"]),
    )
    vec["verified_by"].append(
        "no Mailgun SDK installed (not in the allowed list); mailgun-php Webhook::"
        "verifyWebhookSignature is hash_hmac('sha256', $timestamp.$token, $signingKey), "
        "read in src/Api/Webhook.php"
    )
    vectors.append(vec)
    bad = {**good, "token": "owyldpe6nxhmrn78epljl6bj0orrki1u3d2v5e6cnlmmuox8jr"}
    nv: dict[str, Any] = {
        "description": "testVerifyWebhookBad (other token, same signature)",
        "source": src,
        "kind": "official",
        "secret": key,
        "signature_object": bad,
        "expected_valid": False,
    }
    CHECKS.run(
        nv, "independent HMAC", lambda: indep(key, bad["timestamp"], bad["token"]) == bad["signature"], expect=False
    )
    vectors.append(nv)
    doc_sig = {
        "timestamp": "1529006854",
        "token": "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0",
        "signature": "d2271d12299f6592d9d44cd9d250f0704e4674c30d79d07c47a66f95ce71cf55",
    }
    vectors.append(
        {
            "description": "the signature object printed in Mailgun's docs: its signing key is not "
            "published, so it is NOT a usable vector (shape only)",
            "source": "mailgun/documentation source/user_manual.rst 'Payload' (commit 32f41214a7ed)",
            "kind": "shape_only",
            "signature_object": doc_sig,
            "verified_by": ["not verifiable: no key"],
        }
    )

    docs = (
        "event-data copied from mailgun/documentation source/api-events.rst 'Event Structure' (commit "
        "32f41214a7ed); trailing commas in the docs' JSON removed; wrapped as {signature, event-data} per "
        "source/user_manual.rst 'Payload'; signature object generated with the vector key"
    )
    payloads: list[dict[str, Any]] = []

    def add(desc: str, event: dict[str, Any], expected: list[dict[str, Any]]) -> None:
        ts = str(int(event["timestamp"]) + 1)
        tok = hashlib.sha256(desc.encode()).hexdigest()[:50]
        sig = indep(key, ts, tok)
        body = compact({"signature": {"timestamp": ts, "token": tok, "signature": sig}, "event-data": event})
        p: dict[str, Any] = {
            "description": desc,
            "source": docs,
            "content_type": "application/json",
            "method": "POST",
            "body": body,
            "signed_with": {
                "secret": key,
                "kind": "generated (independent HMAC)",
                "location": "body.signature (no signature header)",
            },
            "expected": {"events": expected},
        }
        CHECKS.run(
            p,
            "independent HMAC of body.signature.timestamp+token",
            lambda: json.loads(body)["signature"]["signature"] == indep(key, ts, tok),
        )
        payloads.append(p)

    def ex(t: str, ev: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "type": t,
            "channel": "email",
            "provider_event_id": ev["id"],
            "provider_message_id": ev["message"]["headers"]["message-id"],
            "contact_email": ev["recipient"],
            "occurred_at": datetime.fromtimestamp(ev["timestamp"], UTC).isoformat(),
            **extra,
        }

    delivered = {
        "event": "delivered",
        "id": "hK7mQVt1QtqRiOfQXta4sw",
        "timestamp": 1529692199.626182,
        "log-level": "info",
        "envelope": {
            "transport": "smtp",
            "sender": "sender@example.org",
            "sending-ip": "123.123.123.123",
            "targets": "john@example.com",
        },
        "flags": {"is-routed": False, "is-authenticated": False, "is-system-test": False, "is-test-mode": False},
        "delivery-status": {
            "tls": True,
            "mx-host": "aspmx.l.example.com",
            "code": 250,
            "description": "",
            "session-seconds": 0.4367079734802246,
            "utf8": True,
            "attempt-no": 1,
            "message": "OK",
            "certificate-verified": True,
        },
        "message": {
            "headers": {
                "to": "team@example.org",
                "message-id": "20180622182958.1.48906CB188F1A454@exmple.org",
                "from": "sender@exmple.org",
                "subject": "Test Subject",
            },
            "attachments": [],
            "size": 586,
        },
        "storage": {
            "url": "https://storage-us-west1.api.mailgun.net/v3/domains/...",
            "region": "us-west1",
            "key": "AwABB...",
            "env": "production",
        },
        "recipient": "john@example.com",
        "recipient-domain": "example.com",
        "campaigns": [],
        "tags": [],
        "user-variables": {},
    }
    add("delivered", delivered, [ex("message.delivered", delivered)])
    perm = {
        "event": "failed",
        "id": "pl271FzxTTmGRW8Uj3dUWw",
        "timestamp": 1529701969.818328,
        "log-level": "error",
        "severity": "permanent",
        "reason": "suppress-bounce",
        "envelope": {"sender": "john@example.org", "transport": "smtp", "targets": "joan@example.com"},
        "flags": {"is-routed": False, "is-authenticated": True, "is-system-test": False, "is-test-mode": False},
        "delivery-status": {
            "attempt-no": 1,
            "message": "",
            "code": 605,
            "description": "Not delivering to previously bounced address",
            "session-seconds": 0.0,
        },
        "message": {
            "headers": {
                "to": "joan@example.com",
                "message-id": "20180622211249.1.2A6098970A380E12@example.org",
                "from": "john@example.org",
                "subject": "Test Subject",
            },
            "attachments": [],
            "size": 867,
        },
        "storage": {"url": "https://se.api.mailgun.net/v3/domains/example.org/messages/eyJwI...", "key": "eyJwI..."},
        "recipient": "slava@mailgun.com",
        "recipient-domain": "mailgun.com",
        "campaigns": [],
        "tags": [],
        "user-variables": {},
    }
    add(
        "failed, severity permanent (suppress-bounce)",
        perm,
        [ex("message.failed", perm, data={"reason": "suppress-bounce", "permanent": True})],
    )
    delayed = {
        "severity": "permanent",
        "timestamp": 1666214138.4046676,
        "storage": {
            "url": "https://storage-us-east4.api.mailgun.net/v3/domains/...",
            "region": "us-east4",
            "key": "AwABB...",
            "env": "production",
        },
        "delivery-status": {
            "bounce-code": "5.1.1",
            "message": "smtp; 550-5.1.1 The email account that you tried to reach does not exist.",
            "code": 550,
            "description": "I'm sorry to have to inform you that your message could "
            "not be delivered to one or more recipients.",
            "enhanced-code": "5.1.1",
        },
        "log-level": "error",
        "id": "ZDMqRgjLTDi6rQcy7K60aA",
        "reason": "generic",
        "user-variables": {},
        "flags": {"is-delayed-bounce": True},
        "envelope": {},
        "message": {
            "headers": {
                "to": "test@test.com",
                "message-id": "20221019211537.93011d31ea99c5a8@test.com",
                "from": "Test Message <test@test.com>",
                "subject": "Testing delayed bounce",
            },
            "size": 275,
        },
        "recipient": "christest123@test.com",
        "event": "failed",
    }
    add(
        "failed, severity permanent, delayed bounce (arrives after 'delivered' for the same message)",
        delayed,
        [
            ex(
                "message.failed",
                delayed,
                data={"reason": "generic", "permanent": True},
                note="a failed after delivered: SPEC says failed ends it; ordering rule decides if journeys see it",
            )
        ],
    )
    temp = {
        "severity": "temporary",
        "tags": [],
        "timestamp": 1665066523.871657,
        "storage": {
            "url": "https://storage-us-east4.api.mailgun.net/v3/domains/...",
            "region": "us-east4",
            "key": "AwABB...",
            "env": "production",
        },
        "delivery-status": {
            "tls": True,
            "mx-host": "hotmail-com.olc.protection.outlook.com",
            "code": 451,
            "description": "",
            "session-seconds": 0.7517080307006836,
            "utf8": True,
            "retry-seconds": 600,
            "enhanced-code": "4.7.652",
            "attempt-no": 1,
            "message": "4.7.652 The mail server [xxx.xxx.xxx.xxx] has exceeded the maximum number of connections.",
            "certificate-verified": True,
        },
        "batch": {"id": "633ee6154618b2fed628ccb0"},
        "recipient-domain": "test.com",
        "id": "xYrATi63Rke8EC_s7EoJeA",
        "campaigns": [],
        "reason": "generic",
        "user-variables": {},
        "flags": {"is-routed": False, "is-authenticated": True, "is-system-test": False, "is-test-mode": False},
        "log-level": "warn",
        "template": {"name": "test"},
        "envelope": {
            "transport": "smtp",
            "sender": "test@test.com",
            "sending-ip": "xxx.xxx.xxx.xxx",
            "targets": "test@test.com",
        },
        "message": {
            "headers": {
                "to": "test@test.net",
                "message-id": "20221006142837.1618e01bf42da9fa@test.com",
                "from": "test@test.com",
                "subject": "Test send",
            },
            "attachments": [],
            "size": 3499,
        },
        "recipient": "test@test.com",
        "event": "failed",
    }
    add(
        "failed, severity temporary (Mailgun will retry)",
        temp,
        [
            ex(
                "message.deferred",
                temp,
                data={"reason": "generic", "permanent": False},
                note="temporary = Mailgun retries; proposed mapping message.deferred, not message.failed",
            )
        ],
    )
    opened = {
        "event": "opened",
        "id": "-laxIqj9QWubsjY_3pTq_g",
        "timestamp": 1377047343.042277,
        "log-level": "info",
        "recipient": "recipient@example.com",
        "geolocation": {"country": "US", "region": "Texas", "city": "Austin"},
        "tags": [],
        "campaigns": [],
        "user-variables": {},
        "ip": "111.111.111.111",
        "client-info": {
            "client-type": "mobile browser",
            "client-os": "iOS",
            "device-type": "mobile",
            "client-name": "Mobile Safari",
            "user-agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 6_1 like Mac OS X) AppleWebKit/536.26 "
            "(KHTML, like Gecko) Mobile/10B143",
            "bot": "",
        },
        "message": {"headers": {"message-id": "20130821005614.19826.35976@samples.mailgun.org"}},
    }
    add("opened", opened, [ex("message.opened", opened)])
    clicked = {
        "event": "clicked",
        "id": "G5zMz2ysS6OxZ2C8xb2Tqg",
        "timestamp": 1377075564.094891,
        "log-level": "info",
        "recipient": "recipient@example.com",
        "geolocation": {"country": "US", "region": "TX", "city": "Austin"},
        "tags": [],
        "url": "http://example.com/signup",
        "ip": "123.123.123.321",
        "campaigns": [],
        "user-variables": {},
        "client-info": {
            "client-type": "browser",
            "client-os": "Linux",
            "device-type": "desktop",
            "client-name": "Chromium",
            "user-agent": "Mozilla/5.0 (X11; Linux i686) AppleWebKit/537.36 (KHTML, like Gecko) Ubuntu "
            "Chromium/28.0.1500.71 Chrome/28.0.1500.71 Safari/537.36",
            "bot": "",
        },
        "message": {"headers": {"message-id": "20130821085807.30688.67706@samples.mailgun.org"}},
    }
    add("clicked", clicked, [ex("message.clicked", clicked, data={"url": "http://example.com/signup"})])
    unsub = {
        "event": "unsubscribed",
        "id": "W3X4JOhFT-OZidZGKKr9iA",
        "timestamp": 1377213791.421473,
        "log-level": "info",
        "recipient": "recipient@example.com",
        "geolocation": {"country": "US", "region": "TX", "city": "San Antonio"},
        "campaigns": [],
        "tags": [],
        "user-variables": {},
        "ip": "23.23.23.345",
        "client-info": {
            "client-type": "browser",
            "client-os": "OS X",
            "device-type": "desktop",
            "client-name": "Chrome",
            "user-agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_8_4) AppleWebKit/537.36 (KHTML, "
            "like Gecko) Chrome/28.0.1500.95 Safari/537.36",
        },
        "message": {"headers": {"message-id": "20130822232216.13966.79700@samples.mailgun.org"}},
    }
    add("unsubscribed", unsub, [ex("contact.opted_out", unsub)])
    compl = {
        "event": "complained",
        "id": "ncV2XwymRUKbPek_MIM-Gw",
        "timestamp": 1377214260.049634,
        "log-level": "warn",
        "recipient": "foo@example.com",
        "tags": [],
        "campaigns": [],
        "user-variables": {},
        "flags": {"is-test-mode": False},
        "message": {
            "headers": {
                "to": "foo@example.com",
                "message-id": "20130718032413.263EE2E0926@example.com",
                "from": "John Doe <sender@example.com>",
                "subject": "This is the subject.",
            },
            "attachments": [],
            "size": 18937,
        },
    }
    add("complained", compl, [ex("contact.complained", compl)])
    withvars = {**delivered, "id": "dXNlci12YXJpYWJsZXMtZXg", "user-variables": {"journeys_message_id": "m-0003"}}
    add(
        "delivered with user-variables (v:journeys_message_id=m-0003 at send time) carrying our message id; "
        "id changed to keep it unique",
        withvars,
        [ex("message.delivered", withvars, message_id_from_user_variables="m-0003")],
    )

    write(
        "mailgun",
        {
            "provider": "mailgun",
            "source": {
                "official_vectors": [src],
                "algorithm": "mailgun/documentation source/user_manual.rst 'Securing Webhooks': hex "
                "HMAC-SHA256(signing key, timestamp + token), compared with signature",
                "payloads": docs,
            },
            "notes": [
                "The signature lives inside the JSON body (body.signature.{timestamp,token,signature}); no header.",
                "The signing key is the account's HTTP webhook signing key, not the API key (the php test uses a "
                "key-... string only as an example).",
                "Docs: cache the token to refuse replays and optionally check the timestamp; the PHP sample in the "
                "docs allows only 15 seconds of skew.",
                "Dedupe: event-data.id is the event's id; the token is per signed request. Recommend event-data.id "
                "as provider_event_id and the token as replay guard.",
                "event-data.message.headers.message-id has no angle brackets, whereas the Mail Send API answers "
                "id '<...>': strip them when matching.",
                "severity temporary means Mailgun retries (delivery-status.retry-seconds).",
            ],
            "signature_vectors": vectors,
            "payloads": payloads,
        },
    )


# --------------------------------------------------------------------------------------------
# Telnyx
# --------------------------------------------------------------------------------------------


def telnyx() -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from telnyx.lib.webhook_verification import verify_webhook_signature

    seed = hashlib.sha256(b"journeys telnyx test key").digest()
    priv = Ed25519PrivateKey.from_private_bytes(seed)
    pub = b64(priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def sign(ts: str, body: str) -> str:
        return b64(priv.sign(f"{ts}|{body}".encode()))

    def indep(pub_b64: str, ts: str, body: str, sig: str) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(base64.b64decode(pub_b64)).verify(
                base64.b64decode(sig), f"{ts}|{body}".encode()
            )
            return True
        except InvalidSignature:
            return False

    def sdk(ts: str, body: str, sig: str, now: int) -> bool:
        headers = {"telnyx-signature-ed25519": sig, "telnyx-timestamp": ts}
        with mock.patch("telnyx.lib.webhook_verification.time.time", return_value=float(now)):
            verify_webhook_signature(body, headers, pub)
        return True

    sdkname = (
        f"telnyx {version('telnyx')} telnyx.lib.webhook_verification.verify_webhook_signature (PyNaCl "
        f"{version('pynacl')}), clock patched to"
    )
    vectors: list[dict[str, Any]] = []
    ts = "1767607200"
    body = compact({"data": {"event_type": "message.sent", "id": "test"}})
    sig = sign(ts, body)
    vec: dict[str, Any] = {
        "description": "no official Telnyx vector exists (telnyx-python/-go/-node/-ruby tests all sign with a fresh "
        "random key); generated with a fixed Ed25519 seed, Ed25519 being deterministic",
        "source": "generated (cryptography Ed25519, seed sha256(b'journeys telnyx test key'))",
        "kind": "generated",
        "public_key": pub,
        "private_seed_b64": b64(seed),
        "timestamp": ts,
        "body": body,
        "signed_message": f"{ts}|{body}",
        "headers": {"telnyx-signature-ed25519": sig, "telnyx-timestamp": ts},
        "expected_signature": sig,
    }
    CHECKS.run(vec, "independent cryptography Ed25519 verify of 'timestamp|body'", lambda: indep(pub, ts, body, sig))
    CHECKS.run(vec, f"{sdkname} timestamp+10s", lambda: sdk(ts, body, sig, int(ts) + 10))
    CHECKS.run(
        vec, f"{sdkname} timestamp+300s (tolerance boundary, inclusive)", lambda: sdk(ts, body, sig, int(ts) + 300)
    )
    CHECKS.run(vec, f"{sdkname} timestamp+301s (beyond 5 min)", lambda: sdk(ts, body, sig, int(ts) + 301), expect=False)
    CHECKS.run(
        vec,
        f"{sdkname} timestamp-301s (too new: the SDK checks both directions)",
        lambda: sdk(ts, body, sig, int(ts) - 301),
        expect=False,
    )
    dot_sig = b64(priv.sign(f"{ts}.{body}".encode()))
    CHECKS.run(
        vec,
        "independent: a signature over 'timestamp.body' ('.' separator) does not verify",
        lambda: indep(pub, ts, body, dot_sig),
        expect=False,
    )
    vectors.append(vec)

    docs_ref = (
        "shapes from https://developers.telnyx.com/api-reference/callbacks/delivery-update and "
        "/inbound-message and /docs/messaging/messages/receiving-webhooks (message.finalized example, id "
        "4ee8c3a6-...); field enums from telnyx-python src/telnyx/types/outbound_message_payload.py "
        "(commit 6d68c8ca0036); error codes/titles from https://developers.telnyx.com/docs/messaging/messages/"
        "error-codes (40008 Undeliverable, 40002 Blocked as spam (temporary)); values adapted (numbers, ids, "
        "texts) and minified"
    )
    payloads: list[dict[str, Any]] = []
    msg_id = "40385f64-5717-4562-b3fc-2c963f66afa6"
    ours = "+18445550001"
    them = "+18665550001"

    def outbound(status: str, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "record_type": "message",
            "direction": "outbound",
            "id": msg_id,
            "type": "SMS",
            "messaging_profile_id": "4000eba1-a0c0-4563-9925-b25e842a7cb6",
            "organization_id": "b448f9cc-a842-4784-98e9-03c1a5872950",
            "from": {"phone_number": ours, "carrier": "TELNYX LLC", "line_type": "VoIP"},
            "to": [{"phone_number": them, "status": status, "carrier": "T-MOBILE USA, INC.", "line_type": "Wireless"}],
            "cc": [],
            "text": "Hello, World!",
            "media": [],
            "webhook_url": "https://hooks.example.com/ingest/telnyx",
            "webhook_failover_url": None,
            "encoding": "GSM-7",
            "parts": 1,
            "tags": [],
            "cost": {"amount": "0.0051", "currency": "USD"},
            "errors": [],
            **extra,
        }

    def add(
        desc: str,
        event_id: str,
        event_type: str,
        occurred: str,
        payload: dict[str, Any],
        expected: list[dict[str, Any]],
        ts: str,
    ) -> None:
        body = compact(
            {
                "data": {
                    "record_type": "event",
                    "id": event_id,
                    "event_type": event_type,
                    "occurred_at": occurred,
                    "payload": payload,
                },
                "meta": {"attempt": 1, "delivered_to": "https://hooks.example.com/ingest/telnyx"},
            }
        )
        sig = sign(ts, body)
        p: dict[str, Any] = {
            "description": desc,
            "source": docs_ref,
            "content_type": "application/json",
            "method": "POST",
            "body": body,
            "signed_with": {
                "public_key": pub,
                "kind": "generated (fixed seed above)",
                "headers": {"telnyx-signature-ed25519": sig, "telnyx-timestamp": ts},
            },
            "expected": {"events": expected},
        }
        CHECKS.run(p, "independent cryptography Ed25519", lambda: indep(pub, ts, body, sig))
        CHECKS.run(p, f"{sdkname} timestamp+5s", lambda: sdk(ts, body, sig, int(ts) + 5))
        payloads.append(p)

    def ex(t: str | None, eid: str, st: str, **extra: Any) -> dict[str, Any]:
        return {
            "type": t,
            "channel": "sms",
            "status": st,
            "provider_event_id": eid,
            "provider_message_id": msg_id,
            "contact_phone": them,
            **extra,
        }

    add(
        "message.sent (to[0].status sent)",
        "86f58db9-0fe3-4adc-9d1f-46e66e6e9323",
        "message.sent",
        "2026-01-05T10:00:02.574+00:00",
        outbound("sent", {"sent_at": "2026-01-05T10:00:02.574+00:00"}),
        [ex("message.sent", "86f58db9-0fe3-4adc-9d1f-46e66e6e9323", "sent")],
        "1767607203",
    )
    add(
        "message.finalized, delivered",
        "4ee8c3a6-4995-4309-a3c6-38e3db9ea4be",
        "message.finalized",
        "2026-01-05T10:00:14.148+00:00",
        outbound(
            "delivered", {"sent_at": "2026-01-05T10:00:02.574+00:00", "completed_at": "2026-01-05T10:00:14.148+00:00"}
        ),
        [ex("message.delivered", "4ee8c3a6-4995-4309-a3c6-38e3db9ea4be", "delivered")],
        "1767607215",
    )
    add(
        "message.finalized, delivery_failed with errors[] (code/title/detail per MessagingError)",
        "5a7c8d10-1111-4e2b-9c3d-0123456789ab",
        "message.finalized",
        "2026-01-05T10:00:20.000+00:00",
        outbound(
            "delivery_failed",
            {
                "completed_at": "2026-01-05T10:00:20.000+00:00",
                "errors": [
                    {
                        "code": "40008",
                        "title": "Undeliverable",
                        "detail": "Carrier did not accept the message",
                    }
                ],
            },
        ),
        [
            ex(
                "message.failed",
                "5a7c8d10-1111-4e2b-9c3d-0123456789ab",
                "delivery_failed",
                data={"reason": "40008", "permanent": True},
            )
        ],
        "1767607221",
    )
    add(
        "message.finalized, sending_failed",
        "6b8d9e21-2222-4f3c-8d4e-0123456789ab",
        "message.finalized",
        "2026-01-05T10:00:21.000+00:00",
        outbound(
            "sending_failed",
            {
                "errors": [
                    {
                        "code": "40002",
                        "title": "Blocked as spam (temporary)",
                        "detail": "Carrier spam filter triggered",
                    }
                ]
            },
        ),
        [
            ex(
                "message.failed",
                "6b8d9e21-2222-4f3c-8d4e-0123456789ab",
                "sending_failed",
                data={"reason": "40002", "permanent": False},
            )
        ],
        "1767607222",
    )
    add(
        "message.finalized, delivery_unconfirmed (no DLR from the carrier)",
        "7c9eaf32-3333-4a4d-9e5f-0123456789ab",
        "message.finalized",
        "2026-01-05T10:05:00.000+00:00",
        outbound("delivery_unconfirmed", {}),
        [
            ex(
                None,
                "7c9eaf32-3333-4a4d-9e5f-0123456789ab",
                "delivery_unconfirmed",
                note="terminal but unknown outcome; no SPEC type fits: keep in the log (owner's decision)",
            )
        ],
        "1767607501",
    )
    inbound_id = "7ee4241c-f127-47e5-9c34-3aac291f8058"

    def inbound(text: str) -> dict[str, Any]:
        return {
            "record_type": "message",
            "direction": "inbound",
            "id": inbound_id,
            "type": "SMS",
            "messaging_profile_id": "0f512bda-ae1e-4597-8e11-e5f5686b97d3",
            "organization_id": "b448f9cc-a842-4784-98e9-03c1a5872950",
            "from": {"phone_number": them, "carrier": "T-MOBILE USA, INC.", "line_type": "Wireless"},
            "to": [{"phone_number": ours, "status": "delivered", "carrier": "TELNYX LLC", "line_type": "VoIP"}],
            "cc": [],
            "text": text,
            "media": [],
            "encoding": "GSM-7",
            "parts": 1,
            "tags": [],
            "received_at": "2026-01-05T10:10:00.000+00:00",
            "errors": [],
        }

    add(
        "message.received, text reply",
        "bf6307bd-884d-4c1f-b6ea-c62b8c495d3c",
        "message.received",
        "2026-01-05T10:10:00.000+00:00",
        inbound("Hello, World!"),
        [
            {
                "type": "message.received",
                "channel": "sms",
                "text": "Hello, World!",
                "provider_event_id": "bf6307bd-884d-4c1f-b6ea-c62b8c495d3c",
                "provider_message_id": inbound_id,
                "contact_phone": them,
            }
        ],
        "1767607801",
    )
    add(
        "message.received, 'Stop' keyword (Telnyx also applies its default block rule: later sends to this "
        "number fail with 40300 'Blocked due to STOP message', per developers.telnyx.com/docs/messaging/messages/"
        "advanced-opt-in-out)",
        "c07418ce-995d-4d2d-c7fb-d73c9a5e6e4d",
        "message.received",
        "2026-01-05T10:11:00.000+00:00",
        {**inbound("Stop"), "id": "8ff5352d-0238-48f6-9d45-4bbd3a2d9169"},
        [
            {
                "type": "message.received",
                "channel": "sms",
                "text": "Stop",
                "provider_event_id": "c07418ce-995d-4d2d-c7fb-d73c9a5e6e4d",
                "provider_message_id": "8ff5352d-0238-48f6-9d45-4bbd3a2d9169",
                "contact_phone": them,
            },
            {"type": "contact.opted_out", "derived_from": "message.received", "contact_phone": them},
        ],
        "1767607861",
    )

    write(
        "telnyx",
        {
            "provider": "telnyx",
            "source": {
                "official_vectors": [],
                "no_official_vector": "none found in team-telnyx/telnyx-python (commit 6d68c8ca0036), "
                "telnyx-go (3972505b069e), telnyx-node (b9b12ca781db), telnyx-ruby "
                "(df70d998ba43): all tests generate a random key per run",
                "algorithm": "telnyx-python src/telnyx/lib/webhook_verification.py: Ed25519 over "
                "f'{telnyx-timestamp}|{raw body}', signature base64 (64 bytes) in "
                "telnyx-signature-ed25519, public key base64 of the raw 32 bytes, |now - ts| <= 300",
                "payloads": docs_ref,
            },
            "notes": [
                "Tolerance: python/node/go SDKs reject |now - timestamp| > 300 s in BOTH directions; the legacy 2.x "
                "SDK only checked the past.",
                "The SDK's code-generated WebhooksResource.unwrap uses Standard Webhooks HMAC and is monkey-patched "
                "to Ed25519 by telnyx/lib/webhooks_ed25519.py; its generated test (tests/api_resources/"
                "test_webhooks.py) still signs with standardwebhooks. Do not rely on unwrap without reading it.",
                "Verification needs the optional extra: pip install 'telnyx[webhooks]' (PyNaCl).",
                "Telnyx sends one event per request; the body is {data:{record_type,id,event_type,occurred_at,"
                "payload}, meta:{attempt,delivered_to}}. data.id is the event id (dedupe); data.payload.id is the "
                "message id.",
                "to[] is a list (group MMS): per-recipient status lives in to[i].status.",
            ],
            "signature_vectors": vectors,
            "payloads": payloads,
        },
    )


# --------------------------------------------------------------------------------------------
# WhatsApp Cloud API
# --------------------------------------------------------------------------------------------


def whatsapp() -> None:
    src = "WhatsApp/WhatsApp-Nodejs-SDK src/__tests__/utils.test.ts + jest.config.ts (commit 58ca3d5fceea)"
    secret = "TEST_APP_SECRET"

    def indep(sec: str, body: str) -> str:
        return "sha256=" + hmac.new(sec.encode(), body.encode(), hashlib.sha256).hexdigest()

    vec: dict[str, Any] = {
        "description": "Meta's (archived) WhatsApp Node.js SDK test: generateXHub256Sig('test', 'TEST_APP_SECRET')",
        "source": src,
        "kind": "official",
        "secret": secret,
        "body": "test",
        "headers": {"X-Hub-Signature-256": "sha256=0c61947b610d4f45e65f3d680e26027121ec2413e77598bcb6cfc6e0d9888221"},
        "expected_signature": "0c61947b610d4f45e65f3d680e26027121ec2413e77598bcb6cfc6e0d9888221",
    }
    CHECKS.run(
        vec,
        "independent hex HMAC-SHA256(app secret, raw body)",
        lambda: indep(secret, "test") == vec["headers"]["X-Hub-Signature-256"],
    )
    vec["verified_by"].append("no official Python SDK from Meta to cross-check")
    vectors = [vec]
    handshake = {
        "description": "GET verification handshake: answer 200 with hub.challenge as the plain-text body when "
        "hub.mode == 'subscribe' and hub.verify_token equals the configured token; otherwise "
        "refuse (the Meta SDK answers 401; 403 is also common)",
        "source": "behaviour from WhatsApp/WhatsApp-Nodejs-SDK src/api/webhooks.ts (commit 58ca3d5fceea); "
        "values are ours",
        "kind": "behaviour",
        "verify_token": "journeys-verify-token",
        "requests": [
            {
                "method": "GET",
                "query": "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=journeys-verify-token",
                "expect_status": 200,
                "expect_body": "1158201444",
            },
            {
                "method": "GET",
                "query": "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=wrong",
                "expect_status": "401 or 403",
                "expect_body": None,
            },
            {
                "method": "GET",
                "query": "hub.mode=unsubscribe&hub.challenge=1158201444&hub.verify_token=journeys-verify-token",
                "expect_status": "401 or 403",
                "expect_body": None,
            },
        ],
        "verified_by": ["behaviour only: nothing cryptographic to verify"],
    }
    vectors.append(handshake)

    docs = (
        "Meta docs https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/"
        "messages (inbound text example, verbatim ids) and .../messages/status and .../messages/errors "
        "(Syntax blocks: statuses[] with id,status,timestamp,recipient_id,conversation,pricing,errors[] with "
        "code,title,message,error_data.details,href); status bodies composed from that syntax, minified"
    )
    waba, pnid, disp = "102290129340398", "106540352242922", "15550783881"
    wamid = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
    out_id = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI4OUVDRTY3QjgwQTVGQjg3QkMA"
    user = "16505551234"
    payloads: list[dict[str, Any]] = []

    def value(**kw: Any) -> dict[str, Any]:
        return {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": disp, "phone_number_id": pnid},
            **kw,
        }

    def envelope(*values: dict[str, Any], entries: int = 1) -> dict[str, Any]:
        return {
            "object": "whatsapp_business_account",
            "entry": [
                {"id": waba, "changes": [{"value": v, "field": "messages"} for v in values]} for _ in range(entries)
            ],
        }

    def st(status: str, ts: str, **extra: Any) -> dict[str, Any]:
        return {"id": out_id, "status": status, "timestamp": ts, "recipient_id": user, **extra}

    pricing = {"billable": True, "pricing_model": "PMP", "category": "utility", "type": "regular"}

    def add(desc: str, obj: dict[str, Any], expected: list[dict[str, Any]], source: str = docs) -> None:
        body = compact(obj)
        sig = indep(secret, body)
        p: dict[str, Any] = {
            "description": desc,
            "source": source,
            "content_type": "application/json",
            "method": "POST",
            "body": body,
            "signed_with": {
                "secret": secret,
                "headers": {"X-Hub-Signature-256": sig},
                "kind": "generated (independent HMAC)",
            },
            "expected": {"events": expected},
        }
        CHECKS.run(p, "independent HMAC-SHA256 over raw body", lambda: indep(secret, body) == sig)
        payloads.append(p)

    def ex(t: str, status: str, **extra: Any) -> dict[str, Any]:
        return {
            "type": t,
            "channel": "whatsapp",
            "status": status,
            "provider_message_id": out_id,
            "provider_event_id": f"{out_id}:{status}",
            "contact_phone": "+" + user,
            **extra,
        }

    add(
        "status sent (with pricing)",
        envelope(value(statuses=[st("sent", "1749416390", pricing=pricing)])),
        [ex("message.sent", "sent")],
    )
    add(
        "status delivered",
        envelope(value(statuses=[st("delivered", "1749416391", pricing=pricing)])),
        [ex("message.delivered", "delivered")],
    )
    add(
        "status read (may arrive without a preceding delivered)",
        envelope(value(statuses=[st("read", "1749416400")])),
        [ex("message.read", "read")],
    )
    err = {
        "code": 131026,
        "title": "Message undeliverable",
        "message": "Message undeliverable",
        "error_data": {"details": "Message Undeliverable."},
        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
    }
    add(
        "status failed with errors[] (131026 undeliverable)",
        envelope(value(statuses=[st("failed", "1749416392", errors=[err])])),
        [ex("message.failed", "failed", data={"reason": "131026", "permanent": True})],
    )
    err2 = {
        "code": 131047,
        "title": "Re-engagement message",
        "message": "Re-engagement message",
        "error_data": {
            "details": "Message failed to send because more than 24 hours have passed since the "
            "customer last replied to this number."
        },
        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
    }
    add(
        "status failed 131047 (24-hour window closed: retry with a template)",
        envelope(value(statuses=[st("failed", "1749416393", errors=[err2])])),
        [ex("message.failed", "failed", data={"reason": "131047", "permanent": False})],
    )
    inbound_obj = envelope(
        value(
            contacts=[{"profile": {"name": "Sheena Nelson"}, "wa_id": user}],
            messages=[
                {
                    "from": user,
                    "id": wamid,
                    "timestamp": "1749416383",
                    "type": "text",
                    "text": {"body": "Does it come in another color?"},
                }
            ],
        )
    )
    add(
        "inbound text message (Meta's example, verbatim values)",
        inbound_obj,
        [
            {
                "type": "message.received",
                "channel": "whatsapp",
                "text": "Does it come in another color?",
                "provider_message_id": wamid,
                "provider_event_id": wamid,
                "contact_phone": "+" + user,
                "data": {"profile_name": "Sheena Nelson"},
            }
        ],
    )
    add(
        "inbound 'STOP' text (WhatsApp has no carrier opt-out; our keyword policy applies)",
        envelope(
            value(
                contacts=[{"profile": {"name": "Sheena Nelson"}, "wa_id": user}],
                messages=[
                    {
                        "from": user,
                        "id": wamid.replace("QzQTRB", "QzQTRC"),
                        "timestamp": "1749416500",
                        "type": "text",
                        "text": {"body": "STOP"},
                    }
                ],
            )
        ),
        [
            {
                "type": "message.received",
                "channel": "whatsapp",
                "text": "STOP",
                "provider_message_id": wamid.replace("QzQTRB", "QzQTRC"),
                "provider_event_id": wamid.replace("QzQTRB", "QzQTRC"),
                "contact_phone": "+" + user,
            },
            {"type": "contact.opted_out", "derived_from": "message.received", "contact_phone": "+" + user},
        ],
    )
    add(
        "non-ASCII text sent as escaped unicode: verify over the raw bytes exactly as received",
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": waba,
                    "changes": [
                        {
                            "value": value(
                                messages=[
                                    {
                                        "from": user,
                                        "id": wamid.replace("QzQTRB", "QzQTRD"),
                                        "timestamp": "1749416600",
                                        "type": "text",
                                        "text": {"body": "Ol\u00e1, obrigado \U0001f44d"},
                                    }
                                ]
                            ),
                            "field": "messages",
                        }
                    ],
                }
            ],
        },
        [
            {
                "type": "message.received",
                "channel": "whatsapp",
                "text": "Ol\u00e1, obrigado \U0001f44d",
                "provider_message_id": wamid.replace("QzQTRB", "QzQTRD"),
                "provider_event_id": wamid.replace("QzQTRB", "QzQTRD"),
                "contact_phone": "+" + user,
            }
        ],
    )
    # Re-encode the last body with \u escapes (json.dumps default ensure_ascii=True) to mimic escaped delivery.
    last = payloads[-1]
    escaped = json.dumps(json.loads(last["body"]), separators=(",", ":"))
    last["body"] = escaped
    last["signed_with"]["headers"]["X-Hub-Signature-256"] = indep(secret, escaped)
    last["verified_by"] = []
    CHECKS.run(
        last,
        "independent HMAC over the escaped raw body",
        lambda: indep(secret, escaped) == last["signed_with"]["headers"]["X-Hub-Signature-256"],
    )
    CHECKS.run(
        last,
        "re-serialising the parsed JSON as UTF-8 gives a DIFFERENT HMAC",
        lambda: indep(secret, compact(json.loads(escaped))) == indep(secret, escaped),
        expect=False,
    )
    batch = envelope(
        value(statuses=[st("delivered", "1749416391"), {**st("read", "1749416400")}]),
        value(
            contacts=[{"profile": {"name": "Sheena Nelson"}, "wa_id": user}],
            messages=[
                {
                    "from": user,
                    "id": wamid,
                    "timestamp": "1749416383",
                    "type": "text",
                    "text": {"body": "Does it come in another color?"},
                }
            ],
        ),
        entries=1,
    )
    batch["entry"].append(
        {"id": waba, "changes": [{"value": value(statuses=[st("sent", "1749416390")]), "field": "messages"}]}
    )
    add(
        "batch: 2 entries, first with 2 changes (statuses delivered+read, one inbound message), second with a "
        "late 'sent' (arrives after delivered: kept in the log, not shown to journeys)",
        batch,
        [
            ex("message.delivered", "delivered"),
            ex("message.read", "read"),
            {
                "type": "message.received",
                "channel": "whatsapp",
                "text": "Does it come in another color?",
                "provider_message_id": wamid,
                "provider_event_id": wamid,
                "contact_phone": "+" + user,
            },
            {**ex("message.sent", "sent"), "note": "stale: does not move the message forward (SPEC 5)"},
        ],
        source=docs + "; batching shape per the same syntax (entry[] and changes[] are arrays)",
    )

    write(
        "whatsapp",
        {
            "provider": "whatsapp",
            "source": {
                "official_vectors": [src],
                "algorithm": "X-Hub-Signature-256: 'sha256=' + hex HMAC-SHA256(app secret, raw body bytes)",
                "payloads": docs,
            },
            "notes": [
                "Verify over the raw request bytes; Meta may send non-ASCII as \\uXXXX escapes, so re-serialising "
                "parsed JSON changes the HMAC (see the escaped-unicode payload).",
                "wa_id / recipient_id are digits without '+': prefix '+' to get E.164.",
                "One POST may carry several entries, each with several changes, each with statuses[] and/or "
                "messages[]; every status and message is its own canonical event.",
                "read can arrive without delivered (Meta skips delivered when both happen at once).",
                "Dedupe: statuses by message id + status; inbound messages by their wamid.",
            ],
            "signature_vectors": vectors,
            "payloads": payloads,
        },
    )


# --------------------------------------------------------------------------------------------
# Vonage
# --------------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def vonage() -> None:
    import warnings

    import jwt

    src = "Vonage/vonage-python-sdk jwt/tests/test_verify_jwt.py (commit b308cb1e9419)"
    token = (
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJPbmxpbmUgSldUIEJ1aWxkZXIiLCJpYXQiOjE2OTc2MzQ2ODAsImV4cCI6"
        "MzMyNTQ1NDA4MjgsImF1ZCI6IiIsInN1YiI6IiJ9.88vJc3I2HhuqEDixHXVhc9R30tA6U_HQHZTC29y6CGM"
    )
    secret = "qwertyuiopasdfghjklzxcvbnm123456"

    def indep(tok: str, sec: str) -> bool:
        head, payload, sig = tok.split(".")
        mac = hmac.new(sec.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
        return hmac.compare_digest(b64url(mac), sig)

    def sdk_like(tok: str, sec: str) -> bool:
        # exactly what vonage_jwt.verify_signature does: jwt.decode(token, secret, algorithms='HS256')
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # InsecureKeyLengthWarning for the SDK's 4-byte 'asdf' case
                jwt.decode(tok, sec, algorithms="HS256")
            return True
        except jwt.InvalidSignatureError:
            return False

    pyjwt = (
        f"PyJWT {version('PyJWT')} jwt.decode(token, secret, algorithms='HS256') (the call in vonage_jwt."
        "verify_signature, jwt/src/vonage_jwt/verify_jwt.py)"
    )
    vectors: list[dict[str, Any]] = []
    vec: dict[str, Any] = {
        "description": "SDK vector: a HS256 JWT and its signature secret. Its claims are NOT a Vonage webhook's "
        "(iss 'Online JWT Builder', no payload_hash); use it for the HS256 step only",
        "source": src,
        "kind": "official",
        "secret": secret,
        "token": token,
        "headers": {"Authorization": "Bearer " + token},
        "claims": jwt.decode(token, options={"verify_signature": False}),
    }
    CHECKS.run(vec, "independent HMAC-SHA256 over 'header.payload', base64url", lambda: indep(token, secret))
    CHECKS.run(vec, pyjwt, lambda: sdk_like(token, secret))
    CHECKS.run(
        vec, pyjwt + " with secret 'asdf' (the SDK's invalid case)", lambda: sdk_like(token, "asdf"), expect=False
    )
    vectors.append(vec)
    doc_claims = {
        "iat": 1587494962,
        "jti": "c5ba8f24-1a14-4c10-bfdf-3fbe8ce511b5",
        "iss": "Vonage",
        "payload_hash": "d6c0e74b5857df20e3b7e51b30c0c2a40ec73a77879b6f074ddc7a2317dd031b",
        "api_key": "a1b2c3d",
        "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
    }
    vectors.append(
        {
            "description": "documented claim set of a signed Messages webhook JWT (no secret, body or token "
            "published: shape only)",
            "source": "Nexmo/station _documentation/en/messages/concepts/signed-webhooks.md "
            "'Sample Signed JWT' (commit "
            "22a9d7eebb41), = developer.vonage.com/en/messages/concepts/signed-webhooks",
            "kind": "shape_only",
            "header": {"alg": "HS256", "typ": "JWT"},
            "claims": doc_claims,
            "verified_by": ["not verifiable: no secret/body published"],
        }
    )

    # Generated webhook tokens (PyJWT) for the payload samples, secret >= 32 bytes.
    gsecret = "journeys-vonage-signature-secret-0123456789"
    short = "0123456789abcdef"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jwt.decode(jwt.encode({"iat": 1}, short, algorithm="HS256"), short, algorithms=["HS256"])
    short_warns = sorted({type(w.message).__name__ for w in caught})
    docs = (
        "Vonage/vonage-dotnet-sdk Vonage.Test/Messages/Webhooks/Data/ShouldDeserializeSms-response.json, "
        "ShouldDeserializeStatus-response.json, ShouldDeserializeWhatsAppText-response.json and "
        "Vonage/vonage-java-sdk src/test/java/com/vonage/client/messages/MessageStatusTest.java (Messages API "
        "v1 shapes); statuses per developer.vonage.com/en/messages/concepts/messages-status-callbacks; values "
        "adapted, minified"
    )
    payloads: list[dict[str, Any]] = []
    uuid = "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"

    def add(desc: str, obj: dict[str, Any], expected: list[dict[str, Any]], iat: int) -> None:
        body = compact(obj)
        claims = {
            "iat": iat,
            "jti": hashlib.sha256(desc.encode()).hexdigest()[:32],
            "iss": "Vonage",
            "payload_hash": hashlib.sha256(body.encode()).hexdigest(),
            "api_key": "a1b2c3d",
            "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
        }
        tok = jwt.encode(claims, gsecret, algorithm="HS256")
        p: dict[str, Any] = {
            "description": desc,
            "source": docs,
            "content_type": "application/json",
            "method": "POST",
            "body": body,
            "signed_with": {
                "secret": gsecret,
                "kind": "sdk_generated (PyJWT HS256, claims as documented)",
                "headers": {"Authorization": "Bearer " + tok},
                "claims": claims,
            },
            "expected": {"events": expected},
        }
        CHECKS.run(p, "independent HMAC-SHA256 JWS check", lambda: indep(tok, gsecret))
        CHECKS.run(p, pyjwt, lambda: sdk_like(tok, gsecret))
        CHECKS.run(
            p,
            "independent sha256(body).hexdigest() == payload_hash claim",
            lambda: (
                jwt.decode(tok, gsecret, algorithms=["HS256"])["payload_hash"]
                == hashlib.sha256(body.encode()).hexdigest()
            ),
        )
        payloads.append(p)

    def status(st: str, channel: str = "sms", **extra: Any) -> dict[str, Any]:
        return {
            "message_uuid": uuid,
            "to": "447700900000",
            "from": "447700900001",
            "timestamp": "2025-02-03T12:14:25Z",
            "status": st,
            "channel": channel,
            **extra,
        }

    def ex(t: str, st: str, channel: str = "sms", **extra: Any) -> dict[str, Any]:
        return {
            "type": t,
            "channel": channel,
            "status": st,
            "provider_message_id": uuid,
            "provider_event_id": f"{uuid}:{st}",
            "contact_phone": "+447700900000",
            **extra,
        }

    usage = {"currency": "EUR", "price": "0.0333"}
    add(
        "status submitted (SMS, client_ref carries our message id)",
        status(
            "submitted",
            client_ref="m-0004",
            usage=usage,
            destination={"network_code": "12345"},
            sms={"count_total": "2"},
        ),
        [ex("message.sent", "submitted", message_id_from_client_ref="m-0004")],
        1738584866,
    )
    add(
        "status delivered (SMS)",
        status("delivered", client_ref="m-0004", destination={"network_code": "12345"}),
        [ex("message.delivered", "delivered")],
        1738584900,
    )
    add(
        "status rejected with error (RFC 7807 style type/title/detail/instance); 1360 = SMS DLR 'expired' mapped "
        "to rejected per developer.vonage.com/en/messages/concepts/sms-status-callbacks; detail text ours",
        status(
            "rejected",
            error={
                "type": "https://developer.vonage.com/api-errors/messages#1360",
                "title": 1360,
                "detail": "Message expired before delivery (SMS DLR status expired)",
                "instance": "bf0ca0bf927b3b52e3cb03217e1a1ddf",
            },
        ),
        [
            ex(
                "message.failed",
                "rejected",
                data={"reason": "1360", "permanent": False},
                note="error.title is a number in the Java SDK test and a string in the .NET fixture: accept both",
            )
        ],
        1738584901,
    )
    add(
        "status undeliverable (Vonage could not reach the provider)",
        status("undeliverable", channel="mms"),
        [ex("message.failed", "undeliverable", channel="mms", data={"reason": "undeliverable", "permanent": False})],
        1738584902,
    )
    add(
        "status read (WhatsApp)",
        status(
            "read", channel="whatsapp", whatsapp={"conversation": {"id": "1234567890", "origin": {"type": "utility"}}}
        ),
        [ex("message.read", "read", channel="whatsapp")],
        1738584903,
    )
    inbound = {
        "channel": "sms",
        "message_uuid": "52afe398-e31a-4362-8c42-beb0c3b1d098",
        "to": "447700900001",
        "from": "447700900000",
        "timestamp": "2020-01-01T14:00:00.000Z",
        "text": "Hello From Vonage!",
        "sms": {"num_messages": "2", "count_total": "2", "keyword": "HELLO"},
        "usage": {"currency": "EUR", "price": "0.0333"},
        "origin": {"network_code": "12345"},
    }
    add(
        "inbound SMS (Messages API v1)",
        inbound,
        [
            {
                "type": "message.received",
                "channel": "sms",
                "text": "Hello From Vonage!",
                "provider_message_id": "52afe398-e31a-4362-8c42-beb0c3b1d098",
                "provider_event_id": "52afe398-e31a-4362-8c42-beb0c3b1d098:received",
                "contact_phone": "+447700900000",
            }
        ],
        1577887201,
    )
    stop = {
        **inbound,
        "message_uuid": "62bfe398-e31a-4362-8c42-beb0c3b1d099",
        "text": "STOP",
        "sms": {"num_messages": "1", "count_total": "1", "keyword": "STOP"},
    }
    add(
        "inbound SMS 'STOP' (sms.keyword = first word, upper-cased)",
        stop,
        [
            {
                "type": "message.received",
                "channel": "sms",
                "text": "STOP",
                "provider_message_id": "62bfe398-e31a-4362-8c42-beb0c3b1d099",
                "provider_event_id": "62bfe398-e31a-4362-8c42-beb0c3b1d099:received",
                "contact_phone": "+447700900000",
            },
            {"type": "contact.opted_out", "derived_from": "message.received", "contact_phone": "+447700900000"},
        ],
        1577887301,
    )

    write(
        "vonage",
        {
            "provider": "vonage",
            "source": {
                "official_vectors": [src],
                "claims": "Nexmo/station _documentation/en/messages/concepts/signed-webhooks.md (commit "
                "22a9d7eebb41): header {alg HS256, typ JWT}; claims iat, jti, iss='Vonage', "
                "payload_hash (SHA-256 of the request payload, hex), api_key, application_id (optional)",
                "payloads": docs,
            },
            "notes": [
                "Claim names are exactly: iat, jti, iss, payload_hash, api_key, application_id. No exp claim in the "
                "documented sample: freshness must come from iat.",
                "Which secret: the signature secret of the account named by the api_key claim (sub-accounts have "
                "their own); the 'signature method' dashboard setting does not affect Messages API webhooks "
                "(always SHA-256).",
                "payload_hash verification is described as optional (needed on plain HTTP); Vonage sends compact "
                "JSON, so sha256 of the raw body is what to compare. A Vonage support article for Voice webhooks "
                "describes re-serialising the parameters instead; not needed for the Messages API.",
                "Vonage may exceptionally send an UNSIGNED callback after an internal error; answering 5xx makes it "
                "retry (docs).",
                "Signature secrets may be short (docs recommend >= 32 bits). PyJWT "
                + version("PyJWT")
                + " emits "
                + (", ".join(short_warns) or "no warning")
                + " for a 16-byte HMAC key; with pytest "
                "filterwarnings=error that becomes an exception: verify HS256 by hand or filter that warning.",
                "Numbers are E.164 without '+' (447700900000).",
                "No event id: dedupe by message_uuid + status.",
            ],
            "signature_vectors": vectors,
            "payloads": payloads,
        },
    )


# --------------------------------------------------------------------------------------------
# Standard Webhooks (our own 'events' source)
# --------------------------------------------------------------------------------------------


def events() -> None:
    import standardwebhooks.webhooks as swmod
    from standardwebhooks import Webhook

    src = (
        "standard-webhooks/standard-webhooks libraries/python/tests/test_webhooks.py::test_sign_function "
        "(commit b2fa7b8719fb); same vector in the go, javascript, java, php, ruby, csharp test suites"
    )
    key = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    ts = 1614265330
    payload = '{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

    def indep(k: str, mid: str, t: int | str, body: str) -> str:
        raw = base64.b64decode(k.removeprefix("whsec_") + "==")
        return "v1," + b64(hmac.new(raw, f"{mid}.{t}.{body}".encode(), hashlib.sha256).digest())

    def sdk_verify(k: str, headers: dict[str, str], body: str, now: int) -> bool:
        class Frozen(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Frozen:  # type: ignore[override]
                return cls.fromtimestamp(now, tz)

        with mock.patch.object(swmod, "datetime", Frozen):
            Webhook(k).verify(body, headers, json_parse=False)
        return True

    sw = f"standardwebhooks {version('standardwebhooks')}"
    vectors: list[dict[str, Any]] = []
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": expected}
    vec: dict[str, Any] = {
        "description": "the Standard Webhooks reference vector",
        "source": src,
        "kind": "official",
        "secret": key,
        "webhook_id": msg_id,
        "timestamp": str(ts),
        "body": payload,
        "signed_content": f"{msg_id}.{ts}.{payload}",
        "headers": headers,
        "expected_signature": expected,
    }
    CHECKS.run(
        vec,
        "independent base64 HMAC-SHA256(b64decode(secret without whsec_), 'id.timestamp.body')",
        lambda: indep(key, msg_id, ts, payload) == expected,
    )
    CHECKS.run(
        vec,
        f"{sw} Webhook.sign",
        lambda: Webhook(key).sign(msg_id, datetime.fromtimestamp(ts, UTC), payload) == expected,
    )
    CHECKS.run(
        vec, f"{sw} Webhook.verify, clock frozen at timestamp+60s", lambda: sdk_verify(key, headers, payload, ts + 60)
    )
    CHECKS.run(
        vec,
        f"{sw} Webhook.verify, clock at timestamp+301s (5 min tolerance)",
        lambda: sdk_verify(key, headers, payload, ts + 301),
        expect=False,
    )
    CHECKS.run(
        vec,
        f"{sw} Webhook.verify, clock at timestamp-301s (too new)",
        lambda: sdk_verify(key, headers, payload, ts - 301),
        expect=False,
    )
    CHECKS.run(
        vec,
        f"{sw} Webhook.verify with the secret given without 'whsec_'",
        lambda: sdk_verify(key.removeprefix("whsec_"), headers, payload, ts),
    )
    vectors.append(vec)
    rot = {
        **headers,
        "webhook-signature": "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,Ceo5qEr07ixe2NLpvHk3FH9"
        "bwy/WavXrAFQ/9tdO6mc= " + expected,
    }
    rv: dict[str, Any] = {
        "description": "several space-separated signatures (rotation); unknown versions ignored; one valid v1 suffices",
        "source": src.replace("test_sign_function", "test_multi_sig_payload_is_valid"),
        "kind": "official",
        "secret": key,
        "body": payload,
        "headers": rot,
    }
    CHECKS.run(rv, f"{sw} Webhook.verify", lambda: sdk_verify(key, rot, payload, ts))
    vectors.append(rv)
    bad = {**headers, "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="}
    bv: dict[str, Any] = {
        "description": "last byte changed",
        "source": src.replace("test_sign_function", "test_invalid_signature_raises_error"),
        "kind": "official",
        "secret": key,
        "body": payload,
        "headers": bad,
        "expected_valid": False,
    }
    CHECKS.run(bv, f"{sw} Webhook.verify", lambda: sdk_verify(key, bad, payload, ts), expect=False)
    CHECKS.run(bv, "independent", lambda: indep(key, msg_id, ts, payload) == bad["webhook-signature"], expect=False)
    vectors.append(bv)
    old_key = "whsec_" + b64(hashlib.sha256(b"journeys old app secret").digest())

    # Payloads per SPEC section 5: our systems' business events.
    spec = "/work/shared/the journey language (events source body shape); bodies ours, signed with the official key"
    payloads: list[dict[str, Any]] = []

    def add(
        desc: str, mid: str, t: int, obj: Any, expected_ev: list[dict[str, Any]], k: str = key, note: str | None = None
    ) -> None:
        body = compact(obj)
        sig = Webhook(k).sign(mid, datetime.fromtimestamp(t, UTC), body)
        h = {"webhook-id": mid, "webhook-timestamp": str(t), "webhook-signature": sig}
        p: dict[str, Any] = {
            "description": desc,
            "source": spec,
            "content_type": "application/json",
            "method": "POST",
            "body": body,
            "signed_with": {"secret": k, "headers": h, "kind": "sdk_generated (standardwebhooks Webhook.sign)"},
            "expected": {"replay_guard": mid, "events": expected_ev},
        }
        if note:
            p["note"] = note
        CHECKS.run(p, "independent HMAC", lambda: indep(k, mid, t, body) == sig)
        CHECKS.run(p, f"{sw} Webhook.verify (clock frozen at timestamp)", lambda: sdk_verify(k, h, body, t))
        payloads.append(p)

    contact = {"id": "c-1", "phone": "+4915112345678", "email": "ana@example.com", "timezone": "Europe/Berlin"}
    overdue = {
        "id": "evt-0001",
        "type": "invoice.overdue",
        "occurred_at": "2026-01-05T10:00:00Z",
        "contact": contact,
        "data": {"amount_due": 40, "invoice_id": "INV-1"},
    }
    add(
        "single business event",
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        1767607200,
        overdue,
        [
            {
                "type": "invoice.overdue",
                "provider_event_id": "evt-0001",
                "contact_id": "c-1",
                "channel": None,
                "occurred_at": "2026-01-05T10:00:00Z",
                "data": {"amount_due": 40, "invoice_id": "INV-1"},
            }
        ],
    )
    paid = {
        "id": "evt-0002",
        "type": "invoice.paid",
        "occurred_at": "2026-01-06T09:00:00Z",
        "contact": {"id": "c-1"},
        "data": {"invoice_id": "INV-1"},
    }
    shipped = {
        "id": "evt-0003",
        "type": "order.shipped",
        "occurred_at": "2026-01-06T09:00:01Z",
        "contact": {"id": "c-2", "email": "bo@example.com"},
        "data": {"order_id": "O-9"},
    }
    add(
        "array of business events: one webhook-id for the request, one provider_event_id per event",
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4X",
        1767690000,
        [paid, shipped],
        [
            {"type": "invoice.paid", "provider_event_id": "evt-0002", "contact_id": "c-1"},
            {"type": "order.shipped", "provider_event_id": "evt-0003", "contact_id": "c-2"},
        ],
    )
    add(
        "signed with the OLD secret during rotation (config lists both secrets)",
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4Y",
        1767690100,
        {**paid, "id": "evt-0004"},
        [{"type": "invoice.paid", "provider_event_id": "evt-0004", "contact_id": "c-1"}],
        k=old_key,
        note="old_key = whsec_ + b64(sha256(b'journeys old app secret')); accepted when either configured secret "
        "matches",
    )
    replay = dict(payloads[0])
    replay = {
        **replay,
        "description": "replay of the first request (same webhook-id, same signature): same 2xx, "
        "counted as a duplicate, no new event",
        "expected": {
            "replay_guard": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            "events": [],
            "duplicate_of": payloads[0]["description"],
        },
    }
    payloads.append(replay)

    write(
        "events",
        {
            "provider": "events",
            "scheme": "Standard Webhooks (symmetric v1)",
            "source": {
                "official_vectors": [src],
                "spec": "standard-webhooks/standard-webhooks spec/standard-webhooks.md (commit b2fa7b8719fb): "
                "signed content 'msg_id.timestamp.payload', HMAC-SHA256, secret base64 with whsec_ "
                "prefix, header 'v1,<base64>' space-separated list",
                "payloads": spec,
            },
            "notes": [
                "The python SDK decodes the secret with b64decode(secret + '==') so unpadded secrets work; "
                "'whsec_' is optional.",
                "The SDK's tolerance is 5 minutes both ways (matches SPEC section 5); it uses the wall clock, so "
                "tests must freeze time (the vectors' timestamps are fixed).",
                "The python SDK splits each signature on ',' without checking: a malformed header raises "
                "ValueError rather than WebhookVerificationError; map any exception to 401.",
                "The SDK accepts float timestamps ('1614265330.0'); the spec says integer seconds.",
            ],
            "signature_vectors": vectors,
            "payloads": payloads,
        },
    )


def main() -> int:
    for fn in (twilio, sendgrid, mailgun, telnyx, whatsapp, vonage, events):
        fn()
    versions = {
        p: version(p)
        for p in ("twilio", "sendgrid", "standardwebhooks", "telnyx", "pynacl", "cryptography", "PyJWT", "multidict")
    }
    print("package versions:", versions)
    if CHECKS.failed:
        print("FAILED CHECKS:", *CHECKS.failed, sep="\n  ")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
