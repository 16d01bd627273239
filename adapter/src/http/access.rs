//! Who may do what. Two independent switches:
//! - the admin token guards creating drops (unless drop creation is open, for trusted networks), creating
//!   a buyer with a given id, and creating buyers in JWT mode;
//! - JWT mode makes buyers prove who they are with an HS256 token whose `sub` is their user id, so nobody
//!   can reserve, buy or cancel as someone else. Without it the body's `userId` is trusted, as the
//!   replaced API did, and the adapter must sit behind something that authenticates buyers.

use http::{header, HeaderMap};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use uuid::Uuid;

use crate::http::errors::ApiError;

/// What a buyer token must satisfy: signed with `secret`, and, when they are set, issued by `issuer`
/// for `audience`.
#[derive(Debug, Clone, Copy)]
pub struct JwtRules<'a> {
    pub secret: &'a str,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
}

pub struct Access {
    admin_token: Option<String>,
    /// Drops may be created without the admin token (`--open-drop-creation`).
    open_drop_creation: bool,
    buyer_tokens: Option<BuyerTokens>,
}

struct BuyerTokens {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct BuyerClaims {
    sub: String,
}

impl Access {
    pub fn new(admin_token: Option<&str>, jwt: Option<JwtRules<'_>>) -> Self {
        let buyer_tokens = jwt.map(|rules| {
            // HS256 only: accepting whatever `alg` the token names is how JWT checks get bypassed.
            let mut validation = Validation::new(Algorithm::HS256);
            let mut required = vec!["exp", "sub"];
            // A token issued for later is not valid yet.
            validation.validate_nbf = true;
            if let Some(issuer) = rules.issuer {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            match rules.audience {
                Some(audience) => {
                    validation.set_audience(&[audience]);
                    required.push("aud");
                }
                // Without a configured audience an `aud` claim is the issuer's business, not a reason to
                // refuse the token.
                None => validation.validate_aud = false,
            }
            validation.set_required_spec_claims(&required);
            BuyerTokens {
                key: DecodingKey::from_secret(rules.secret.as_bytes()),
                validation,
            }
        });
        Access {
            admin_token: admin_token.map(str::to_owned),
            open_drop_creation: false,
            buyer_tokens,
        }
    }

    /// Lets requests without the admin token create drops.
    pub fn with_open_drop_creation(mut self, open: bool) -> Self {
        self.open_drop_creation = open;
        self
    }

    pub fn open_drop_creation(&self) -> bool {
        self.open_drop_creation
    }

    /// `POST /api/drops`: the admin token, unless drop creation is open.
    pub fn require_drop_creator(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.open_drop_creation {
            return Ok(());
        }
        self.require_admin(headers, "creating drops")
    }

    pub fn jwt_mode(&self) -> bool {
        self.buyer_tokens.is_some()
    }

    pub fn admin_enabled(&self) -> bool {
        self.admin_token.is_some()
    }

    /// Admin-only endpoints: the request must carry `Authorization: Bearer <DROPSTOCK_ADMIN_TOKEN>`.
    pub fn require_admin(&self, headers: &HeaderMap, action: &str) -> Result<(), ApiError> {
        let Some(expected) = &self.admin_token else {
            return Err(ApiError::new(
                http::StatusCode::FORBIDDEN,
                "admin_disabled",
                format!(
                    "{action} over HTTP is disabled: start dropstock-http with DROPSTOCK_ADMIN_TOKEN set \
                     and send it as 'Authorization: Bearer <token>'"
                ),
            ));
        };
        match bearer(headers) {
            None => Err(ApiError::unauthorized(format!(
                "{action} needs the admin token as 'Authorization: Bearer <token>'"
            ))),
            Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::unauthorized("the admin token is not valid")),
        }
    }

