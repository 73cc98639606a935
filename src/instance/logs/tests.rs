use super::*;
use parking_lot::Mutex;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command as Cmd, Stdio};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::time::Instant;
use tracing_subscriber::fmt::MakeWriter;

/// Decodes standard base64, to check what [`base64`] encodes.
pub(super) fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    assert_eq!(s.len() % 4, 0);
    let mut out = Vec::new();
    for q in s.as_bytes().chunks(4) {
        let pad = q.iter().filter(|&&c| c == b'=').count();
        let n = q[..4 - pad]
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | u32::from(val(c)) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    out
}

// ---- harness ----

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buf {
    type Writer = Buf;
    fn make_writer(&'a self) -> Buf {
        self.clone()
    }
}

impl Buf {
    fn records(&self) -> Vec<Value> {
        let b = self.0.lock();
        String::from_utf8_lossy(&b)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON record"))
            .collect()
    }

    /// Waits until a record with this message was emitted (records are emitted in
    /// order by one thread, so everything before it is there too).
    async fn wait_for(&self, message: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let recs = self.records();
            if recs.iter().any(|r| r["message"] == message) {
                return recs;
            }
            assert!(Instant::now() < deadline, "no record {message:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn json_subscriber<W>(w: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_writer(w)
        .finish()
}

fn labels(instance: &str) -> Labels {
    Labels {
        function: "hello".into(),
        namespace: "default".into(),
        instance: instance.into(),
    }
}

fn report() -> Report {
    Report {
        duration: Duration::from_micros(12_010),
        memory_mb: 128,
        mem_usage_bytes: Some(10 * 1024 * 1024),
        init_duration: None,
    }
}

/// A child that obeys commands on stdin, one per line: `o:TEXT` prints TEXT on stdout,
/// `e:TEXT` on stderr, `p:TEXT` prints TEXT without newline, `big:N:C` prints C*N and a
/// newline, `a:PATH` creates PATH (an acknowledgement: everything before was written).
const SCRIPT: &str = r#"
import sys
for l in sys.stdin:
    c, _, arg = l.rstrip("\n").partition(":")
    if c == "o": sys.stdout.write(arg + "\n"); sys.stdout.flush()
    elif c == "e": sys.stderr.write(arg + "\n"); sys.stderr.flush()
    elif c == "p": sys.stdout.write(arg); sys.stdout.flush()
    elif c == "big":
        n, _, ch = arg.partition(":")
        sys.stdout.write(ch * int(n) + "\n"); sys.stdout.flush()
    elif c == "a": open(arg, "w").close()
"#;

struct Puppet {
    child: Child,
    stdin: Option<ChildStdin>,
    acks: u32,
    dir: PathBuf,
}

impl Puppet {
    fn spawn() -> (Puppet, OwnedFd, OwnedFd) {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "scf-logs-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Cmd::new("python3")
            .args(["-c", SCRIPT])
            .env("PYTHONIOENCODING", "utf-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        let out = OwnedFd::from(child.stdout.take().unwrap());
        let err = OwnedFd::from(child.stderr.take().unwrap());
        let stdin = child.stdin.take();
        let p = Puppet {
            child,
            stdin,
            acks: 0,
            dir,
        };
        (p, out, err)
    }

    /// Sends commands and waits until the child has carried them out.
    async fn run(&mut self, cmds: &[&str]) {
        self.acks += 1;
        let ack = self.dir.join(self.acks.to_string());
        let stdin = self.stdin.as_mut().unwrap();
        for c in cmds {
            writeln!(stdin, "{c}").unwrap();
        }
        writeln!(stdin, "a:{}", ack.display()).unwrap();
        stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ack.exists() {
            assert!(Instant::now() < deadline, "child did not acknowledge");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for Puppet {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn messages(recs: &[Value]) -> Vec<&str> {
    recs.iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect()
}

fn find<'a>(recs: &'a [Value], message: &str) -> &'a Value {
    recs.iter()
        .find(|r| r["message"] == message)
        .unwrap_or_else(|| panic!("no record {message:?} in {:?}", messages(recs)))
}

fn pos(recs: &[Value], message: &str) -> usize {
    recs.iter()
        .position(|r| r["message"] == message)
        .unwrap_or_else(|| panic!("no record {message:?}"))
}

// ---- behaviour ----

#[tokio::test]
async fn lines_are_attributed_and_precede_end() {
    let buf = Buf::default();
    let _g = tracing::subscriber::set_default(json_subscriber(buf.clone()));
    let (mut child, out, err) = Puppet::spawn();
    let log = InstanceLog::start(out, err, labels("i-1")).unwrap();

    child.run(&["o:before"]).await;
    log.begin("req-1");
    child
        .run(&["o:hello from req-1", "e:oops", "p:partial"])
        .await;
    let tail = log.end("req-1", report());
    child.run(&["o:after"]).await;
    log.begin("req-2");
    child.run(&["o:second"]).await;
    let tail2 = log.end("req-2", report());

    let recs = buf.wait_for("END RequestId: req-2").await;
    let hello = find(&recs, "hello from req-1");
    assert_eq!(hello["request_id"], "req-1");
    assert_eq!(hello["stream"], "stdout");
    assert_eq!(hello["target"], "function");
    assert_eq!(hello["level"], "INFO");
    assert_eq!(hello["function"], "hello");
    assert_eq!(hello["namespace"], "default");
    assert_eq!(hello["instance"], "i-1");
    let oops = find(&recs, "oops");
    assert_eq!(oops["request_id"], "req-1");
    assert_eq!(oops["stream"], "stderr");
    assert_eq!(find(&recs, "partial")["request_id"], "req-1");
    for unattributed in ["before", "after"] {
        let r = find(&recs, unattributed);
        assert!(r.get("request_id").is_none(), "{r}");
    }
    assert_eq!(find(&recs, "second")["request_id"], "req-2");

    let start = find(&recs, "START RequestId: req-1");
    assert_eq!(start["request_id"], "req-1");
    assert!(start.get("stream").is_none());
    let order = [
        "before",
        "START RequestId: req-1",
        "hello from req-1",
        "END RequestId: req-1",
        "after",
        "START RequestId: req-2",
        "second",
        "END RequestId: req-2",
    ];
    let p: Vec<usize> = order.iter().map(|m| pos(&recs, m)).collect();
    assert!(p.windows(2).all(|w| w[0] < w[1]), "order {p:?}");
    assert!(pos(&recs, "oops") < pos(&recs, "END RequestId: req-1"));
    assert!(pos(&recs, "partial") < pos(&recs, "END RequestId: req-1"));

    let report_msg = report_line("req-1", &report());
    let rep = buf.wait_for(&report_msg).await;
    assert_eq!(find(&rep, &report_msg)["request_id"], "req-1");
    assert!(pos(&rep, &report_msg) > pos(&rep, "END RequestId: req-1"));

    assert!(tail.len() <= TAIL_BYTES);
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines[0], "START RequestId: req-1");
    assert!(lines.contains(&"hello from req-1"));
    assert!(lines.contains(&"oops"));
    assert!(lines.contains(&"partial"));
    assert_eq!(lines[lines.len() - 2], "END RequestId: req-1");
    assert_eq!(lines[lines.len() - 1], report_msg);
    assert!(!tail.contains("before") && !tail.contains("after"));
    assert!(tail.ends_with('\n'));
    assert_eq!(
        tail2,
        format!(
            "START RequestId: req-2\nsecond\nEND RequestId: req-2\n{}\n",
            report_line("req-2", &report())
        )
    );
    assert_eq!(unbase64(&base64(tail.as_bytes())), tail.as_bytes());
}

#[tokio::test]
async fn tail_is_bounded_to_4k() {
    let buf = Buf::default();
    let _g = tracing::subscriber::set_default(json_subscriber(buf.clone()));
    let (mut child, out, err) = Puppet::spawn();
    let log = InstanceLog::start(out, err, labels("i-tail")).unwrap();
    log.begin("r");
    let many: Vec<String> = (0..600).map(|i| format!("o:line €{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    child.run(&many).await;
    let tail = log.end("r", report());
    assert!(tail.len() <= TAIL_BYTES, "{}", tail.len());
    assert!(tail.len() > TAIL_BYTES - 100);
    assert!(tail.contains("line €599\nEND RequestId: r\nReport RequestId: r "));
    assert!(!tail.contains("START"));
}

#[tokio::test]
async fn concurrent_invocations_are_not_attributed() {
    let buf = Buf::default();
    let _g = tracing::subscriber::set_default(json_subscriber(buf.clone()));
    let (mut child, out, err) = Puppet::spawn();
    let log = InstanceLog::start(out, err, labels("i-conc")).unwrap();
    log.begin("a");
    child.run(&["o:only a"]).await;
    log.begin("b");
    child.run(&["o:both", "p:half-"]).await;
    let tail_a = log.end("a", report());
    child.run(&["o:line"]).await;
    let tail_b = log.end("b", report());

    let recs = buf.wait_for("END RequestId: b").await;
    assert_eq!(find(&recs, "only a")["request_id"], "a");
    assert!(find(&recs, "both").get("request_id").is_none());
    // The context changed from "none" to b at END a: the partial line written while
    // both ran is emitted unattributed, the rest of it is b's.
    assert!(find(&recs, "half-").get("request_id").is_none());
    assert_eq!(find(&recs, "line")["request_id"], "b");
    assert_eq!(find(&recs, "START RequestId: b")["request_id"], "b");
    assert_eq!(find(&recs, "END RequestId: a")["request_id"], "a");
    assert!(tail_a.contains("only a\n"));
    assert!(!tail_a.contains("both") && !tail_b.contains("both"));
    assert!(tail_b.starts_with("START RequestId: b\n"));
    assert!(tail_b.contains("END RequestId: b\n"));
}

#[tokio::test]
async fn long_lines_are_cut_into_16k_records() {
    let buf = Buf::default();
    let _g = tracing::subscriber::set_default(json_subscriber(buf.clone()));
    let (mut child, out, err) = Puppet::spawn();
    let log = InstanceLog::start(out, err, labels("i-long")).unwrap();
    log.begin("r");
    // 100 KiB of ASCII, then 102,402 bytes of a 3-byte character.
    child.run(&["big:102400:x", "big:34134:€", "o:short"]).await;
    log.end("r", report());
    let recs = buf.wait_for("END RequestId: r").await;
    let lines: Vec<&str> = recs
        .iter()
        .filter(|r| r["stream"] == "stdout")
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    let xs: Vec<usize> = lines
        .iter()
        .filter(|l| l.starts_with('x'))
        .map(|l| l.len())
        .collect();
    assert_eq!(xs, [16384, 16384, 16384, 16384, 16384, 16384, 4096]);
    let euros: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with('€'))
        .collect();
    assert_eq!(euros.len(), 7);
    assert!(euros
        .iter()
        .all(|l| l.len() <= MAX_LINE && !l.contains('\u{fffd}')));
    assert_eq!(euros.concat(), "€".repeat(34134));
    assert_eq!(lines.last(), Some(&"short"));
    assert!(recs
        .iter()
        .filter(|r| r["stream"] == "stdout")
        .all(|r| r["request_id"] == "r"));
}

#[tokio::test]
async fn end_is_answered_after_the_instance_is_gone() {
    let buf = Buf::default();
    let _g = tracing::subscriber::set_default(json_subscriber(buf.clone()));
    let mut child = Cmd::new("sh")
        .args(["-c", "read x; echo \"got $x\"; printf 'no newline' >&2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = OwnedFd::from(child.stdout.take().unwrap());
    let err = OwnedFd::from(child.stderr.take().unwrap());
    let log = InstanceLog::start(out, err, labels("i-gone")).unwrap();
    log.begin("r");
    writeln!(child.stdin.take().unwrap(), "it").unwrap();
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let tail = log.end("r", report());
    assert!(
        tail.contains("got it\n") && tail.contains("no newline\n"),
        "{tail}"
    );
    let tail = log.end("late", report());
    assert!(tail.starts_with("END RequestId: late\n"));
    let recs = buf.wait_for("END RequestId: late").await;
    assert_eq!(find(&recs, "no newline")["stream"], "stderr");
}

/// A writer that is slow (like a congested stdout) and keeps nothing but counts.
#[derive(Clone, Default)]
struct SlowCounter(Arc<Counts>);

#[derive(Default)]
struct Counts {
    lines: AtomicU64,
    dropped: AtomicU64,
    reports: AtomicU64,
}

impl io::Write for SlowCounter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let v: Value = serde_json::from_slice(b).expect("one record per write");
        let m = v["message"].as_str().unwrap();
        if v["stream"] == "stdout" {
            self.0.lines.fetch_add(1, Ordering::Relaxed);
        } else if let Some(n) = m.strip_suffix(" lines of output dropped") {
            self.0
                .dropped
                .fetch_add(n.parse().unwrap(), Ordering::Relaxed);
        } else if m.starts_with("Report RequestId: flood ") {
            self.0.reports.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_micros(100));
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SlowCounter {
    type Writer = SlowCounter;
    fn make_writer(&'a self) -> SlowCounter {
        self.clone()
    }
}

fn vm_hwm_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_neither_blocks_nor_grows_memory() {
    let counts = SlowCounter::default();
    let _g = tracing::subscriber::set_default(json_subscriber(counts.clone()));
    let hwm_before = vm_hwm_kb();
    // 500,000 lines of 100 bytes = 50 MB, as fast as the child can write them.
    let line = "x".repeat(99);
    let mut child = Cmd::new("sh")
        .args(["-c", &format!("yes {line} | head -c 50000000")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = OwnedFd::from(child.stdout.take().unwrap());
    let err = OwnedFd::from(child.stderr.take().unwrap());
    let started = Instant::now();
    let log = InstanceLog::start(out, err, labels("i-flood")).unwrap();
    log.begin("mid-0");
    let waiter = tokio::task::spawn_blocking(move || child.wait());
    // Invocations keep beginning and ending during the flood, without long waits.
    let mut slowest = Duration::ZERO;
    let mut k = 0;
    while !waiter.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        let tail = log.end(&format!("mid-{k}"), report());
        k += 1;
        log.begin(&format!("mid-{k}"));
        slowest = slowest.max(t.elapsed());
        assert!(tail.len() <= TAIL_BYTES);
    }
    let status = waiter.await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(status.success());
    // Emitting 500,000 records at >= 100 us each would take >= 50 s.
    assert!(took < Duration::from_secs(10), "child took {took:?}");
    log.end(&format!("mid-{k}"), report());
    log.begin("flood");
    let tail = log.end("flood", report());
    assert!(tail.starts_with("START RequestId: flood\nEND RequestId: flood\n"));
    // ~1 ms in release builds; unoptimised line splitting is far slower.
    let limit = Duration::from_millis(if cfg!(debug_assertions) { 1000 } else { 50 });
    assert!(slowest < limit, "begin/end took {slowest:?}");

    let deadline = Instant::now() + Duration::from_secs(30);
    while counts.0.reports.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no Report");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lines = counts.0.lines.load(Ordering::Relaxed);
    let dropped = counts.0.dropped.load(Ordering::Relaxed);
    assert!(dropped > 0, "nothing dropped");
    // Each begin/end flushes a partial line, so a line may have become two records.
    let records = lines + dropped;
    assert!(
        (500_000..=500_000 + 2 * (k as u64 + 1)).contains(&records),
        "lines {lines} dropped {dropped}"
    );
    assert!(log.peak_queued_bytes() <= QUEUE_BYTES + MAX_LINE);
    let grown_kb = vm_hwm_kb().saturating_sub(hwm_before);
    eprintln!(
        "flood: child {took:?}, {lines} emitted, {dropped} dropped, VmHWM +{grown_kb} kB, \
         {k} begin/end pairs, slowest {slowest:?}"
    );
    assert!(grown_kb < 16 * 1024, "VmHWM grew by {grown_kb} kB");
}
