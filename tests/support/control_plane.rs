//! A private Kubernetes control plane for tests, started from an envtest-style assets folder
//! (`KUBEBUILDER_ASSETS`, the convention of controller-runtime's envtest): `etcd` and
//! `kube-apiserver`, and `kube-controller-manager` when present (namespace deletion, garbage
//! collection). Everything listens on free loopback ports with certificates made for this run.
//!
//! Two ways to hold one:
//! - [`ControlPlane::start`]: owned by the caller and stopped when dropped (a scenario that needs
//!   a cluster of its own, e.g. one that deletes the CRD).
//! - [`shared`]: one per test run, shared by every test process of the run. nextest runs each
//!   test in its own process, so the first process of a run (`NEXTEST_RUN_ID`, else the process
//!   id) starts it under a file lock and the others reuse it. No process outlives the run to stop
//!   it, so a watchdog does: every user touches a heartbeat file, and the control plane is torn
//!   down once nobody has for [`IDLE_TEARDOWN`]. Logs are kept when a test failed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// How long the shared control plane outlives its last heartbeat.
pub const IDLE_TEARDOWN: Duration = Duration::from_secs(20);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The assets folder named by `KUBEBUILDER_ASSETS`, when it holds etcd and kube-apiserver.
pub fn assets_from_env() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("KUBEBUILDER_ASSETS").filter(|v| !v.is_empty())?);
    (dir.join("etcd").is_file() && dir.join("kube-apiserver").is_file()).then_some(dir)
}

