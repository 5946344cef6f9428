//! The checked-in C header is what cbindgen generates from the crate now.
//! `SVMEM_BLESS=1 cargo test -p svmem-capi --test header` rewrites it.

use std::path::PathBuf;

#[test]
fn header_matches_the_source() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml"))
        .unwrap_or_else(|e| panic!("capi/cbindgen.toml: {e}"));
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .unwrap_or_else(|e| panic!("cbindgen failed: {e}"))
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("cbindgen writes UTF-8");
    let path = dir.join("include/svmem.h");
    if std::env::var_os("SVMEM_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/svmem.h");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "capi/include/svmem.h is stale: regenerate it with \
         SVMEM_BLESS=1 cargo test -p svmem-capi --test header"
    );
}
