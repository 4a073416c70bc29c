"""One OpenAPI 3.1 document for the whole platform (``tokenmall openapi``, the gateway's
``/openapi.json``), merged from the four services' own documents.

The services share path names (``/v1/members`` is referrals' registry and dividends'
engine view; ``/v1/sync``, ``/v1/parked`` are on every one), so one origin needs a
prefix per service: the merged document's paths are ``/{service}/...``, which is what
the gateway (tokenmall.gateway) serves, forwarding ``/{service}/x`` to that service's
``/x``.  Components that are the same in every service (the error body, the page of
parked events) are kept once; a name two services use for different schemas is
prefixed with the service (``wallet.EntryPublic``) and every ``$ref`` follows.
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Mapping
from typing import Any

SERVICES = ("orders", "wallet", "dividends", "referrals")
COMPONENT_KINDS = ("schemas", "responses", "parameters", "requestBodies", "headers")

TITLE = "tokenmall platform"
DESCRIPTION = (
    "The four services of a tokenmall platform behind one origin (the gateway): "
    "`/{service}/...` is that service's `/...`. The API style (README): money as decimal "
    "strings, every list a page `{items, total, offset, limit}`, ISO-8601 UTC timestamps, "
    "the error body `{code, message, field}` on every 4xx."
)


def service_documents() -> dict[str, dict[str, Any]]:
    """Each service's OpenAPI document, from its code (the app is built, not started:
    nothing connects)."""
    docs = {}
    for name in SERVICES:
        module = importlib.import_module(f"tokenmall_{name}.app")
        docs[name] = module.build_app().openapi()
    return docs


def _renamed_refs(node: Any, renames: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value in renames:
                out[key] = renames[value]
            else:
                out[key] = _renamed_refs(value, renames)
        return out
    if isinstance(node, list):
        return [_renamed_refs(v, renames) for v in node]
    return node


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def merge(docs: Mapping[str, dict[str, Any]], server_url: str = "/") -> dict[str, Any]:
    """The platform document of the services' documents ``docs`` (name → document)."""
    # a component name -> its canonical JSON per service that defines it
    defined: dict[tuple[str, str], dict[str, str]] = {}
    for service, doc in docs.items():
        for kind in COMPONENT_KINDS:
            for name, value in doc.get("components", {}).get(kind, {}).items():
                defined.setdefault((kind, name), {})[service] = _canonical(value)
    # the same everywhere it is defined: one shared component; else one per service
    shared = {key for key, forms in defined.items() if len(set(forms.values())) == 1}

    merged: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": "1", "description": DESCRIPTION},
        "servers": [{"url": server_url, "description": "the gateway (tokenmall gateway)"}],
        "paths": {},
        "components": {},
        "tags": [],
    }
    components: dict[str, dict[str, Any]] = {}
    tags: dict[str, None] = {}
    for service, doc in docs.items():
        renames: dict[str, str] = {}
        for kind in COMPONENT_KINDS:
            for name in doc.get("components", {}).get(kind, {}):
                if (kind, name) not in shared:
                    old = f"#/components/{kind}/{name}"
                    renames[old] = f"#/components/{kind}/{service}.{name}"
        doc = _renamed_refs(copy.deepcopy(doc), renames)
        for kind in COMPONENT_KINDS:
            for name, value in doc.get("components", {}).get(kind, {}).items():
                target = name if (kind, name) in shared else f"{service}.{name}"
                components.setdefault(kind, {})[target] = value
        for path, operations in doc.get("paths", {}).items():
            item: dict[str, Any] = {}
            for method, op in operations.items():
                if not isinstance(op, dict) or "responses" not in op:
                    item[method] = op  # path-level parameters, summary
                    continue
                op = dict(op)
                op["operationId"] = f"{service}.{op.get('operationId', method + path)}"
                op["tags"] = [f"{service} · {tag}" for tag in op.get("tags") or ["other"]]
                tags.update(dict.fromkeys(op["tags"]))
                item[method] = op
            merged["paths"][f"/{service}{path}"] = item
    merged["components"] = {kind: dict(sorted(v.items())) for kind, v in components.items()}
    merged["tags"] = [{"name": tag} for tag in sorted(tags)]
    return merged


def platform_document(server_url: str = "/") -> dict[str, Any]:
    return merge(service_documents(), server_url)