pub struct ControlPlane {
    dir: PathBuf,
    children: Vec<Child>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and (when present) kube-controller-manager from `assets`,
    /// with state, certificates and logs under `dir`; returns once `/readyz` answers.
    pub fn start(assets: &Path, dir: &Path) -> Result<ControlPlane, String> {
        fs::create_dir_all(dir.join("logs")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let pki = Pki::write(&dir.join("pki"))?;
        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let mut plane = ControlPlane { dir: dir.to_path_buf(), children: vec![] };
        plane.spawn(
            assets,
            "etcd",
            &[
                "--data-dir",
                &path(&dir.join("etcd")),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{etcd_port}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{etcd_port}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
        )?;
        plane.spawn(
            assets,
            "kube-apiserver",
            &[
                &format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={api_port}"),
                &format!("--tls-cert-file={}", pki.file("apiserver.crt")),
                &format!("--tls-private-key-file={}", pki.file("apiserver.key")),
                &format!("--client-ca-file={}", pki.file("ca.crt")),
                "--service-account-issuer=https://kubernetes.default.svc",
                &format!("--service-account-key-file={}", pki.file("sa.pub")),
                &format!("--service-account-signing-key-file={}", pki.file("sa.key")),
                "--service-cluster-ip-range=10.96.0.0/24",
                "--authorization-mode=RBAC",
                "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount",
                "--profiling=false",
            ],
        )?;
        let kubeconfig = dir.join("admin.kubeconfig");
        write(&kubeconfig, &pki.kubeconfig(api_port, "admin"))?;
        write(&dir.join("kcm.kubeconfig"), &pki.kubeconfig(api_port, "kcm"))?;
        plane.wait_ready(api_port, &pki)?;
        if assets.join("kube-controller-manager").is_file() {
            plane.spawn(
                assets,
                "kube-controller-manager",
                &[
                    &format!("--kubeconfig={}", path(&dir.join("kcm.kubeconfig"))),
                    // No serving port: nothing here scrapes it, and it saves a port.
                    "--secure-port=0",
                    "--leader-elect=false",
                    "--controllers=namespace-controller,garbage-collector-controller",
                    &format!("--service-account-private-key-file={}", pki.file("sa.key")),
                    &format!("--root-ca-file={}", pki.file("ca.crt")),
                ],
            )?;
        }
        Ok(plane)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    fn spawn(&mut self, assets: &Path, name: &str, args: &[&str]) -> Result<(), String> {
        let log = fs::File::create(self.dir.join("logs").join(format!("{name}.log"))).map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(assets.join(name));
        cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(err);
        // Its own process group: a test runner that signals the test's group does not take the
        // shared control plane down with one test.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(|e| format!("start {name}: {e}"))?;
        self.children.push(child);
        Ok(())
    }

    fn wait_ready(&mut self, port: u16, pki: &Pki) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for (i, child) in self.children.iter_mut().enumerate() {
                if let Ok(Some(status)) = child.try_wait() {
                    let name = ["etcd", "kube-apiserver"].get(i).copied().unwrap_or("a process");
                    return Err(format!("{name} exited ({status}); see {}", self.dir.join("logs").display()));
                }
            }
            if readyz(port, pki) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "kube-apiserver not ready within {START_TIMEOUT:?}; see {}",
                    self.dir.join("logs").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Leaves the processes and the folder to the shared control plane's watchdog.
    fn detach(self) {
        std::mem::forget(self);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Controller manager first, etcd last: each goes down while what it talks to is still up.
        for child in self.children.iter_mut().rev() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("control plane logs kept in {}", self.dir.join("logs").display());
            let _ = fs::remove_dir_all(self.dir.join("etcd"));
        }
    }
}

/// `/readyz` over TLS with the admin certificate. reqwest's blocking client would pull in a
/// second runtime; curl is on every machine the control plane runs on (its own script needs it).
fn readyz(port: u16, pki: &Pki) -> bool {
    Command::new("curl")
        .args(["-sf", "--max-time", "2", "--cacert", &pki.file("ca.crt")])
        .args(["--cert", &pki.file("admin.crt"), "--key", &pki.file("admin.key")])
        .arg(format!("https://127.0.0.1:{port}/readyz"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Certificates for one control plane: a CA, the API server's serving certificate, client
/// certificates (X.509 v3, as rustls requires) and the service-account signing key.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn write(dir: &Path) -> Result<Pki, String> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose,
        };
        let err = |e: rcgen::Error| e.to_string();
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let pki = Pki { dir: dir.to_path_buf() };

        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "vip-operator-test-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        write(&dir.join("ca.crt"), &ca.self_signed(&ca_key).map_err(err)?.pem())?;
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |name: &str, sans: Vec<String>, org: Option<&str>, cn: &str, usage| -> Result<(), String> {
            let key = KeyPair::generate().map_err(err)?;
            let mut params = CertificateParams::new(sans).map_err(err)?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            if let Some(org) = org {
                params.distinguished_name.push(DnType::OrganizationName, org);
            }
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            params.extended_key_usages = vec![usage];
            write(&dir.join(format!("{name}.crt")), &params.signed_by(&key, &issuer).map_err(err)?.pem())?;
            write(&dir.join(format!("{name}.key")), &key.serialize_pem())
        };
        let server_sans = ["127.0.0.1", "localhost", "kubernetes.default.svc"].map(String::from).to_vec();
        leaf("apiserver", server_sans, None, "kube-apiserver", ExtendedKeyUsagePurpose::ServerAuth)?;
        leaf("admin", vec![], Some("system:masters"), "admin", ExtendedKeyUsagePurpose::ClientAuth)?;
        let kcm = "system:kube-controller-manager";
        leaf("kcm", vec![], Some("system:masters"), kcm, ExtendedKeyUsagePurpose::ClientAuth)?;

        let sa = KeyPair::generate().map_err(err)?;
        write(&dir.join("sa.key"), &sa.serialize_pem())?;
        write(&dir.join("sa.pub"), &sa.public_key_pem())?;
        Ok(pki)
    }

    fn file(&self, name: &str) -> String {
        path(&self.dir.join(name))
    }

    fn kubeconfig(&self, port: u16, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    \
             certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate: {crt}\n    \
             client-key: {key}\ncontexts:\n- name: test\n  context: {{cluster: test, user: {user}, namespace: default}}\n\
             current-context: test\n",
            ca = self.file("ca.crt"),
            crt = self.file(&format!("{user}.crt")),
            key = self.file(&format!("{user}.key")),
        )
    }
}

/// The control plane shared by every test process of this run: its admin kubeconfig.
///
/// Started by the first caller of the run; later callers (this process or another) reuse it.
/// Each calling process keeps a heartbeat going until it exits.
pub fn shared(assets: &Path) -> Result<PathBuf, String> {
    static SHARED: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| start_or_join(assets)).clone()
}

