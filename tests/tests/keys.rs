//! Key slots, external key managers and rotation, end to end: a real PostgreSQL cluster
//! archiving through an `age`-wrapped command slot, a leaked key file removed and the keys
//! rotated, what the leaked key can still open (nothing written after the rotation, even with
//! the old config put back), rollback detection, and every backup and WAL segment restored
//! with the remaining slot, by restore and by a drill. Runs on the local S3 server when
//! available (scripts/test.sh), else on file://.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgcairn_engine::codec::Codec;
use pgcairn_engine::crypto::{KeyFile, KeyUse, RepoKeys, Unlock};
use pgcairn_engine::repo::RepoConfig;
use pgcairn_tests::*;

/// A config file like the fixture's (root:postgres 0640 when root), with `[repo]` lines
/// `key_file` replaced by `unlock_line` and `state_dir` set.
fn config_variant(env: &TestEnv, name: &str, unlock_line: &str, state_dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(&env.config).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("key_file =")
            || line.starts_with("passphrase_file =")
            || line.starts_with("unwrap_command =")
            || line.starts_with("state_dir =")
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line == "[repo]" {
            out.push_str(unlock_line);
            out.push('\n');
            out.push_str(&format!("state_dir = \"{}\"\n", state_dir.display()));
        }
    }
    write_like_config(env, name, &out)
}

/// Writes `text` as `name` beside the fixture's config, with its owner and mode.
fn write_like_config(env: &TestEnv, name: &str, text: &str) -> PathBuf {
    let path = env.path().join(name);
    let tmp = env.path().join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    let meta = std::fs::metadata(&env.config).unwrap();
    std::fs::set_permissions(&tmp, meta.permissions()).unwrap();
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid())).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn storage_options(config: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(config).unwrap();
    let mut in_repo = false;
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_repo = line == "[repo]";
            continue;
        }
        let Some((k, v)) = line.split_once('=').filter(|_| in_repo) else {
            continue;
        };
        let k = k.trim();
        if ![
            "url",
            "key_file",
            "passphrase_file",
            "unwrap_command",
            "state_dir",
        ]
        .contains(&k)
        {
            out.insert(k.to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    out
}

/// Every object key in the repository with its first 12 bytes (enough for the envelope's key
/// epoch), read with the storage library.
fn objects(env: &TestEnv) -> BTreeMap<String, Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = pgcairn_storage::StorageOptions::new(storage_options(&env.config)).unwrap();
        let storage = pgcairn_storage::open(&env.repo_url, &options).unwrap();
        let mut out = BTreeMap::new();
        for o in storage.list("").await.unwrap() {
            let head = if o.size >= 12 {
                storage.get_range(&o.key, 0..12).await.unwrap().to_vec()
            } else {
                Vec::new()
            };
            out.insert(o.key.as_str().to_string(), head);
        }
        out
    })
}

/// Objects key rotation reseals: everything but the config (authenticated by its MAC) and
/// leases (sealed too, but short-lived and rewritten by their holder, so never resealed).
fn is_sealed(key: &str) -> bool {
    key != "config" && !key.starts_with("leases/")
}

