//! Who a client is: every client maps to one identity (an app id, or anonymous) before it may
//! publish or subscribe. Holds the credentials model, the [`Authenticator`] hook the front ends
//! call, the static users and tokens of the configuration, and the hashing of passwords
//! (argon2id) and tokens (SHA-256). No IO.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use parking_lot::Mutex;
use thiserror::Error;

/// What a client presented when it connected.
#[derive(Clone, Copy, Debug)]
pub struct Credentials<'a> {
    /// Front end the client came through: "mqtt", "http".
    pub protocol: &'static str,
    /// Client identifier (MQTT client id), possibly empty.
    pub client_id: &'a str,
    /// User name, if any.
    pub username: Option<&'a str>,
    /// Password or token bytes, if any.
    pub password: Option<&'a [u8]>,
    /// The app id named by a client certificate the TLS layer verified against the configured
    /// client CA: the client's identity, whatever else it presents.
    pub certificate: Option<&'a str>,
}

/// Who a client is, once authenticated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The app id the client acts as; `None` for anonymous clients.
    pub app_id: Option<Arc<str>>,
}

/// Why a client was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The client sent no credentials and anonymous access is off.
    #[error("anonymous access is disabled")]
    AnonymousDisabled,
    /// Unknown user or wrong password (deliberately not told apart).
    #[error("bad user name or password")]
    BadCredentials,
}

/// Maps credentials to an identity. The governance layer plugs its own implementation in here.
pub trait Authenticator: Send + Sync + 'static {
    /// Decides who the client is, or refuses it.
    fn authenticate(&self, creds: &Credentials<'_>) -> Result<Identity, AuthError>;
}

/// How a user's password is kept in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Secret {
    /// As written (compared as is).
    Plain(String),
    /// An argon2 hash in PHC format (`$argon2id$v=19$...`), as `meshgate passwd` prints it.
    Argon2(String),
}

impl Secret {
    /// Checks that an argon2 hash parses (for configuration checks).
    pub fn check(&self) -> Result<(), String> {
        match self {
            Secret::Plain(_) => Ok(()),
            Secret::Argon2(h) => match PasswordHash::new(h) {
                Ok(ph)
                    if ph.algorithm.as_str().starts_with("argon2")
                        && ph.salt.is_some()
                        && ph.hash.is_some() =>
                {
                    Ok(())
                }
                Ok(_) => Err("not an argon2 hash with a salt: use `meshgate passwd`".into()),
                Err(e) => Err(format!("not an argon2 PHC hash: {e}")),
            },
        }
    }
}

/// An argon2id hash (PHC format) of `password` with a random salt.
pub fn hash_password(password: &[u8]) -> String {
    let salt: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a valid salt");
    Argon2::default()
        .hash_password(password, &salt)
        .expect("argon2 with default parameters hashes any password")
        .to_string()
}

/// One configured user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// User name presented by the client.
    pub username: String,
    /// The password, as written or hashed.
    pub secret: Secret,
    /// App id the user acts as (defaults to the user name).
    pub app_id: String,
}

/// Authentication from a fixed list of users, with optional anonymous access.
///
/// Hashed passwords cost an argon2 verification (tens of milliseconds by design); a password
/// that verified is remembered as its SHA-256, so a reconnecting client pays it once.
#[derive(Debug, Default)]
pub struct StaticAuth {
    allow_anonymous: bool,
    users: HashMap<String, (Secret, Arc<str>)>,
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

impl StaticAuth {
    /// Builds the authenticator.
    pub fn new(allow_anonymous: bool, users: impl IntoIterator<Item = User>) -> Self {
        let users = users
            .into_iter()
            .map(|u| (u.username, (u.secret, Arc::from(u.app_id))))
            .collect();
        Self {
            allow_anonymous,
            users,
            verified: Mutex::new(HashMap::new()),
        }
    }

