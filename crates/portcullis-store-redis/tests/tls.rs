//! The store over TLS (`rediss://`, `rediss+cluster://`) against private TLS-only
//! `redis-server`s on loopback, with a CA and certificates the test makes: a connection that
//! verifies the server works end to end (a few conformance cases); a wrong CA, a name the
//! certificate does not carry, no client certificate where the server asks for one, and plain
//! `redis://` to the TLS port are each refused, with the reason. A six-node Cluster, TLS on
//! every link (clients, the cluster bus, replication), acknowledges an ending only once the
//! replica of the primary that took it confirmed it, primary by primary.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ClusterNode, RedisProcess, cluster_nodes, free_port, replication_field, until};
use portcullis_core::{EndReason, SessionStore, StoreError, TokenHash, subject_route};
use portcullis_store_redis::RedisStore;
use portcullis_store_tests::{ending, plain_insert, random, session_at, store, t0, users};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files: the CA, another CA, a server certificate for `localhost` only, one for
/// `localhost` and 127.0.0.1 (Cluster nodes announce addresses), one for the same names that is
/// a client certificate as well (Cluster nodes present theirs to each other on the bus and on
/// replication links, and refuse a peer whose certificate is not for clients), and a client
/// certificate.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    localhost: (PathBuf, PathBuf),
    loopback: (PathBuf, PathBuf),
    node: (PathBuf, PathBuf),
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
    usages: &[ExtendedKeyUsagePurpose],
    ca: &CertifiedIssuer<'static, KeyPair>,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = usages.to_vec();
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
    let client = ExtendedKeyUsagePurpose::ClientAuth;
    let loopback = ["localhost", "127.0.0.1"];
    Pki {
        ca: ca_file,
        other_ca,
        localhost: leaf(
            dir,
            "localhost",
            &["localhost"],
            std::slice::from_ref(&server),
            &authority,
        ),
        loopback: leaf(
            dir,
            "loopback",
            &loopback,
            std::slice::from_ref(&server),
            &authority,
        ),
        node: leaf(
            dir,
            "node",
            &loopback,
            &[server, client.clone()],
            &authority,
        ),
        client: leaf(dir, "client", &["portcullis"], &[client], &authority),
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

/// A TLS connection to the node on `port` (for setting up and looking at keys), trusting the
/// test's CA.
async fn tls_connection(pki: &Pki, port: u16) -> redis::aio::MultiplexedConnection {
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(std::fs::read(&pki.ca).unwrap()),
    };
    redis::Client::build_with_tls(format!("rediss://127.0.0.1:{port}"), certificates)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The raw record of `hash` under `prefix`, read from the node behind `conn` (a replica serves
/// it after `READONLY`); `None` when there is none.
async fn raw_record(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    hash: &TokenHash,
) -> Option<Vec<u8>> {
    let mut key = format!("{prefix}:{{{:02x}}}:s:", hash.0[0]).into_bytes();
    key.extend_from_slice(&hash.0);
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

/// Byte 1 of a record: 1 live, 0 ended, 2 ended but not yet confirmed on the replicas.
const LIVE: u8 = 1;
const CONFIRMED: u8 = 0;
const UNCONFIRMED: u8 = 2;

#[tokio::test]
async fn a_six_node_tls_cluster_waits_for_tls_replicas_per_primary() {
    let began = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let pki = pki(root.path());
    let ca = path(&pki.ca);
    // Six TLS-only nodes: clients, the cluster bus and replication all over TLS. On the bus and
    // replication links each node presents its certificate and verifies the other's against the
    // test's CA (so theirs is `node`, good for both ends); clients such as the store are not
    // asked for one.
    let servers: Vec<RedisProcess> = (0..6)
        .map(|i| {
            let name = format!("six{i}");
            let bus = free_port().to_string();
            let nodes = root.path().join(&name).join("nodes.conf");
            tls_server(
                root.path(),
                &name,
                &pki,
                &pki.node,
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
                    "--tls-replication",
                    "yes",
                    // Full sync at once (not after the default 5 s wait for more replicas).
                    "--repl-diskless-sync-delay",
                    "0",
                ],
            )
        })
        .collect();
    let addresses: Vec<String> = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    // Three primaries with a third of the slots each, one replica each (all on one host, which
    // redis-cli warns about and accepts). redis-cli waits for the nodes to meet on the bus with
    // no limit of its own (forever, should their TLS handshakes fail), so the test sets one.
    let output = root.path().join("create.log");
    let mut create = std::process::Command::new("redis-cli")
        .args(["--tls", "--cacert", ca, "--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(std::process::Stdio::from(
            std::fs::File::options().append(true).open(&output).unwrap(),
        ))
        .spawn()
        .unwrap();
    let creating = Instant::now();
    let created = loop {
        if let Some(status) = create.try_wait().unwrap() {
            break Some(status);
        }
        if creating.elapsed() > Duration::from_secs(60) {
            let _ = create.kill();
            let _ = create.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        created.is_some_and(|s| s.success()),
        "redis-cli --cluster create ({created:?}): {}",
        std::fs::read_to_string(&output).unwrap_or_default()
    );
    let mut conns = Vec::new();
    for server in &servers {
        conns.push(tls_connection(&pki, server.port).await);
    }
    for conn in &mut conns {
        until(Duration::from_secs(30), "the cluster is ok", async || {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(conn)
                .await
                .unwrap();
            info.contains("cluster_state:ok")
        })
        .await;
        // Every node knows every primary's replica (the store asks one node at start).
        until(
            Duration::from_secs(30),
            "every node sees every primary's replica",
            async || {
                let nodes = cluster_nodes(conn).await;
                let primaries: Vec<&ClusterNode> =
                    nodes.iter().filter(|n| !n.slots.is_empty()).collect();
                primaries.len() == 3
                    && primaries.iter().all(|p| {
                        nodes
                            .iter()
                            .any(|n| n.primary_of.as_deref() == Some(p.id.as_str()))
                    })
            },
        )
        .await;
    }
    let nodes = cluster_nodes(&mut conns[0]).await;
    let primaries: Vec<&ClusterNode> = nodes.iter().filter(|n| !n.slots.is_empty()).collect();
    assert_eq!(primaries.len(), 3, "{nodes:?}");
    // Each primary's index among `servers`, and its replica's.
    let index = |port: u16| servers.iter().position(|s| s.port == port).unwrap();
    let pairs: Vec<(usize, usize)> = primaries
        .iter()
        .map(|p| {
            let replica = nodes
                .iter()
                .find(|n| n.primary_of.as_deref() == Some(p.id.as_str()))
                .unwrap();
            (index(p.port), index(replica.port))
        })
        .collect();
    for &(_, r) in &pairs {
        let conn = &mut conns[r];
        until(
            Duration::from_secs(30),
            "each replica's TLS link to its primary is up",
            async || {
                replication_field(conn, "master_link_status")
                    .await
                    .as_deref()
                    == Some("up")
            },
        )
        .await;
        // Replicas serve reads of their primary's slots once asked to.
        let _: () = redis::cmd("READONLY")
            .query_async(&mut conns[r])
            .await
            .unwrap();
    }
    eprintln!(
        "six-node TLS cluster up in {:?}: (primary, replica) ports {:?}",
        began.elapsed(),
        pairs
            .iter()
            .map(|&(p, r)| (servers[p].port, servers[r].port))
            .collect::<Vec<_>>()
    );

    // Which primary (0–2) holds each route's hash tag (`{xx}`), and two subjects on each.
    let mut primary_of_route = BTreeMap::new();
    for route in 0..=255u8 {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("{{{route:02x}}}"))
            .query_async(&mut conns[0])
            .await
            .unwrap();
        let holder = primaries
            .iter()
            .position(|p| p.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .unwrap();
        primary_of_route.insert(route, holder);
    }
    let mut subjects: Vec<Vec<String>> = vec![Vec::new(); 3];
    for i in 0.. {
        let subject = format!("user{i}");
        let list = &mut subjects[primary_of_route[&subject_route(&subject)]];
        if list.len() < 2 {
            list.push(subject);
        }
        if subjects.iter().all(|l| l.len() == 2) {
            break;
        }
    }

    // Long enough that a healthy replica on a loaded 2-core machine always confirms in time;
    // each ending refused while a replica is frozen costs this much.
    let timeout = Duration::from_secs(3);
    let store = RedisStore::connect(&format!(
        "rediss+cluster://127.0.0.1:{}?ca_file={ca}&wait_replicas=1&wait_timeout=3s&prefix=six",
        servers[0].port
    ))
    .await
    .unwrap();
    let random = random();

    // (a) On every primary: a session is created, validates, and its ending is acknowledged
    // once that primary's TLS replica confirmed it (the replica has it as soon as it is).
    for (i, &(p, r)) in pairs.iter().enumerate() {
        let (token, session) = session_at(&subjects[i][0], t0(), &random);
        store.insert(plain_insert(session.clone())).await.unwrap();
        let found = store.find_by_token(&token.routed_hash()).await.unwrap();
        assert!(found.is_some_and(|s| s.is_live()), "validates");
        let ended = store
            .end(&session.id, ending(EndReason::Logout, t0()))
            .await
            .unwrap();
        assert_eq!(ended.sessions.len(), 1);
        let on_primary = raw_record(&mut conns[p], "six", &session.token_hash)
            .await
            .expect("the primary holds the record");
        assert_eq!(on_primary[1], CONFIRMED, "confirmed by the replica");
        let on_replica = raw_record(&mut conns[r], "six", &session.token_hash)
            .await
            .expect("the replica holds the record");
        assert_ne!(on_replica[1], LIVE, "the replica has the ending");
        let found = store.find_by_token(&token.routed_hash()).await.unwrap();
        assert!(found.is_some_and(|s| !s.is_live()));
    }

    // (b) The first primary's replica freezes: an ending there is made on the primary but not
    // acknowledged, while an ending on the second primary, whose replica answers, is.
    let (p, r) = pairs[0];
    let (there_token, there) = session_at(&subjects[0][1], t0(), &random);
    let (_, elsewhere) = session_at(&subjects[1][1], t0(), &random);
    store.insert(plain_insert(there.clone())).await.unwrap();
    store.insert(plain_insert(elsewhere.clone())).await.unwrap();
    servers[r].pause();
    let started = Instant::now();
    let waiting = {
        let store = store.clone();
        let id = there.id.clone();
        tokio::spawn(async move { store.end(&id, ending(EndReason::Logout, t0())).await })
    };
    let ended = store
        .end(&elsewhere.id, ending(EndReason::Logout, t0()))
        .await
        .unwrap();
    assert_eq!(ended.sessions.len(), 1);
    let acknowledged_in = started.elapsed();
    assert!(
        !waiting.is_finished(),
        "the other primary's ending was acknowledged while this one waited"
    );
    let refused = match waiting.await.unwrap() {
        Err(err @ (StoreError::Unavailable(_) | StoreError::Unconfirmed { .. })) => err.to_string(),
        other => panic!("an ending the frozen replica did not confirm: {other:?}"),
    };
    let refused_in = started.elapsed();
    assert!(refused_in >= timeout, "it waited wait_timeout");
    assert!(
        refused.contains("0 of the 1 replica(s)") && refused.contains("retrying is safe"),
        "{refused}"
    );
    eprintln!(
        "replica frozen: the other primary's ending acknowledged in {acknowledged_in:?}, \
         this one refused after {refused_in:?}: {refused}"
    );
    let on_primary = raw_record(&mut conns[p], "six", &there.token_hash)
        .await
        .unwrap();
    assert_eq!(on_primary[1], UNCONFIRMED, "made on the primary, marked");

    // The replica is back: the retry is acknowledged (ended already), and the replica has it.
    servers[r].resume();
    let retried = store
        .end(&there.id, ending(EndReason::Logout, t0()))
        .await
        .unwrap();
    assert!(retried.sessions.is_empty(), "it was ended already");
    let on_primary = raw_record(&mut conns[p], "six", &there.token_hash)
        .await
        .unwrap();
    assert_eq!(on_primary[1], CONFIRMED);
    let on_replica = raw_record(&mut conns[r], "six", &there.token_hash)
        .await
        .unwrap();
    assert_ne!(on_replica[1], LIVE, "the replica has the ending");
    let found = store
        .find_by_token(&there_token.routed_hash())
        .await
        .unwrap();
    assert!(found.is_some_and(|s| !s.is_live()));
    eprintln!("whole test {:?}", began.elapsed());
}