/// Marks the shared control plane's run as failed, so its watchdog keeps the logs.
pub fn mark_failed() {
    if let Some(dir) = shared_dir_if_started() {
        let _ = fs::write(dir.join("failed"), b"");
        eprintln!("control plane logs: {}", dir.join("logs").display());
    }
}

fn run_dir() -> PathBuf {
    let run = std::env::var("NEXTEST_RUN_ID").unwrap_or_else(|_| format!("pid-{}", std::process::id()));
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("control-plane").join(run)
}

fn shared_dir_if_started() -> Option<PathBuf> {
    let dir = run_dir();
    dir.join("admin.kubeconfig").is_file().then_some(dir)
}

fn start_or_join(assets: &Path) -> Result<PathBuf, String> {
    let dir = run_dir();
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lock = fs::File::create(dir.join("lock")).map_err(|e| e.to_string())?;
    lock.lock().map_err(|e| format!("lock {}: {e}", dir.display()))?;
    let kubeconfig = dir.join("admin.kubeconfig");
    if dir.join("ready").is_file() {
        heartbeat(&dir);
        return Ok(kubeconfig);
    }
    if dir.join("broken").is_file() {
        return Err(fs::read_to_string(dir.join("broken")).unwrap_or_default());
    }
    let started = Instant::now();
    let plane = match ControlPlane::start(assets, &dir) {
        Ok(plane) => plane,
        Err(e) => {
            let _ = fs::write(dir.join("broken"), &e);
            return Err(e);
        }
    };
    heartbeat(&dir);
    watchdog(&dir, &plane.pids())?;
    plane.detach();
    fs::write(dir.join("ready"), b"").map_err(|e| e.to_string())?;
    eprintln!(
        "started a private control plane from {} in {:.1}s: {}",
        assets.display(),
        started.elapsed().as_secs_f64(),
        kubeconfig.display()
    );
    Ok(kubeconfig)
}

/// Touches `DIR/heartbeat` now and every [`HEARTBEAT_EVERY`] while this process lives.
fn heartbeat(dir: &Path) {
    let file = dir.join("heartbeat");
    let touch = move || {
        if let Ok(f) = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&file) {
            let _ = f.set_modified(SystemTime::now());
        }
    };
    touch();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(HEARTBEAT_EVERY);
            touch();
        }
    });
}

/// A detached shell that stops the processes once the heartbeat is older than
/// [`IDLE_TEARDOWN`], then removes the run's folder (all but the logs when a test failed).
fn watchdog(dir: &Path, pids: &[u32]) -> Result<(), String> {
    let pids: Vec<String> = pids.iter().rev().map(u32::to_string).collect();
    let script = format!(
        r#"cd "$1" || exit 0
while [ $(( $(date +%s) - $(stat -c %Y heartbeat 2>/dev/null || echo 0) )) -lt {idle} ]; do sleep 2; done
for pid in {pids}; do kill -TERM "$pid" 2>/dev/null; for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done; kill -KILL "$pid" 2>/dev/null; done
if [ -e failed ]; then rm -rf etcd pki; else cd .. && rm -rf "$1"; fi
"#,
        idle = IDLE_TEARDOWN.as_secs(),
        pids = pids.join(" "),
    );
    let log = fs::File::create(dir.join("logs").join("watchdog.log")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script, "watchdog", &path(dir)]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().map(drop).map_err(|e| format!("start the control plane's watchdog: {e}"))
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| e.to_string())
}

fn write(file: &Path, text: &str) -> Result<(), String> {
    fs::File::create(file)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", file.display()))
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
