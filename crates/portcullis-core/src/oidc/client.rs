//! An application registered as an OpenID Connect client: how it authenticates at the token
//! endpoint, where Portcullis may send a person back to, and what it may ask for.

use std::collections::BTreeSet;

use super::SigningAlg;
use crate::token::TokenHash;

/// The scopes Portcullis knows; a client is registered with a subset.
pub const SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

/// How a client proves who it is at the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// A public client (a browser or native application): no secret, so PKCE (S256) is
    /// required on every authorization request.
    None,
    /// `client_secret_basic` or `client_secret_post`: the SHA-256 of a secret Portcullis
    /// generated (`pcc_…`, 256 bits; stored only hashed).
    Secret(TokenHash),
    /// `private_key_jwt`: client assertions signed by a key of this JWK Set (JSON).
    PrivateKeyJwt {
        /// The client's public keys.
        jwks: String,
    },
}

impl ClientAuth {
    /// The `token_endpoint_auth_method` name.
    pub fn method(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Secret(_) => "client_secret_basic",
            Self::PrivateKeyJwt { .. } => "private_key_jwt",
        }
    }
}

/// The grants a client may use at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GrantType {
    /// `authorization_code`.
    AuthorizationCode,
    /// `refresh_token`.
    RefreshToken,
}

impl GrantType {
    /// Its name in requests and in discovery.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
        }
    }

    /// The grant named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::AuthorizationCode, Self::RefreshToken]
            .into_iter()
            .find(|g| g.as_str() == name)
    }
}

/// What makes a registration unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A redirect URI that is not absolute, has a fragment, or is plain `http` to a host that
    /// is not loopback.
    #[error("{field}: {uri:?} is not allowed: {why}")]
    Uri {
        /// Which list it was in.
        field: &'static str,
        /// The URI.
        uri: String,
        /// Why not.
        why: &'static str,
    },
    /// A client needs at least one redirect URI.
    #[error("a client needs at least one redirect URI")]
    NoRedirectUri,
    /// A scope Portcullis does not know.
    #[error("unknown scope {0:?} (known: openid, profile, email, offline_access)")]
    UnknownScope(String),
    /// `openid` is what makes it an OpenID Connect client.
    #[error("the scopes must include openid")]
    NoOpenid,
}

/// An application's registration as an OpenID Connect client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// How it authenticates at the token endpoint.
    pub auth: ClientAuth,
    /// Where an authorization response may go, compared exactly (RFC 9700 §4.1.1).
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may send the person afterwards, compared exactly.
    pub post_logout_redirect_uris: Vec<String>,
    /// Where logout tokens are POSTed (OpenID Connect Back-Channel Logout).
    pub backchannel_logout_uri: Option<String>,
    /// The page loaded in an iframe at sign-out (OpenID Connect Front-Channel Logout).
    pub frontchannel_logout_uri: Option<String>,
    /// The scopes it may be granted.
    pub scopes: BTreeSet<String>,
    /// The grants it may use.
    pub grant_types: BTreeSet<GrantType>,
    /// Whether the person is asked to consent before the first grant (third-party clients);
    /// first-party clients are trusted without asking.
    pub require_consent: bool,
    /// The algorithm its ID tokens (and logout tokens) are signed with
    /// (`id_token_signed_response_alg`), one the provider keeps keys for; `None`: the
    /// provider's first.
    pub id_token_signed_response_alg: Option<SigningAlg>,
    /// The upstream provider (its configured id) its people always sign in through: an
    /// authorization that needs a sign-in goes there rather than to the password form.
    pub upstream: Option<String>,
}

