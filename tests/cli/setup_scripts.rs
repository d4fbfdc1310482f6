//! The README's setup scripts look for what the build really needs: libclang as bindgen loads
//! it (never `libclang-cpp`, which Debian installs with the base system), checked against fake
//! library trees.

use std::path::{Path, PathBuf};
use std::process::Command;

fn have_libclang(dirs: &[&Path]) -> bool {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/common.sh");
    let status = Command::new("bash")
        .arg("-c")
        .arg("source \"$0\" && have_libclang \"$@\"")
        .arg(&script)
        .args(dirs)
        .env_remove("LIBCLANG_PATH")
        .status()
        .unwrap();
    status.success()
}

fn tree(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        std::fs::write(dir.path().join(f), b"").unwrap();
    }
    dir
}

#[test]
fn only_libclang_cpp_means_libclang_must_be_installed() {
    let base_system = tree(&["libclang-cpp.so.14", "libclang-cpp.so.14.0.6", "libLLVM-14.so.1"]);
    assert!(!have_libclang(&[base_system.path()]));
    let empty = tree(&[]);
    assert!(!have_libclang(&[empty.path(), Path::new("/nonexistent/lib")]));
}

#[test]
fn every_name_bindgen_loads_counts() {
    for name in ["libclang.so", "libclang.so.1", "libclang-14.so", "libclang-14.so.1", "libclang.so.14.0.6"] {
        let t = tree(&["libclang-cpp.so.14", name]);
        assert!(have_libclang(&[t.path()]), "{name} is what bindgen loads");
    }
    // found in the second of several directories
    let (a, b) = (tree(&["libclang-cpp.so.14"]), tree(&["libclang-14.so.1"]));
    assert!(have_libclang(&[a.path(), b.path()]));
}
