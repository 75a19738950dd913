//! Builds the eBPF program (datapath/ebpf) for bpfel-unknown-none with Debian's rustc-web, whose
//! prebuilt bpfel `core` makes `-Z build-std` unnecessary (shared/notes/ebpf-toolchain.md), and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! Environment: `PALISADE_BPF_SKIP=1` writes an empty object so `cargo check`/`clippy` work
//! without the BPF toolchain (loading it then fails); `PALISADE_BPF_OBJ=<file>` embeds a prebuilt
//! object; `BPF_RUSTC`, `BPF_CARGO` and `BPF_LINKER` override the tools.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// The production object, and the bench-only one (`datapath/examples` load it; nodes never do).
const OBJECTS: [&str; 2] = ["palisade-ebpf", "palisade-bench-ebpf"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let ebpf_dir = manifest_dir.join("ebpf");
    for path in ["ebpf/src", "ebpf/Cargo.toml", "ebpf/Cargo.lock", "ebpf/.cargo/config.toml", "common/src"] {
        println!("cargo:rerun-if-changed={}", manifest_dir.join(path).display());
    }
    for var in ["PALISADE_BPF_SKIP", "PALISADE_BPF_OBJ", "BPF_RUSTC", "BPF_CARGO", "BPF_LINKER"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if env::var_os("PALISADE_BPF_SKIP").is_some_and(|v| v == "1") {
        println!("cargo:warning=PALISADE_BPF_SKIP=1: embedding empty eBPF objects");
        for object in OBJECTS {
            std::fs::write(out_dir.join(object), []).expect("write the placeholder object");
        }
        return;
    }
    if let Some(prebuilt) = env::var_os("PALISADE_BPF_OBJ") {
        std::fs::copy(&prebuilt, out_dir.join(OBJECTS[0])).expect("copy PALISADE_BPF_OBJ");
        std::fs::write(out_dir.join(OBJECTS[1]), []).expect("write the placeholder bench object");
        return;
    }
    let built = build(&ebpf_dir, &out_dir.join("bpf-target"));
    for object in OBJECTS {
        std::fs::copy(built.join(object), out_dir.join(object)).expect("copy the eBPF object");
    }
}

fn build(ebpf_dir: &Path, target_dir: &Path) -> PathBuf {
    let cargo = env::var_os("BPF_CARGO").or_else(|| env::var_os("CARGO")).unwrap_or_else(|| "cargo".into());
    let rustc = env::var_os("BPF_RUSTC").unwrap_or_else(|| "/usr/bin/rustc".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(ebpf_dir)
        .args(["build", "--release", "--locked", "--target", "bpfel-unknown-none", "--target-dir"])
        .arg(target_dir)
        .env("RUSTC", rustc)
        // aya-ebpf needs #![feature(asm_experimental_arch)], the program the atomic intrinsics
        // (the BPF target has no compare-and-swap, so core's atomics lack fetch-add); allow
        // unstable features in these two only.
        .env("RUSTC_BOOTSTRAP", "aya_ebpf,palisade_ebpf")
        // Cargo hands build scripts an empty value that would override .cargo/config.toml.
        // cpu v3: atomic fetch-add.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Ctarget-cpu=v3")
        // The outer build's rustup toolchain, flags and wrappers must not leak into this one.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET");
    if let Some(linker) = env::var_os("BPF_LINKER") {
        command.env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", linker);
    }
    // bpf-linker lives in ~/.cargo/bin (scripts/deps.sh).
    if let (Some(home), Some(path)) = (env::var_os("HOME"), env::var_os("PATH")) {
        let mut paths = vec![PathBuf::from(home).join(".cargo/bin")];
        paths.extend(env::split_paths(&path));
        command.env("PATH", env::join_paths(paths).expect("PATH"));
    }
    let status = command.status().expect("run cargo for the eBPF program");
    assert!(
        status.success(),
        "building datapath/ebpf failed ({status}); run `make deps` (rustc-web, libstd-rust-web-dev-bpf, \
         bpf-linker), or set PALISADE_BPF_SKIP=1 for check-only builds"
    );
    target_dir.join("bpfel-unknown-none/release")
}
