//! The gateway with a durable or shared grant store (design §4.10, issue 12): grants that survive
//! a restart (SQLite), replicas that act as one gateway (Redis), and a store outage that fails
//! closed and loses nothing.
//!
//! The Redis scenarios start their own `redis-server` on a loopback port
//! ([`RedisServer`](mcp_oauth_runtime::testing::RedisServer)); without one on `PATH` they are
//! skipped with a notice, except under `CI`, where that is a failure.

use futures_util::future::join_all;
use mcp_oauth_runtime::testing::RedisServer;

use super::*;

/// Sealing keys every replica of a test shares (design §4.10: a durable store needs them).
const SEALING_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// `general_settings` lines for the store at `url`.
fn durable(url: &str) -> Setup {
    Setup {
        general: Some(format!("  mcp_oauth_store: {url}\n  sealing_keys: [{SEALING_KEY}]\n")),
        ..Setup::default()
    }
}

/// A fresh path under the temporary directory, removed on drop (with SQLite's WAL files, if any).
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        Self(std::env::temp_dir().join(format!("mcp-oauth-{name}-{}-{nanos}.db", std::process::id())))
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.0.display())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

fn redis_url(redis: &RedisServer) -> String {
    let setting = redis.setting();
    format!("redis://{}:{}/{}", setting.host, setting.port, setting.db)
}

fn refresh_form(signed: &SignedIn, refresh: &str) -> String {
    format!("grant_type=refresh_token&refresh_token={refresh}&client_id={}", urlencode(&signed.client_id))
}

fn signal(redis: &RedisServer, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &redis.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal}");
}

/// With `sqlite://`, a restart keeps every grant: the client's gateway access and refresh tokens
/// work after it, `/health` reports the store, and a code used before the restart is still used.
pub async fn grants_survive_a_restart_with_the_sqlite_store<H: GatewayHost>() {
    bounded(async {
        let database = TempFile::new("restart");
        let mut gateway = start::<H>(durable(&database.url())).await;
        let signed = gateway.sign_in("http://127.0.0.1:9/cb").await;
        let bearer = format!("Bearer {}", signed.access);
        assert_eq!(gateway.echo("notes", &[("authorization", bearer.as_str())]).await.status, StatusCode::OK);

        gateway.restart::<H>().await;
        let health = gateway.request(Method::GET, "/health", &[], "").await;
        assert_eq!(health.status, StatusCode::OK, "{}", health.body);
        assert_eq!(health.json()["store"], "ok");
        let after = gateway.echo("notes", &[("authorization", bearer.as_str())]).await;
        assert_eq!(after.status, StatusCode::OK, "the access token outlives the process: {}", after.body);
        let rotated = gateway.token(&refresh_form(&signed, &signed.refresh)).await;
        assert_eq!(rotated.status, StatusCode::OK, "the refresh token too: {}", rotated.body);
        let new_access = rotated.json()["access_token"].as_str().expect("access_token").to_owned();

        // The code's single-use mark survived as well: its replay is refused and ends the grant.
        gateway.restart::<H>().await;
        let replay = gateway.token(&signed.code_form).await;
        assert_eq!(replay.status, StatusCode::BAD_REQUEST, "{}", replay.body);
        let bearer = format!("Bearer {new_access}");
        assert_eq!(
            gateway.echo("notes", &[("authorization", bearer.as_str())]).await.status,
            StatusCode::UNAUTHORIZED
        );
    })
    .await;
}

/// Two gateways sharing a Redis act as one: each step of a sign-in lands on the other replica; 20
/// concurrent calls across both on an expired upstream token cause one upstream refresh; and a
/// refresh token two generations old, replayed on the other replica, is refused and ends the grant.
pub async fn replicas_sharing_redis_act_as_one_gateway<H: GatewayHost>() {
    let Some(redis) = RedisServer::start() else { return };
    bounded(async {
        let first = start::<H>(durable(&redis_url(&redis))).await;
        let second = first.replica::<H>().await;
        replicas_act_as_one(&first, &second).await;
    })
    .await;
}

