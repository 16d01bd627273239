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

fn user_id_schema() -> Value {
    json!({ "type": "string", "format": "uuid",
        "description": "The buyer. In JWT mode it may be left out (the token's sub is used) and must match it when given." })
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
    let sizes = json!({ "type": "array", "items": { "type": "string" }, "nullable": true,
        "description": "the sizes waited for (any of them will do); null on a drop without sizes" });
    let wanted = json!({ "userId": user_id_schema(),
        "variant": { "type": "string", "description": "one size's label (sized drops)" },
        "variants": { "type": "array", "items": { "type": "string" },
            "description": "several sizes, any of which will do; not with variant" },
        "quantity": { "type": "integer", "minimum": 1, "maximum": 10000, "default": 1,
            "description": "units wanted together (all or nothing)" } });
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
                    "id": uuid, "username": { "type": "string" }, "createdAt": time,
                    "inboxKey": { "type": "string", "description":
                        "The secret that opens the buyer's inbox on the feed (/ws ?inbox=, Socket.IO auth). \
                         Answered here only, once: keep it." } } },
                "WaitlistEntry": { "type": "object", "properties": {
                    "dropId": uuid, "userId": uuid,
                    "position": { "type": "integer", "minimum": 1, "description": "1 = next in line" },
                    "variants": sizes.clone(), "quantity": units["quantity"], "joinedAt": time } },
                "Waitlist": { "type": "object", "properties": {
                    "position": { "type": "integer", "nullable": true,
                        "description": "the buyer's place (1 = next); null when not waiting or no buyer named" },
                    "waiting": { "type": "integer", "description": "buyers waiting on the drop" } } },
                "DrawEntry": { "type": "object", "properties": {
                    "id": uuid, "dropId": uuid, "userId": uuid, "variants": sizes.clone(),
                    "quantity": units["quantity"], "enteredAt": time } },
                "Draw": { "type": "object", "properties": {
                    "entries": { "type": "integer" },
                    "drawnAt": { "type": "string", "format": "date-time", "nullable": true },
                    "seed": { "type": "string", "nullable": true, "description": "published once drawn" },
                    "winners": { "type": "integer", "nullable": true, "description": "entries offered units when drawn" },
                    "order": { "type": "array", "description": "by place; empty before the draw",
                        "items": { "type": "object", "properties": {
                            "place": { "type": "integer" }, "entryId": uuid, "username": { "type": "string" },
                            "variants": sizes.clone(), "quantity": units["quantity"],
                            "ticket": { "type": "string", "description": "hex sha256(seed || entry id), the sort key" } } } } } },
                "BuyerHold": { "type": "object", "properties": {
                    "id": uuid, "dropId": uuid, "dropName": { "type": "string" }, "userId": uuid,
                    "status": { "type": "string", "enum": ["reserved"] }, "expiresAt": time, "createdAt": time,
                    "offered": { "type": "boolean", "description": "made by the waiting list, not asked for" },
                    "variant": units["variant"], "quantity": units["quantity"] } }
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
                            "description": "how many times a buyer may extend a hold by holdSeconds" },
                        "mode": { "type": "string", "enum": ["race", "draw"], "default": "race", "description":
                            "race: first come, first served; draw: buyers enter between startsAt and endsAt \
                             (required), then a drawn order becomes the waiting list" },
                        "cooldownSeconds": { "type": "integer", "minimum": 0, "description":
                            "how long a buyer whose hold ran out or was cancelled while others waited may not \
                             reserve this drop again; default holdSeconds" } })),
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
            "/api/drops/{id}/waitlist": {
                "get": {
                    "summary": "The waiting list's length, and a buyer's place in it",
                    "security": [{}, { "buyerToken": [] }],
                    "parameters": [id_parameter("drop id"),
                        { "name": "userId", "in": "query", "required": false, "schema": uuid,
                          "description": "the buyer whose place to answer (JWT mode: the token's buyer, or must match it)" }],
                    "responses": { "200": ok("the line", schema("Waitlist")),
                                   "400": failure("id or userId is not a UUID"),
                                   "401": failure("JWT mode: userId named without a valid buyer token"),
                                   "403": failure("JWT mode: userId is not the token's buyer"),
                                   "404": failure("unknown drop (DS001)") }
                },
                "post": {
                    "summary": "Join the drop's waiting list (sold out or fully held): when units come back, the first \
                                in line gets them as a hold (an offer); joining again returns the same place",
                    "security": [{}, { "buyerToken": [] }],
                    "parameters": [id_parameter("drop id")],
                    "requestBody": body(&[], wanted.clone()),
                    "responses": {
                        "201": ok("a new place", schema("WaitlistEntry")),
                        "200": ok("the place the buyer already had", schema("WaitlistEntry")),
                        "400": failure("malformed body, or both variant and variants"),
                        "401": failure("JWT mode: missing or invalid buyer token"),
                        "403": failure("JWT mode: userId is not the token's buyer"),
                        "404": failure("unknown drop (DS001) or user (DS002)"),
                        "409": failure("not started (DS010), a draw not drawn yet: enter it (DS014), limit (DS021), \
                                        units are free: reserve them (DS023), the buyer already holds one (DS024)"),
                        "410": failure("drop ended (DS011)"),
                        "422": failure("size missing (DS012) or unknown (DS013), quantity out of range (22023)") }
                }
            },
            "/api/drops/{id}/waitlist/leave": {
                "post": {
                    "summary": "Leave the drop's waiting list; units kept for the buyer go on down the line",
                    "security": [{}, { "buyerToken": [] }],
                    "parameters": [id_parameter("drop id")],
                    "requestBody": body(&[], json!({ "userId": user_id })),
                    "responses": {
                        "200": ok("left is false when the buyer was not waiting", json!({ "type": "object", "properties": {
                            "dropId": uuid, "userId": uuid, "left": { "type": "boolean" } } })),
                        "401": failure("JWT mode: missing or invalid buyer token"),
                        "403": failure("JWT mode: userId is not the token's buyer") }
                }
            },
            "/api/drops/{id}/draw": {
                "get": {
                    "summary": "A draw drop's entries, and once drawn its seed and order (usernames only)",
                    "parameters": [id_parameter("drop id")],
                    "responses": { "200": ok("the draw", schema("Draw")),
                                   "404": failure("unknown drop (DS001)"), "409": failure("not a draw (DS015)") }
                },
                "post": {
                    "summary": "Run the draw now (admin token); entries must have closed. Without a seed a random one is used",
                    "security": [{ "adminToken": [] }],
                    "parameters": [id_parameter("drop id")],
                    "requestBody": body(&[], json!({ "seed": { "type": "string", "minLength": 1, "maxLength": 200 } })),
                    "responses": { "201": ok("the draw, drawn", schema("Draw")),
                                   "401": failure("missing or wrong admin token"),
                                   "403": failure("no admin token configured"),
                                   "404": failure("unknown drop (DS001)"),
                                   "409": failure("not a draw (DS015), already drawn (DS016), entries still open (DS017)"),
                                   "422": failure("seed empty or over 200 characters (22023)") }
                }
            },
            "/api/drops/{id}/draw/entries": {
                "post": {
                    "summary": "Enter a draw drop while its entries are open; entering again returns the same entry",
                    "security": [{}, { "buyerToken": [] }],
                    "parameters": [id_parameter("drop id")],
                    "requestBody": body(&[], wanted),
                    "responses": {
                        "201": ok("a new entry", schema("DrawEntry")),
                        "200": ok("the buyer's entry from before", schema("DrawEntry")),
                        "400": failure("malformed body, or both variant and variants"),
                        "404": failure("unknown drop (DS001) or user (DS002)"),
                        "409": failure("entries not open yet (DS010), not a draw: reserve it (DS015), limit (DS021)"),
                        "410": failure("entries closed (DS011)"),
                        "422": failure("size missing (DS012) or unknown (DS013), quantity out of range (22023)") }
                }
            },
            "/api/users/{id}/reservations": {
                "get": {
                    "summary": "The buyer's live holds, newest first, offers from waiting lists among them (JWT mode: \
                                the buyer's own token only)",
                    "security": [{}, { "buyerToken": [] }],
                    "parameters": [id_parameter("user id")],
                    "responses": { "200": ok("the holds", json!({ "type": "array", "items": schema("BuyerHold") })),
                                   "400": failure("id is not a UUID"),
                                   "401": failure("JWT mode: missing or invalid buyer token"),
                                   "403": failure("JWT mode: not the token's buyer") }
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
                        "409": failure("sold out, fewer units left than asked, or others are waiting: join the \
                                        waiting list (DS020); limit reached (DS021), not started (DS010), a draw \
                                        drop (DS014)"),
                        "429": failure("cooldown after a lapsed or cancelled hold (DS022; Retry-After), or rate limited"),
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
                    "responses": { "201": ok("the buyer, with inboxKey (answered here only)", schema("User")),
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
                    "summary": "WebSocket live feed: snapshot, then stock, purchase and resync messages; offer messages \
                                for the one inbox the client subscribed to",
                    "parameters": [{ "name": "drop", "in": "query", "required": false,
                                     "description": "only this drop's messages", "schema": { "type": "string", "format": "uuid" } },
                                   { "name": "inbox", "in": "query", "required": false, "schema": { "type": "string" },
                                     "description": "the buyer's inboxKey: their offers come to this connection" },
                                   { "name": "token", "in": "query", "required": false, "schema": { "type": "string" },
                                     "description": "JWT mode: a buyer token, whose buyer's offers come to this connection" }],
                    "responses": { "101": { "description": "switching to the WebSocket protocol" },
                                   "400": failure("not a WebSocket handshake, or drop is not a UUID"),
                                   "401": failure("token given and not valid"),
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
