//! An acknowledged ending survives the loss of its Redis Cluster primary.
//!
//! A private Cluster of three primaries and three replicas on free loopback ports (never the
//! 7100–7105 of CI). One primary's replica is frozen (`SIGSTOP`) and the primary is made to
//! queue more replication traffic than the kernel buffers hold, so what it writes next never
//! reaches the replica; the primary is then killed (`SIGKILL`) and the replica takes over
//! (`CLUSTER FAILOVER TAKEOVER`). With the store waiting for one replica (a Cluster's default):
//! every ending that was acknowledged is still ended after the failover, and every ending made
//! while the replica was frozen was refused (503), lost with the primary, and ends fine when
//! retried once the old primary is back as the new primary's replica.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    ClusterNode, RedisProcess, cluster_nodes, connection, free_port, replication_field, until,
};
use portcullis_core::{EndReason, Session, SessionStore, StoreError, subject_route};
use portcullis_store_redis::RedisStore;
use portcullis_store_tests::{ending, plain_insert, random, session_at, t0};
use tokio::task::JoinSet;

fn node_args(dir: &Path, bus: u16) -> Vec<String> {
    [
        "--cluster-enabled",
        "yes",
        "--cluster-port",
        &bus.to_string(),
        "--cluster-config-file",
        &dir.join("nodes.conf").display().to_string(),
        "--cluster-node-timeout",
        "2000",
        "--cluster-replica-validity-factor",
        "0",
        "--repl-diskless-sync-delay",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

struct Node {
    port: u16,
    bus: u16,
    name: String,
    process: Option<RedisProcess>,
}

impl Node {
    fn start(root: &Path, name: &str, port: u16, bus: u16) -> RedisProcess {
        let args = node_args(&root.join(name), bus);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        RedisProcess::start(root, name, port, &args)
    }
}

/// The Cluster as the node on `port` sees it.
async fn topology(port: u16) -> Vec<ClusterNode> {
    cluster_nodes(&mut connection(port).await).await
}

async fn cluster_ok(port: u16) -> bool {
    let Ok(mut conn) = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
    else {
        return false;
    };
    let info: Result<String, _> = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut conn)
        .await;
    info.is_ok_and(|i| i.contains("cluster_state:ok"))
}

/// Ends each session concurrently; answers the ones acknowledged and the ones refused. A retry
/// may find its session ended already (by an attempt answered 503 that the replicas confirmed
/// later), which is as good.
async fn end_all(
    store: &RedisStore,
    sessions: &[Session],
    retry: bool,
) -> (Vec<Session>, Vec<Session>) {
    let mut tasks = JoinSet::new();
    for session in sessions {
        let store = store.clone();
        let session = session.clone();
        tasks.spawn(async move {
            let result = store
                .end(&session.id, ending(EndReason::Logout, t0()))
                .await;
            (session, result)
        });
    }
    let (mut acknowledged, mut refused) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            (session, Ok(ended)) => {
                assert!(ended.sessions.len() == 1 || retry && ended.sessions.is_empty());
                acknowledged.push(session);
            }
            (session, Err(StoreError::Unavailable(_) | StoreError::Unconfirmed { .. })) => {
                refused.push(session)
            }
            (_, Err(other)) => panic!("an ending failed otherwise: {other}"),
        }
    }
    (acknowledged, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_endings_survive_a_killed_primary_and_a_failover() {
    let began = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..6)
        .map(|i| {
            let (port, bus) = (free_port(), free_port());
            let name = format!("n{i}");
            let process = Some(Node::start(root.path(), &name, port, bus));
            Node {
                port,
                bus,
                name,
                process,
            }
        })
        .collect();
    let addresses: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let created = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "redis-cli --cluster create: {}{}",
        String::from_utf8_lossy(&created.stdout),
        String::from_utf8_lossy(&created.stderr)
    );
    for node in &nodes {
        let port = node.port;
        until(Duration::from_secs(20), "the cluster forms", async || {
            cluster_ok(port).await
        })
        .await;
    }
    // Every node knows every primary's replica (the store asks any node at start).
    for node in &nodes {
        let port = node.port;
        until(
            Duration::from_secs(20),
            "every primary has its replica",
            async || {
                let entries = topology(port).await;
                entries
                    .iter()
                    .filter(|e| e.primary_of.is_none())
                    .all(|p| entries.iter().any(|e| e.primary_of.as_ref() == Some(&p.id)))
            },
        )
        .await;
    }
    let first = nodes[0].port;
    let entries = topology(first).await;
    let primary = entries
        .iter()
        .find(|e| e.primary_of.is_none() && !e.slots.is_empty())
        .unwrap();
    let replica = entries
        .iter()
        .find(|e| e.primary_of.as_deref() == Some(primary.id.as_str()))
        .expect("every primary has a replica");
    let p = nodes.iter().position(|n| n.port == primary.port).unwrap();
    let r = nodes.iter().position(|n| n.port == replica.port).unwrap();
    for node in entries.iter().filter(|e| e.primary_of.is_some()) {
        let mut conn = connection(node.port).await;
        until(Duration::from_secs(20), "the replicas sync", async || {
            replication_field(&mut conn, "master_link_status")
                .await
                .as_deref()
                == Some("up")
        })
        .await;
    }
    eprintln!("cluster up in {:?}", began.elapsed());

    // Hash tags (`{xx}`, a subject's route) whose slot the doomed primary holds.
    let mut conn = connection(primary.port).await;
    let mut on_primary = BTreeSet::new();
    for route in 0..=255u8 {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("{{{route:02x}}}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if primary.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)) {
            on_primary.insert(route);
        }
    }
    let doomed_tag = format!("{:02x}", on_primary.first().unwrap());

    let store = RedisStore::connect(&format!(
        // Long enough that a healthy replica on a loaded machine always confirms in time.
        "redis+cluster://{}?prefix=fo&wait_timeout=2s",
        addresses[..3].join(",")
    ))
    .await
    .unwrap();
    let random = random();
    let (mut there, mut elsewhere) = (Vec::new(), Vec::new());
    for i in 0.. {
        let subject = format!("user{i}");
        let (_, session) = session_at(&subject, t0(), &random);
        let (list, wanted) = if on_primary.contains(&subject_route(&subject)) {
            (&mut there, 60)
        } else {
            (&mut elsewhere, 20)
        };
        if list.len() < wanted {
            store.insert(plain_insert(session.clone())).await.unwrap();
            list.push(session);
        }
        if there.len() == 60 && elsewhere.len() == 20 {
            break;
        }
    }

    // The replica confirms: endings are acknowledged.
    let (mut acknowledged, refused) = end_all(&store, &there[..30], false).await;
    assert!(refused.is_empty(), "refused while the replica answers");
    let (others, refused) = end_all(&store, &elsewhere[..10], false).await;
    assert!(refused.is_empty());
    acknowledged.extend(others);

    // The replica stops confirming, and the primary queues more than the kernel buffers hold
    // (so its last writes exist only in its own memory).
    nodes[r].process.as_ref().unwrap().pause();
    let junk = vec![b'x'; 1 << 20];
    for i in 0..24 {
        let _: () = redis::cmd("SET")
            .arg(format!("junk:{{{doomed_tag}}}:{i}"))
            .arg(&junk)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // Endings elsewhere are still acknowledged; those on the primary are refused.
    let (others, refused) = end_all(&store, &elsewhere[10..], false).await;
    assert!(refused.is_empty(), "other primaries' replicas confirm");
    acknowledged.extend(others);
    let lagging = Instant::now();
    let (confirmed, refused) = end_all(&store, &there[30..], false).await;
    assert!(
        confirmed.is_empty(),
        "an ending the replica never confirmed was acknowledged"
    );
    assert_eq!(refused.len(), 30);
    eprintln!(
        "30 endings refused in {:?} while the replica was frozen",
        lagging.elapsed()
    );
    let _: () = redis::cmd("SET")
        .arg(format!("canary:{{{doomed_tag}}}"))
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();

    // The primary dies; its replica takes over.
    let killed = Instant::now();
    drop(nodes[p].process.take());
    nodes[r].process.as_ref().unwrap().resume();
    let mut promoted = connection(nodes[r].port).await;
    until(
        Duration::from_secs(10),
        "the replica sees its primary gone",
        async || {
            replication_field(&mut promoted, "master_link_status")
                .await
                .as_deref()
                != Some("up")
        },
    )
    .await;
    let _: () = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .arg("TAKEOVER")
        .query_async(&mut promoted)
        .await
        .unwrap();
    until(
        Duration::from_secs(10),
        "the replica takes over",
        async || replication_field(&mut promoted, "role").await.as_deref() == Some("master"),
    )
    .await;
    let canary: Option<String> = redis::cmd("GET")
        .arg(format!("canary:{{{doomed_tag}}}"))
        .query_async(&mut promoted)
        .await
        .unwrap();
    assert_eq!(
        canary, None,
        "the frozen replica missed the primary's last writes"
    );

    // Every acknowledged ending is still there.
    let first = acknowledged[0].id.clone();
    until(
        Duration::from_secs(20),
        "the store reaches the new primary",
        async || store.find_by_id(&first).await.is_ok(),
    )
    .await;
    eprintln!("store answers again {:?} after the kill", killed.elapsed());
    for session in &acknowledged {
        let found = store.find_by_id(&session.id).await.unwrap().unwrap();
        assert!(
            !found.is_live(),
            "an acknowledged ending of {} was lost in the failover",
            session.subject
        );
    }
    // The refused ones were lost with the primary: live again, as they were before.
    let mut lost = 0;
    for session in &refused {
        let found = store.find_by_id(&session.id).await.unwrap().unwrap();
        lost += usize::from(found.is_live());
    }
    eprintln!(
        "{} acknowledged endings all survived; {lost} of {} refused ones were lost",
        acknowledged.len(),
        refused.len()
    );
    assert!(lost > 0, "the frozen replica missed the refused endings");

    // The old primary comes back as the new primary's replica; retrying the refused endings
    // (safe: an ending is idempotent) is acknowledged now.
    let node = &mut nodes[p];
    node.process = Some(Node::start(root.path(), &node.name, node.port, node.bus));
    let mut returned = connection(node.port).await;
    until(
        Duration::from_secs(20),
        "the old primary syncs from the new one",
        async || {
            replication_field(&mut returned, "master_link_status")
                .await
                .as_deref()
                == Some("up")
        },
    )
    .await;
    let mut pending = refused;
    let retrying = Instant::now();
    while !pending.is_empty() {
        assert!(
            retrying.elapsed() < Duration::from_secs(20),
            "{} retried endings still refused",
            pending.len()
        );
        pending = end_all(&store, &pending, true).await.1;
    }
    for session in &there[30..] {
        let found = store.find_by_id(&session.id).await.unwrap().unwrap();
        assert!(!found.is_live());
    }
    eprintln!("whole test {:?}", began.elapsed());
}
