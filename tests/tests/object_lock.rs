//! S3 Object Lock against the local S3 server (moto implements it: buckets created with Object
//! Lock are versioned, a default retention applies to every new object, and deleting a
//! version under retention is refused). A repository declared with `repo.object_lock_days`
//! on such a bucket: `expire` and `gc` delete nothing still under retention and say until
//! when; a plain DELETE (a careless script, or a writer's credentials) only adds a delete
//! marker, the version survives and cannot be deleted, `verify` names what went missing, and
//! removing the delete marker brings it back. Skipped without the local S3 server.

use std::process::Command;
use std::time::Duration;

use pgcairn_tests::*;

/// One signed request (curl's SigV4, the fixture's credentials) to the local S3 server:
/// status and body. moto refuses unsigned deletes whatever the lock, so everything is signed.
fn s3(method: &str, url: &str, headers: &[&str], body: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
    c.args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "test:test"]);
    for h in headers {
        c.args(["-H", h]);
    }
    if let Some(b) = body {
        c.args(["--data-binary", b]);
    }
    let out = c.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The values of `<tag>` inside every `<element>` of an XML listing.
fn values_in(xml: &str, element: &str, tag: &str) -> Vec<String> {
    xml.split(&format!("<{element}>"))
        .skip(1)
        .filter_map(|e| {
            let e = e.split(&format!("</{element}>")).next()?;
            let v = e
                .split(&format!("<{tag}>"))
                .nth(1)?
                .split(&format!("</{tag}>"))
                .next()?;
            Some(v.to_string())
        })
        .collect()
}

#[test]
fn object_lock_retention_is_respected_and_a_plain_delete_only_hides_a_version() {
    let Some(endpoint) = s3_endpoint() else {
        eprintln!("skipped: no local S3 server (PGCAIRN_TEST_S3_ENDPOINT)");
        return;
    };
    // A bucket with Object Lock, then a default retention of one day (COMPLIANCE).
    let bucket = format!("locked-{}", std::process::id());
    let (code, body) = s3(
        "PUT",
        &format!("{endpoint}/{bucket}"),
        &["x-amz-bucket-object-lock-enabled: true"],
        None,
    );
    assert_eq!(code, 200, "{body}");
    let rule = "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
        <ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode>\
        <Days>1</Days></DefaultRetention></Rule></ObjectLockConfiguration>";
    let md5 = {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '%s' '{rule}' | openssl md5 -binary | base64"
            ))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (code, body) = s3(
        "PUT",
        &format!("{endpoint}/{bucket}?object-lock="),
        &[
            "Content-Type: application/xml",
            &format!("Content-MD5: {md5}"),
        ],
        Some(rule),
    );
    assert_eq!(code, 200, "{body}");
    let (_, versioning) = s3(
        "GET",
        &format!("{endpoint}/{bucket}?versioning="),
        &[],
        None,
    );
    assert!(
        versioning.contains("<Status>Enabled</Status>"),
        "{versioning}"
    );

    // This test binary runs this one test: the fixture reads the bucket from the environment.
    std::env::set_var("PGCAIRN_TEST_S3_BUCKET", &bucket);
    let mut options = EnvOptions::new(Backend::S3);
    options.archive_extra = "\n[retention]\nfull = 1\n".into();
    // One request at a time (store::limit): every command of this test, archive-push under
    // PostgreSQL included, runs through the cap at its tightest.
    options.repo_extra =
        "object_lock_days = 1\nchecksum_algorithm = \"sha256\"\nmax_requests = 1\n".into();
    let env = TestEnv::new(options);
    let prefix = env
        .repo_url
        .strip_prefix(&format!("s3://{bucket}/"))
        .unwrap()
        .to_string();

    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql(
        "postgres",
        "create table t as select g from generate_series(1, 20000) g",
    )
    .unwrap();
    let b1 = backup_json(&env, &["--type", "full"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    pg.psql("postgres", "update t set g = g + 1").unwrap();
    let b2 = backup_json(&env, &["--type", "full"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let seg = switch_wal(&pg);
    wait_archived(&pg, &seg, Duration::from_secs(90));

    let check = env.pgcairn(&["check"]);
    assert_success(&check, "check");
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("repo.object_lock_days = 1 assumed"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // retention.full = 1 would expire b1 and its WAL: both are under retention, so they stay,
    // and expire says until when.
    let out = env.pgcairn(&["expire"]);
    assert_success(&out, "expire");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&b1) && text.contains("Object Lock retention until"),
        "{text}"
    );
    let info = env.pgcairn(&["info", "--output", "json"]);
    assert_success(&info, "info");
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains(&b1) && info.contains(&b2), "{info}");
    let gc = env.pgcairn(&["gc", "--grace", "0s", "--output", "json"]);
    assert_success(&gc, "gc");
    let gc: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(gc["swept"], serde_json::json!([]), "{gc:#}");

    // A plain DELETE of b1's manifest: 204, but only a delete marker; the version survives.
    let key = format!("{prefix}/clusters/main/backups/{b1}/manifest");
    let (code, body) = s3("DELETE", &format!("{endpoint}/{bucket}/{key}"), &[], None);
    assert_eq!(code, 204, "{body}");
    let verify = env.pgcairn(&["--progress", "never", "verify"]);
    assert_eq!(verify.status.code(), Some(1), "{}", stderr(&verify));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        stderr(&verify)
    );
    assert!(said.contains(&b1), "verify names the hidden backup: {said}");
    let (_, listing) = s3(
        "GET",
        &format!("{endpoint}/{bucket}?versions=&prefix={key}"),
        &[],
        None,
    );
    let versions = values_in(&listing, "Version", "VersionId");
    let markers = values_in(&listing, "DeleteMarker", "VersionId");
    assert_eq!((versions.len(), markers.len()), (1, 1), "{listing}");
    // The version itself cannot be deleted while under retention.
    let (code, body) = s3(
        "DELETE",
        &format!("{endpoint}/{bucket}/{key}?versionId={}", versions[0]),
        &[],
        None,
    );
    assert_eq!(code, 403, "deleting a locked version: {body}");
    // Recovery: delete the delete marker; the manifest is back and verify is clean.
    let (code, body) = s3(
        "DELETE",
        &format!("{endpoint}/{bucket}/{key}?versionId={}", markers[0]),
        &[],
        None,
    );
    assert_eq!(code, 204, "{body}");
    assert_success(
        &env.pgcairn(&["--progress", "never", "verify"]),
        "verify after removing the delete marker",
    );
    let r = env.restore_and_start("r1", Some(&b1));
    let _s = StopOnDrop(&r);
    assert_eq!(
        r.psql("postgres", "select count(*) from t").unwrap(),
        "20000"
    );
    r.stop().unwrap();
}