impl Client {
    /// Checks the registration: absolute `https` URIs without fragments (plain `http` only to
    /// loopback, for development and native applications, RFC 8252 §7.3), known scopes with
    /// `openid` among them.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.redirect_uris.is_empty() {
            return Err(ClientError::NoRedirectUri);
        }
        for (field, uris) in [
            ("redirect_uris", &self.redirect_uris),
            ("post_logout_redirect_uris", &self.post_logout_redirect_uris),
        ] {
            for uri in uris {
                check_uri(field, uri)?;
            }
        }
        for (field, uri) in [
            ("backchannel_logout_uri", &self.backchannel_logout_uri),
            ("frontchannel_logout_uri", &self.frontchannel_logout_uri),
        ] {
            if let Some(uri) = uri {
                check_uri(field, uri)?;
            }
        }
        // OIDC-FCL-1: the page framed at sign-out belongs to the client's own site.
        if let Some(uri) = &self.frontchannel_logout_uri
            && !self
                .redirect_uris
                .iter()
                .any(|r| origin_of(r).is_some() && origin_of(r) == origin_of(uri))
        {
            return Err(ClientError::Uri {
                field: "frontchannel_logout_uri",
                uri: uri.clone(),
                why: "its scheme, host and port must be those of a redirect URI",
            });
        }
        if let Some(unknown) = self.scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
            return Err(ClientError::UnknownScope(unknown.clone()));
        }
        if !self.scopes.contains("openid") {
            return Err(ClientError::NoOpenid);
        }
        Ok(())
    }

    /// Whether `uri` is one of the registered redirect URIs, byte for byte.
    pub fn redirects_to(&self, uri: &str) -> bool {
        self.redirect_uris.iter().any(|r| r == uri)
    }

    /// Whether `uri` is one of the registered post-logout redirect URIs, byte for byte.
    pub fn returns_after_logout_to(&self, uri: &str) -> bool {
        self.post_logout_redirect_uris.iter().any(|r| r == uri)
    }

    /// The requested scopes this client may be granted, in the order asked; `None` when
    /// `openid` is not among them.
    pub fn grantable_scopes<'a>(
        &self,
        requested: impl Iterator<Item = &'a str>,
    ) -> Option<Vec<String>> {
        let mut granted: Vec<String> = Vec::new();
        for scope in requested {
            if self.scopes.contains(scope) && !granted.iter().any(|g| g == scope) {
                granted.push(scope.to_owned());
            }
        }
        granted.iter().any(|s| s == "openid").then_some(granted)
    }
}

/// `scheme://host[:port]` of an absolute URI (one checked at registration); `None` for
/// anything that cannot be written in a header as an origin.
pub fn origin_of(uri: &str) -> Option<&str> {
    let (scheme, rest) = uri.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let origin = &uri[..scheme.len() + 3 + end];
    origin
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
        .then_some(origin)
}

