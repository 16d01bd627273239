//! `GET /openapi.json`: an OpenAPI 3 description of the REST API, written out by hand next to the router
//! it describes. The adapter's tests check that every route here answers and every route answers here.

use serde_json::{json, Value};

fn envelope(data: Value) -> Value {
    json!({
        "type": "object",
        "required": ["success", "data"],
        "properties": { "success": { "type": "boolean", "enum": [true] }, "data": data }
    })
}

fn ok(description: &str, data: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": envelope(data) } } })
}

fn failure(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Failure" } } }
    })
}

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn body(required: &[&str], properties: Value) -> Value {
    json!({
        "required": true,
        "content": { "application/json": { "schema": {
            "type": "object", "required": required, "properties": properties
        } } }
    })
}

fn id_parameter(description: &str) -> Value {
    json!({ "name": "id", "in": "path", "required": true, "description": description,
            "schema": { "type": "string", "format": "uuid" } })
}

pub fn document() -> Value {
    let uuid = json!({ "type": "string", "format": "uuid" });
    let time = json!({ "type": "string", "format": "date-time" });
    let units = json!({
        "variant": { "type": "string", "nullable": true, "description":
            "the size's label (null on a drop without sizes); with quantity, left out for one unit of a drop without sizes" },
        "quantity": { "type": "integer", "minimum": 1, "description": "units held or sold together" } });
    let user_id = json!({ "type": "string", "format": "uuid",
        "description": "The buyer. In JWT mode it may be left out (the token's sub is used) and must match it when given." });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "dropstock HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Limited-edition product drops: list drops, reserve a unit for a short hold, buy it. \
                Every answer is {success, data} or {success: false, message, code}; code is the extension's \
                SQLSTATE when the database refused the request. POST bodies must be sent as application/json \
                (415 unsupported_media_type otherwise) and arrive whole within the body timeout (408 \
                request_timeout). Any request may be answered 503 unavailable: the database is unreachable or \
                did not answer in time, or the connection cap is reached. Every GET also answers HEAD."
        },
        "components": {
            "securitySchemes": {
                "adminToken": { "type": "http", "scheme": "bearer",
                    "description": "DROPSTOCK_ADMIN_TOKEN" },
                "buyerToken": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "HS256 with DROPSTOCK_JWT_SECRET; sub is the user id. Required only in JWT mode." }
            },
            "schemas": {
                "Failure": { "type": "object", "required": ["success", "message", "code"], "properties": {
                    "success": { "type": "boolean", "enum": [false] },
                    "message": { "type": "string" },
                    "code": { "type": "string", "example": "DS020" } } },
                "Purchase": { "type": "object", "properties": {
                    "id": uuid, "createdAt": time,
                    "user": { "type": "object", "description": "The buyer, by name only: ids go to their owner alone",
                        "properties": { "username": { "type": "string" } } } } },
                "Drop": { "type": "object", "properties": {
                    "id": uuid, "name": { "type": "string" }, "price": { "type": "number" },
                    "totalStock": { "type": "integer" }, "availableStock": { "type": "integer" },
                    "heldStock": { "type": "integer" }, "soldStock": { "type": "integer" },
                    "startsAt": time, "endsAt": { "type": "string", "format": "date-time", "nullable": true },
                    "holdSeconds": { "type": "integer" }, "perUserLimit": { "type": "integer" },
                    "createdAt": time,
                    "purchases": { "type": "array", "maxItems": 3, "items": schema("Purchase"),
                        "description": "The three most recent purchases, newest first." },
                    "maxExtensions": { "type": "integer", "description":
                        "How many times a hold may be extended; left out when 0 (never)." },
                    "variants": { "type": "array", "maxItems": 100, "items": schema("Variant"), "description":
                        "A sized drop's sizes; left out for a drop without sizes." } } },
                "Variant": { "type": "object", "properties": {
                    "label": { "type": "string", "maxLength": 32 }, "totalStock": { "type": "integer" },
                    "availableStock": { "type": "integer" } } },
                "Reservation": { "type": "object", "properties": {
                    "id": uuid, "dropId": uuid, "userId": uuid,
                    "status": { "type": "string", "enum": ["reserved", "purchased", "expired", "cancelled"] },
                    "expiresAt": time, "createdAt": time,
                    "variant": units["variant"], "quantity": units["quantity"] } },
                "Sale": { "type": "object", "properties": {
                    "id": uuid, "reservationId": uuid, "dropId": uuid, "userId": uuid,
                    "price": { "type": "number", "description": "per unit" }, "createdAt": time,
                    "variant": units["variant"], "quantity": units["quantity"] } },
                "User": { "type": "object", "properties": {
                    "id": uuid, "username": { "type": "string" }, "createdAt": time } }
            }
        },
        "paths": {
            "/api/drops": {
                "get": {
                    "summary": "Drops that have not ended, soonest first, with exact stock and the latest buyers",
                    "responses": { "200": ok("the drops", json!({ "type": "array", "items": schema("Drop") })),
                                   "503": failure("database unavailable") }
                },
                "post": {
                    "summary": "Create a drop (admin token, unless started with --open-drop-creation)",
                    "security": [{ "adminToken": [] }],
                    "requestBody": body(&["name", "price"], json!({
                        "name": { "type": "string" }, "price": { "type": "number" },
                        "totalStock": { "type": "integer", "minimum": 1 },
                        "startsAt": { "type": "string", "description":
                            "RFC 3339, or \"DD-MM-YYYY, hh:mm A\" read as UTC; default now" },
                        "endsAt": { "type": "string", "description": "RFC 3339 or \"DD-MM-YYYY, hh:mm A\"; default none" },
                        "holdSeconds": { "type": "integer", "default": 60 },
                        "perUserLimit": { "type": "integer", "default": 1, "description": "units per buyer, across sizes" },
                        "variants": { "type": "object", "additionalProperties": { "type": "integer", "minimum": 1 },
                            "maxProperties": 100, "example": { "US 8": 2, "US 9": 3 }, "description":
                            "Sizes and their stock (labels trimmed, 1-32 characters, unique); totalStock may then \
                             be left out, or must be their sum" },
                        "maxExtensions": { "type": "integer", "default": 0, "minimum": 0, "maximum": 100,
                            "description": "how many times a buyer may extend a hold by holdSeconds" } })),
                    "responses": { "201": ok("the new drop", schema("Drop")),
                                   "400": failure("malformed body"), "401": failure("missing or wrong admin token"),
                                   "403": failure("creating drops over HTTP is disabled (no admin token configured)"),
                                   "413": failure("body over 64 KiB"), "422": failure("invalid value (22023)") }
                }
            },
            "/api/drops/{id}": {
                "get": {
                    "summary": "One drop, ended or not",
                    "parameters": [id_parameter("drop id")],
                    "responses": { "200": ok("the drop", schema("Drop")),
                                   "400": failure("id is not a UUID"), "404": failure("unknown drop (DS001)") }
                }
            },
            "/api/reservations": {
                "post": {
                    "summary": "Hold units (of one size on a sized drop) for the drop's hold time, all or none; \
                                the same buyer's retry returns the same hold",
                    "security": [{}, { "buyerToken": [] }],
                    "requestBody": body(&["dropId"], json!({ "dropId": uuid, "userId": user_id,
                        "variant": { "type": "string", "description": "the size's label; required on a sized drop" },
                        "quantity": { "type": "integer", "minimum": 1, "maximum": 10000, "default": 1 } })),
                    "responses": {
                        "201": ok("a new hold", schema("Reservation")),
                        "200": ok("the buyer's existing live hold", schema("Reservation")),
                        "400": failure("malformed body"), "401": failure("JWT mode: missing or invalid buyer token"),
                        "403": failure("JWT mode: userId is not the token's buyer"),
                        "404": failure("unknown drop (DS001) or user (DS002)"),
                        "409": failure("sold out or fewer units left than asked (DS020), limit reached (DS021), \
                                        not started (DS010)"),
                        "410": failure("drop ended (DS011)"),
                        "422": failure("no size named on a sized drop (DS012), no such size (DS013), \
                                        quantity out of range (22023)") }
                }
            },
            "/api/reservations/{id}/extend": {
                "post": {
                    "summary": "Give a live hold the drop's hold time once more, when the drop allows it",
                    "security": [{}, { "buyerToken": [] }],
                    "parameters": [id_parameter("reservation id")],
                    "requestBody": body(&[], json!({ "userId": user_id })),
                    "responses": {
                        "200": ok("the hold, with its new expiry", schema("Reservation")),
                        "403": failure("not the buyer's hold (DS031)"), "404": failure("unknown reservation (DS003)"),
                        "409": failure("not allowed on this drop, or no extensions left (DS034); purchased (DS033)"),
                        "410": failure("hold expired (DS030) or cancelled (DS032)") }
                }
            },
            "/api/reservations/{id}/cancel": {
                "post": {
                    "summary": "Give a live hold back; its unit is available again at once",
                    "security": [{}, { "buyerToken": [] }],
                    "parameters": [id_parameter("reservation id")],
                    "requestBody": body(&[], json!({ "userId": user_id })),
                    "responses": {
                        "200": ok("the hold, now cancelled (or as it was if it had already ended)", schema("Reservation")),
                        "403": failure("not the buyer's hold (DS031)"), "404": failure("unknown reservation (DS003)"),
                        "409": failure("already purchased (DS033)") }
                }
            },
            "/api/purchases": {
                "post": {
                    "summary": "Buy the unit a live hold keeps; a retry returns the same sale",
                    "security": [{}, { "buyerToken": [] }],
                    "requestBody": body(&["reservationId"], json!({ "reservationId": uuid, "userId": user_id })),
                    "responses": {
                        "200": { "description": "the sale; message is \"Purchased successfully\"",
                                 "content": { "application/json": { "schema": {
                                     "type": "object", "properties": {
                                         "success": { "type": "boolean" }, "message": { "type": "string" },
                                         "data": schema("Sale") } } } } },
                        "403": failure("not the buyer's hold (DS031)"), "404": failure("unknown reservation (DS003)"),
                        "410": failure("hold expired (DS030) or cancelled (DS032)") }
                }
            },
            "/api/users": {
                "post": {
                    "summary": "Register a buyer (admin token in JWT mode, and whenever id is given)",
                    "requestBody": body(&["username"], json!({ "username": { "type": "string", "maxLength": 64 },
                        "id": { "type": "string", "format": "uuid",
                                "description": "the buyer's id, chosen by the operator (admin token); default a new one" } })),
                    "responses": { "201": ok("the buyer", schema("User")),
                                   "401": failure("id given (or JWT mode) without the admin token"),
                                   "403": failure("id given (or JWT mode) and no admin token configured"),
                                   "409": failure("username taken (DS040), or a buyer with that id exists (DS041)"),
                                   "422": failure("empty or too long (22023)") }
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Database reachable and extension installed",
                    "responses": { "200": ok("healthy", json!({ "type": "object", "properties": {
                                        "status": { "type": "string" }, "database": { "type": "string" },
                                        "listening": { "type": "boolean" } } })),
                                   "503": failure("database unreachable or extension missing") }
                }
            },
            "/metrics": {
                "get": { "summary": "Prometheus metrics (OpenMetrics text)",
                         "responses": { "200": { "description": "metrics",
                             "content": { "application/openmetrics-text": { "schema": { "type": "string" } } } } } }
            },
            "/openapi.json": {
                "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI 3 document" } } }
            },
            "/ws": {
                "get": {
                    "summary": "WebSocket live feed: snapshot, then stock, purchase and resync messages",
                    "parameters": [{ "name": "drop", "in": "query", "required": false,
                                     "description": "only this drop's messages", "schema": { "type": "string", "format": "uuid" } }],
                    "responses": { "101": { "description": "switching to the WebSocket protocol" },
                                   "400": failure("not a WebSocket handshake, or drop is not a UUID"),
                                   "404": failure("unknown drop (DS001)") }
                }
            },
            "/socket.io/": {
                "get": {
                    "summary": "Socket.IO live feed (Engine.IO v4 long-polling, or the WebSocket upgrade): stock:update \
                                (no payload), stock, purchase and resync events",
                    "responses": { "200": { "description": "Engine.IO packets" },
                                   "101": { "description": "switching to the WebSocket protocol" },
                                   "403": failure("from a page whose origin is not allowed") }
                },
                "post": {
                    "summary": "Socket.IO packets from a long-polling client",
                    "responses": { "200": { "description": "ok" },
                                   "403": failure("from a page whose origin is not allowed") }
                }
            },
            "/": {
                "get": { "summary": "The drop page (HTML)", "responses": { "200": { "description": "HTML page" } } }
            }
        }
    })
}
