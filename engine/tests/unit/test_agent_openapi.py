"""The node API's OpenAPI document: a valid OpenAPI 3.1 document that documents every
route the server registers, and nothing else.  (Real answers are checked against it in
engine/tests/integration/test_agent.py.)"""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from cairn.agent import api
from cairn.agent.config import NodeConfig
from cairn.agent.openapi import document
from cairn.agent.ops import Agent


@pytest.fixture
def app(tmp_path):
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123")
    return api.make_app(Agent(NodeConfig(name="n", state_dir=tmp_path, token_file=token)))


def test_the_document_is_valid_openapi_3_1():
    doc = document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_every_route_is_documented_and_every_documented_route_exists(app):
    served = api.registered_routes(app)
    documented = {
        (method.upper(), path) for path, ops in document()["paths"].items() for method in ops
    }
    assert served == documented
    assert len(served) == len(api.ROUTES)


def test_only_health_is_open_and_errors_are_documented():
    for path, ops in document()["paths"].items():
        for method, op in ops.items():
            open_ = op.get("security") == []
            assert open_ == ((method.upper(), path) in api.OPEN), (method, path)
            if not open_:
                assert "401" in op["responses"], (method, path)
            for code, resp in op["responses"].items():
                if code.startswith(("4", "5")):
                    schema = resp["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}


def test_a_missing_route_would_be_caught(app):
    doc = document()
    del doc["paths"]["/v1/volumes/{vol}/rollback"]
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert api.registered_routes(app) - documented == {("POST", "/v1/volumes/{vol}/rollback")}
