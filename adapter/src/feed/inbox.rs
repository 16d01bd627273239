//! Inboxes: each buyer's private part of the feed, where the waiting list tells them their turn came
//! (an `offer`). A connection opens one inbox with the buyer's secret inbox key (from `POST /api/users`),
//! or in JWT mode with a buyer token; offers then reach that connection and no other.
//!
//! The worker names an inbox by its id, the hex sha256 of the key, so the NOTIFY channel (which any role
//! may LISTEN to) never carries the key itself; the adapter hashes a key the same way the extension does,
//! and asks the extension (`inbox_of`) for a token's buyer, whose key it never sees.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::app::App;
use crate::db::queries;
use crate::http::errors::ApiError;

/// What a client opens its inbox with.
#[derive(Debug, Clone)]
pub enum Credential {
    /// The buyer's inbox key, as `POST /api/users` answered it.
    Key(String),
    /// A buyer token (JWT mode): the inbox of its subject.
    Token(String),
}

/// Keys are 64 characters or so; a longer one is a mistake, not worth hashing.
const MAX_CREDENTIAL: usize = 4096;

/// `encode(sha256(convert_to(key, 'UTF8')), 'hex')`, as the extension names inboxes.
pub fn id_of_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The inbox id a credential opens. A key is not checked against the buyers: a wrong one opens an inbox
/// nobody writes to, and checking would tell a guesser which keys exist.
pub async fn open(app: &App, credential: &Credential) -> Result<Arc<str>, ApiError> {
    match credential {
        Credential::Key(key) if key.is_empty() || key.len() > MAX_CREDENTIAL => Err(
            ApiError::bad_request("the inbox key must be the inboxKey POST /api/users answered"),
        ),
        Credential::Key(key) => Ok(id_of_key(key).into()),
        Credential::Token(token) if token.len() > MAX_CREDENTIAL => {
            Err(ApiError::unauthorized("the buyer token is not a valid JWT"))
        }
        Credential::Token(token) => {
            let buyer = app.access.buyer_of(token)?;
            let client = app.pool.connection().await?;
            queries::inbox_of(&client, buyer)
                .await?
                .map(Arc::from)
                .ok_or_else(|| ApiError::not_found(format!("buyer {buyer} does not exist")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_inboxes_as_the_extension_does() {
        // SELECT encode(sha256(convert_to('abc', 'UTF8')), 'hex')
        assert_eq!(
            id_of_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
