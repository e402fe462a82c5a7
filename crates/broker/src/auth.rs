//! The authentication hook: every client maps to one identity before it may publish or subscribe.

use std::collections::HashMap;
use std::sync::Arc;

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

/// One configured user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// User name presented by the client.
    pub username: String,
    /// Password presented by the client.
    pub password: String,
    /// App id the user acts as (defaults to the user name).
    pub app_id: String,
}

/// Authentication from a fixed list of users, with optional anonymous access.
#[derive(Debug, Default)]
pub struct StaticAuth {
    allow_anonymous: bool,
    users: HashMap<String, (String, Arc<str>)>,
}

impl StaticAuth {
    /// Builds the authenticator.
    pub fn new(allow_anonymous: bool, users: impl IntoIterator<Item = User>) -> Self {
        let users = users
            .into_iter()
            .map(|u| (u.username, (u.password, Arc::from(u.app_id))))
            .collect();
        Self {
            allow_anonymous,
            users,
        }
    }
}

impl Authenticator for StaticAuth {
    fn authenticate(&self, creds: &Credentials<'_>) -> Result<Identity, AuthError> {
        let Some(name) = creds.username else {
            return if self.allow_anonymous {
                Ok(Identity::default())
            } else {
                Err(AuthError::AnonymousDisabled)
            };
        };
        match self.users.get(name) {
            Some((pw, app)) if creds.password == Some(pw.as_bytes()) => Ok(Identity {
                app_id: Some(app.clone()),
            }),
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
        }
    }

    #[test]
    fn anonymous_and_users() {
        let user = User {
            username: "alice".into(),
            password: "pw".into(),
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
}
