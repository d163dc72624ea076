//! A seeded random mix ("chaos") on a real API server: bindings created, deleted, recreated
//! under the same name and replaced on shared NICs and VIPs, through both APIs, while the cloud
//! fails, throttles, stalls and lands writes after the client gave up, and the leader is
//! killed. "Bound means bound" is checked after every step; then, with the cloud healthy
//! again, every invariant no interleaving may break is checked against the simulator's state,
//! and the cloud must be clean once every binding is deleted. A failure prints the seed, the
//! last steps, the cloud, and a timeline of each NIC and port involved; the whole run is saved
//! under `target/tmp/chaos/seed-<seed>/`.
//!
//! `VIPOP_CHAOS_SEED` replays a run (the seed is printed at the start and in every failure),
//! `VIPOP_CHAOS_STEPS` sets its length, `VIPOP_CHAOS_OPERATOR_ARGS` adds operator flags. A seed
//! replays the mix of actions exactly; the timing of the operator and the API server around
//! them is not replayed, so a failure may need a few runs of its seed to show again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{DeleteParams, ListParams, PostParams};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use vip_operator::api::v1alpha1::{BindApi, VipBinding};
use vip_operator::simulator::{CallRecord, CloudOperation, Fault, LateState, SimAddressPair, SimPort, StateSnapshot};

use crate::harness::{Env, Needs, Operator, PROJECT, REGION, SUBNET, admin_get, free_port, has_finalizer, ready};

const TEST: &str = "chaos_random_mix_keeps_the_invariants";
const CHECK_OFF: &str = "1.1.1.1/0";
/// The NICs the bindings share. The last one has `1.1.1.1/0` before the test: not the
/// operator's, it must stay.
const NICS: [&str; 8] = [
    "c4a0e001-0000-4000-8000-000000000001",
    "c4a0e001-0000-4000-8000-000000000002",
    "c4a0e001-0000-4000-8000-000000000003",
    "c4a0e001-0000-4000-8000-000000000004",
    "c4a0e001-0000-4000-8000-000000000005",
    "c4a0e001-0000-4000-8000-000000000006",
    "c4a0e001-0000-4000-8000-000000000007",
    "c4a0e001-0000-4000-8000-000000000008",
];
const PRESET_CHECK_OFF: usize = 7;
/// VIP ports: (port ID, VIP, someone else's pair that must never be removed).
const VIPS: [(&str, &str, Option<&str>); 4] = [
    ("vip-port-0", "192.168.10.10", Some("10.99.0.1")),
    ("vip-port-1", "192.168.10.11", None),
    ("vip-port-2", "192.168.10.12", Some("10.99.0.2")),
    ("vip-port-3", "192.168.10.13", None),
];
/// About 60–90 s in all with the waits around the steps.
const DEFAULT_STEPS: usize = 120;
/// A step takes about 0.45 s; the loop stops after this much a step even if steps are left
/// (a slow machine).
const STEP_TIME_CAP: Duration = Duration::from_millis(750);
/// Late writes land at most this long after their request arrived; the operator's
/// `--write-horizon` (when it has the flag) is set to it.
const WRITE_HORIZON: Duration = Duration::from_secs(3);
const MAX_LATE_MS: u64 = 2_500;
/// Beyond the client's per-attempt timeout: with a 4 s lease, the leader fence cuts every
/// attempt at 4 s at most.
const PAST_THE_TIMEOUT_MS: u64 = 8_000;
/// Few enough that a NIC often has one VPC binding only: its replacement then races the
/// unbind that takes `1.1.1.1/0` away.
const MAX_LIVE: usize = 8;
/// One stretch of 300 ms cloud latency in this many steps.
const SLOW_EVERY: usize = 120;
const LOG_TAIL: usize = 40;
const TIMELINE_TAIL: usize = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec {
    nic: usize,
    vip: usize,
    vpc: bool,
}

impl Spec {
    fn describe(&self) -> String {
        format!("{} nic{} {}", if self.vpc { "VPC" } else { "ECS" }, self.nic, VIPS[self.vip].1)
    }
}

fn binding(name: &str, s: &Spec) -> VipBinding {
    serde_json::from_value(json!({
        "apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipBinding", "metadata": {"name": name},
        "spec": {"nicId": NICS[s.nic], "ipAddress": VIPS[s.vip].1, "subnetId": SUBNET, "projectId": PROJECT,
                 "region": REGION, "api": if s.vpc { "VPC" } else { "ECS" }},
    }))
    .expect("a VipBinding")
}

/// The spec of a binding as the API server has it, in the test's terms.
fn spec_of(b: &VipBinding) -> Option<Spec> {
    Some(Spec {
        nic: NICS.iter().position(|n| *n == b.spec.nic_id)?,
        vip: VIPS.iter().position(|v| v.1 == b.spec.ip_address)?,
        vpc: b.spec.api == Some(BindApi::Vpc),
    })
}

fn pair(ip: &str) -> SimAddressPair {
    SimAddressPair { ip_address: ip.into(), mac_address: None }
}

fn pairs_of(state: &StateSnapshot, port: &str) -> Vec<String> {
    state
        .ports
        .get(port)
        .map(|p| p.allowed_address_pairs.iter().map(|p| p.ip_address.clone()).collect())
        .unwrap_or_default()
}