fn check_uri(field: &'static str, uri: &str) -> Result<(), ClientError> {
    let refuse = |why| {
        Err(ClientError::Uri {
            field,
            uri: uri.to_owned(),
            why,
        })
    };
    let Some((scheme, rest)) = uri.split_once("://") else {
        return refuse("not an absolute URI");
    };
    if uri.contains('#') {
        return refuse("a fragment is not allowed");
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("whitespace is not allowed");
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return refuse("it needs a host and no user information");
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    // A host name or an IP address, nothing a Content Security Policy would read as a
    // wildcard or a keyword (the origin is named in `form-action` and `frame-src`).
    let plain_host = !host.is_empty()
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
    let port_ok = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest)
        .rsplit_once(':')
        .is_none_or(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    if !plain_host || !port_ok {
        return refuse("the host must be a name or an IP address, with a numeric port");
    }
    match scheme {
        "https" => Ok(()),
        "http" if matches!(host, "localhost" | "127.0.0.1" | "::1") => Ok(()),
        "http" => refuse("plain http is allowed only to loopback"),
        _ => refuse("the scheme must be https (or http to loopback)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(redirects: &[&str]) -> Client {
        Client {
            auth: ClientAuth::None,
            redirect_uris: redirects.iter().map(|s| (*s).to_owned()).collect(),
            post_logout_redirect_uris: Vec::new(),
            backchannel_logout_uri: None,
            frontchannel_logout_uri: None,
            scopes: ["openid", "profile"].map(String::from).into(),
            grant_types: [GrantType::AuthorizationCode].into(),
            require_consent: false,
            id_token_signed_response_alg: None,
            upstream: None,
        }
    }

    #[test]
    fn rfc9700_4_1_1_redirect_uris_are_compared_exactly() {
        let c = client(&["https://app.example/cb"]);
        assert!(c.redirects_to("https://app.example/cb"));
        for other in [
            "https://app.example/cb/",
            "https://app.example/cb?x=1",
            "https://app.example/cb.evil",
            "https://app.example/CB",
            "https://app.example.evil/cb",
            "http://app.example/cb",
        ] {
            assert!(!c.redirects_to(other), "{other}");
        }
    }

    #[test]
    fn registrations_refuse_uris_that_could_leak_a_code() {
        assert_eq!(client(&["https://app.example/cb"]).validate(), Ok(()));
        assert_eq!(client(&["http://127.0.0.1:8080/cb"]).validate(), Ok(()));
        assert_eq!(client(&["http://[::1]:8080/cb"]).validate(), Ok(()));
        for bad in [
            "http://app.example/cb",
            "https://app.example/cb#frag",
            "/cb",
            "javascript://alert(1)",
            "https://user@app.example/cb",
            "https:///cb",
            "http://localhost.evil/cb",
            "https://*/cb",
            "https://*.example/cb",
            "https://app.example:*/cb",
            "https://'self'/cb",
        ] {
            assert!(
                matches!(client(&[bad]).validate(), Err(ClientError::Uri { .. })),
                "{bad}"
            );
        }
        assert_eq!(client(&[]).validate(), Err(ClientError::NoRedirectUri));
        let mut c = client(&["https://app.example/cb"]);
        c.scopes.insert("admin".into());
        assert_eq!(c.validate(), Err(ClientError::UnknownScope("admin".into())));
        c.scopes = ["profile".to_owned()].into();
        assert_eq!(c.validate(), Err(ClientError::NoOpenid));
    }

    #[test]
    fn oidc_fcl_1_the_front_channel_logout_page_is_on_a_redirect_uris_site() {
        let mut c = client(&["https://app.example/cb", "http://127.0.0.1:8080/cb"]);
        for same_site in [
            "https://app.example/logout?x=1",
            "http://127.0.0.1:8080/fcl",
        ] {
            c.frontchannel_logout_uri = Some(same_site.into());
            assert_eq!(c.validate(), Ok(()), "{same_site}");
        }
        for elsewhere in [
            "https://app.example:8443/logout",
            "https://other.example/logout",
            "http://127.0.0.1:9090/fcl",
        ] {
            c.frontchannel_logout_uri = Some(elsewhere.into());
            assert!(
                matches!(
                    c.validate(),
                    Err(ClientError::Uri {
                        field: "frontchannel_logout_uri",
                        ..
                    })
                ),
                "{elsewhere}"
            );
        }
        assert_eq!(
            origin_of("https://app.example:8443/a?b#c"),
            Some("https://app.example:8443")
        );
        assert_eq!(
            origin_of("https://app.example"),
            Some("https://app.example")
        );
        assert_eq!(origin_of("/relative"), None);
    }

    #[test]
    fn oidc_bcl_2_a_back_channel_logout_uri_is_absolute_https_without_a_fragment() {
        let mut c = client(&["https://app.example/cb"]);
        // Any host: the logout token goes server to server, not through the browser.
        for ok in [
            "https://backend.example/bc?tenant=1",
            "http://127.0.0.1:8080/bc",
        ] {
            c.backchannel_logout_uri = Some(ok.into());
            assert_eq!(c.validate(), Ok(()), "{ok}");
        }
        for bad in [
            "https://app.example/bc#frag",
            "http://app.example/bc",
            "/bc",
        ] {
            c.backchannel_logout_uri = Some(bad.into());
            assert!(
                matches!(
                    c.validate(),
                    Err(ClientError::Uri {
                        field: "backchannel_logout_uri",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_registered_scopes_are_granted_and_openid_is_required() {
        let c = client(&["https://app.example/cb"]);
        assert_eq!(
            c.grantable_scopes("openid email profile openid".split(' ')),
            Some(vec!["openid".to_owned(), "profile".to_owned()])
        );
        assert_eq!(c.grantable_scopes("profile".split(' ')), None);
    }
}
