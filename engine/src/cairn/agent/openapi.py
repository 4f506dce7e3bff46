"""The OpenAPI 3.1 document of the node API (``GET /openapi.json``).  A test checks it
against the routes the server registers and real answers against its schemas."""

from __future__ import annotations

from typing import Any

from cairn import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_NULLABLE_INT = {"type": ["integer", "null"]}
_OBJ = {"type": "object"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Health": {
        "type": "object",
        "required": ["ok", "node", "version"],
        "properties": {
            "ok": {"const": True},
            "node": {"type": "string"},
            "version": {"type": "integer", "description": "version of the desired state"},
        },
    },
    "Process": {
        "type": ["object", "null"],
        "description": "the child process serving it, as the supervisor sees it",
        "required": ["name", "state", "pid", "starts", "restarts", "last_exit"],
        "properties": {
            "name": {"type": "string"},
            "state": {"enum": ["starting", "running", "backoff", "stopping", "stopped"]},
            "pid": _NULLABLE_INT,
            "starts": {"type": "integer"},
            "restarts": {"type": "integer"},
            "uptime_s": {"type": ["number", "null"]},
            "next_delay_s": {"type": ["number", "null"]},
            "last_exit": {"type": ["object", "null"], "description": "code, signal, log"},
        },
    },
    "PoolCreate": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"},
            "backend": {"enum": ["embedded", "zfs"], "default": "embedded"},
            "path": {"type": "string", "description": "embedded: directory of the store"},
            "zpool": {"type": "string", "description": "zfs: pool or POOL/DATASET"},
            "listen": {"type": "string", "description": "HOST:PORT (default ADDRESS:3232+)"},
        },
    },
    "Pool": {
        "type": "object",
        "required": ["name", "node", "backend", "listen", "address", "process"],
        "properties": {
            "name": {"type": "string"},
            "node": {"type": "string"},
            "backend": {"enum": ["embedded", "zfs"]},
            "listen": {"type": "string"},
            "address": {"type": "string", "description": "where targets reach it"},
            "path": {"type": "string"},
            "zpool": {"type": "string"},
            "capacity": {
                "type": ["object", "null"],
                "properties": {
                    "size": {"type": "integer"},
                    "used": {"type": "integer"},
                    "free": {"type": "integer"},
                },
            },
            "process": _ref("Process"),
            "volumes": {
                "type": ["array", "null"],
                "items": {"type": "string"},
                "description": "GET /v1/pools/{pool} only: the volumes with a replica on "
                "the pool (null, with volumes_error, when its server does not answer)",
            },
            "volumes_error": {"type": "string"},
        },
    },
    "Chap": {
        "type": "object",
        "required": ["username", "secret"],
        "properties": {
            "username": {"type": "string"},
            "secret": {"type": "string", "minLength": 12, "maxLength": 255},
            "target_username": {"type": "string"},
            "target_secret": {"type": "string", "minLength": 12, "maxLength": 255},
        },
    },
    "VolumeCreate": {
        "type": "object",
        "required": ["name", "size", "replicas"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"},
            "size": {
                "type": ["integer", "string"],
                "description": "bytes, or with a K/M/G/T suffix (powers of 1024)",
            },
            "replicas": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "pattern": "^[^/]+/[^/]+$"},
                "description": "NODE/POOL, each on a different node",
            },
            "block_size": {"enum": [512, 4096], "default": 512},
            "portal": {"type": "string", "description": "HOST:PORT (default ADDRESS:3260+)"},
            "iqn": {"type": "string"},
            "consistency_factor": {"type": ["integer", "null"], "minimum": 1},
            "chap": _ref("Chap"),
            "acl": {"type": "array", "items": {"type": "string"}},
            "hold_time": {"type": "number", "exclusiveMinimum": 0},
            "replica_timeout": {"type": "number", "exclusiveMinimum": 0},
            "allow_same_node": {
                "type": "boolean",
                "default": False,
                "description": "let replicas share a node (one-machine setups; no protection "
                "against losing that node)",
            },
        },
    },
    "Volume": {
        "type": "object",
        "required": [
            "name",
            "node",
            "size",
            "block_size",
            "portal",
            "iqn",
            "replicas",
            "addresses",
            "consistency_factor",
            "chap",
            "acl",
            "status_port",
            "process",
        ],  # fmt: skip
        "properties": {
            "name": {"type": "string"},
            "node": {"type": "string"},
            "size": {"type": "integer"},
            "block_size": {"enum": [512, 4096]},
            "portal": {"type": "string"},
            "iqn": {"type": "string"},
            "replicas": {"type": "array", "items": {"type": "string"}},
            "addresses": {"type": "object", "additionalProperties": {"type": "string"}},
            "consistency_factor": _NULLABLE_INT,
            "chap": {
                "type": ["object", "null"],
                "properties": {"username": {"type": "string"}},
                "additionalProperties": False,
            },
            "acl": {"type": "array", "items": {"type": "string"}},
            "status_port": {"type": "integer"},
            "origin": {"type": "object"},
            "allow_same_node": {"type": "boolean"},
            "left": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "replica remove: the removed replica's data if it could not "
                "be deleted from its pool, with the reason",
            },
            "process": _ref("Process"),
            "status": {"oneOf": [_ref("TargetStatus"), {"type": "null"}]},
            "status_error": {"type": ["string", "null"]},
        },
    },
    "TargetStatus": {
        "type": "object",
        "description": "the target's own status document (GET /status of its API)",
        "required": ["volume", "size", "state", "replicas"],
        "properties": {
            "volume": {"type": "string"},
            "size": {"type": "integer"},
            "block_size": {"type": "integer"},
            "replication_factor": {"type": "integer"},
            "consistency_factor": {"type": "integer"},
            "writable": {"type": "boolean"},
            "state": {"enum": ["healthy", "degraded", "offline"]},
            "reason": {"type": "string"},
            "stats": {"type": "object", "additionalProperties": {"type": "integer"}},
            "replicas": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["address", "state"],
                    "properties": {
                        "address": {"type": "string"},
                        "state": {"type": "string"},
                        "trusted": {"type": "boolean"},
                        "inflight": {"type": "integer"},
                        "rebuild": {"type": ["object", "null"]},
                    },
                },
            },
        },
    },
    "Confirm": {
        "type": "object",
        "required": ["confirm"],
        "properties": {
            "confirm": {"type": "string", "description": "the name of what is destroyed"},
            "force": {"type": "boolean"},
        },
    },
    "Deleted": {
        "type": "object",
        "required": ["deleted"],
        "properties": {
            "deleted": {"type": "string"},
            "left": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "volume delete: replicas whose data could not be deleted "
                "from their pool, with the reason (the volume itself is gone)",
            },
        },
    },
    "Resize": {
        "type": "object",
        "required": ["size"],
        "additionalProperties": False,
        "properties": {"size": {"type": ["integer", "string"]}},
    },
    "ReplicaAdd": {
        "type": "object",
        "required": ["pool"],
        "properties": {"pool": {"type": "string", "description": "NODE/POOL"}},
    },
    "SnapshotCreate": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}},
    },
    "Rollback": {
        "type": "object",
        "required": ["snapshot", "confirm"],
        "properties": {"snapshot": {"type": "string"}, "confirm": {"type": "string"}},
    },
    "CloneCreate": {
        "type": "object",
        "required": ["name", "snapshot"],
        "properties": {
            "name": {"type": "string"},
            "snapshot": {"type": "string"},
            "portal": {"type": "string"},
            "iqn": {"type": "string"},
        },
    },
    "TargetAnswer": {"type": ["object", "array"], "description": "the target's answer"},
}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "bad input",
        401: "no or a wrong bearer token",
        404: "no such thing",
        409: "conflict with the current state",
        503: "not reachable now (a peer, a child starting)",
        500: "internal error",
    }
    return {
        str(c): {
            "description": text[c],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        for c in codes
    }


def _op(
    summary: str,
    ok: tuple[int, Any],
    body: str | None = None,
    errors: tuple[int, ...] = (),
    public: bool = False,
    params: tuple[str, ...] = (),
) -> dict[str, Any]:
    code, schema = ok
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            str(code): {"description": "done", "content": {"application/json": {"schema": schema}}},
            **_errors(*sorted({*errors, *(() if public else (401,)), 500})),
        },
    }
    if params:
        op["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params
        ]
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if public:
        op["security"] = []
    return op


