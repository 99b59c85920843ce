//! The deployment files under `deploy/` cannot rot: this runs `scripts/check-deploy.sh`,
//! which renders and schema-validates the Kubernetes manifests, scans them and the
//! Containerfile (checkov, hadolint), verifies the systemd units and holds their
//! `systemd-analyze security` exposure at 2.0 or lower, stages `install.sh`, runs the
//! Vault role setup scripts against OpenBao, and pushes a signed request through the
//! agent and the gateway started from the shipped config pairs (systemd and Kubernetes,
//! paths rewritten to a temp dir). The script's output is shown when it fails.
//!
//! `KEYGATE_SKIP_DEPLOY_CHECK=1` skips it (for a CI that runs the script as its own step).

use std::path::Path;
use std::process::Command;

#[test]
fn deploy_files_validate_and_the_shipped_configs_serve_a_signed_request() {
    if std::env::var_os("KEYGATE_SKIP_DEPLOY_CHECK").is_some_and(|v| v == "1") {
        println!("KEYGATE_SKIP_DEPLOY_CHECK=1: skipped");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace root");
    let output = Command::new("bash")
        .arg(root.join("scripts/check-deploy.sh"))
        .current_dir(root)
        .output()
        .expect("run scripts/check-deploy.sh");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The figures (exposure per unit, checkov counts) are worth seeing on success too.
    println!("{stdout}");
    assert!(
        output.status.success(),
        "scripts/check-deploy.sh failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
}