fn key_list(env: &TestEnv, config: &Path) -> serde_json::Value {
    let out = env.pgcairn_with_config(config, &["key", "list", "--output", "json"]);
    assert_success(&out, "key list");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn leaked_key_removed_and_rotated_opens_nothing_new_and_age_slot_serves_everything() {
    let env = TestEnv::new(EnvOptions::new(preferred_backend()));
    // The leaked key is the one `init` made (repo.key).
    let leaked = env.key_file.clone();

    // An age identity as the "key manager" (in production: Vault, KMS, ...).
    let identity = env.path().join("age-identity.txt");
    let keygen = Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .expect("age-keygen (scripts/install-deps.sh installs age)");
    assert_success(&keygen, "age-keygen");
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600)).unwrap();
    give_to(env.run_as.as_deref(), &identity).unwrap();
    let recipient = String::from_utf8(
        Command::new("age-keygen")
            .arg("-y")
            .arg(&identity)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let wrap = format!("age -r {recipient}");
    let unwrap = format!("age -d -i {}", identity.display());

    let add = env.pgcairn(&[
        "key",
        "add",
        "--wrap-command",
        &wrap,
        "--unwrap-command",
        &unwrap,
    ]);
    assert_success(&add, "key add (age)");

    // From now on the whole fixture (archive_command, backup, restore, drill) unlocks through
    // age; the leaked key file keeps its own config with its own (attacker's) state.
    let state = env.path().join("state");
    let attacker_state = env.path().join("attacker-state");
    let leaked_config = config_variant(
        &env,
        "leaked.toml",
        &format!("key_file = \"{}\"", leaked.display()),
        &attacker_state,
    );
    config_variant(
        &env,
        "pgcairn.toml",
        &format!("unwrap_command = \"{unwrap}\""),
        &state,
    );

    let list = key_list(&env, &env.config);
    let slots = list["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 2, "{list:#}");
    let leaked_slot = slots
        .iter()
        .find(|s| s["kind"] == "key-file")
        .expect("key-file slot")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let age_slot = slots.iter().find(|s| s["kind"] == "command").unwrap();
    assert_eq!(
        age_slot["current"], true,
        "age unlocked this command: {list:#}"
    );
    assert_eq!(age_slot["unwrap_command"], unwrap.as_str());
    assert_eq!(list["key_epoch"], 1);

    // A cluster archiving through the age slot, a backup before the rotation.
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql(
        "postgres",
        "create table before_rotation as select g from generate_series(1, 50000) g",
    )
    .unwrap();
    let b1 = backup_json(&env, &["--type", "full"]);
    let b1 = b1["id"].as_str().unwrap().to_string();
    let pre_segment = switch_wal(&pg);
    wait_archived(&pg, &pre_segment, Duration::from_secs(90));
    let old_config = env.read_object("config").expect("config");
    let before: BTreeSet<String> = objects(&env).into_keys().collect();

    // The leak: remove the slot, then rotate.
    let refused = env.pgcairn_with_config(&leaked_config, &["key", "remove", &leaked_slot]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("unlocked with"),
        "{}",
        stderr(&refused)
    );
    assert_success(&env.pgcairn(&["key", "remove", &leaked_slot]), "key remove");
    let locked_out = env.pgcairn_with_config(&leaked_config, &["info"]);
    assert_eq!(locked_out.status.code(), Some(2), "{}", stderr(&locked_out));
    assert!(
        stderr(&locked_out).contains("does not unlock"),
        "{}",
        stderr(&locked_out)
    );

    // The only slot left is the one unlocking: it is rewrapped with its own key.
    assert_success(&env.pgcairn(&["key", "rotate"]), "key rotate");
    let rotated = env.pgcairn(&["key", "rotate", "--wrap-command", &wrap, "--output", "json"]);
    assert_success(
        &rotated,
        "key rotate --wrap-command (a fresh age-wrapped slot secret)",
    );
    let rotated: serde_json::Value = serde_json::from_slice(&rotated.stdout).unwrap();
    assert_eq!(rotated["key_epoch"], 3, "two rotations: {rotated}");

    // Written after the rotation: WAL, a backup.
    pg.psql(
        "postgres",
        "create table after_rotation as select g from generate_series(1, 30000) g",
    )
    .unwrap();
    let b2 = backup_json(&env, &["--type", "full"]);
    let b2 = b2["id"].as_str().unwrap().to_string();
    pg.psql(
        "postgres",
        "insert into after_rotation select g from generate_series(1, 1000) g",
    )
    .unwrap();
    let post_segment = switch_wal(&pg);
    wait_archived(&pg, &post_segment, Duration::from_secs(90));

    // Every sealed object written after the rotation names epoch 3, which the keyring the
    // leaked key opens (the old config, which its holder may have kept) does not hold.
    let old: RepoConfig = serde_json::from_slice(&old_config).unwrap();
    let leaked_unlock = Unlock::KeyFile(KeyFile::load(&leaked).unwrap());
    let old_ring = old
        .unlock_full(Some(&leaked_unlock))
        .expect("the leak opened the old config");
    let old_keys = RepoKeys::from_keyring(&old_ring.keyring);
    let after = objects(&env);
    let mut new_sealed = 0;
    for (key, head) in &after {
        // Audit records of the key commands themselves (key remove, the first rotation) were
        // written before the second rotation.
        if before.contains(key) || !is_sealed(key) || key.starts_with("audit/") {
            continue;
        }
        new_sealed += 1;
        let epoch = Codec::epoch_of(head).unwrap_or_else(|| panic!("{key} is not an envelope"));
        assert_eq!(
            epoch, 3,
            "{key} written after the rotation is sealed under epoch {epoch}"
        );
        for usage in [KeyUse::Data, KeyUse::Wal, KeyUse::Meta] {
            assert!(
                old_keys.key(usage, epoch).is_none(),
                "the leaked keyring holds epoch {epoch}"
            );
        }
    }
    assert!(
        new_sealed >= 4,
        "packs, index, manifest and WAL written after the rotation: {new_sealed}"
    );

    // The attacker puts the old config back (rollback) and reads with the leaked key.
    let new_config = env.read_object("config").expect("config");
    env.write_object("config", &old_config);
    let got_old = env.pgcairn_with_config(
        &leaked_config,
        &[
            "archive-get",
            &pre_segment,
            &env.path().join("pre.wal").display().to_string(),
        ],
    );
    assert_success(
        &got_old,
        "the leaked key still reads what was written before the rotation",
    );
    let post_dest = env.path().join("post.wal").display().to_string();
    let got_new =
        env.pgcairn_with_config(&leaked_config, &["archive-get", &post_segment, &post_dest]);
    assert!(
        !got_new.status.success(),
        "the leaked key read post-rotation WAL"
    );
    assert!(
        stderr(&got_new).contains("key epoch 3"),
        "{}",
        stderr(&got_new)
    );
    let stolen = env.pgcairn_with_config(
        &leaked_config,
        &[
            "--progress",
            "never",
            "restore",
            "--pgdata",
            &env.path().join("stolen").display().to_string(),
            "--backup",
            &b2,
        ],
    );
    assert!(
        !stolen.status.success(),
        "the leaked key restored a post-rotation backup"
    );
    // A host that saw the rotation refuses the rolled-back config.
    let detected = env.pgcairn(&["info"]);
    assert_eq!(detected.status.code(), Some(2), "{}", stderr(&detected));
    assert!(
        stderr(&detected).contains("rolled back"),
        "{}",
        stderr(&detected)
    );
    env.write_object("config", &new_config);

    // With the remaining (age) slot: every backup restores, every WAL segment comes back.
    // Every archived WAL file, from the repository's pointers.
    let archived: Vec<String> = objects(&env)
        .into_keys()
        .filter_map(|k| k.strip_prefix("clusters/main/wal/").map(str::to_string))
        .filter_map(|k| k.split_once('/').map(|(_, f)| f.to_string()))
        .collect();
    assert!(
        archived.contains(&pre_segment) && archived.contains(&post_segment),
        "{archived:?}"
    );
    let fetched = env.path().join("fetched");
    std::fs::create_dir(&fetched).unwrap();
    give_to(env.run_as.as_deref(), &fetched).unwrap();
    for seg in &archived {
        let dest = fetched.join(seg).display().to_string();
        let out = env.pgcairn(&["archive-get", seg, &dest]);
        assert_success(&out, &format!("archive-get {seg} through the age slot"));
    }
    let r1 = env.restore_and_start("r1", Some(&b1));
    let _s1 = StopOnDrop(&r1);
    assert_eq!(
        r1.psql("postgres", "select count(*) from before_rotation")
            .unwrap(),
        "50000"
    );
    assert_eq!(
        r1.psql("postgres", "select count(*) from after_rotation")
            .unwrap(),
        "31000"
    );
    r1.stop().unwrap();
    let r2 = env.restore_and_start("r2", Some(&b2));
    let _s2 = StopOnDrop(&r2);
    assert_eq!(
        r2.psql("postgres", "select count(*) from after_rotation")
            .unwrap(),
        "31000"
    );
    r2.stop().unwrap();

    // A drill through the age slot.
    let tmp = env.private_dir("drilltmp");
    let mut drill = env.pgcairn_command(&["--progress", "never", "drill", "--output", "json"]);
    drill.env("TMPDIR", &tmp).current_dir(&tmp);
    let drill = drill.output().unwrap();
    assert_success(&drill, "drill through the age slot");

    // An unwrap command that fails, or hangs, is exit 2 naming it, quickly.
    let failing = config_variant(
        &env,
        "failing.toml",
        "unwrap_command = \"echo 'kms: access denied' >&2; exit 1\"",
        &state,
    );
    let out = env.pgcairn_with_config(&failing, &["info"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("kms: access denied"),
        "{}",
        stderr(&out)
    );
    let hanging = config_variant(
        &env,
        "hanging.toml",
        "unwrap_command = \"sleep 60\"\ncommand_timeout = \"1s\"",
        &state,
    );
    let t = Instant::now();
    let out = env.pgcairn_with_config(&hanging, &["info"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        stderr(&out).contains("sleep 60") && stderr(&out).contains("did not finish"),
        "{}",
        stderr(&out)
    );
    let last = env.pgcairn(&["key", "remove", age_slot["id"].as_str().unwrap(), "--force"]);
    assert_eq!(last.status.code(), Some(2), "{}", stderr(&last));
    assert!(stderr(&last).contains("last one"), "{}", stderr(&last));
}

/// Opens the storage of the fixture's repository with the storage library.
fn with_storage<T>(
    env: &TestEnv,
    f: impl AsyncFnOnce(std::sync::Arc<dyn pgcairn_engine::storage::Storage>) -> T,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = pgcairn_storage::StorageOptions::new(storage_options(&env.config)).unwrap();
        let storage = pgcairn_storage::open(&env.repo_url, &options).unwrap();
        f(storage).await
    })
}

/// Every sealed envelope in the repository and the key epoch it names: each object's, and in
/// packs each block's and the trailer's (located through the trailer, opened with `codec`).
fn envelope_epochs(env: &TestEnv, codec: &Codec) -> Vec<(String, u32)> {
    with_storage(env, async |storage| {
        let mut out = Vec::new();
        for o in storage.list("").await.unwrap() {
            let key = o.key.as_str().to_string();
            if !is_sealed(&key) {
                continue;
            }
            let bytes = storage.get(&o.key).await.unwrap();
            if key.starts_with("packs/") {
                let trailer = pgcairn_engine::pack::sealed_trailer(&bytes).expect("pack trailer");
                out.push((format!("{key} trailer"), Codec::epoch_of(trailer).unwrap()));
                for e in pgcairn_engine::pack::read_pack_entries(codec, &bytes).unwrap() {
                    let at = e.offset as usize;
                    let block = &bytes[at..at + e.sealed_len as usize];
                    out.push((
                        format!("{key} block {}", e.block_id),
                        Codec::epoch_of(block).unwrap(),
                    ));
                }
            } else {
                let epoch =
                    Codec::epoch_of(&bytes).unwrap_or_else(|| panic!("{key} is not an envelope"));
                out.push((key, epoch));
            }
        }
        out
    })
}

/// The proof of `key rotate --reencrypt`: after the leaked slot is removed and the keys
/// rotated with re-encryption, the leaked key file (with the config of its time and read
/// access to the repository) holds the key of no envelope in the repository (every object,
/// every block and trailer of every pack), cannot read a WAL segment or restore a backup,
/// while the remaining slot restores every backup and fetches every WAL segment.
#[test]
fn reencrypt_leaves_a_leaked_key_nothing_to_open_and_every_backup_restores() {
    for backend in backends() {
        reencrypt_proof(backend);
    }
}

fn reencrypt_proof(backend: Backend) {
    let env = TestEnv::new(EnvOptions::new(backend));
    let leaked = env.key_file.clone();
    let second = env.path().join("second.key");
    assert_success(
        &env.pgcairn(&["key", "add", "--key-file", &second.display().to_string()]),
        "key add (second key file)",
    );
    let state = env.path().join("state");
    let leaked_config = config_variant(
        &env,
        "leaked.toml",
        &format!("key_file = \"{}\"", leaked.display()),
        &env.path().join("attacker-state"),
    );
    config_variant(
        &env,
        "pgcairn.toml",
        &format!("key_file = \"{}\"", second.display()),
        &state,
    );
    let list = key_list(&env, &leaked_config);
    let leaked_slot = list["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Backups, WAL, a pin and a restore point, all sealed under epoch 1.
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql(
        "postgres",
        "create table t as select g from generate_series(1, 40000) g",
    )
    .unwrap();
    let b1 = backup_json(&env, &["--type", "full"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_success(&env.pgcairn(&["pin", &b1]), "pin");
    pg.psql(
        "postgres",
        "insert into t select g from generate_series(1, 2000) g",
    )
    .unwrap();
    assert_success(
        &env.pgcairn(&["restore-point", "before_rotation"]),
        "restore-point",
    );
    let b2 = backup_json(&env, &["--type", "incr"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    pg.psql(
        "postgres",
        "insert into t select g from generate_series(1, 3000) g",
    )
    .unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    let old_config = env.read_object("config").expect("config");

    // The leak: remove the slot, rotate and re-encrypt (no grace, and no wait for writers:
    // nothing else runs; archiving is synchronous, one process per segment).
    assert_success(&env.pgcairn(&["key", "remove", &leaked_slot]), "key remove");
    let out = env.pgcairn(&[
        "key",
        "rotate",
        "--reencrypt",
        "--grace",
        "0s",
        "--writers-stopped",
        "--output",
        "json",
    ]);
    assert_success(&out, "key rotate --reencrypt");
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(&text[text.find("\n{").map_or(0, |i| i + 1)..]).unwrap();
    assert_eq!(
        report["dropped_epochs"],
        serde_json::json!([1]),
        "{report:#}"
    );
    assert_eq!(report["remaining_count"], 0, "{report:#}");
    assert!(
        report["objects_resealed"].as_u64().unwrap() >= 8,
        "{report:#}"
    );
    assert!(
        !report["gc"]["reencrypted"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    let list = key_list(&env, &env.config);
    assert_eq!(list["key_epochs_held"], serde_json::json!([2]), "{list:#}");

    // The leaked key opens the old config (which its holder kept), and with it the keyring
    // of epoch 1: no envelope in the repository is sealed under an epoch it holds.
    let old: RepoConfig = serde_json::from_slice(&old_config).unwrap();
    let old_ring = old
        .unlock_full(Some(&Unlock::KeyFile(KeyFile::load(&leaked).unwrap())))
        .expect("the leak opened the old config");
    let old_keys = RepoKeys::from_keyring(&old_ring.keyring);
    assert_eq!(old_keys.epochs(), vec![1]);
    let current: RepoConfig = serde_json::from_slice(&env.read_object("config").unwrap()).unwrap();
    let now = current
        .unlock_full(Some(&Unlock::KeyFile(KeyFile::load(&second).unwrap())))
        .unwrap();
    let codec = Codec::new(
        &current.repo_id,
        RepoKeys::from_keyring(&now.keyring),
        true,
        current.data_key_version,
    );
    let envelopes = envelope_epochs(&env, &codec);
    assert!(envelopes.len() > 50, "{}", envelopes.len());
    for (what, epoch) in &envelopes {
        for usage in [KeyUse::Data, KeyUse::Wal, KeyUse::Meta] {
            assert!(
                old_keys.key(usage, *epoch).is_none(),
                "the leaked keyring opens {what} (epoch {epoch})"
            );
        }
    }
    // Through pgcairn itself, with the old config put back: nothing reads.
    let new_config = env.read_object("config").unwrap();
    env.write_object("config", &old_config);
    let dest = env.path().join("stolen.wal").display().to_string();
    let got = env.pgcairn_with_config(&leaked_config, &["archive-get", &last, &dest]);
    assert!(!got.status.success(), "the leaked key read WAL");
    assert!(stderr(&got).contains("key epoch 2"), "{}", stderr(&got));
    let stolen = env.pgcairn_with_config(
        &leaked_config,
        &[
            "--progress",
            "never",
            "restore",
            "--pgdata",
            &env.path().join("stolen").display().to_string(),
            "--backup",
            &b1,
        ],
    );
    assert!(!stolen.status.success(), "the leaked key restored a backup");
    env.write_object("config", &new_config);

    // The remaining slot: every WAL file back, every backup restores, verify is clean.
    let archived: Vec<String> = objects(&env)
        .into_keys()
        .filter_map(|k| k.strip_prefix("clusters/main/wal/").map(str::to_string))
        .filter_map(|k| k.split_once('/').map(|(_, f)| f.to_string()))
        .collect();
    assert!(archived.contains(&last), "{archived:?}");
    let fetched = env.path().join("fetched");
    std::fs::create_dir(&fetched).unwrap();
    give_to(env.run_as.as_deref(), &fetched).unwrap();
    for seg in &archived {
        let dest = fetched.join(seg).display().to_string();
        assert_success(&env.pgcairn(&["archive-get", seg, &dest]), seg);
    }
    assert_success(
        &env.pgcairn(&["--progress", "never", "verify", "--read-data", "--all"]),
        "verify --read-data after re-encryption",
    );
    for (name, id) in [("r1", &b1), ("r2", &b2)] {
        let r = env.restore_and_start(name, Some(id));
        let _s = StopOnDrop(&r);
        assert_eq!(
            r.psql("postgres", "select count(*) from t").unwrap(),
            "45000"
        );
        r.stop().unwrap();
    }
    // Nothing left to do: a second run says so.
    let again = env.pgcairn(&["key", "reencrypt"]);
    assert_success(&again, "key reencrypt (nothing to do)");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to re-encrypt"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
}

/// `key passwd` on a passphrase slot while PostgreSQL archives through it: the old passphrase
/// is refused afterwards, the new one opens the repository, and `archive_command` (pointed at
/// the new passphrase file) keeps archiving; every segment comes back.
#[test]
fn passwd_changes_a_passphrase_slot_and_archiving_goes_on() {
    let env = TestEnv::new(EnvOptions::new(preferred_backend()));
    let secret_file = |name: &str, text: &str| {
        let p = env.path().join(name);
        std::fs::write(&p, format!("{text}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        give_to(env.run_as.as_deref(), &p).unwrap();
        p
    };
    let old_pass = secret_file("old-pass", "correct horse battery staple");
    let new_pass = secret_file("new-pass", "a different and longer passphrase");
    let short = secret_file("short-pass", "too short");
    let add = env.pgcairn(&[
        "key",
        "add",
        "--passphrase-file",
        &old_pass.display().to_string(),
    ]);
    assert_success(&add, "key add --passphrase-file");
    let state = env.path().join("state");
    let with_old = config_variant(
        &env,
        "pgcairn.toml",
        &format!("passphrase_file = \"{}\"", old_pass.display()),
        &state,
    );
    let list = key_list(&env, &with_old);
    let slot = list["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "passphrase" && s["current"] == true)
        .unwrap_or_else(|| panic!("the passphrase slot unlocked: {list:#}"))["id"]
        .as_str()
        .unwrap()
        .to_string();

    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    let before = switch_wal(&pg);
    wait_archived(&pg, &before, Duration::from_secs(90));

    // A passphrase too short is refused, and a key-file slot has no passphrase to change.
    let refused = env.pgcairn(&[
        "key",
        "passwd",
        &slot,
        "--passphrase-file",
        &short.display().to_string(),
    ]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("at least"),
        "{}",
        stderr(&refused)
    );
    let key_slot = list["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "key-file")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let not_passphrase = env.pgcairn(&[
        "key",
        "passwd",
        &key_slot,
        "--passphrase-file",
        &new_pass.display().to_string(),
    ]);
    assert_eq!(
        not_passphrase.status.code(),
        Some(2),
        "{}",
        stderr(&not_passphrase)
    );
    assert!(
        stderr(&not_passphrase).contains("passphrase slots only"),
        "{}",
        stderr(&not_passphrase)
    );

    let out = env.pgcairn(&[
        "key",
        "passwd",
        &slot,
        "--passphrase-file",
        &new_pass.display().to_string(),
    ]);
    assert_success(&out, "key passwd");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&slot),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The old passphrase no longer opens anything.
    let old_refused = env.pgcairn(&["info"]);
    assert_eq!(
        old_refused.status.code(),
        Some(2),
        "{}",
        stderr(&old_refused)
    );
    assert!(
        stderr(&old_refused).contains("does not unlock"),
        "{}",
        stderr(&old_refused)
    );
    // Meanwhile PostgreSQL's archive_command (same config) fails, and keeps the WAL. (Some
    // WAL first: a switch with nothing written since the last one names the segment before,
    // archived long ago.)
    pg.psql(
        "postgres",
        "create table held_while_locked as select 1 as x",
    )
    .unwrap();
    let pending = switch_wal(&pg);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !done_files(&pg).contains(&pending),
        "archived with a passphrase that no longer unlocks"
    );
    // Pointed at the new passphrase, archiving resumes, the held segment included.
    let with_new = config_variant(
        &env,
        "pgcairn.toml",
        &format!("passphrase_file = \"{}\"", new_pass.display()),
        &state,
    );
    let list = key_list(&env, &with_new);
    assert_eq!(list["slots"].as_array().unwrap().len(), 2, "{list:#}");
    // After three failures PostgreSQL's archiver sleeps until a new segment is ready (or a
    // minute passes): one more segment wakes it, and it archives in order, the held one first
    // (both are fetched back below).
    pg.psql("postgres", "create table after_the_change as select 1 as x")
        .unwrap();
    let after = switch_wal(&pg);
    wait_archived(&pg, &after, Duration::from_secs(120));
    let fetched = env.path().join("fetched");
    std::fs::create_dir(&fetched).unwrap();
    give_to(env.run_as.as_deref(), &fetched).unwrap();
    for seg in [&before, &pending, &after] {
        let dest = fetched.join(seg.as_str()).display().to_string();
        assert_success(&env.pgcairn(&["archive-get", seg, &dest]), seg);
    }
    // The key file slot was untouched by the change.
    assert_success(
        &env.pgcairn_with_config(
            &config_variant(
                &env,
                "keyfile.toml",
                &format!("key_file = \"{}\"", env.key_file.display()),
                &state,
            ),
            &["info"],
        ),
        "the key file still opens",
    );
}

/// Stops the load even when an assertion fails (the scope waits for it).
struct StopLoad<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopLoad<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An environment whose config sets `repo.state_dir` (the generation cache), and a running
/// cluster archiving into it.
fn archiving_with_state_dir(options: EnvOptions) -> (TestEnv, Instance) {
    let env = TestEnv::new(options);
    let state = env.path().join("state");
    config_variant(
        &env,
        "pgcairn.toml",
        &format!("key_file = \"{}\"", env.key_file.display()),
        &state,
    );
    let pg = env.cluster("pg");
    pg.start().unwrap();
    env.use_cluster(&pg);
    (env, pg)
}

/// `key rotate --reencrypt` while PostgreSQL archives under pgbench and a backup that started
/// before the rotation is running: the old epoch is not dropped while that backup or a grace
/// period after the key change could still bring objects sealed under it; once it is, every
/// archived WAL file comes back, every backup restores, and nothing is under the old epoch.
#[test]
fn reencrypt_while_archiving_and_backing_up_loses_nothing() {
    let (env, pg) = archiving_with_state_dir(EnvOptions::new(preferred_backend()));
    let _stop = StopOnDrop(&pg);
    pg.pgbench(&["-i", "-s", "3", "-q"]).unwrap();
    let b1 = backup_json(&env, &["--type", "full"])["id"]
        .as_str()
        .unwrap()
        .to_string();

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (b2, runs) = std::thread::scope(|s| {
        let _stop_load = StopLoad(&stop);
        // Writes for the whole run (minutes: the old epoch stays until writers have settled),
        // rate-limited so that they do not starve the tests running beside this one.
        let load = s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                pg.pgbench(&["-T", "2", "-c", "2", "-R", "100"])
                    .expect("pgbench");
                switch_wal(&pg);
            }
        });
        // A backup started before the rotation (it reads the config first).
        let backup = PausedBackup::start(&env, "loading the block index");
        // Loading the block index, which the rotation reseals under the new epoch: the backup
        // follows the rotation (it reads the config again).
        let first = backup.rotate_then_go(&env, &["key", "rotate", "--reencrypt", "--grace", "5s"]);
        // The key change is younger than the grace period: the old epoch stays, and it says
        // when to run again.
        assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
        assert!(
            String::from_utf8_lossy(&first.stdout).contains("key reencrypt` again"),
            "{}",
            String::from_utf8_lossy(&first.stdout)
        );
        let mut runs = 1;
        let deadline = Instant::now() + Duration::from_secs(360);
        loop {
            std::thread::sleep(Duration::from_secs(6));
            let again = env.pgcairn(&["key", "reencrypt", "--grace", "5s"]);
            runs += 1;
            if again.status.success() {
                break;
            }
            assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
            assert!(Instant::now() < deadline, "never dropped the old epoch");
        }
        let b2 = backup.finish("backup during the rotation");
        // Writing goes on under the new epoch for a while.
        std::thread::sleep(Duration::from_secs(4));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        load.join().unwrap();
        (b2, runs)
    });
    assert!(runs >= 2, "the first run could not drop the epoch: {runs}");
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    let list = key_list(&env, &env.config);
    assert_eq!(list["key_epochs_held"], serde_json::json!([2]), "{list:#}");
    // Nothing in the repository is under epoch 1 (what a writer that read the config before
    // the rotation sealed was found and resealed).
    let current: RepoConfig = serde_json::from_slice(&env.read_object("config").unwrap()).unwrap();
    let keys = current
        .unlock_full(Some(&Unlock::KeyFile(
            KeyFile::load(&env.key_file).unwrap(),
        )))
        .unwrap();
    let codec = Codec::new(
        &current.repo_id,
        RepoKeys::from_keyring(&keys.keyring),
        true,
        current.data_key_version,
    );
    for (what, epoch) in envelope_epochs(&env, &codec) {
        assert_eq!(epoch, 2, "{what}");
    }
    let archived: Vec<String> = objects(&env)
        .into_keys()
        .filter_map(|k| k.strip_prefix("clusters/main/wal/").map(str::to_string))
        .filter_map(|k| k.split_once('/').map(|(_, f)| f.to_string()))
        .collect();
    assert!(archived.len() > 5, "{archived:?}");
    let fetched = env.path().join("fetched");
    std::fs::create_dir(&fetched).unwrap();
    give_to(env.run_as.as_deref(), &fetched).unwrap();
    for seg in &archived {
        let dest = fetched.join(seg).display().to_string();
        assert_success(&env.pgcairn(&["archive-get", seg, &dest]), seg);
    }
    let fingerprint = pgbench_fingerprint(&pg);
    for (name, id) in [("r1", &b1), ("r2", &b2)] {
        let r = env.restore_and_start(name, Some(id));
        let _s = StopOnDrop(&r);
        // Recovered to the end of the archive: the source's data exactly.
        assert_eq!(pgbench_fingerprint(&r), fingerprint, "restored from {id}");
        r.stop().unwrap();
    }
}

/// A `pgcairn backup --type full` started now that stops at the start of progress phase
/// `phase` (`PGCAIRN_TEST_PAUSE`) until [`PausedBackup::rotate_then_go`]: the repository is
/// opened, and its keys unlocked, before whatever that runs.
struct PausedBackup {
    child: Option<std::process::Child>,
    go: PathBuf,
}

impl PausedBackup {
    fn start(env: &TestEnv, phase: &str) -> Self {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = env.path().join(format!("pause-{n}"));
        std::fs::create_dir(&dir).unwrap();
        give_to(env.run_as.as_deref(), &dir).unwrap();
        let point = format!("phase:{phase}");
        let (paused, go) = pgcairn_engine::pause_point::files(&dir, &point);
        let mut child = env
            .pgcairn_command(&[
                "--progress",
                "never",
                "backup",
                "--type",
                "full",
                "--output",
                "json",
            ])
            .env("PGCAIRN_TEST_PAUSE", format!("{point}@{}", dir.display()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start backup");
        let deadline = Instant::now() + Duration::from_secs(180);
        while !paused.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "the backup ended ({status}) before reaching {point}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(
                Instant::now() < deadline,
                "the backup never reached {point}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        PausedBackup {
            child: Some(child),
            go,
        }
    }

    /// Runs `pgcairn ARGS` while the backup waits, then lets it go on.
    fn rotate_then_go(&self, env: &TestEnv, args: &[&str]) -> std::process::Output {
        let out = env.pgcairn(args);
        std::fs::write(&self.go, b"").unwrap();
        out
    }

    /// Waits for the backup; asserts it succeeded; its id.
    fn finish(mut self, what: &str) -> String {
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        assert_success(&out, what);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for PausedBackup {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::fs::write(&self.go, b"");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A backup that unlocked the repository before a `key rotate` (plain or `--reencrypt`),
/// stopped while loading the block index or at the start of packing, under pgbench load:
/// it follows the rotation (reads the config again, unlocks it with the same key file) and
/// succeeds, and every such backup restores the source's rows exactly. Before a running
/// command could follow a rotation, each of these backups exited 1 (index segments, WAL
/// records or the catalog head sealed under an epoch it did not hold).
#[test]
fn a_backup_running_across_a_key_rotation_succeeds_and_restores_exactly() {
    let (env, pg) = archiving_with_state_dir(EnvOptions::new(preferred_backend()));
    let _stop = StopOnDrop(&pg);
    pg.pgbench(&["-i", "-s", "2", "-q"]).unwrap();
    // Index segments for the backups below to load.
    backup_json(&env, &["--type", "full"]);

    let stop = std::sync::atomic::AtomicBool::new(false);
    let cases: [(&str, &[&str]); 3] = [
        ("loading the block index", &["key", "rotate"]),
        ("backup", &["key", "rotate"]),
        ("backup", &["key", "rotate", "--reencrypt", "--grace", "5s"]),
    ];
    let ids = std::thread::scope(|s| {
        let _stop_load = StopLoad(&stop);
        let load = s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                pg.pgbench(&["-T", "2", "-c", "2"]).expect("pgbench");
                switch_wal(&pg);
            }
        });
        let mut ids = Vec::new();
        for (epoch, (phase, rotation)) in (2u64..).zip(cases) {
            let backup = PausedBackup::start(&env, phase);
            let out = backup.rotate_then_go(&env, rotation);
            // --reencrypt cannot drop the old epoch yet (the key change is younger than the
            // grace period): exit 1, saying so; everything else succeeds.
            if rotation.contains(&"--reencrypt") {
                assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
            } else {
                assert_success(&out, &rotation.join(" "));
            }
            // Archiving goes on under the new epoch while the backup packs and waits for WAL.
            let list = key_list(&env, &env.config);
            assert_eq!(list["key_epoch"], serde_json::json!(epoch), "{list:#}");
            ids.push(backup.finish(&format!(
                "a backup across `pgcairn {}` at {phase}",
                rotation.join(" ")
            )));
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        load.join().unwrap();
        ids
    });
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    let fingerprint = pgbench_fingerprint(&pg);
    for (i, id) in ids.iter().enumerate() {
        let r = env.restore_and_start(&format!("r{i}"), Some(id));
        let _s = StopOnDrop(&r);
        assert_eq!(pgbench_fingerprint(&r), fingerprint, "restored from {id}");
        r.stop().unwrap();
    }
}

/// The asynchronous WAL pusher, running when `key rotate --reencrypt` reseals the cluster
/// record and WAL records it reads on every push, follows the rotation and keeps archiving:
/// no push fails, and WAL switched after the rotation is archived by the same pusher.
#[test]
fn the_async_pusher_keeps_archiving_across_a_key_rotation() {
    let mut options = EnvOptions::new(preferred_backend());
    options.archive_async = true;
    let env = TestEnv::new(options);
    config_variant(
        &env,
        "pgcairn.toml",
        &format!("key_file = \"{}\"", env.key_file.display()),
        &env.path().join("state"),
    );
    // One pusher for the whole test: it must be running across the rotation.
    let text = std::fs::read_to_string(&env.config).unwrap();
    assert!(text.contains("idle_exit = \"3s\""), "{text}");
    write_like_config(
        &env,
        "pgcairn.toml",
        &text.replace("idle_exit = \"3s\"", "idle_exit = \"120s\""),
    );
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    let before = switch_wal(&pg);
    wait_archived(&pg, &before, Duration::from_secs(90));
    let log = env.path().join("spool/main/pusher.log");
    let started = std::fs::read_to_string(&log).unwrap();
    assert_eq!(started.matches("pusher started").count(), 1, "{started}");

    // The old epoch stays for the grace period (a writer from before the rotation may still
    // seal under it): exit 1, saying so.
    let out = env.pgcairn(&["key", "rotate", "--reencrypt", "--grace", "1h"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    for _ in 0..3 {
        pg.pgbench(&["-t", "200", "-c", "2"]).unwrap();
        let seg = switch_wal(&pg);
        wait_archived(&pg, &seg, Duration::from_secs(90));
    }
    let failed = pg
        .psql("postgres", "select failed_count from pg_stat_archiver")
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(failed, "0", "{text}");
    assert!(!text.contains("push failed"), "{text}");
    assert_eq!(
        text.matches("pusher started").count(),
        1,
        "the pusher from before the rotation did the archiving: {text}"
    );
    assert!(
        text.contains("now holds the new key epoch"),
        "it followed the rotation: {text}"
    );
}
