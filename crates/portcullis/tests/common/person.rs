//! A browser reduced to what signing in needs, for tests that drive Portcullis's pages over
//! plain HTTP without one: a cookie jar, redirects followed by hand.

use std::collections::BTreeMap;

use openidconnect::http::{HeaderValue, Method, header};
use openidconnect::url::{Url, form_urlencoded};

/// A browser reduced to what the sign-in needs: a cookie jar, redirects followed by hand.
pub struct Person {
    http: reqwest::Client,
    base: String,
    cookies: BTreeMap<String, String>,
}

/// One answer: status, `Location`, body.
pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

impl Person {
    /// A person who has not visited `base` yet.
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client"),
            base: base.to_owned(),
            cookies: BTreeMap::new(),
        }
    }

    /// One request, its cookies kept; a path is relative to the base.
    pub async fn send(&mut self, method: Method, url: &str, form: Option<&[(&str, &str)]>) -> Page {
        let url = if url.starts_with('/') {
            format!("{}{url}", self.base)
        } else {
            url.to_owned()
        };
        let mut request = self.http.request(method, &url);
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            request = request.header(header::COOKIE, jar.join("; "));
        }
        if let Some(fields) = form {
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(fields)
                .finish();
            request = request
                .header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                )
                .body(body);
        }
        let response = request.send().await.expect("a page");
        for line in response.headers().get_all(header::SET_COOKIE) {
            let line = line.to_str().unwrap();
            let pair = line.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let removed = value.is_empty() || line.contains("Max-Age=0");
            if removed {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_owned(), value.to_owned());
            }
        }
        Page {
            status: response.status().as_u16(),
            location: response
                .headers()
                .get(header::LOCATION)
                .map(|v| v.to_str().unwrap().to_owned()),
            body: response.text().await.unwrap(),
        }
    }

    /// Follows an authorization URL through sign-in to the redirect back to the client,
    /// and returns that redirect.
    pub async fn sign_in_through(
        &mut self,
        authorize: &Url,
        username: &str,
        password: &str,
    ) -> Url {
        let page = self.send(Method::GET, authorize.as_str(), None).await;
        assert_eq!(page.status, 303, "the authorization request: {}", page.body);
        let login = page.location.unwrap();
        assert!(
            login.starts_with("/login?return_to="),
            "nobody is signed in, so to the sign-in form: {login}"
        );
        assert!(
            self.cookies.contains_key("__Host-portcullis-authorize"),
            "the request is sealed in a cookie while the person signs in"
        );
        let return_to = form_urlencoded::parse(login.split_once('?').unwrap().1.as_bytes())
            .find(|(k, _)| k == "return_to")
            .map(|(_, v)| v.into_owned())
            .unwrap();

        let form = self.send(Method::GET, &login, None).await;
        assert_eq!(form.status, 200, "the sign-in form");
        let csrf = hidden(&form.body, "csrf");
        assert_eq!(
            self.cookies.get("__Host-portcullis-csrf"),
            Some(&csrf),
            "double-submit CSRF cookie"
        );
        let answer = self
            .send(
                Method::POST,
                "/login",
                Some(&[
                    ("username", username),
                    ("password", password),
                    ("csrf", &csrf),
                    ("return_to", &return_to),
                ]),
            )
            .await;
        assert_eq!(answer.status, 303, "the password is right: {}", answer.body);
        assert_eq!(answer.location.as_deref(), Some("/login/stay"));

        let stay = self.send(Method::GET, "/login/stay", None).await;
        assert_eq!(stay.status, 200, "Stay signed in?");
        let csrf = hidden(&stay.body, "csrf");
        let answer = self
            .send(
                Method::POST,
                "/login/stay",
                Some(&[("csrf", &csrf), ("stay", "no")]),
            )
            .await;
        assert_eq!(answer.status, 303, "the sign-in completes: {}", answer.body);
        let resume = answer.location.unwrap();
        assert_eq!(resume, "/oidc/authorize/resume");

        let back = self.send(Method::GET, &resume, None).await;
        assert_eq!(
            back.status, 303,
            "the resumed request answers: {}",
            back.body
        );
        Url::parse(&back.location.unwrap()).expect("an absolute redirect to the client")
    }
}

/// The value of the hidden input `name` of a page.
pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no hidden {name} in {html}"))
        + marker.len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end]
        .replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}