def _list(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


V = ("vol",)


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v1/health": {
            "get": _op("the agent answers (no token needed)", (200, _ref("Health")), public=True)
        },
        "/openapi.json": {"get": _op("this document", (200, {"type": "object"}))},
        "/v1/pools": {
            "get": _op("the pools of this node", (200, _list("Pool"))),
            "post": _op(
                "create a pool and start its server",
                (201, _ref("Pool")),
                "PoolCreate",
                (400, 409),
            ),
        },
        "/v1/pools/{pool}": {
            "get": _op("one pool", (200, _ref("Pool")), errors=(404,), params=("pool",)),
            "delete": _op(
                "stop a pool's server and forget it (its data stays on disk); refused while "
                "a volume has a replica there unless force",
                (200, _ref("Deleted")),
                "Confirm",
                (400, 404, 409, 503),
                params=("pool",),
            ),
        },
        "/v1/volumes": {
            "get": _op("the volumes whose target runs here", (200, _list("Volume"))),
            "post": _op(
                "create a volume: replicas on pools of different nodes",
                (201, _ref("Volume")),
                "VolumeCreate",
                (400, 404, 409, 503),
            ),
        },
        "/v1/volumes/{vol}": {
            "get": _op(
                "one volume with its target's status",
                (200, _ref("Volume")),
                errors=(404,),
                params=V,
            ),  # fmt: skip
            "delete": _op(
                "stop the volume's target, forget it and delete its data on every replica; "
                "refused while clones depend on it unless force",
                (200, _ref("Deleted")),
                "Confirm",
                (400, 404, 409),
                params=V,
            ),
            "patch": _op(
                "grow the volume online (shrink is refused)",
                (200, _ref("Volume")),
                "Resize",
                (400, 404, 409, 503),
                params=V,
            ),
        },
        "/v1/volumes/{vol}/status": {
            "get": _op(
                "the target's status document",
                (200, _ref("TargetStatus")),
                errors=(404, 503),
                params=V,
            ),  # fmt: skip
        },
        "/v1/volumes/{vol}/replicas": {
            "post": _op(
                "add a replica on NODE/POOL (it is rebuilt before it votes)",
                (200, _ref("Volume")),
                "ReplicaAdd",
                (400, 404, 409, 503),
                params=V,
            ),
        },
        "/v1/volumes/{vol}/replicas/{node}/{pool}": {
            "delete": _op(
                "remove the replica on NODE/POOL",
                (200, _ref("Volume")),
                errors=(400, 404, 409, 503),
                params=("vol", "node", "pool"),
            ),
        },
        "/v1/volumes/{vol}/snapshots": {
            "get": _op(
                "the volume's snapshots",
                (200, _ref("TargetAnswer")),
                errors=(404, 503),
                params=V,
            ),  # fmt: skip
            "post": _op(
                "take a snapshot across the replicas (in quorum, behind a write barrier)",
                (201, _ref("TargetAnswer")),
                "SnapshotCreate",
                (400, 404, 409, 503),
                params=V,
            ),
        },
        "/v1/volumes/{vol}/snapshots/{snap}": {
            "delete": _op(
                "delete a snapshot on every replica holding it",
                (200, _ref("TargetAnswer")),
                "Confirm",
                (400, 404, 409, 503),
                params=("vol", "snap"),
            ),
        },
        "/v1/volumes/{vol}/rollback": {
            "post": _op(
                "roll the volume back to a snapshot (no initiator logged in)",
                (200, _ref("TargetAnswer")),
                "Rollback",
                (400, 404, 409, 503),
                params=V,
            ),
        },
        "/v1/volumes/{vol}/clones": {
            "post": _op(
                "a new volume from a snapshot, served by a target on this node",
                (201, _ref("Volume")),
                "CloneCreate",
                (400, 404, 409, 503),
                params=V,
            ),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Cairn node agent",
            "version": __version__,
            "description": "The API of one node's agent: its pools and volumes (docs/agent.md).",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
