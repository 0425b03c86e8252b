//! What the scenarios need from the machine, and the policy when it is
//! missing: `skipped: ...` outside CI, a loud failure under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `true` when the suite runs in CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Reports that `what` is unavailable: panics under `CI=true`, otherwise
/// prints `skipped: <what>` so the caller can return.
pub fn skip(what: &str) {
    if in_ci() {
        panic!("required in CI but unavailable: {what}");
    }
    eprintln!("skipped: {what}");
}

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `target/` of the workspace (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target"),
    }
}

/// Where screenshots and other artifacts of the suite go: `target/e2e/`.
pub fn artifacts_dir() -> PathBuf {
    let dir = target_dir().join("e2e");
    std::fs::create_dir_all(&dir).expect("create target/e2e");
    dir
}

static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The path of a workspace binary (`portcullis-gateway`,
/// `portcullis-sidecar`), built on first use.
///
/// The test crate cannot use `CARGO_BIN_EXE_*` for another package's
/// binaries, so the harness runs `cargo build -p portcullis-gateway -p
/// portcullis-sidecar --bins` once per test process (a no-op when
/// `cargo test --workspace` has just built them) and takes the binaries from
/// the profile directory beside the test executable. Set
/// `PORTCULLIS_E2E_NO_BUILD=1` to skip the build and use what is there.
pub fn binary(name: &str) -> PathBuf {
    let dir = BUILT.get_or_init(build_binaries);
    match dir {
        Ok(dir) => {
            let path = dir.join(name);
            assert!(
                path.exists(),
                "{} is missing after the build",
                path.display()
            );
            path
        }
        Err(e) => panic!("{e}"),
    }
}

fn profile_dir() -> PathBuf {
    // target/debug/deps/e2e-<hash> -> target/debug
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("profile dir").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

fn build_binaries() -> Result<PathBuf, String> {
    let dir = profile_dir();
    if std::env::var_os("PORTCULLIS_E2E_NO_BUILD").is_some() {
        return Ok(dir);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "-p",
        "portcullis-gateway",
        "-p",
        "portcullis-sidecar",
        "--bins",
    ]);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run cargo to build the binaries: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building portcullis-gateway and portcullis-sidecar failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(dir)
}

/// `true` when `program args...` runs and exits 0.
pub fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `true` when python3 can import PyJWT with its crypto extra; otherwise
/// [`skip`]s (fails under CI).
pub fn pyjwt_available() -> bool {
    if runs("python3", &["-c", "import jwt, cryptography"]) {
        return true;
    }
    skip("PyJWT[crypto] is not importable by python3 (pip install 'PyJWT[crypto]')");
    false
}

/// The folder of the Node side of the suite (`tests/oidc`).
pub fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// `true` when Node and the installed modules of `tests/oidc` are present;
/// otherwise [`skip`]s (fails under CI).
pub fn node_modules_available() -> bool {
    if !runs("node", &["--version"]) {
        skip("node is not installed");
        return false;
    }
    let modules = node_dir().join("node_modules");
    for package in ["oidc-provider", "jose"] {
        if !modules.join(package).join("package.json").exists() {
            skip(&format!(
                "{package} is not installed (run `npm ci` in {})",
                node_dir().display()
            ));
            return false;
        }
    }
    true
}