/// The operator's extra flags: `--write-horizon` only if this build has it (it is being added
/// elsewhere), and whatever `VIPOP_CHAOS_OPERATOR_ARGS` says.
fn operator_args() -> Vec<String> {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_vip-operator")).args(["run", "--help"]).output();
    let mut args = vec![];
    if help.is_ok_and(|h| String::from_utf8_lossy(&h.stdout).contains("--write-horizon")) {
        args.push(format!("--write-horizon={}s", WRITE_HORIZON.as_secs()));
    }
    if let Ok(extra) = std::env::var("VIPOP_CHAOS_OPERATOR_ARGS") {
        args.extend(extra.split_whitespace().map(str::to_string));
    }
    args
}

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok().filter(|v| !v.trim().is_empty())?;
    Some(v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// A binding's status in one line.
fn summarize(b: &VipBinding) -> String {
    let ready = ready(b).map(|(s, r)| format!("{s}/{r}")).unwrap_or_else(|| "-".into());
    let bound = b.condition("Bound").map(|c| c.status.clone()).unwrap_or_else(|| "-".into());
    let added = b.status.as_ref().and_then(|s| s.bound_with.as_ref()).map(|w| w.source_check_off_added);
    let message: String = b.condition("Ready").map(|c| c.message.chars().take(100).collect()).unwrap_or_default();
    format!(
        "Ready {ready}, Bound {bound}, checkOffAdded {added:?}{}{}: {message}",
        if has_finalizer(b) { ", finalizer" } else { "" },
        if b.metadata.deletion_timestamp.is_some() { ", deleting" } else { "" },
    )
}

/// One status a binding was seen in.
struct Seen {
    at: jiff::Timestamp,
    name: String,
    uid: String,
    spec: Option<Spec>,
    summary: String,
}

impl Seen {
    fn line(&self) -> String {
        let spec = self.spec.map(|s| s.describe()).unwrap_or_default();
        format!("{} {}[{}] {spec}: {}", clock(self.at), self.name, &self.uid[..self.uid.len().min(8)], self.summary)
    }
}

/// Every status of every binding in the namespace, from a watch: what a failure needs to say
/// which binding did what, when.
struct History {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl History {
    fn watch(api: kube::Api<VipBinding>) -> History {
        use futures::StreamExt;
        use kube::runtime::WatchStreamExt;
        use kube::runtime::watcher::{Config, Event, watcher};
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(api, Config::default()).default_backoff());
            while let Some(event) = stream.next().await {
                let (b, summary) = match event {
                    Ok(Event::Apply(b) | Event::InitApply(b)) => {
                        let summary = summarize(&b);
                        (b, summary)
                    }
                    Ok(Event::Delete(b)) => (b, "gone".to_string()),
                    _ => continue,
                };
                let uid = b.metadata.uid.clone().unwrap_or_default();
                let mut seen = record.lock().unwrap_or_else(|p| p.into_inner());
                // Only changes: a status write that changed nothing shown here is no news.
                if seen.iter().rev().find(|s| s.uid == uid).is_some_and(|s| s.summary == summary) {
                    continue;
                }
                let name = b.metadata.name.clone().unwrap_or_default();
                seen.push(Seen { at: jiff::Timestamp::now(), name, uid, spec: spec_of(&b), summary });
            }
        });
        History { seen, task }
    }

    fn lines(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).iter().map(Seen::line).collect()
    }

    /// (when, what) of the bindings whose NIC or VIP port is `subject`, and their names.
    fn about(&self, subject: &str) -> (Vec<(jiff::Timestamp, String)>, BTreeSet<String>) {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let relevant = |s: &Seen| s.spec.is_some_and(|spec| NICS[spec.nic] == subject || VIPS[spec.vip].0 == subject);
        let events = seen.iter().filter(|s| relevant(s)).map(|s| (s.at, s.line())).collect();
        let names = seen.iter().filter(|s| relevant(s)).map(|s| s.name.clone()).collect();
        (events, names)
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn clock(t: jiff::Timestamp) -> String {
    t.strftime("%H:%M:%S%.3f").to_string()
}

/// What a write asked for, in a few words.
fn call_summary(c: &CallRecord) -> String {
    let body: serde_json::Value = serde_json::from_str(&c.body).unwrap_or_default();
    if let Some(pairs) = body["port"]["allowed_address_pairs"].as_array() {
        let ips: Vec<&str> = pairs.iter().filter_map(|p| p["ip_address"].as_str()).collect();
        return format!("pairs := {ips:?}");
    }
    match body["nic"]["ip_address"].as_str() {
        Some("") => "ECS unbind".into(),
        Some(ip) => format!("ECS bind {ip}"),
        None => c.body.chars().take(80).collect(),
    }
}

/// The writes the simulator took on `subject` (and when their late effects landed).
fn cloud_events(calls: &[CallRecord], subject: &str) -> Vec<(jiff::Timestamp, String)> {
    let mut out = vec![];
    for c in calls.iter().filter(|c| c.method == "PUT" && writes_on(c, subject)) {
        let Some(at) = c.received_at else { continue };
        let what = call_summary(c);
        let late = c.late.as_ref().map(|l| format!(", its effect put off {}ms", l.due_after_ms)).unwrap_or_default();
        out.push((
            at,
            format!(
                "{} cloud #{} {what}: answered {} after {}ms{late}",
                clock(at),
                c.seq,
                c.status,
                c.duration_us / 1000
            ),
        ));
        if let Some(l) = &c.late
            && let Some(us) = l.done_after_us
        {
            let landed = at + jiff::SignedDuration::from_micros(i64::try_from(us).unwrap_or(i64::MAX));
            out.push((landed, format!("{} cloud #{} LATE {what}: {:?}", clock(landed), c.seq, l.state)));
        }
    }
    out
}

/// One broken rule, and the ports and NICs to show the calls of.
struct Violation {
    text: String,
    subjects: Vec<String>,
}

struct Chaos {
    env: Env,
    rng: StdRng,
    seed: u64,
    steps: usize,
    started: Instant,
    log: Vec<(jiff::Timestamp, String)>,
    /// Every status each binding went through, from a watch.
    history: History,
    /// The bindings the test means to exist (what it asked for, not what it observed, so the
    /// random choices depend on the seed alone).
    live: BTreeMap<String, Spec>,
    /// The step each name was last created at (by the test's asking).
    born: BTreeMap<String, usize>,
    /// Names left alone until this step (a same-name recreation is under way).
    busy_until: BTreeMap<String, usize>,
    recreating: BTreeMap<String, JoinHandle<Result<Duration, String>>>,
    next_name: usize,
    operators: Vec<(Operator, u16)>,
    operator_args: Vec<String>,
    nic_ips: Vec<String>,
    kills: usize,
    last_kill: usize,
    /// Violations seen during the run ([`Chaos::sample`]), and their keys.
    during: Vec<Violation>,
    seen_during: BTreeSet<String>,
}

impl Chaos {
    fn note(&mut self, step: Option<usize>, what: impl std::fmt::Display) {
        let at = self.started.elapsed().as_secs_f64();
        let line = match step {
            Some(i) => format!("#{i:03} +{at:6.2}s {what}"),
            None => format!("     +{at:6.2}s {what}"),
        };
        self.log.push((jiff::Timestamp::now(), line));
    }

    fn replay(&self) -> String {
        let assets = std::env::var("KUBEBUILDER_ASSETS").unwrap_or_else(|_| "<assets>".into());
        format!(
            "VIPOP_CHAOS_SEED={} VIPOP_CHAOS_STEPS={} KUBEBUILDER_ASSETS={assets} VIPOP_E2E_REQUIRE_REAL=1 cargo nextest run --test e2e {TEST}",
            self.seed, self.steps
        )
    }

    async fn start_operator(&mut self) {
        let port = free_port();
        let ns = self.env.namespace.clone();
        let election = ["--leader-elect", "--leader-election-namespace", &ns, "--leader-lease-seconds", "4"];
        let extra: Vec<&str> = self.operator_args.iter().map(String::as_str).collect();
        let op = self.env.operator().args(&election).args(&extra).admin_port(port).start().await;
        self.operators.push((op, port));
    }

    /// SIGKILL of the replica that leads (it says so in its metrics), and a new standby.
    /// `wait`: how long to wait for a replica to lead (a takeover may be under way).
    async fn kill_leader(&mut self, step: Option<usize>, wait: Duration) {
        let deadline = Instant::now() + wait;
        let leader = loop {
            let mut leader = None;
            for (i, (_, port)) in self.operators.iter().enumerate() {
                let (_, metrics) = admin_get(*port, "/metrics").await.unwrap_or_default();
                if metrics.lines().any(|l| l == "vipop_leader 1") {
                    leader = Some(i);
                    break;
                }
            }
            if leader.is_some() || Instant::now() >= deadline {
                break leader;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        match leader {
            Some(i) => {
                let (mut op, port) = self.operators.remove(i);
                op.kill().await;
                self.note(step, format!("SIGKILL the leader (admin port {port}); a new standby starts"));
                self.start_operator().await;
            }
            None => self.note(step, "no replica leads right now: nothing killed"),
        }
    }

    fn fresh_name(&mut self) -> String {
        self.next_name += 1;
        format!("b{:02}", self.next_name)
    }

    fn random_spec(&mut self) -> Spec {
        Spec {
            nic: self.rng.random_range(0..NICS.len()),
            vip: self.rng.random_range(0..VIPS.len()),
            vpc: self.rng.random_bool(0.75),
        }
    }

    /// A live binding no recreation is busy with, chosen at random.
    fn pick(&mut self, step: usize) -> Option<String> {
        self.pick_where(step, |_, _, _| true)
    }

    fn pick_where(&mut self, step: usize, ok: impl Fn(&str, &Spec, &BTreeMap<String, Spec>) -> bool) -> Option<String> {
        let free: Vec<String> = self
            .live
            .iter()
            .filter(|(n, s)| self.busy_until.get(*n).is_none_or(|until| *until <= step) && ok(n, s, &self.live))
            .map(|(n, _)| n.clone())
            .collect();
        if free.is_empty() {
            return None;
        }
        Some(free[self.rng.random_range(0..free.len())].clone())
    }

    /// A VPC binding alone on its NIC (as far as the test asked): its replacement by another
    /// VPC binding is the race of a delete and a create over the NIC's 1.1.1.1/0.
    /// Created a few steps ago, so its bind has likely finished and recorded adding the NIC's
    /// `1.1.1.1/0`.
    fn pick_alone_vpc(&mut self, step: usize) -> Option<String> {
        let born = self.born.clone();
        self.pick_where(step, move |name, s, live| {
            s.vpc
                && live.values().filter(|o| o.nic == s.nic).count() == 1
                && born.get(name).is_some_and(|b| b + 6 <= step)
        })
    }

    async fn create(&mut self, step: usize, name: &str, spec: Spec) {
        let result = self.env.bindings().create(&PostParams::default(), &binding(name, &spec)).await;
        match result {
            Ok(_) => self.note(Some(step), format!("create {name} {}", spec.describe())),
            Err(e) => self.note(Some(step), format!("create {name} {} FAILED: {e}", spec.describe())),
        }
        self.live.insert(name.to_string(), spec);
        self.born.insert(name.to_string(), step);
    }

    /// Waits for a recreation of `name` still under way, so a delete meets the new object.
    async fn settle_recreation(&mut self, step: Option<usize>, name: &str) {
        if let Some(task) = self.recreating.remove(name) {
            let outcome = tokio::time::timeout(Duration::from_secs(40), task).await;
            let what = match outcome {
                Ok(Ok(Ok(waited))) => format!("recreated {name} after {:.2}s", waited.as_secs_f64()),
                Ok(Ok(Err(e))) => format!("recreating {name} FAILED: {e}"),
                Ok(Err(e)) => format!("recreating {name} panicked: {e}"),
                Err(_) => format!("recreating {name} still waiting after 40s: given up"),
            };
            self.note(step, what);
        }
    }

    async fn delete(&mut self, step: usize, name: &str) {
        self.settle_recreation(Some(step), name).await;
        let what = match self.env.bindings().delete(name, &DeleteParams::default()).await {
            Ok(_) => format!("delete {name}"),
            Err(kube::Error::Api(e)) if e.code == 404 => format!("delete {name}: already gone"),
            Err(e) => format!("delete {name} FAILED: {e}"),
        };
        self.note(Some(step), what);
        self.live.remove(name);
    }

    /// Deletes `name` and creates it again as soon as the API server lets it (the old object
    /// may wait on its finalizer), in the background.
    async fn recreate(&mut self, step: usize, name: &str, spec: Spec) {
        self.delete(step, name).await;
        let api = self.env.bindings();
        let object = binding(name, &spec);
        let task = tokio::spawn(async move {
            let asked = Instant::now();
            let deadline = asked + Duration::from_secs(30);
            loop {
                match api.create(&PostParams::default(), &object).await {
                    Ok(_) => return Ok(asked.elapsed()),
                    Err(kube::Error::Api(e)) if e.code == 409 && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        });
        self.note(Some(step), format!("recreate {name} as {} once the old one is gone", spec.describe()));
        self.recreating.insert(name.to_string(), task);
        self.busy_until.insert(name.to_string(), step + 8);
        self.live.insert(name.to_string(), spec);
        self.born.insert(name.to_string(), step);
    }

    /// Deletes `old` and creates a new binding on the same NIC within the same second: at once,
    /// or a little after, when the old one's unbind may have started without knowing the new
    /// one (the NIC looked unshared) while the new one's bind is still ahead of it.
    async fn replace(&mut self, step: usize, old: &str) {
        let Some(was) = self.live.get(old).copied() else { return };
        // Mostly the same API and another VIP: two VPC bindings of different VIPs share the
        // NIC's 1.1.1.1/0, the race the unbind must not lose.
        let other_vip = (was.vip + self.rng.random_range(1..VIPS.len())) % VIPS.len();
        let spec = Spec {
            nic: was.nic,
            vip: if self.rng.random_bool(0.8) { other_vip } else { was.vip },
            vpc: if self.rng.random_bool(0.8) { was.vpc } else { !was.vpc },
        };
        let gap = if self.rng.random_bool(0.3) { 0 } else { self.rng.random_range(20..=400) };
        let new = self.fresh_name();
        self.settle_recreation(Some(step), old).await;
        let api = self.env.bindings();
        let object = binding(&new, &spec);
        let (dp, pp) = (DeleteParams::default(), PostParams::default());
        let (deleted, created) = if gap == 0 {
            tokio::join!(api.delete(old, &dp), api.create(&pp, &object))
        } else {
            let deleted = api.delete(old, &dp).await;
            tokio::time::sleep(Duration::from_millis(gap)).await;
            (deleted, api.create(&pp, &object).await)
        };
        let outcome = match (deleted.err(), created.err()) {
            (None, None) => String::new(),
            (d, c) => format!(" FAILED: delete {d:?}, create {c:?}"),
        };
        let when = if gap == 0 { "at once".to_string() } else { format!("{gap}ms later") };
        self.note(
            Some(step),
            format!("replace {old} ({}) by {new} ({}) {when}{outcome}", was.describe(), spec.describe()),
        );
        self.live.remove(old);
        self.born.insert(new.clone(), step);
        self.live.insert(new, spec);
    }

    /// A random cloud fault, on a random call and (often) a given NIC or port.
    fn fault(&mut self, step: usize) {
        let ops = [
            CloudOperation::Bind,
            CloudOperation::Unbind,
            CloudOperation::UpdatePort,
            CloudOperation::UpdatePort,
            CloudOperation::GetPort,
            CloudOperation::ListPorts,
        ];
        let writes = [CloudOperation::Bind, CloudOperation::Unbind, CloudOperation::UpdatePort];
        let kind = self.rng.random_range(0..6u32);
        let op = if matches!(kind, 1 | 4 | 5) {
            writes[self.rng.random_range(0..writes.len())]
        } else {
            ops[self.rng.random_range(0..ops.len())]
        };
        // A NIC for the ECS calls; a NIC's or a VIP's port for the port calls; listings name none.
        let subject = match op {
            CloudOperation::ListPorts => None,
            _ if self.rng.random_bool(0.4) => None,
            CloudOperation::Bind | CloudOperation::Unbind => {
                Some(NICS[self.rng.random_range(0..NICS.len())].to_string())
            }
            _ => {
                let i = self.rng.random_range(0..NICS.len() + VIPS.len());
                Some(if i < NICS.len() { NICS[i].to_string() } else { VIPS[i - NICS.len()].0.to_string() })
            }
        };
        let mut f = match kind {
            // 5xx, a few of them, or enough in a row to outlast the client's retries.
            0 => {
                let status = [500, 502, 503][self.rng.random_range(0..3)];
                let count =
                    if self.rng.random_bool(0.4) { self.rng.random_range(4..=8) } else { self.rng.random_range(1..=3) };
                Fault::error(status, "Common.0001", count)
            }
            // The cloud did the work and said it failed.
            1 => {
                let mut f = Fault::error(500, "Common.0001", 1);
                f.apply = true;
                f
            }
            2 => {
                let mut f = Fault::error(429, "APIGW.0308", self.rng.random_range(1..=6));
                f.retry_after = Some(1);
                f
            }
            // A slow success.
            3 => {
                let mut f = Fault::error(200, "", self.rng.random_range(1..=3));
                f.code = None;
                f.latency_ms = Some(self.rng.random_range(300..=2_500));
                f
            }
            // The gateway gave up at once; the service applies the write later.
            4 => {
                let mut f = Fault::error(504, "APIGW.0201", 1);
                f.apply_after_ms = Some(self.rng.random_range(300..=MAX_LATE_MS));
                f
            }
            // The client gives up; the write lands later.
            _ => {
                let mut f = Fault::error(200, "", 1);
                f.code = None;
                f.latency_ms = Some(PAST_THE_TIMEOUT_MS);
                f.apply_after_ms = Some(self.rng.random_range(300..=MAX_LATE_MS));
                f
            }
        };
        f.operation = Some(op);
        f.nic_id = subject;
        let what = format!(
            "fault {op:?} on {}: status {} x{}{}{}{}{}",
            f.nic_id.as_deref().unwrap_or("any"),
            f.status,
            f.count,
            if f.apply { " apply" } else { "" },
            f.retry_after.map(|s| format!(" retry-after {s}s")).unwrap_or_default(),
            f.latency_ms.map(|ms| format!(" latency {ms}ms")).unwrap_or_default(),
            f.apply_after_ms.map(|ms| format!(" lands after {ms}ms")).unwrap_or_default(),
        );
        self.env.sim.add_fault(f);
        self.note(Some(step), what);
    }

    async fn step(&mut self, i: usize) {
        let roll = self.rng.random_range(0..100u32);
        let can_kill = self.kills < 3 && i >= self.last_kill + 12;
        match roll {
            0..22 => self.create_random(i).await,
            22..36 => match self.pick(i) {
                Some(name) => self.delete(i, &name).await,
                None => self.create_random(i).await,
            },
            36..46 => match self.pick(i) {
                Some(name) => {
                    let spec = if self.rng.random_bool(0.5) { self.live[&name] } else { self.random_spec() };
                    self.recreate(i, &name, spec).await;
                }
                None => self.create_random(i).await,
            },
            46..64 => {
                match if self.rng.random_bool(0.8) { self.pick_alone_vpc(i) } else { None }.or_else(|| self.pick(i)) {
                    Some(name) => self.replace(i, &name).await,
                    None => self.create_random(i).await,
                }
            }
            64..92 => self.fault(i),
            92..96 if can_kill => {
                self.kills += 1;
                self.last_kill = i;
                self.kill_leader(Some(i), Duration::ZERO).await;
            }
            _ => {
                let ms = self.rng.random_range(500..=2_000);
                self.note(Some(i), format!("let it run {ms}ms"));
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
        let pause = self.rng.random_range(50..=500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }

    async fn create_random(&mut self, i: usize) {
        if self.live.len() >= MAX_LIVE
            && let Some(name) = self.pick(i)
        {
            return self.delete(i, &name).await;
        }
        let spec = self.random_spec();
        let name = self.fresh_name();
        self.create(i, &name, spec).await;
    }

    async fn list(&self) -> Vec<VipBinding> {
        self.env.bindings().list(&ListParams::default()).await.expect("list bindings").items
    }

    /// Invariants 1 and 4 during the run. Invariant 1 holds at every moment for a binding that
    /// says Bound: the operator writes Bound after the cloud shows the bind, and a deletion
    /// changes the object before its unbind. So the cloud is read between two reads of the
    /// bindings, and only those Bound, not deleting and unchanged across both are judged.
    /// The first finding for each binding and each kind is kept.
    async fn sample(&mut self, step: usize) {
        let steady = |b: &VipBinding| {
            b.metadata.deletion_timestamp.is_none() && b.condition("Bound").is_some_and(|c| c.status == "True")
        };
        let before: BTreeMap<String, Option<String>> = self
            .list()
            .await
            .into_iter()
            .filter(|b| steady(b))
            .map(|b| (b.metadata.uid.clone().unwrap_or_default(), b.metadata.resource_version.clone()))
            .collect();
        let state = self.env.sim.state();
        let after = self.list().await;
        let mut bound = vec![];
        let mut uids = BTreeMap::new();
        for b in after.iter().filter(|b| steady(b)) {
            let uid = b.metadata.uid.clone().unwrap_or_default();
            if before.get(&uid) == Some(&b.metadata.resource_version)
                && let Some(spec) = spec_of(b)
            {
                let name = b.metadata.name.clone().unwrap_or_default();
                uids.insert(name.clone(), uid);
                bound.push((name, spec));
            }
        }
        let mut found: Vec<(String, Violation)> = bound_means_bound(&bound, &state, &self.nic_ips)
            .into_iter()
            .map(|(kind, v)| {
                let name = v.text.split_whitespace().nth(2).unwrap_or_default().to_string();
                (format!("{}/{kind}", uids.get(&name).cloned().unwrap_or(name)), v)
            })
            .collect();
        found.extend(foreign_intact(&state).into_iter().map(|v| (v.text.clone(), v)));
        for (key, mut v) in found {
            if self.seen_during.insert(key) {
                let at = clock(jiff::Timestamp::now());
                v.text = format!("{} (during the run, after step #{step:03}, at {at})", v.text);
                self.note(Some(step), format!("VIOLATION {}", v.text));
                self.during.push(v);
            }
        }
    }

    /// Waits (bounded) until no binding is being deleted and every other one is Ready, or held
    /// by a Conflict with a binding that really shares its NIC; also until every late write has
    /// landed. `Err` says what had not settled.
    async fn converge(&self, within: Duration) -> Result<Vec<VipBinding>, String> {
        let deadline = Instant::now() + within;
        loop {
            let all = self.list().await;
            let unsettled: Vec<String> = all.iter().filter_map(|b| unsettled(b, &all)).collect();
            let late = self.env.sim.late_pending();
            if unsettled.is_empty() && late == 0 {
                return Ok(all);
            }
            if Instant::now() > deadline {
                return Err(format!("not settled within {within:?}: {unsettled:?}; late writes pending: {late}"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// What the test saw, for a failure message: the seed, the last steps, the cloud and the
    /// bindings, and the writes on the NICs and ports involved.
    fn report(&self, phase: &str, problems: &[Violation], bindings: &[VipBinding]) -> String {
        let state = self.env.sim.state();
        let mut out = String::new();
        let _ = writeln!(out, "CHAOS FAILURE ({phase}) with seed {} — replay: {}", self.seed, self.replay());
        for p in problems {
            let _ = writeln!(out, "  {}", p.text);
        }
        let _ = writeln!(out, "last {LOG_TAIL} steps:");
        for (_, line) in self.log.iter().skip(self.log.len().saturating_sub(LOG_TAIL)) {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "cloud:");
        for (i, nic) in NICS.iter().enumerate() {
            let ecs = state.nics.get(*nic).map(|n| n.ip_address.as_str()).unwrap_or("-");
            let _ = writeln!(
                out,
                "  nic{i} {nic} ip {}: port pairs {:?}, ECS VIP {ecs}",
                self.nic_ips[i],
                pairs_of(&state, nic)
            );
        }
        for (port, vip, _) in VIPS {
            let _ = writeln!(out, "  {port} {vip}: pairs {:?}", pairs_of(&state, port));
        }
        let _ = writeln!(out, "bindings:");
        for b in bindings {
            let status = b.status.as_ref();
            let bound = b.condition("Bound").map(|c| c.status.as_str()).unwrap_or("-");
            let added = status.and_then(|s| s.bound_with.as_ref()).map(|w| w.source_check_off_added);
            let _ = writeln!(
                out,
                "  {} {}: Ready {:?}, Bound {bound}, sourceCheckOffAdded {added:?}{}",
                b.metadata.name.as_deref().unwrap_or("?"),
                spec_of(b).map(|s| s.describe()).unwrap_or_default(),
                ready(b),
                if b.metadata.deletion_timestamp.is_some() { ", deleting" } else { "" },
            );
        }
        let subjects: BTreeSet<&str> = problems.iter().flat_map(|p| p.subjects.iter().map(String::as_str)).collect();
        let calls = self.env.sim.calls();
        for subject in subjects {
            // The writes on it, the bindings on it, and the steps that named them, in time order.
            let (mut events, names) = self.history.about(subject);
            events.extend(cloud_events(&calls, subject));
            for (at, line) in &self.log {
                if line.split(|c: char| !c.is_ascii_alphanumeric()).any(|word| names.contains(word)) {
                    events.push((*at, format!("{} step {line}", clock(*at))));
                }
            }
            events.sort_by_key(|(at, _)| *at);
            let whole: Vec<&str> = events.iter().map(|(_, l)| l.as_str()).collect();
            if let Err(e) = std::fs::create_dir_all(self.saved_in()).and_then(|()| {
                std::fs::write(self.saved_in().join(format!("timeline-{subject}.log")), whole.join("\n"))
            }) {
                let _ = writeln!(out, "(could not save the timeline of {subject}: {e})");
            }
            let _ = writeln!(out, "timeline of {subject} (last {TIMELINE_TAIL}):");
            for (_, line) in events.iter().skip(events.len().saturating_sub(TIMELINE_TAIL)) {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }

    /// Where a failed run is saved (each seed's last failure).
    fn saved_in(&self) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos").join(format!("seed-{}", self.seed))
    }

    fn fail(&self, phase: &str, problems: &[Violation], bindings: &[VipBinding]) -> ! {
        let dir = self.saved_in();
        // An earlier failure of the same seed is replaced, not mixed in.
        let _ = std::fs::remove_dir_all(&dir);
        let mut report = self.report(phase, problems, bindings);
        // The whole run, for what the message leaves out: every step, every cloud call.
        let saved = std::fs::create_dir_all(&dir)
            .and_then(|()| {
                std::fs::write(
                    dir.join("steps.log"),
                    self.log.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n"),
                )
            })
            .and_then(|()| std::fs::write(dir.join("history.log"), self.history.lines().join("\n")))
            .and_then(|()| {
                std::fs::write(
                    dir.join("calls.json"),
                    serde_json::to_string_pretty(&self.env.sim.calls()).unwrap_or_default(),
                )
            })
            .and_then(|()| {
                std::fs::write(
                    dir.join("state.json"),
                    serde_json::to_string_pretty(&self.env.sim.state()).unwrap_or_default(),
                )
            })
            .and_then(|()| std::fs::write(dir.join("report.txt"), &report));
        let _ = match saved {
            Ok(()) => writeln!(report, "all steps, calls and state saved in {}", dir.display()),
            Err(e) => writeln!(report, "could not save the run in {}: {e}", dir.display()),
        };
        panic!("{report}");
    }
}

fn writes_on(c: &CallRecord, subject: &str) -> bool {
    c.nic_id.as_deref() == Some(subject) || c.port_id.as_deref() == Some(subject)
}

/// Why a binding has not settled, if it has not.
fn unsettled(b: &VipBinding, all: &[VipBinding]) -> Option<String> {
    let name = b.metadata.name.clone().unwrap_or_default();
    if b.metadata.deletion_timestamp.is_some() {
        return Some(format!("{name} is still being deleted"));
    }
    match ready(b) {
        Some(("True", "Bound")) => None,
        // Legitimately stable: it waits for a binding that claims its NIC before it.
        Some(("False", "Conflict")) if conflicting(b, all) => None,
        other => Some(format!("{name}: Ready {other:?}")),
    }
}

/// Whether another binding claims `b`'s NIC in a way the two cannot share (either is ECS, or
/// both are VPC with the same VIP).
fn conflicting(b: &VipBinding, all: &[VipBinding]) -> bool {
    let Some(mine) = spec_of(b) else { return false };
    all.iter()
        .filter(|o| o.metadata.uid != b.metadata.uid)
        .filter_map(spec_of)
        .any(|o| o.nic == mine.nic && (!o.vpc || !mine.vpc || o.vip == mine.vip))
}

/// Invariant 1 for bindings that say Bound: ECS, the NIC's ECS state holds the VIP; VPC, the
/// VIP port holds the NIC's IP and the NIC's port `1.1.1.1/0`. With what is missing (`ecs`,
/// `pair`, `check-off`).
fn bound_means_bound(
    bound: &[(String, Spec)],
    state: &StateSnapshot,
    nic_ips: &[String],
) -> Vec<(&'static str, Violation)> {
    let mut out = vec![];
    for (name, s) in bound {
        let (nic, (port, vip, _)) = (NICS[s.nic], VIPS[s.vip]);
        if !s.vpc {
            let holds = state.nics.get(nic).map(|n| n.ip_address.as_str());
            if holds != Some(vip) {
                let text =
                    format!("invariant 1: {name} ({}) is Bound, but the NIC's ECS state holds {holds:?}", s.describe());
                out.push(("ecs", Violation { text, subjects: vec![nic.into()] }));
            }
            continue;
        }
        let ip = &nic_ips[s.nic];
        let vip_pairs = pairs_of(state, port);
        if !vip_pairs.contains(ip) {
            let text = format!(
                "invariant 1: {name} ({}) is Bound, but {port} lacks nic{}'s IP {ip}: pairs {vip_pairs:?}",
                s.describe(),
                s.nic
            );
            out.push(("pair", Violation { text, subjects: vec![port.into()] }));
        }
        let nic_pairs = pairs_of(state, nic);
        if !nic_pairs.iter().any(|p| p == CHECK_OFF) {
            let text = format!(
                "invariant 1: {name} ({}) is Bound, but nic{} lacks {CHECK_OFF}: pairs {nic_pairs:?}",
                s.describe(),
                s.nic
            );
            out.push(("check-off", Violation { text, subjects: vec![nic.into()] }));
        }
    }
    out
}

/// The invariants after convergence, over the live bindings and the simulator's state.
fn check(bindings: &[VipBinding], state: &StateSnapshot, nic_ips: &[String]) -> Vec<Violation> {
    let mut out = vec![];
    let live: Vec<(String, Spec, bool)> = bindings
        .iter()
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .filter_map(|b| {
            let bound = b.condition("Bound").is_some_and(|c| c.status == "True");
            Some((b.metadata.name.clone().unwrap_or_default(), spec_of(b)?, bound))
        })
        .collect();
    let nic_name =
        |ip: &str| nic_ips.iter().position(|n| n == ip).map(|i| format!("nic{i}")).unwrap_or("no NIC".into());

    // 1. Bound means bound, in the cloud.
    let bound: Vec<(String, Spec)> = live.iter().filter(|l| l.2).map(|(n, s, _)| (n.clone(), *s)).collect();
    out.extend(bound_means_bound(&bound, state, nic_ips).into_iter().map(|(_, v)| v));

    // 2. Nothing bound that no live binding needs.
    for (v, (port, vip, foreign)) in VIPS.iter().enumerate() {
        for ip in pairs_of(state, port) {
            let needed = Some(ip.as_str()) == *foreign
                || live.iter().any(|(_, s, _)| s.vpc && s.vip == v && nic_ips[s.nic] == ip);
            if !needed {
                out.push(Violation {
                    text: format!(
                        "invariant 2: {port} ({vip}) holds {ip} ({}) that no live VPC binding needs",
                        nic_name(&ip)
                    ),
                    subjects: vec![port.to_string()],
                });
            }
        }
    }
    for (nic, held) in &state.nics {
        let needed = live.iter().any(|(_, s, _)| !s.vpc && NICS[s.nic] == nic && VIPS[s.vip].1 == held.ip_address);
        if !needed {
            out.push(Violation {
                text: format!(
                    "invariant 2: NIC {nic} holds ECS VIP {} that no live ECS binding needs",
                    held.ip_address
                ),
                subjects: vec![nic.clone()],
            });
        }
    }

    // 3. No source check left off where no live VPC binding needs it (the preset one is not ours).
    for (i, nic) in NICS.iter().enumerate() {
        let has = pairs_of(state, nic).iter().any(|p| p == CHECK_OFF);
        let needed = i == PRESET_CHECK_OFF || live.iter().any(|(_, s, _)| s.vpc && s.nic == i);
        if has && !needed {
            out.push(Violation {
                text: format!("invariant 3: nic{i} has {CHECK_OFF} that no live VPC binding needs"),
                subjects: vec![nic.to_string()],
            });
        }
    }

    out.extend(foreign_intact(state));
    out
}

/// 4. Someone else's entries are never removed.
fn foreign_intact(state: &StateSnapshot) -> Vec<Violation> {
    let mut out = vec![];
    for (port, _, foreign) in VIPS {
        if let Some(f) = foreign
            && !pairs_of(state, port).iter().any(|p| p == f)
        {
            out.push(Violation {
                text: format!("invariant 4: {port} lost the foreign pair {f}: pairs {:?}", pairs_of(state, port)),
                subjects: vec![port.into()],
            });
        }
    }
    let preset = NICS[PRESET_CHECK_OFF];
    if !pairs_of(state, preset).iter().any(|p| p == CHECK_OFF) {
        out.push(Violation {
            text: format!("invariant 4: nic{PRESET_CHECK_OFF} lost the {CHECK_OFF} it had before the test"),
            subjects: vec![preset.into()],
        });
    }
    out
}

/// Once every binding is gone: only what was there before the test is left.
fn check_clean(state: &StateSnapshot) -> Vec<Violation> {
    let mut out = vec![];
    for (nic, held) in &state.nics {
        out.push(Violation {
            text: format!("clean: NIC {nic} still holds ECS VIP {}", held.ip_address),
            subjects: vec![nic.clone()],
        });
    }
    for (port, vip, foreign) in VIPS {
        let left: Vec<String> = pairs_of(state, port).into_iter().filter(|p| Some(p.as_str()) != foreign).collect();
        if !left.is_empty() {
            out.push(Violation {
                text: format!("clean: {port} ({vip}) still holds {left:?}"),
                subjects: vec![port.into()],
            });
        }
    }
    for (i, nic) in NICS.iter().enumerate() {
        let expected: Vec<String> = if i == PRESET_CHECK_OFF { vec![CHECK_OFF.into()] } else { vec![] };
        let pairs = pairs_of(state, nic);
        if pairs != expected {
            out.push(Violation {
                text: format!("clean: nic{i} holds {pairs:?}, expected {expected:?}"),
                subjects: vec![nic.to_string()],
            });
        }
    }
    out.extend(foreign_intact(state));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_random_mix_keeps_the_invariants() {
    let seed = env_number("VIPOP_CHAOS_SEED").unwrap_or_else(rand::random);
    let steps = env_number("VIPOP_CHAOS_STEPS").map_or(DEFAULT_STEPS, |n| n as usize);
    eprintln!("chaos: seed {seed}, {steps} steps (replay with VIPOP_CHAOS_SEED={seed} VIPOP_CHAOS_STEPS={steps})");
    // A random mix of real-world races needs the real API server's behaviour (finalizers,
    // deletion, conflicts on create), not the fake's.
    let Some(env) = Env::with("chaos", Needs::RealServer).await else { return };

    let mut nic_ips = vec![];
    for (i, nic) in NICS.iter().enumerate() {
        let mut port = SimPort::nic(nic, PROJECT);
        port.network_id = SUBNET.into();
        if i == PRESET_CHECK_OFF {
            port.allowed_address_pairs = vec![pair(CHECK_OFF)];
        }
        nic_ips.push(port.ip().expect("a NIC port has an IP").to_string());
        env.sim.set_port(port).expect("a NIC port");
    }
    let distinct: BTreeSet<&String> = nic_ips.iter().collect();
    assert_eq!(distinct.len(), NICS.len(), "the NICs' IPs must differ: {nic_ips:?}");
    for (port, vip, foreign) in VIPS {
        let mut p = SimPort::vip(port, PROJECT, SUBNET, "subnet-v4", vip);
        p.allowed_address_pairs = foreign.map(pair).into_iter().collect();
        env.sim.set_port(p).expect("a VIP port");
    }

    let operator_args = operator_args();
    let history = History::watch(env.bindings());
    let mut chaos = Chaos {
        env,
        rng: StdRng::seed_from_u64(seed),
        seed,
        steps,
        started: Instant::now(),
        log: vec![],
        history,
        live: BTreeMap::new(),
        born: BTreeMap::new(),
        busy_until: BTreeMap::new(),
        recreating: BTreeMap::new(),
        next_name: 0,
        operators: vec![],
        operator_args,
        nic_ips,
        kills: 0,
        last_kill: 0,
        during: vec![],
        seen_during: BTreeSet::new(),
    };
    let flags = format!("operator flags: {:?}", chaos.operator_args);
    eprintln!("chaos: {flags}");
    chaos.note(None, flags);
    chaos.start_operator().await;
    chaos.start_operator().await;

    // Global latency for stretches of the run (one in each SLOW_EVERY steps): every call
    // slower, every race window wider. Early in each, as a race over 1.1.1.1/0 needs a NIC
    // whose 1.1.1.1/0 a binding recorded adding, and leaks of earlier steps spoil NICs for that.
    let mut slow = BTreeMap::new();
    for start in (0..steps).step_by(SLOW_EVERY) {
        let from = start + chaos.rng.random_range(SLOW_EVERY / 12..=SLOW_EVERY / 3);
        slow.insert(from, true);
        slow.insert(from + chaos.rng.random_range(35..=60), false);
    }
    let mut i = 0;
    let loop_cap = STEP_TIME_CAP.saturating_mul(u32::try_from(steps).unwrap_or(u32::MAX));
    while i < steps && chaos.started.elapsed() < loop_cap {
        match slow.get(&i) {
            Some(true) => {
                chaos.env.sim.set_latency(Duration::from_millis(300));
                chaos.note(Some(i), "cloud latency 300ms");
            }
            Some(false) => {
                chaos.env.sim.set_latency(Duration::ZERO);
                chaos.note(Some(i), "cloud latency 0");
            }
            None => {}
        }
        chaos.step(i).await;
        chaos.sample(i).await;
        i += 1;
    }
    let names: Vec<String> = chaos.recreating.keys().cloned().collect();
    for name in names {
        chaos.settle_recreation(None, &name).await;
    }
    chaos.env.sim.clear_faults();
    chaos.env.sim.set_latency(Duration::ZERO);
    chaos.note(None, format!("{i} steps done; faults cleared, latency 0"));
    // A fresh leader carries no backoff from the chaos: the bindings settle in seconds.
    chaos.kill_leader(None, Duration::from_secs(15)).await;

    let bindings = match chaos.converge(Duration::from_secs(90)).await {
        Ok(b) => b,
        Err(why) => {
            let all = chaos.list().await;
            chaos.fail("convergence", &[Violation { text: why, subjects: vec![] }], &all)
        }
    };
    chaos.note(None, format!("settled: {} bindings", bindings.len()));
    // Late writes given up on have landed (none pending), plus the horizon: check then.
    tokio::time::sleep(WRITE_HORIZON + Duration::from_secs(1)).await;
    let bindings = match chaos.converge(Duration::from_secs(30)).await {
        Ok(b) => b,
        Err(why) => {
            let all = chaos.list().await;
            chaos.fail("convergence after the horizon", &[Violation { text: why, subjects: vec![] }], &all)
        }
    };
    let mut problems = std::mem::take(&mut chaos.during);
    problems.extend(check(&bindings, &chaos.env.sim.state(), &chaos.nic_ips));
    // Going on after a violation: the deletions may show more (or show a leak for good).
    chaos.note(None, format!("{} invariant violations during the run and with the bindings live", problems.len()));

    // Every binding goes: the cloud must be left as it was before the test.
    for b in &bindings {
        if let Some(name) = &b.metadata.name {
            let _ = chaos.env.bindings().delete(name, &DeleteParams::default()).await;
        }
    }
    chaos.note(None, format!("deleted all {} bindings", bindings.len()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = chaos.list().await;
        if left.is_empty() && chaos.env.sim.late_pending() == 0 {
            break;
        }
        if Instant::now() > deadline {
            let names: Vec<String> = left.iter().filter_map(|b| b.metadata.name.clone()).collect();
            problems.push(Violation { text: format!("bindings not gone within 60s: {names:?}"), subjects: vec![] });
            chaos.fail("deleting everything", &problems, &left);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(WRITE_HORIZON + Duration::from_secs(1)).await;
    problems.extend(check_clean(&chaos.env.sim.state()));
    if !problems.is_empty() {
        chaos.fail("invariants, live and after deleting everything", &problems, &bindings);
    }

    let late =
        chaos.env.sim.calls().iter().filter(|c| c.late.as_ref().is_some_and(|l| l.state == LateState::Applied)).count();
    eprintln!(
        "chaos: seed {seed} passed: {i} steps, {} leader kills, {late} late writes landed, {:.1}s",
        chaos.kills,
        chaos.started.elapsed().as_secs_f64()
    );
    let Chaos { env, operators, .. } = chaos;
    env.cleanup().await;
    drop(operators);
}
