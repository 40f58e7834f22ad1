//! The store URL: which server or Cluster, over TLS or not, and the store's own options.
//!
//! ```text
//! redis://[user:password@]host:port[/db][?options]          one server
//! rediss://[user:password@]host:port[/db][?options]         one server over TLS
//! redis+cluster://[user:password@]h1:p1,h2:p2[?options]     a Cluster (the other nodes are found)
//! rediss+cluster://[user:password@]h1:p1,h2:p2[?options]    a Cluster over TLS
//! ```
//!
//! Options (`&`-separated; any other is passed on to the Redis client, e.g. `protocol=resp3`):
//!
//! | option | default | |
//! |---|---|---|
//! | `prefix` | `pc` | every key starts with it, so stores can share a server |
//! | `wait_replicas` | 1 on a Cluster, 0 on one server | replicas that must confirm an ending before it is acknowledged |
//! | `wait_timeout` | `500ms` | how long to wait for them; then the answer is 503 and a retry is safe |
//! | `wait_aof` | `false` | wait for the replicas to write it to their AOF (`WAITAOF`, Redis 7.2+) |
//! | `ca_file` | the system's roots | PEM file of the CA(s) that sign the server's certificate (TLS only) |
//! | `cert_file`, `key_file` | none | PEM client certificate and key, for servers that ask for one (TLS only) |
//! | `bucket_fill` | 80 | entries an index bucket holds before its tag grows by one bucket; keep it well under the server's `hash-max-listpack-entries` and `zset-max-listpack-entries` (128 by default), past which a bucket costs twice the memory |

use std::path::PathBuf;
use std::time::Duration;

use crate::ConnectError;

/// Entries an index bucket holds before its tag grows (`buckets.lua`): at most about 30 more
/// pile up in a bucket that waits for its turn to split, so 80 keeps every bucket under Redis'
/// default listpack limit of 128.
pub(crate) const DEFAULT_BUCKET_FILL: u32 = 80;

/// How long an ending waits for its replicas unless the URL says otherwise.
pub(crate) const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_millis(500);

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Options {
    /// Standalone: the URL for the Redis client (without this store's options). Cluster: one
    /// URL per node given.
    pub(crate) urls: Vec<String>,
    pub(crate) cluster: bool,
    pub(crate) tls: bool,
    pub(crate) prefix: String,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) wait: Wait,
    pub(crate) bucket_fill: u32,
}

/// What an ending waits for before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Wait {
    /// Replicas that must confirm (0: none, the change is acknowledged when the primary has it).
    pub(crate) replicas: u32,
    pub(crate) timeout: Duration,
    /// `WAITAOF` (written to the replicas' append-only files) instead of `WAIT` (received).
    pub(crate) aof: bool,
}

fn invalid(message: impl Into<String>) -> ConnectError {
    ConnectError::Option(message.into())
}

fn flag(name: &str, value: &str) -> Result<bool, ConnectError> {
    match value {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(invalid(format!("{name}={value}: use true or false"))),
    }
}

