//! A bounded loopback load test: M2M `tools/call` through the gateway, through a bare forwarder
//! (a minimal hyper reverse proxy with no OAuth: the least any proxy on this machine costs) and
//! directly to the mock.
//!
//! ```text
//! cargo run --release -p mcp-oauth-tokio --example gateway_load -- [--sequential N] [--concurrent N] [--workers N]
//! ```
//!
//! The mock upstream runs in this process; the gateway and the bare forwarder each run in a child
//! process (this same binary started with `--gateway CONFIG` or `--forwarder UPSTREAM`), so their
//! start-up time, RSS and CPU time are their own. The gateway logs its per-request line to stderr
//! (discarded) as `serve` does by default. CPU per call is the child's user + system time over a
//! phase (from `/proc`), divided by the calls. The direct calls use
//! a token fetched beforehand; the gateway calls use its M2M token cache. Every phase is bounded by
//! its call count and a 120 s deadline; the child stops when its stdin closes. Prints a Markdown
//! table of p50/p99 latency, calls/s, upstream requests per call, token fetches, RSS and start-up.
#![allow(clippy::print_stdout, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mcp_oauth_tokio::mock::{MockConfig, MockUpstream};
use mcp_oauth_tokio::server::{ServerOptions, gateway_state, serve};

const KEY: &str = "sk-load-test-gateway-key";
const BODY: &str =
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|arg| arg == "--gateway") {
        let path = args.get(position + 1).ok_or("--gateway needs a config path")?;
        return gateway_child(path);
    }
    if let Some(position) = args.iter().position(|arg| arg == "--forwarder") {
        let upstream = args.get(position + 1).ok_or("--forwarder needs the upstream URL")?;
        return forwarder_child(upstream);
    }
    let number = |flag: &str, default: usize| {
        args.iter()
            .position(|arg| arg == flag)
            .and_then(|position| args.get(position + 1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let sequential = number("--sequential", 3_000);
    let concurrent = number("--concurrent", 20_000);
    let workers = number("--workers", 50);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(sequential, concurrent, workers))
}

/// The gateway process: serve the config on 127.0.0.1:0, print the address, stop when stdin closes.
fn gateway_child(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    let loaded = mcp_oauth_core::config::load_yaml(&text, &|_| None)
        .map_err(|errors| format!("{} config error(s)", errors.errors.len()))?;
    // The per-request log line, as `serve` writes it by default: batched, every 100 ms (stderr is
    // discarded by the parent).
    let log = mcp_oauth_runtime::log::BufferedLog::stderr(Duration::from_millis(100));
    let writer = log.writer();
    let _already = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .with_target(false)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        // A loopback listen address pins the public origin, as `mcp-oauth serve` does, so the
        // interactive server (the OAuth flood's target) is served.
        let mut config = loaded.config;
        config.settings.origin.pin_listen_address(listener.local_addr()?);
        let state = Arc::new(gateway_state(config, ServerOptions::default())?);
        println!("LISTENING {}", listener.local_addr()?);
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).map(|read| read > 0).unwrap_or(false) {}
        });
        serve(listener, state, async {
            let _ = stdin_closed.await;
        })
        .await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

