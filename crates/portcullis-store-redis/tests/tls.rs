//! The store over TLS (`rediss://`, `rediss+cluster://`) against private TLS-only
//! `redis-server`s on loopback, with a CA and certificates the test makes: a connection that
//! verifies the server works end to end (a few conformance cases); a wrong CA, a name the
//! certificate does not carry, no client certificate where the server asks for one, and plain
//! `redis://` to the TLS port are each refused, with the reason.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{RedisProcess, free_port, until};
use portcullis_store_redis::RedisStore;
use portcullis_store_tests::{store, users};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files: the CA, another CA, a server certificate for `localhost` only, one for
/// `localhost` and 127.0.0.1 (Cluster nodes announce addresses), and a client certificate.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    localhost: (PathBuf, PathBuf),
    loopback: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    dir: &Path,
    name: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    ca: &CertifiedIssuer<'static, KeyPair>,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, ca).unwrap();
    let (cert_file, key_file) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (cert_file, key_file)
}

fn pki(dir: &Path) -> Pki {
    let authority = ca("Portcullis test CA");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, authority.pem()).unwrap();
    // Another CA of the same name: only its key differs.
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(&other_ca, ca("Portcullis test CA").pem()).unwrap();
    let server = ExtendedKeyUsagePurpose::ServerAuth;
    Pki {
        ca: ca_file,
        other_ca,
        localhost: leaf(dir, "localhost", &["localhost"], server.clone(), &authority),
        loopback: leaf(
            dir,
            "loopback",
            &["localhost", "127.0.0.1"],
            server,
            &authority,
        ),
        client: leaf(
            dir,
            "client",
            &["portcullis"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &authority,
        ),
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A TLS-only `redis-server` (`--port 0`) serving `cert`, asking clients for certificates
/// signed by the CA when `auth_clients`.
fn tls_server(
    root: &Path,
    name: &str,
    pki: &Pki,
    cert: &(PathBuf, PathBuf),
    auth_clients: bool,
    extra: &[&str],
) -> RedisProcess {
    let port = free_port();
    let port_text = port.to_string();
    let mut args = vec![
        "--port",
        "0",
        "--tls-port",
        &port_text,
        "--tls-cert-file",
        path(&cert.0),
        "--tls-key-file",
        path(&cert.1),
        "--tls-ca-cert-file",
        path(&pki.ca),
        "--tls-auth-clients",
        if auth_clients { "yes" } else { "no" },
    ];
    args.extend_from_slice(extra);
    RedisProcess::start(root, name, port, &args)
}

/// Connecting to `url` fails; answers the reason.
async fn refused(url: &str) -> String {
    match RedisStore::connect(url).await {
        Ok(_) => panic!("{url} was accepted"),
        Err(err) => err.to_string(),
    }
}

/// A few conformance cases, each under its own prefix, over `url` (which ends in `?…`).
async fn works(url: &str) {
    let store = |case: &str| {
        let url = format!("{url}&prefix=tls:{}:{case}", std::process::id());
        async move { RedisStore::connect(&url).await.unwrap() }
    };
    store::insert_then_find_by_token_and_id(store("insert").await).await;
    store::replace_is_compare_and_set_and_kills_the_old_token(store("replace").await).await;
    store::end_is_recorded_exactly_once(store("end").await).await;
    store::end_subject_spares_the_exception(store("subject").await).await;
    store::events_are_ordered_filtered_and_paged(store("events").await).await;
    store::ping_answers(store("ping").await).await;
    users::user_store_contract(std::sync::Arc::new(store("users").await.users())).await;
}

#[tokio::test]
async fn rediss_verifies_the_server_and_refuses_what_does_not_verify() {
    let root = tempfile::tempdir().unwrap();
    let pki = pki(root.path());
    let server = tls_server(root.path(), "tls", &pki, &pki.localhost, false, &[]);
    let port = server.port;
    let ca = path(&pki.ca);

    works(&format!("rediss://localhost:{port}?ca_file={ca}")).await;

    let wrong_ca = refused(&format!(
        "rediss://localhost:{port}?ca_file={}",
        path(&pki.other_ca)
    ))
    .await;
    assert!(wrong_ca.contains("invalid peer certificate"), "{wrong_ca}");
    eprintln!("wrong CA: {wrong_ca}");
    // Without ca_file the system's roots are trusted, and they do not know the test's CA.
    let system = refused(&format!("rediss://localhost:{port}")).await;
    assert!(system.contains("invalid peer certificate"), "{system}");
    let wrong_name = refused(&format!("rediss://127.0.0.1:{port}?ca_file={ca}")).await;
    assert!(
        wrong_name.contains("invalid peer certificate")
            && wrong_name.contains("not valid for name \"127.0.0.1\""),
        "{wrong_name}"
    );
    eprintln!("wrong name: {wrong_name}");
    let plain = refused(&format!("redis://localhost:{port}")).await;
    eprintln!("plain redis:// to the TLS port: {plain}");
    let missing = refused(&format!(
        "rediss://localhost:{port}?ca_file=/nonexistent/ca.pem"
    ))
    .await;
    assert!(
        missing.contains("cannot read /nonexistent/ca.pem"),
        "{missing}"
    );
}

#[tokio::test]
async fn rediss_presents_a_client_certificate_where_the_server_asks_for_one() {
    let root = tempfile::tempdir().unwrap();
    let pki = pki(root.path());
    let server = tls_server(root.path(), "mtls", &pki, &pki.localhost, true, &[]);
    let port = server.port;
    let ca = path(&pki.ca);

    let without = refused(&format!("rediss://localhost:{port}?ca_file={ca}")).await;
    eprintln!("no client certificate: {without}");
    let with = format!(
        "rediss://localhost:{port}?ca_file={ca}&cert_file={}&key_file={}",
        path(&pki.client.0),
        path(&pki.client.1)
    );
    works(&with).await;
}

#[tokio::test]
async fn rediss_cluster_verifies_every_node() {
    let root = tempfile::tempdir().unwrap();
    let pki = pki(root.path());
    let bus = free_port().to_string();
    let nodes = root.path().join("nodes.conf");
    // One primary holding every slot: a Cluster as far as the client can tell (it reads the
    // slots and follows them), over TLS on the client and the bus sides.
    let server = tls_server(
        root.path(),
        "cluster",
        &pki,
        &pki.loopback,
        false,
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus,
            "--cluster-config-file",
            path(&nodes),
            "--tls-cluster",
            "yes",
        ],
    );
    let port = server.port;
    let ca = path(&pki.ca);
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(std::fs::read(&pki.ca).unwrap()),
    };
    let mut admin =
        redis::Client::build_with_tls(format!("rediss://127.0.0.1:{port}"), certificates)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut admin)
        .await
        .unwrap();
    until(Duration::from_secs(10), "the cluster is ok", async || {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut admin)
            .await
            .unwrap();
        info.contains("cluster_state:ok")
    })
    .await;

    // A Cluster waits for one replica unless told otherwise, and this one has none.
    let no_replica = refused(&format!("rediss+cluster://127.0.0.1:{port}?ca_file={ca}")).await;
    assert!(
        no_replica.contains(&format!(
            ":{port} has 0 replica(s), fewer than wait_replicas=1"
        )),
        "{no_replica}"
    );
    works(&format!(
        "rediss+cluster://127.0.0.1:{port}?ca_file={ca}&wait_replicas=0"
    ))
    .await;
    let wrong_ca = refused(&format!(
        "rediss+cluster://127.0.0.1:{port}?ca_file={}&wait_replicas=0",
        path(&pki.other_ca)
    ))
    .await;
    eprintln!("cluster, wrong CA: {wrong_ca}");
    let plain = refused(&format!("redis+cluster://127.0.0.1:{port}?wait_replicas=0")).await;
    eprintln!("cluster, plain redis+cluster:// to the TLS port: {plain}");
}
