pub mod hub;
pub mod relay;
pub mod websocket;
