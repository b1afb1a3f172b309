"""docs/openapi.json and docs/api.md stay true to the control API the server registers."""

from __future__ import annotations

import json
import re
from pathlib import Path

from markd import api

DOCS = Path(__file__).resolve().parents[2] / "docs"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def openapi() -> dict:
    return json.loads((DOCS / "openapi.json").read_text(encoding="utf-8"))


def documented_routes() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in openapi()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_api_openapi_lists_exactly_the_registered_routes() -> None:
    registered = set(api.ROUTES)

    assert documented_routes() - registered == set(), "documented but not served"
    assert registered - documented_routes() == set(), "served but not documented"
    assert len(registered) == 13


def test_api_openapi_is_version_3_1_and_its_references_resolve() -> None:
    document = openapi()
    text = json.dumps(document)
    schemas = document["components"]["schemas"]

    assert document["openapi"].startswith("3.1.")
    references = set(re.findall(r'"#/components/schemas/([A-Za-z]+)"', text))
    assert references and references <= set(schemas)
    assert {"Error", "Verdict", "Status"} <= references
    assert "Event" in schemas  # the form of each event's data: line


def test_api_openapi_verdict_schema_names_every_field_the_server_sends() -> None:
    from markd.checks.verdict import Verdict
    from markd.events import verdict_json

    sent = verdict_json(Verdict("allow", "allowed", "ok", "cdn", "api"))
    schema = openapi()["components"]["schemas"]["Verdict"]["properties"]

    assert set(sent) == set(schema)


def json_blocks(text: str) -> list[str]:
    return re.findall(r"^```json\n(.*?)^```", text, flags=re.S | re.M)


def test_api_doc_json_examples_parse() -> None:
    blocks = json_blocks((DOCS / "api.md").read_text(encoding="utf-8"))

    assert len(blocks) >= 8
    for block in blocks:
        json.loads(block)  # raises with the position of the first mistake


def test_api_doc_describes_every_route() -> None:
    text = (DOCS / "api.md").read_text(encoding="utf-8")

    missing = [f"{m} {p}" for m, p in api.ROUTES if f"`{m} {p}`" not in text]
    assert missing == []


def test_api_doc_error_examples_use_reasons_the_server_knows() -> None:
    """Every ``"error": "…"`` in the examples is a reason the api package actually sends."""
    package = Path(api.__file__).parent
    source = "".join(p.read_text(encoding="utf-8") for p in sorted(package.glob("*.py")))
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    reasons = set(re.findall(r'"error": "([a-z-]+)"', text))

    assert reasons
    assert [r for r in sorted(reasons) if f'"{r}"' not in source] == []


def test_api_openapi_event_stream_parameters_are_those_the_server_reads() -> None:
    """Every query parameter and header ``GET /v1/events`` reads (``query.get("…")``,
    ``headers.get("…")`` in markd/api/sse.py and websocket.py, and the ticket the server
    takes) is documented, and nothing more."""
    package = Path(api.__file__).parent
    source = "".join(
        (package / name).read_text(encoding="utf-8") for name in ("sse.py", "websocket.py")
    )
    read = {("query", name) for name in re.findall(r'query\.get\("([^"]+)"', source)}
    read |= {("header", name) for name in re.findall(r'headers\.get\("([^"]+)"', source)}
    server = (package / "server.py").read_text(encoding="utf-8")
    if 'request.query.get("ticket"' in server:
        read.add(("query", "ticket"))
    parameters = openapi()["paths"]["/v1/events"]["get"]["parameters"]
    documented = {
        (p["in"], p["name"].lower() if p["in"] == "header" else p["name"]) for p in parameters
    }

    assert read == {
        ("query", "kinds"),
        ("query", "since"),
        ("query", "ticket"),
        ("header", "last-event-id"),
        ("header", "upgrade"),
    }
    assert documented == read


def test_api_openapi_names_the_routes_a_session_cookie_or_a_ticket_opens() -> None:
    from markd.api.sessions import SCREEN_DEMO_ROUTES, SESSION_ROUTES, TICKET_ROUTES

    def secured_by(scheme: str) -> set[tuple[str, str]]:
        return {
            (method.upper(), path)
            for path, item in openapi()["paths"].items()
            for method, operation in item.items()
            if method in HTTP_METHODS
            and any(scheme in option for option in operation.get("security", []))
        }

    # The close takes the cookie with [api] screen_demo_pay only (its description says so).
    assert secured_by("session") == SESSION_ROUTES | SCREEN_DEMO_ROUTES
    assert secured_by("ticket") == TICKET_ROUTES


async def test_api_openapi_event_and_gap_schemas_name_what_the_server_sends() -> None:
    from markd.events import GAP_KIND, GAP_MESSAGES, EventHub

    hub = EventHub(run="0a1b2c3d")
    sent = hub.publish("scan", {}).to_json()
    gap = (await hub.subscribe(since="not an id").next(0.1)).to_json()
    schemas = openapi()["components"]["schemas"]
    gap_schema = schemas["Gap"]

    assert set(sent) == set(schemas["Event"]["properties"]) == set(schemas["Event"]["required"])
    assert re.fullmatch(schemas["Event"]["properties"]["id"]["pattern"], sent["id"])
    assert set(gap) == set(gap_schema["properties"]) == set(gap_schema["required"])
    assert gap_schema["properties"]["kind"]["const"] == gap["kind"] == GAP_KIND
    data = gap_schema["properties"]["data"]
    assert set(gap["data"]) == set(data["properties"]) == set(data["required"])
    assert data["properties"]["reason"]["enum"] == sorted(GAP_MESSAGES)
