//! The store over TLS against a private PostgreSQL (`ssl = on`, TLS-only `hostssl` rules) with
//! a CA and a server certificate for `localhost` that the test makes: `sslmode=verify-full`
//! with the CA works end to end (a few conformance cases); a wrong CA, a name the certificate
//! does not carry, and a plain connection are each refused, with the reason.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::PrivatePostgres;
use portcullis_store_postgres::PostgresStore;
use portcullis_store_tests::{store, users};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Portcullis test CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Connecting to `url` fails; answers the reason.
async fn refused(url: &str) -> String {
    match PostgresStore::connect_url(url).await {
        Ok(_) => panic!("{url} was accepted"),
        Err(err) => err.to_string(),
    }
}

#[tokio::test]
async fn verify_full_checks_the_server_and_refuses_what_does_not_verify() {
    let pki = tempfile::tempdir().unwrap();
    let authority = ca();
    let ca_file = pki.path().join("ca.pem");
    std::fs::write(&ca_file, authority.pem()).unwrap();
    let other_ca = pki.path().join("other-ca.pem");
    std::fs::write(&other_ca, ca().pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &authority).unwrap();

    let server = PrivatePostgres::start(
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'",
        // TLS only: a plain connection finds no rule that lets it in.
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        |data: &Path| {
            std::fs::write(data.join("server.crt"), cert.pem()).unwrap();
            let key_file = data.join("server.key");
            std::fs::write(&key_file, key.serialize_pem()).unwrap();
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        },
    );
    let port = server.port;
    let ca = ca_file.display();
    let url =
        |host: &str, options: &str| format!("postgres://postgres@{host}:{port}/postgres?{options}");
    let verified = |case: &str| {
        let url = url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}&schema=tls_{case}"),
        );
        async move { PostgresStore::connect_url(&url).await.unwrap() }
    };
    store::insert_then_find_by_token_and_id(verified("insert").await).await;
    store::replace_is_compare_and_set_and_kills_the_old_token(verified("replace").await).await;
    store::end_is_recorded_exactly_once(verified("end").await).await;
    store::end_subject_spares_the_exception(verified("subject").await).await;
    store::events_are_ordered_filtered_and_paged(verified("events").await).await;
    store::ping_answers(verified("ping").await).await;
    users::user_store_contract(std::sync::Arc::new(verified("users").await.users())).await;

    let wrong_ca = refused(&url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
    ))
    .await;
    assert!(wrong_ca.contains("invalid peer certificate"), "{wrong_ca}");
    eprintln!("wrong CA: {wrong_ca}");
    let wrong_name = refused(&url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert!(
        wrong_name.contains("not valid for name \"127.0.0.1\""),
        "{wrong_name}"
    );
    eprintln!("wrong name: {wrong_name}");
    // verify-ca checks the CA but not the name: the name is what verify-full adds.
    PostgresStore::connect_url(&url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca}&schema=tls_ca"),
    ))
    .await
    .unwrap();
    // Without sslmode the connection is plain, and this server takes TLS only.
    let plain = refused(&url("localhost", "schema=tls_plain")).await;
    assert!(plain.contains("no encryption"), "{plain}");
    eprintln!("plain: {plain}");
}