/// The floor: a minimal hyper reverse proxy that sends every request to `upstream` with its
/// headers over one keep-alive pool and streams the answer back. No admission, no token, no log.
fn forwarder_child(upstream: &str) -> Result<(), Box<dyn std::error::Error>> {
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    let upstream: http::Uri = upstream.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        println!("LISTENING {}", listener.local_addr()?);
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).map(|read| read > 0).unwrap_or(false) {}
            std::process::exit(0);
        });
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (client, upstream) = (client.clone(), upstream.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                    let client = client.clone();
                    *request.uri_mut() = upstream.clone();
                    request.headers_mut().remove(http::header::HOST);
                    async move {
                        let response = client.request(request).await?;
                        Ok::<_, hyper_util::client::legacy::Error>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

/// What a process has spent so far: CPU time, read and write system calls, context switches.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    cpu: Duration,
    syscalls: u64,
    switches: u64,
}

impl Usage {
    /// `pid`'s usage so far: [`cpu_time`], `syscr + syscw` from `/proc/{pid}/io` (read- and
    /// write-like calls: `read`, `recvfrom`, `write`, `sendto`, ...) and the voluntary and
    /// involuntary context switches of all its threads.
    fn of(pid: u32) -> Self {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let field = |text: &str, name: &str| {
            text.lines()
                .filter_map(|line| line.strip_prefix(name))
                .filter_map(|rest| rest.trim_start_matches(':').trim().parse::<u64>().ok())
                .sum::<u64>()
        };
        let syscalls = field(&io, "syscr") + field(&io, "syscw");
        let mut switches = 0;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
                switches +=
                    field(&status, "voluntary_ctxt_switches") + field(&status, "nonvoluntary_ctxt_switches");
            }
        }
        Self { cpu: cpu_time(pid), syscalls, switches }
    }

    fn since(self, earlier: Self) -> Self {
        Self {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            syscalls: self.syscalls.saturating_sub(earlier.syscalls),
            switches: self.switches.saturating_sub(earlier.switches),
        }
    }
}

/// User + system CPU time of process `pid` so far (from `/proc/{pid}/stat`, in clock ticks of
/// 10 ms on Linux).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|value| value.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Starts this binary as a child with `args`, waits for its `LISTENING` line; the guard stops it.
async fn spawn_child(
    args: &[&std::ffi::OsStr],
) -> Result<(ChildGuard, u32, String), Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let pid = child.id();
    let guard = ChildGuard(child);
    let address = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        line.trim().strip_prefix("LISTENING ").map(str::to_owned)
    })
    .await?
    .ok_or("the child did not start")?;
    Ok((guard, pid, address))
}

