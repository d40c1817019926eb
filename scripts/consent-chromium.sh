#!/usr/bin/env bash
# Drives the gateway's consent page (design §4.8) in Debian's headless Chromium, outside CI:
# starts `target/debug/mcp-oauth demo` (mock upstream + gateway on 127.0.0.1), then runs
# scripts/consent-chromium.mjs against it. Everything it starts is stopped on exit, and the whole
# run is bounded by `timeout` (CONSENT_TIMEOUT seconds, 300 by default).
#
# Needs, once (see docs/gateway.md, "The consent page in a real browser"):
#   apt-get install -y chromium
#   cargo build -p mcp-oauth-cli
#   mkdir -p target/chromium-tools && (cd target/chromium-tools && npm init -y && npm install playwright-core)
set -euo pipefail

if [[ -z "${CONSENT_CHROMIUM_INNER:-}" ]]; then
  CONSENT_CHROMIUM_INNER=1 exec timeout --kill-after=10 "${CONSENT_TIMEOUT:-300}" bash "$0" "$@"
fi

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
binary="$root/target/debug/mcp-oauth"
[[ -x "$binary" ]] || { echo "consent-chromium: build it first: cargo build -p mcp-oauth-cli" >&2; exit 2; }
[[ -x /usr/bin/chromium ]] || { echo "consent-chromium: apt-get install -y chromium" >&2; exit 2; }
[[ -d "$root/target/chromium-tools/node_modules/playwright-core" ]] || {
  echo "consent-chromium: install playwright-core into target/chromium-tools/ (see the header of this script)" >&2
  exit 2
}

work="$(mktemp -d)"
demo_pid=""
node_pid=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in $node_pid $demo_pid; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

"$binary" demo >"$work/demo.log" 2>&1 &
demo_pid=$!

# The demo walks through its own checks, then prints "Serving until Ctrl-C".
for _ in $(seq 1 120); do
  grep -q "Serving until Ctrl-C" "$work/demo.log" && break
  kill -0 "$demo_pid" 2>/dev/null || { echo "consent-chromium: the demo exited:" >&2; cat "$work/demo.log" >&2; exit 1; }
  sleep 0.5
done
grep -q "Serving until Ctrl-C" "$work/demo.log" || { echo "consent-chromium: the demo did not start serving" >&2; cat "$work/demo.log" >&2; exit 1; }

gateway="$(sed -n 's/^gateway: \(http:\/\/127\.0\.0\.1:[0-9]*\).*/\1/p' "$work/demo.log" | head -n1)"
key="$(sed -n 's/^gateway key: \(sk-demo-[0-9a-f]*\)$/\1/p' "$work/demo.log" | head -n1)"
upstream="$(sed -n 's/^mock upstream [^:]*: \(http:\/\/127\.0\.0\.1:[0-9]*\)$/\1/p' "$work/demo.log" | head -n1)"
if [[ -z "$gateway" || -z "$key" || -z "$upstream" ]]; then
  echo "consent-chromium: cannot read the gateway, key or upstream from the demo's output:" >&2
  cat "$work/demo.log" >&2
  exit 1
fi
echo "demo: gateway $gateway, mock upstream $upstream (pid $demo_pid)"

GATEWAY="$gateway" GATEWAY_KEY="$key" UPSTREAM="$upstream" node "$root/scripts/consent-chromium.mjs" &
node_pid=$!
status=0
wait "$node_pid" || status=$?
node_pid=""
exit "$status"