impl Options {
    pub(crate) fn parse(url: &str) -> Result<Self, ConnectError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            invalid("a Redis store URL starts with redis://, rediss://, redis+cluster:// or rediss+cluster://")
        })?;
        let (cluster, tls) = match scheme {
            "redis" => (false, false),
            "rediss" => (false, true),
            "redis+cluster" => (true, false),
            "rediss+cluster" => (true, true),
            other => {
                return Err(invalid(format!(
                    "unknown scheme {other}:// (use redis://, rediss://, redis+cluster:// or rediss+cluster://)"
                )));
            }
        };
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut prefix = "pc".to_owned();
        let mut ca_file = None;
        let mut cert_file = None;
        let mut key_file = None;
        let mut replicas = None;
        let mut timeout = DEFAULT_WAIT_TIMEOUT;
        let mut aof = false;
        let mut bucket_fill = DEFAULT_BUCKET_FILL;
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let path = || -> Result<Option<PathBuf>, ConnectError> {
                if value.is_empty() {
                    return Err(invalid(format!("{name}: give the path of a PEM file")));
                }
                Ok(Some(PathBuf::from(value)))
            };
            match name {
                "prefix" => prefix = value.to_owned(),
                "ca_file" => ca_file = path()?,
                "cert_file" => cert_file = path()?,
                "key_file" => key_file = path()?,
                "wait_replicas" => {
                    replicas = Some(value.parse::<u32>().map_err(|_| {
                        invalid(format!(
                            "wait_replicas={value}: give a number of replicas (0 = do not wait)"
                        ))
                    })?)
                }
                "wait_timeout" => {
                    timeout = portcullis_core::parse_duration(value)
                        .map_err(|e| invalid(format!("wait_timeout: {e}")))?;
                    if timeout.is_zero() {
                        return Err(invalid(
                            "wait_timeout: must be more than 0ms (Redis would wait forever)",
                        ));
                    }
                }
                "wait_aof" => aof = flag(name, value)?,
                "bucket_fill" => {
                    bucket_fill = value
                        .parse::<u32>()
                        .ok()
                        .filter(|fill| (1..=100_000).contains(fill))
                        .ok_or_else(|| {
                            invalid(format!(
                                "bucket_fill={value}: give a number of entries from 1 to 100000"
                            ))
                        })?;
                }
                _ => passed.push(pair),
            }
        }
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':'))
        {
            return Err(ConnectError::Prefix(prefix));
        }
        if !tls && (ca_file.is_some() || cert_file.is_some() || key_file.is_some()) {
            return Err(invalid(format!(
                "ca_file, cert_file and key_file are for TLS: use {}://",
                if cluster { "rediss+cluster" } else { "rediss" }
            )));
        }
        if cert_file.is_some() != key_file.is_some() {
            return Err(invalid("cert_file and key_file go together"));
        }
        let node_scheme = if tls { "rediss" } else { "redis" };
        let passed = if passed.is_empty() {
            String::new()
        } else {
            format!("?{}", passed.join("&"))
        };
        let urls = if cluster {
            location
                .trim_end_matches('/')
                .split(',')
                .map(|node| format!("{node_scheme}://{node}{passed}"))
                .collect()
        } else {
            vec![format!("{node_scheme}://{location}{passed}")]
        };
        Ok(Self {
            urls,
            cluster,
            tls,
            prefix,
            ca_file,
            cert_file,
            key_file,
            wait: Wait {
                // A Cluster is how Redis fails over by itself, and a failover is what loses a
                // change its replica did not have; one server has no failover Portcullis knows of.
                replicas: replicas.unwrap_or(u32::from(cluster)),
                timeout,
                aof,
            },
            bucket_fill,
        })
    }

    /// The certificates for the Redis client, when the URL names any (`None`: TLS, if any,
    /// trusts the system's roots).
    pub(crate) fn certificates(&self) -> Result<Option<redis::TlsCertificates>, ConnectError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|err| ConnectError::File {
                path: path.clone(),
                err,
            })
        };
        if self.ca_file.is_none() && self.cert_file.is_none() {
            return Ok(None);
        }
        let root_cert = self.ca_file.as_ref().map(read).transpose()?;
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            _ => None,
        };
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_server_part_and_lose_the_store_options() {
        let o = Options::parse("redis://127.0.0.1:6379").unwrap();
        assert_eq!(o.urls, ["redis://127.0.0.1:6379"]);
        assert_eq!(o.prefix, "pc");
        assert!(!o.cluster && !o.tls);
        assert_eq!(
            o.wait,
            Wait {
                replicas: 0,
                timeout: DEFAULT_WAIT_TIMEOUT,
                aof: false
            }
        );

        let o = Options::parse(
            "rediss://:pw@db.internal:6380/2?prefix=a:b&protocol=resp3&ca_file=/etc/ca.pem&wait_replicas=2&wait_timeout=2s",
        )
        .unwrap();
        assert_eq!(o.urls, ["rediss://:pw@db.internal:6380/2?protocol=resp3"]);
        assert_eq!(o.prefix, "a:b");
        assert!(o.tls && !o.cluster);
        assert_eq!(o.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(o.wait.replicas, 2);
        assert_eq!(o.wait.timeout, Duration::from_secs(2));
        assert_eq!(o.bucket_fill, DEFAULT_BUCKET_FILL);
        let o = Options::parse("redis://h?bucket_fill=4").unwrap();
        assert_eq!((o.urls[0].as_str(), o.bucket_fill), ("redis://h", 4));

        let o = Options::parse("redis+cluster://10.0.0.1:6379,10.0.0.2:6379/?prefix=x").unwrap();
        assert_eq!(o.urls, ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]);
        assert_eq!(o.wait.replicas, 1, "a Cluster waits for one replica");
        let o = Options::parse(
            "rediss+cluster://a:1,b:2?wait_replicas=0&ca_file=/ca.pem&cert_file=/c.pem&key_file=/k.pem&wait_aof=yes",
        )
        .unwrap();
        assert_eq!(o.urls, ["rediss://a:1", "rediss://b:2"]);
        assert_eq!(o.wait.replicas, 0);
        assert!(o.wait.aof);
        assert_eq!(o.key_file, Some(PathBuf::from("/k.pem")));
    }

    #[test]
    fn bad_options_are_refused_with_a_reason() {
        for (url, says) in [
            ("redis://h?prefix=", "invalid key prefix"),
            ("redis://h?prefix=a%20b", "invalid key prefix"),
            ("redis://h?ca_file=/ca.pem", "are for TLS: use rediss://"),
            (
                "redis+cluster://h:1?ca_file=/ca.pem",
                "use rediss+cluster://",
            ),
            ("rediss://h?cert_file=/c.pem", "go together"),
            ("redis://h?wait_replicas=all", "wait_replicas=all"),
            ("redis://h?wait_timeout=500", "has no unit"),
            ("redis://h?wait_timeout=0ms", "more than 0ms"),
            ("redis://h?wait_aof=maybe", "true or false"),
            ("redis://h?bucket_fill=0", "bucket_fill=0: give a number"),
            ("redis://h?bucket_fill=many", "from 1 to 100000"),
            ("rediss://h?ca_file=", "path of a PEM file"),
            ("http://h", "unknown scheme"),
        ] {
            let err = Options::parse(url).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