struct Phase {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Phase {
    fn percentile(&self, fraction: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

async fn one_call(client: &HttpClient, url: &str, headers: &[(&'static str, String)]) -> Duration {
    let started = Instant::now();
    let mut request = Request::builder().method(Method::POST).uri(url);
    request = request.header("content-type", "application/json").header("accept", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request.body(Full::new(Bytes::from_static(BODY.as_bytes()))).expect("request");
    let response = client.request(request).await.expect("an answer");
    assert_eq!(response.status(), StatusCode::OK, "every call succeeds");
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert!(body.starts_with(b"{\"jsonrpc\""), "a JSON-RPC answer");
    started.elapsed()
}

/// Strangers' OAuth traffic while the M2M calls run: `workers` tasks registering clients and
/// asking for consent pages in a loop until `stop`; returns (requests, 429 answers).
async fn oauth_flood(
    client: HttpClient,
    origin: String,
    workers: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (u64, u64) {
    use std::sync::atomic::Ordering;
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (client, origin, stop) = (client.clone(), origin.clone(), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let (mut sent, mut limited) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let request = if worker % 2 == 0 {
                    Request::builder()
                        .method(Method::POST)
                        .uri(format!("{origin}/notes/register"))
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(br#"{"redirect_uris":["http://127.0.0.1:9/cb"]}"#)))
                } else {
                    Request::builder()
                        .uri(format!("{origin}/notes/authorize?client_id=forged&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb"))
                        .body(Full::new(Bytes::new()))
                };
                let Ok(request) = request else { break };
                if let Ok(response) = client.request(request).await {
                    sent += 1;
                    limited += u64::from(response.status() == StatusCode::TOO_MANY_REQUESTS);
                    let _ = response.into_body().collect().await;
                }
            }
            (sent, limited)
        }));
    }
    let mut totals = (0, 0);
    for task in tasks {
        if let Ok((sent, limited)) = task.await {
            totals = (totals.0 + sent, totals.1 + limited);
        }
    }
    totals
}

async fn phase(
    client: &HttpClient,
    url: &str,
    headers: &[(&'static str, String)],
    calls: usize,
    workers: usize,
) -> Phase {
    let started = Instant::now();
    let per_worker = calls / workers.max(1);
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let client = client.clone();
        let url = url.to_owned();
        let headers = headers.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                latencies.push(one_call(&client, &url, &headers).await);
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(calls);
    for task in tasks {
        latencies.extend(task.await.expect("worker"));
    }
    Phase { latencies, elapsed: started.elapsed() }
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run(sequential: usize, concurrent: usize, workers: usize) -> Result<(), Box<dyn std::error::Error>> {
    tokio::time::timeout(Duration::from_secs(120), measure(sequential, concurrent, workers))
        .await
        .map_err(|_| "the load test took longer than 120 s")?
}

async fn measure(
    sequential: usize,
    concurrent: usize,
    workers: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mock = MockUpstream::start(MockConfig::default()).await?;
    let handle = mock.handle();
    let config = MockConfig::default();
    let yaml = format!(
        "general_settings:\n  master_key: {KEY}\nmcp_servers:\n  reports:\n    url: {origin}/mcp\n    auth_type: oauth2\n    oauth2_flow: client_credentials\n    client_id: {id}\n    client_secret: {secret}\n    token_url: {origin}/token\n  notes:\n    url: {origin}/mcp\n    auth_type: oauth2\n    oauth2_flow: authorization_code\n    client_id: {id}\n    client_secret: {secret}\n    authorization_url: {origin}/authorize\n    token_url: {origin}/token\n",
        origin = mock.origin(),
        id = config.client_id,
        secret = config.client_secret,
    );
    let path = std::env::temp_dir().join(format!("mcp-oauth-load-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml)?;

    let started = Instant::now();
    let (guard, pid, address) = spawn_child(&["--gateway".as_ref(), path.as_os_str()]).await?;
    let (forwarder_guard, forwarder_pid, forwarder_address) =
        spawn_child(&["--forwarder".as_ref(), mock.mcp_url().as_ref()]).await?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
    let health = format!("http://{address}/health");
    loop {
        let request = Request::get(&health).body(Full::new(Bytes::new()))?;
        if let Ok(response) = client.request(request).await
            && response.status() == StatusCode::OK
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let startup = started.elapsed();
    let _ = std::fs::remove_file(&path);
    let (rss_idle, _) = rss_kib(pid);

    let direct_url = mock.mcp_url();
    let gateway_url = format!("http://{address}/reports/mcp");
    let forwarder_url = format!("http://{forwarder_address}/mcp");
    let token = handle.issue_access_token();
    let direct_headers = vec![("authorization", format!("Bearer {token}"))];
    let gateway_headers = vec![("x-mcp-gateway-key", KEY.to_owned())];

    // Warm up both paths (connections, the gateway's token) outside the measurement.
    let before_warmup = handle.counters();
    phase(&client, &direct_url, &direct_headers, 200, 10).await;
    phase(&client, &gateway_url, &gateway_headers, 200, 10).await;
    phase(&client, &forwarder_url, &direct_headers, 200, 10).await;
    let tokens_at_warmup = handle.counters().token_requests_for("client_credentials")
        - before_warmup.token_requests_for("client_credentials");

    let mut rows = Vec::new();
    let mut cpu = Vec::new();
    let mut gateway_calls = 0;
    let mut upstream_for_gateway = 0;
    for (label, calls, concurrency) in [("sequential", sequential, 1), ("concurrent", concurrent, workers)] {
        let direct = phase(&client, &direct_url, &direct_headers, calls, concurrency).await;
        let forwarder_usage = Usage::of(forwarder_pid);
        let forwarded = phase(&client, &forwarder_url, &direct_headers, calls, concurrency).await;
        let forwarder_usage = Usage::of(forwarder_pid).since(forwarder_usage);
        let before = handle.counters();
        let gateway_usage = Usage::of(pid);
        let through = phase(&client, &gateway_url, &gateway_headers, calls, concurrency).await;
        let gateway_usage = Usage::of(pid).since(gateway_usage);
        let after = handle.counters();
        gateway_calls += through.latencies.len() as u64;
        upstream_for_gateway +=
            after.mcp_requests.values().sum::<u64>() - before.mcp_requests.values().sum::<u64>();
        cpu.push((
            label,
            concurrency,
            calls,
            gateway_usage,
            forwarder_usage,
            through.rate() / forwarded.rate(),
        ));
        rows.push((label, concurrency, direct, forwarded, through));
    }
    // The same sequential M2M calls while strangers flood the OAuth routes (design §4.8: their
    // per-peer budget answers 429 without touching the MCP path).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = tokio::spawn(oauth_flood(client.clone(), format!("http://{address}"), 4, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let flooded = phase(&client, &gateway_url, &gateway_headers, sequential, 1).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (flood_sent, flood_limited) = flood.await.unwrap_or((0, 0));
    let token_fetches = handle.counters().token_requests_for("client_credentials")
        - before_warmup.token_requests_for("client_credentials");
    let (rss, rss_peak) = rss_kib(pid);
    drop(guard);
    drop(forwarder_guard);

    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    println!("| phase | path | calls | p50 ms | p99 ms | calls/s |");
    println!("|---|---|---:|---:|---:|---:|");
    for (label, concurrency, direct, forwarded, through) in &rows {
        for (path, phase) in [("direct", direct), ("bare forwarder", forwarded), ("gateway", through)] {
            println!(
                "| {label} (×{concurrency}) | {path} | {} | {:.3} | {:.3} | {:.0} |",
                phase.latencies.len(),
                ms(phase.percentile(0.5)),
                ms(phase.percentile(0.99)),
                phase.rate()
            );
        }
    }
    println!();
    for (label, concurrency, direct, _, through) in &rows {
        println!(
            "{label} (×{concurrency}): added p50 {:.3} ms, added p99 {:.3} ms, gateway throughput {:.0}% of direct",
            ms(through.percentile(0.5)) - ms(direct.percentile(0.5)),
            ms(through.percentile(0.99)) - ms(direct.percentile(0.99)),
            100.0 * through.rate() / direct.rate()
        );
    }
    for (label, concurrency, calls, gateway, forwarder, throughput) in &cpu {
        let per_call = |cpu: &Duration| cpu.as_secs_f64() * 1000.0 / (*calls).max(1) as f64;
        let count = |count: u64| count as f64 / (*calls).max(1) as f64;
        println!(
            "{label} (×{concurrency}): CPU per call gateway {:.3} ms, bare forwarder {:.3} ms (ratio {:.2}); gateway throughput {:.0}% of the bare forwarder's",
            per_call(&gateway.cpu),
            per_call(&forwarder.cpu),
            gateway.cpu.as_secs_f64() / forwarder.cpu.as_secs_f64().max(f64::MIN_POSITIVE),
            100.0 * throughput
        );
        println!(
            "{label} (×{concurrency}): per call, read/write system calls gateway {:.2}, bare forwarder {:.2}; context switches gateway {:.2}, bare forwarder {:.2}",
            count(gateway.syscalls),
            count(forwarder.syscalls),
            count(gateway.switches),
            count(forwarder.switches)
        );
    }
    if let Some((_, _, _, _, quiet)) = rows.first() {
        println!(
            "sequential M2M through the gateway under an OAuth flood ({flood_sent} register/authorize requests, {flood_limited} answered 429): p50 {:.3} ms, p99 {:.3} ms (without: p50 {:.3} ms, p99 {:.3} ms)",
            ms(flooded.percentile(0.5)),
            ms(flooded.percentile(0.99)),
            ms(quiet.percentile(0.5)),
            ms(quiet.percentile(0.99))
        );
    }
    println!(
        "upstream MCP requests per gateway call: {:.3} ({upstream_for_gateway} for {gateway_calls})",
        upstream_for_gateway as f64 / gateway_calls.max(1) as f64
    );
    println!("token fetches: {token_fetches} in the whole run ({tokens_at_warmup} during warm-up)");
    println!(
        "gateway RSS: {:.1} MiB idle after start, {:.1} MiB after the load, peak {:.1} MiB",
        rss_idle as f64 / 1024.0,
        rss as f64 / 1024.0,
        rss_peak as f64 / 1024.0
    );
    println!("gateway start-up (spawn to first /health 200): {:.1} ms", ms(startup));
    Ok(())
}
