//! The plugin file format: round trip, the hash over the tensor bytes only, and crafted
//! headers refused with the reason; style names.

use std::collections::BTreeMap;

use easel_styles::plugin::{self, keys, read_header, verify, Kind, PluginFile, RawTensor};
use easel_styles::store::check_name;
use easel_styles::PluginError;

fn sample() -> PluginFile {
    let values = [0.25f32, 0.75];
    PluginFile {
        kind: Kind::PresetMix,
        metadata: BTreeMap::from([
            (keys::TITLE.to_string(), "calm".to_string()),
            (keys::PRESET_MIX.to_string(), "3:1,12:3".to_string()),
        ]),
        tensors: BTreeMap::from([(
            "preset.weights".to_string(),
            RawTensor {
                dtype: safetensors::Dtype::F32,
                shape: vec![2],
                data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            },
        )]),
    }
}

#[test]
fn plugins_round_trip_with_modelspec_keys_and_a_data_hash() {
    let bytes = sample().to_bytes().unwrap();
    let back = PluginFile::read(&bytes, "calm.safetensors").unwrap();
    assert_eq!(back.kind, Kind::PresetMix);
    assert_eq!(back.tensors, sample().tensors);
    assert_eq!(back.metadata[keys::SPEC], "1.0.0");
    assert_eq!(back.metadata[keys::KIND], "preset-mix");
    assert_eq!(
        back.metadata[keys::ARCHITECTURE],
        "easel-fast/cin26-preset-mix"
    );
    // sha256 of the 8 tensor bytes, nothing else.
    let data: Vec<u8> = [0.25f32, 0.75]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(back.metadata[keys::HASH], plugin::hash_of(&data));
    assert_eq!(
        plugin::hash_of(b"abc"),
        "0xba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    // Same contents, same bytes; other metadata, same hash.
    assert_eq!(bytes, back.to_bytes().unwrap());
    let mut retitled = back.clone();
    retitled.metadata.insert(keys::TITLE.into(), "quiet".into());
    let header = read_header(&retitled.to_bytes().unwrap(), "x").unwrap();
    assert_eq!(header.get(keys::HASH), back.metadata[keys::HASH]);
    assert_eq!(header.shapes["preset.weights"], vec![2]);
    let (values, shape) = back.f32_values("preset.weights", "x").unwrap();
    assert_eq!((values, shape), (vec![0.25, 0.75], vec![2]));
}

#[test]
fn damaged_and_crafted_files_are_refused_with_the_reason() {
    let good = sample().to_bytes().unwrap();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let err = verify(&flipped, "calm").unwrap_err();
    assert!(matches!(err, PluginError::HashMismatch { .. }), "{err}");

    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let past = {
        let mut b = good.clone();
        let n = (good.len() as u64) * 2;
        b[..8].copy_from_slice(&n.to_le_bytes());
        b
    };
    let not_json = {
        let mut b = 8u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"{{{{{{{{");
        b
    };
    let no_kind = {
        let header = br#"{"__metadata__":{"format":"pt"}}"#;
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header);
        b
    };
    let cases: [(&[u8], &str); 5] = [
        (&good[..5], "too short"),
        (&huge, "over the 16777216-byte limit"),
        (&past, "runs past the end"),
        (&not_json, "header is not JSON"),
        (
            &no_kind,
            "not an easel plugin: its metadata has no easel.kind",
        ),
    ];
    for (bytes, expected) in cases {
        let err = read_header(bytes, "bad.safetensors")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("bad.safetensors: ") && err.contains(expected),
            "{err}"
        );
    }
}

#[test]
fn style_names_are_checked() {
    for good in ["vangogh", "Van Gogh 2", "ink-wash_v1"] {
        check_name(good).unwrap();
    }
    let long = "x".repeat(65);
    for (bad, expected) in [
        ("", "is empty"),
        ("a/b", "path separator"),
        ("..", "starts with '.'"),
        ("-x", "starts with '.' or '-'"),
        (long.as_str(), "over 64 characters"),
        ("a\nb", "control character"),
    ] {
        let err = check_name(bad).unwrap_err().to_string();
        assert!(err.contains(expected), "{bad:?}: {err}");
    }
}
