use std::io::Write;

use super::*;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn example_files_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            Config::load(Some(&p), &Overrides::default())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "config/ holds the example files");
}

#[test]
fn full_example_documents_every_key_with_its_default() {
    // config/meshgate.toml lists every key with its default value: loading it must give
    // exactly the defaults, so a new key without documentation fails here.
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/meshgate.toml");
    let c = Config::load(Some(&p), &Overrides::default()).unwrap();
    assert_eq!(c, Config::default());
    // And it names every key: equal values alone cannot catch a key left out of the file
    // (it would load as its default). Keys without a default (`None`) cannot be written in
    // TOML: the file shows them commented out.
    let text = std::fs::read_to_string(&p).unwrap();
    let written: serde_json::Value = figment::Figment::from(figment::providers::Toml::file(&p))
        .extract()
        .unwrap();
    let defaults = serde_json::to_value(Config::default()).unwrap();
    let mut missing = Vec::new();
    let commented = |line: &str| text.lines().any(|l| l.trim_start().starts_with(line));
    for (section, keys) in defaults.as_object().unwrap() {
        // `[[kafka]]` and `[[amqp]]` are lists of tables, documented by their own examples.
        let Some(keys) = keys.as_object() else {
            continue;
        };
        for (key, value) in keys {
            let present = written[section].get(key).is_some()
                || (value.is_null() && commented(&format!("# {key} =")))
                || (value.as_array().is_some_and(Vec::is_empty)
                    && commented(&format!("# [[{section}.{key}]]")));
            if !present {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "config/meshgate.toml does not name {missing:?}"
    );
}

#[test]
fn unknown_key_is_named() {
    let f = file("[mqtt]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
    let e = Config::load(Some(f.path()), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("lisen"), "{e}");
    let f = file("[mqttt]\n");
    let e = Config::load(Some(f.path()), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("mqttt"), "{e}");
}

#[test]
fn flags_override_file() {
    let f = file("[node]\nname = \"from-file\"\n[mqtt]\nlisten = \"127.0.0.1:1999\"\n");
    let o = Overrides {
        name: Some("from-flag".into()),
        ..Default::default()
    };
    let c = Config::load(Some(f.path()), &o).unwrap();
    assert_eq!(c.node.name, "from-flag");
    assert_eq!(c.mqtt.listen.port(), 1999);
}

#[test]
fn invalid_values_name_the_key() {
    let f = file("[node]\nname = \"bad name\"\n");
    let e = Config::load(Some(f.path()), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("node.name:"), "{e}");
    let o = Overrides {
        peers: vec!["ok:1".into(), "nope".into()],
        ..Default::default()
    };
    let e = Config::load(None, &o).unwrap_err().to_string();
    assert!(e.contains("mesh.peers") && e.contains("[1]"), "{e}");
    let e = Config::load(Some(Path::new("/nonexistent.toml")), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found"), "{e}");
    for (text, key) in [
        (
            "[[mqtt.users]]\nusername = \"a\"\npassword = \"x\"\npassword_hash = \"y\"\n",
            "mqtt.users:",
        ),
        (
            "[[mqtt.users]]\nusername = \"a\"\npassword_hash = \"$argon2id$nope\"\n",
            "mqtt.users:",
        ),
        (
            "[[http.tokens]]\ntoken_sha256 = \"abc\"\napp_id = \"a\"\n",
            "http.tokens:",
        ),
    ] {
        let e = Config::load(Some(file(text).path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(key), "{e}");
    }
}