/// What two replicas on one store must show, wherever they run.
async fn replicas_act_as_one(first: &Gateway, second: &Gateway) {
    let signed = sign_in_via(&[first, second], "notes", "http://127.0.0.1:9/cb").await;
    let bearer = format!("Bearer {}", signed.access);
    for replica in [first, second] {
        let answer = replica.echo("notes", &[("authorization", bearer.as_str())]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }

    first.mock.handle().revoke_access_tokens();
    let refreshes = || first.mock.handle().counters().token_requests_for("refresh_token");
    let before = refreshes();
    let calls = (0..20).map(|n| {
        let replica = if n % 2 == 0 { first } else { second };
        let bearer = bearer.clone();
        async move { replica.echo("notes", &[("authorization", bearer.as_str())]).await }
    });
    for answer in join_all(calls).await {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    assert_eq!(refreshes() - before, 1, "one upstream refresh for 20 calls on two replicas");

    let once = first.token(&refresh_form(&signed, &signed.refresh)).await;
    assert_eq!(once.status, StatusCode::OK, "{}", once.body);
    let once_refresh = once.json()["refresh_token"].as_str().expect("refresh_token").to_owned();
    let twice = second.token(&refresh_form(&signed, &once_refresh)).await;
    assert_eq!(twice.status, StatusCode::OK, "{}", twice.body);
    let newest = twice.json()["access_token"].as_str().expect("access_token").to_owned();
    let replay = second.token(&refresh_form(&signed, &signed.refresh)).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST, "two generations old: {}", replay.body);
    let bearer = format!("Bearer {newest}");
    for replica in [first, second] {
        let ended = replica.echo("notes", &[("authorization", bearer.as_str())]).await;
        assert_eq!(ended.status, StatusCode::UNAUTHORIZED, "the replay ended the grant everywhere");
    }
}

/// Starts one gateway process: `mcp-oauth serve --config CONFIG --listen ADDRESS` with
/// `PROXY_BASE_URL` set to the public origin the replicas share.
pub type SpawnGateway<'a> =
    &'a (dyn Fn(&std::path::Path, std::net::SocketAddr, &str) -> std::process::Child + Sync);

/// Child processes killed on drop, so a failed assertion leaves nothing running.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// [`replicas_sharing_redis_act_as_one_gateway`] with each replica its own operating-system
/// process (`spawn`), sharing a `redis-server`, the mock upstream and one configuration file.
pub async fn two_gateway_processes_sharing_redis_act_as_one(spawn: SpawnGateway<'_>) {
    let Some(redis) = RedisServer::start() else { return };
    bounded(async {
        let mock = Arc::new(MockUpstream::start(MockConfig::default()).await.expect("mock starts"));
        let general = durable(&redis_url(&redis)).general.unwrap_or_default();
        let yaml = servers_yaml(mock.origin()).replacen(
            "general_settings:\n",
            &format!("general_settings:\n{general}"),
            1,
        );
        let file = TempFile::new("replicas-config");
        std::fs::write(&file.0, &yaml).expect("write the configuration");
        let listens: Vec<std::net::SocketAddr> = (0..2)
            .map(|_| {
                let probe = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
                probe.local_addr().expect("address")
            })
            .collect();
        let public = format!("http://{}", listens[0]);
        let _children = Children(listens.iter().map(|listen| spawn(&file.0, *listen, &public)).collect());
        let env = |name: &str| (name == "PROXY_BASE_URL").then(|| public.clone());
        let config =
            load_yaml(&yaml, &env).unwrap_or_else(|errors| panic!("config: {:?}", errors.errors)).config;
        let mut replicas = Vec::new();
        for listen in &listens {
            let replica = Gateway {
                mock: Arc::clone(&mock),
                origin: format!("http://{listen}"),
                listen: *listen,
                config: config.clone(),
                options: ServerOptions::default(),
                fetches: Box::new(|| 0),
                stop: None,
                done: None,
                client: Client::builder(TokioExecutor::new()).build_http(),
            };
            replica.wait_until_healthy().await;
            replicas.push(replica);
        }
        replicas_act_as_one(&replicas[0], &replicas[1]).await;
    })
    .await;
}

impl Gateway {
    /// Polls `/health` until it answers 200 (a process starting up), at most 10 s.
    async fn wait_until_healthy(&self) {
        for _ in 0..100 {
            if let Ok(Ok(health)) =
                tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(self.listen))
                    .await
            {
                drop(health);
                if self.request(Method::GET, "/health", &[], "").await.status == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the gateway at {} did not become healthy", self.origin);
    }
}

/// Redis stopped mid-run (SIGSTOP): interactive calls, refreshes and `/health` answer 503 with the
/// reason, machine-to-machine calls go on (the store is not on their path), nothing panics; once
/// Redis runs again the grant is still there.
pub async fn a_redis_outage_fails_closed_and_loses_no_grant<H: GatewayHost>() {
    let Some(redis) = RedisServer::start() else { return };
    bounded(async {
        let gateway = start::<H>(durable(&redis_url(&redis))).await;
        let signed = gateway.sign_in("http://127.0.0.1:9/cb").await;
        let bearer = format!("Bearer {}", signed.access);
        assert_eq!(gateway.echo("notes", &[("authorization", bearer.as_str())]).await.status, StatusCode::OK);

        signal(&redis, "-STOP");
        let call = gateway.echo("notes", &[("authorization", bearer.as_str())]).await;
        assert_eq!(call.status, StatusCode::SERVICE_UNAVAILABLE, "{}", call.body);
        assert!(call.body.contains("store"), "the reason names the store: {}", call.body);
        let health = gateway.request(Method::GET, "/health", &[], "").await;
        assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE, "{}", health.body);
        let refresh = gateway.token(&refresh_form(&signed, &signed.refresh)).await;
        assert_eq!(refresh.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refresh.body);
        let m2m = gateway.echo("reports", &keyed()).await;
        assert_eq!(m2m.status, StatusCode::OK, "M2M calls do not need the store: {}", m2m.body);

        signal(&redis, "-CONT");
        let health = gateway.request(Method::GET, "/health", &[], "").await;
        assert_eq!(health.status, StatusCode::OK, "{}", health.body);
        let back = gateway.echo("notes", &[("authorization", bearer.as_str())]).await;
        assert_eq!(back.status, StatusCode::OK, "the grant is still there: {}", back.body);
        let rotated = gateway.token(&refresh_form(&signed, &signed.refresh)).await;
        assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    })
    .await;
}
