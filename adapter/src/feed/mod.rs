//! The live feed: the LISTEN relay, the fan-out hub, the WebSocket and Socket.IO endpoints, and the two wire formats
//! (the worker's notices in, the clients' messages out).

pub mod hub;
pub mod inbox;
pub mod messages;
pub mod notice;
pub mod relay;
pub mod socketio;
pub mod websocket;