    /// Who the request says it acts for, checked before its body is read. In JWT mode a valid buyer token
    /// is required; otherwise nothing is known yet and the body's `userId` will decide.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, ApiError> {
        if self.buyer_tokens.is_none() {
            return Ok(Identity::Trusted);
        }
        let token = bearer(headers).ok_or_else(|| {
            ApiError::unauthorized("a buyer token is required: send 'Authorization: Bearer <jwt>' (HS256, sub = user id)")
        })?;
        self.buyer_of(token).map(Identity::Token)
    }

    /// As `authenticate`, for reads that answer something without a buyer too (the length of a waiting
    /// list): in JWT mode a request without a token is anonymous rather than refused.
    pub fn authenticate_if_any(&self, headers: &HeaderMap) -> Result<Identity, ApiError> {
        if self.buyer_tokens.is_some() && bearer(headers).is_none() {
            return Ok(Identity::Anonymous);
        }
        self.authenticate(headers)
    }

    /// The buyer a token was issued to, its signature and claims checked (JWT mode only). Used for
    /// requests' bearer tokens and for the feed's inbox, whose browsers cannot send headers.
    pub fn buyer_of(&self, token: &str) -> Result<Uuid, ApiError> {
        let Some(tokens) = &self.buyer_tokens else {
            return Err(ApiError::bad_request(
                "buyer tokens are not in use here (JWT mode is off): use the inbox key",
            ));
        };
        let claims = jsonwebtoken::decode::<BuyerClaims>(token, &tokens.key, &tokens.validation)
            .map_err(|error| {
                ApiError::unauthorized(match error.kind() {
                    ErrorKind::ExpiredSignature => "the buyer token has expired",
                    ErrorKind::InvalidSignature => "the buyer token's signature is not valid",
                    ErrorKind::InvalidAlgorithm => "the buyer token must be signed with HS256",
                    ErrorKind::MissingRequiredClaim(_) => {
                        "the buyer token lacks a required claim (sub, exp, and iss or aud where configured)"
                    }
                    ErrorKind::InvalidIssuer => "the buyer token was not issued by the expected issuer",
                    ErrorKind::InvalidAudience => "the buyer token is not meant for this audience",
                    ErrorKind::ImmatureSignature => "the buyer token is not valid yet",
                    _ => "the buyer token is not a valid JWT",
                })
            })?
            .claims;
        Uuid::try_parse(&claims.sub)
            .map_err(|_| ApiError::unauthorized("the buyer token's sub must be a user id (UUID)"))
    }
}

/// Who a request acts for, as far as its headers tell.
pub enum Identity {
    /// Not JWT mode: the body's (or query's) `userId` is trusted.
    Trusted,
    /// JWT mode: the buyer the token proved.
    Token(Uuid),
    /// JWT mode, no token: fine for public reads, never for a buyer's own.
    Anonymous,
}

impl Identity {
    /// The buyer the request acts for. In JWT mode that is the token's `sub`, and a `userId` in the body
    /// must name the same buyer (it may be left out); otherwise it is the body's `userId`.
    pub fn resolve(self, body_buyer: Option<Uuid>) -> Result<Uuid, ApiError> {
        self.resolve_if_any(body_buyer)?
            .ok_or_else(|| ApiError::bad_request("userId is required"))
    }

    /// As `resolve`, where naming no buyer is allowed (the read then answers for nobody in particular).
    pub fn resolve_if_any(self, named: Option<Uuid>) -> Result<Option<Uuid>, ApiError> {
        match (self, named) {
            (Identity::Trusted, named) => Ok(named),
            (Identity::Token(token_buyer), Some(buyer)) if buyer != token_buyer => Err(
                ApiError::forbidden("userId does not match the buyer the token was issued to"),
            ),
            (Identity::Token(token_buyer), _) => Ok(Some(token_buyer)),
            (Identity::Anonymous, None) => Ok(None),
            (Identity::Anonymous, Some(_)) => Err(ApiError::unauthorized(
                "a buyer token is required to ask for a buyer: send 'Authorization: Bearer <jwt>'",
            )),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// Compares without stopping at the first differing byte, so response timing does not reveal how much of
/// a guessed admin token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_tokens() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn compares_tokens_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
