//! Volume ownership against a real `nbdcrypt-keyd` (`docs/keyservice-api.md` "Volume
//! ownership"): a host that registers another host's volume first blocks nobody for long; the
//! owner is refused with a message naming the fix, the administrator runs `volume assign`, the
//! owner then enrolls with `nbdcrypt add-key --key-service` and unwraps, and the squatter
//! cannot unwrap.

use serde_json::{json, Value};

use crate::common::keyd::Keyd;
use crate::common::{cryptsetup, format_cheap, key_file, nbdcrypt, ok, run, stderr, tempdir};

#[test]
fn a_squatted_uuid_is_assigned_back_by_the_admin_and_the_squatter_cannot_unwrap() {
    let dir = tempdir();
    let mut k = Keyd::init(dir.path());
    k.admin(&["kek", "create", "k1"]);
    k.host("hostA");
    k.host("hostB");
    k.serve();
    let image = dir.path().join("vol.img");
    let key = key_file(dir.path());
    format_cheap(&image, &key, "20M", 512, "pbkdf2");
    let uuid = ok(cryptsetup().arg("luksUUID").arg(&image))
        .trim()
        .to_string();
    let add_key = |host: &str| {
        let mut c = nbdcrypt();
        c.arg("add-key").arg(&image).arg("--key-file").arg(&key);
        c.args(["--key-service", &k.url, "--kek", "k1"]);
        k.host_flags(&mut c, host);
        run(&mut c)
    };

    // Host B registers A's volume first (it only needs the UUID).
    let r = k.as_host("hostB", "POST", "/v1/volumes", &json!({ "uuid": uuid }));
    assert_eq!(r.status, 200, "{r:?}");
    // A is refused, told what to ask for; its header is unchanged.
    let dump = ok(cryptsetup().arg("luksDump").arg(&image));
    let out = add_key("hostA");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("409 not-owner"), "{err}");
    assert!(
        err.contains(&format!("nbdcrypt-keyd volume assign {uuid} --host hostA")),
        "{err}"
    );
    assert_eq!(dump, ok(cryptsetup().arg("luksDump").arg(&image)));

    // One admin command fixes it.
    let out = k.admin(&["volume", "assign", &uuid, "--host", "hostA"]);
    assert!(out.contains("owner hostA (was hostB)"), "{out}");
    let list: Vec<Value> = k
        .admin(&["volume", "list"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["uuid"], uuid.as_str());
    assert_eq!(list[0]["owner"], "hostA");

    // A enrolls and unwraps its keyslot.
    let out = add_key("hostA");
    assert!(out.status.success(), "{out:?}");
    let token: Value = serde_json::from_str(&ok(cryptsetup()
        .args(["token", "export", "--token-id", "0"])
        .arg(&image)))
    .unwrap();
    let slot: u32 = token["keyslots"][0].as_str().unwrap().parse().unwrap();
    let body = json!({"slot": slot, "kek": "k1", "version": 1, "blob": token["blob"]});
    let path = format!("/v1/volumes/{uuid}/unwrap");
    let r = k.as_host("hostA", "POST", &path, &body);
    assert_eq!(r.status, 200, "{r:?}");
    // B can neither unwrap A's keyslot nor take the volume back by registering again.
    let r = k.as_host("hostB", "POST", &path, &body);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body["type"], "urn:nbdcrypt:keyd:not-owner");
    let r = k.as_host("hostB", "POST", "/v1/volumes", &json!({ "uuid": uuid }));
    assert_eq!(r.status, 409, "{r:?}");
    assert!(k
        .audit_rows()
        .iter()
        .any(|r| r["action"] == "volume-assign" && r["target"] == uuid.as_str()));
}

/// `serve --registration admin`: no host can register a UUID by itself, so none can take
/// another's first; the administrator's `volume assign` registers, and the owner then enrolls.
#[test]
fn under_admin_registration_no_host_takes_a_uuid_first() {
    let dir = tempdir();
    let mut k = Keyd::init(dir.path());
    k.admin(&["kek", "create", "k1"]);
    k.host("hostA");
    k.host("hostB");
    k.serve_args(crate::common::keyd::keyd(), &["--registration", "admin"]);
    let image = dir.path().join("vol.img");
    let key = key_file(dir.path());
    format_cheap(&image, &key, "20M", 512, "pbkdf2");
    let uuid = ok(cryptsetup().arg("luksUUID").arg(&image))
        .trim()
        .to_string();

    // The squatter's registration is refused and registers nothing.
    let r = k.as_host("hostB", "POST", "/v1/volumes", &json!({ "uuid": uuid }));
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body["type"], "urn:nbdcrypt:keyd:not-assigned");
    assert_eq!(
        k.admin(&["volume", "list"]).trim(),
        "",
        "nothing registered"
    );
    // So is the owner's, until the administrator assigns the volume; then it enrolls.
    let add_key = || {
        let mut c = nbdcrypt();
        c.arg("add-key").arg(&image).arg("--key-file").arg(&key);
        c.args(["--key-service", &k.url, "--kek", "k1"]);
        k.host_flags(&mut c, "hostA");
        run(&mut c)
    };
    let out = add_key();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("volume assign {uuid} --host hostA")),
        "{err}"
    );
    k.admin(&["volume", "assign", &uuid, "--host", "hostA"]);
    let out = add_key();
    assert!(out.status.success(), "{out:?}");
    // The squatter still cannot register it.
    let r = k.as_host("hostB", "POST", "/v1/volumes", &json!({ "uuid": uuid }));
    assert_eq!(r.status, 409, "{r:?}");
}
