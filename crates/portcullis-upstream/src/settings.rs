//! How an upstream provider is configured.

/// Which claims of the upstream's ID token (or userinfo) name the person here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// The claim an account created on first sign-in takes its username from (falling back to
    /// `email`, then to the provider's name and the upstream subject).
    pub username: String,
    /// The claim holding the e-mail address (shown, and used for home-realm discovery; never
    /// to find an account).
    pub email: String,
    /// The claim holding the display name.
    pub name: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            username: "preferred_username".into(),
            email: "email".into(),
            name: "name".into(),
        }
    }
}

/// How Portcullis authenticates as a client at an upstream token endpoint.
#[derive(Clone, PartialEq, Eq)]
pub enum UpstreamClientAuth {
    /// `client_secret_basic` with this secret.
    Secret(String),
    /// `private_key_jwt`: an assertion signed by the provider's own signing key, which the
    /// upstream verifies with Portcullis's published key set (`{issuer}/oidc/jwks`, registered
    /// there as the client's `jwks_uri`), so a key rotation needs nothing done upstream.
    PrivateKeyJwt,
}

impl std::fmt::Debug for UpstreamClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret(…)"),
            Self::PrivateKeyJwt => f.write_str("PrivateKeyJwt"),
        }
    }
}

/// One upstream provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// Its name in URLs and the configuration (`corp`): letters, digits, `-` and `_`.
    pub id: String,
    /// What the sign-in page's button says ("Sign in with Corp ID").
    pub label: String,
    /// Its issuer identifier, exactly as its discovery document says it.
    pub issuer: String,
    /// Portcullis's client id there.
    pub client_id: String,
    /// How Portcullis authenticates to its token endpoint.
    pub client_auth: UpstreamClientAuth,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
    /// Which claims name the person.
    pub claims: ClaimMapping,
    /// The assurance level (1–3) a sign-in there is worth when it does not say (`acr`).
    pub assurance: u8,
    /// Whether a person it vouches for who has no account here gets one.
    pub create_accounts: bool,
    /// E-mail domains whose people sign in there (home-realm discovery).
    pub domains: Vec<String>,
    /// Whether the SSO session it starts ends no later than its ID token (so a person whose
    /// upstream session ended is asked there again, at the latest, when the ID token would
    /// have expired).
    pub bound_session: bool,
    /// Whether `response_mode=form_post` is asked for (the answer comes as a cross-site POST).
    pub form_post: bool,
}

impl UpstreamSettings {
    /// Whether `id` may name a provider.
    pub fn valid_id(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= 32
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    /// Whether the person with e-mail address `email` signs in here (home-realm discovery).
    pub fn serves_email(&self, email: &str) -> bool {
        let Some((_, domain)) = email.trim().rsplit_once('@') else {
            return false;
        };
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}