    fn password_ok(&self, name: &str, secret: &Secret, given: &[u8]) -> bool {
        match secret {
            // Digests compared, not the passwords: the time taken says nothing about them.
            Secret::Plain(p) => sha256(p.as_bytes()) == sha256(given),
            Secret::Argon2(h) => {
                let digest = sha256(given);
                if self.verified.lock().get(name) == Some(&digest) {
                    return true;
                }
                let ok = PasswordHash::new(h)
                    .is_ok_and(|ph| Argon2::default().verify_password(given, &ph).is_ok());
                if ok {
                    self.verified.lock().insert(name.to_string(), digest);
                }
                ok
            }
        }
    }
}

/// SHA-256 of `data` (bearer tokens are kept as their digest; see [`token_digest`]).
fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The lowercase hex SHA-256 of a bearer token: how `[[http.tokens]] token_sha256` stores it.
pub fn token_digest(token: &[u8]) -> String {
    sha256(token).iter().map(|b| format!("{b:02x}")).collect()
}

impl Authenticator for StaticAuth {
    fn authenticate(&self, creds: &Credentials<'_>) -> Result<Identity, AuthError> {
        if let Some(app) = creds.certificate {
            return Ok(Identity {
                app_id: Some(app.into()),
            });
        }
        let Some(name) = creds.username else {
            return if self.allow_anonymous {
                Ok(Identity::default())
            } else {
                Err(AuthError::AnonymousDisabled)
            };
        };
        match self.users.get(name) {
            Some((secret, app))
                if creds
                    .password
                    .is_some_and(|p| self.password_ok(name, secret, p)) =>
            {
                Ok(Identity {
                    app_id: Some(app.clone()),
                })
            }
            // A user name that is not configured is anonymous access with a label: allowed
            // only where anonymous access is.
            None if self.allow_anonymous && self.users.is_empty() => Ok(Identity::default()),
            _ => Err(AuthError::BadCredentials),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds<'a>(u: Option<&'a str>, p: Option<&'a [u8]>) -> Credentials<'a> {
        Credentials {
            protocol: "mqtt",
            client_id: "c",
            username: u,
            password: p,
            certificate: None,
        }
    }

    #[test]
    fn anonymous_and_users() {
        let user = User {
            username: "alice".into(),
            secret: Secret::Plain("pw".into()),
            app_id: "acme.shop".into(),
        };
        let open = StaticAuth::new(true, [user.clone()]);
        assert_eq!(
            open.authenticate(&creds(None, None)),
            Ok(Identity::default())
        );
        let id = open
            .authenticate(&creds(Some("alice"), Some(b"pw")))
            .unwrap();
        assert_eq!(id.app_id.as_deref(), Some("acme.shop"));
        assert_eq!(
            open.authenticate(&creds(Some("alice"), Some(b"no"))),
            Err(AuthError::BadCredentials)
        );
        assert_eq!(
            open.authenticate(&creds(Some("bob"), Some(b"pw"))),
            Err(AuthError::BadCredentials)
        );
        let closed = StaticAuth::new(false, [user]);
        assert_eq!(
            closed.authenticate(&creds(None, None)),
            Err(AuthError::AnonymousDisabled)
        );
        // No users configured and anonymous on: any user name is accepted as anonymous.
        let any = StaticAuth::new(true, []);
        assert!(any.authenticate(&creds(Some("x"), Some(b"y"))).is_ok());
    }

    #[test]
    fn hashed_passwords_verify_and_are_remembered() {
        let hash = hash_password(b"s3cret");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert_ne!(hash, hash_password(b"s3cret"), "a fresh salt each time");
        let secret = Secret::Argon2(hash);
        secret.check().unwrap();
        assert!(Secret::Argon2("$argon2id$nope".into()).check().is_err());
        assert!(Secret::Argon2("plain".into()).check().is_err());
        let auth = StaticAuth::new(
            false,
            [User {
                username: "bob".into(),
                secret,
                app_id: "acme.pos".into(),
            }],
        );
        for _ in 0..2 {
            let id = auth
                .authenticate(&creds(Some("bob"), Some(b"s3cret")))
                .unwrap();
            assert_eq!(id.app_id.as_deref(), Some("acme.pos"));
        }
        assert_eq!(auth.verified.lock().len(), 1);
        assert_eq!(
            auth.authenticate(&creds(Some("bob"), Some(b"s3cret "))),
            Err(AuthError::BadCredentials)
        );
        assert_eq!(
            token_digest(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
