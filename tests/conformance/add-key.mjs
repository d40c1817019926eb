// Node preload for the MCP conformance harness (`node --import ./add-key.mjs harness.js ...`).
//
// The harness cannot be told to send extra headers, but the gateway's per-server routes require
// its key. This adds `x-mcp-gateway-key: $MCP_GATEWAY_KEY` to every request whose URL starts with
// `$MCP_GATEWAY_ORIGIN` (e.g. http://127.0.0.1:4000) and leaves all other requests untouched.
// It is a limit of the test harness, not a mode of the gateway.
//
// Three request paths are patched: `globalThis.fetch` (the SDK's Streamable HTTP client and most
// scenarios), Node's `http.request` (raw requests, e.g. http-header-validation) and the npm
// `undici` package's `request` (e.g. dns-rebinding-protection). The harness imports `http` and
// `undici` (CommonJS) by their module objects or names, so replacing the functions on those
// objects before the harness is loaded is what the harness then sees.
import http from "node:http";
import { createRequire } from "node:module";

const origin = process.env.MCP_GATEWAY_ORIGIN;
const key = process.env.MCP_GATEWAY_KEY || "sk-conformance-0001";
const header = "x-mcp-gateway-key";

function targetsGateway(url) {
  if (!origin) return false;
  const s = typeof url === "string" ? url : url instanceof URL ? url.href : url?.url ?? String(url);
  return s === origin || s.startsWith(origin + "/");
}

if (origin) {
  const realFetch = globalThis.fetch;
  globalThis.fetch = function fetchWithGatewayKey(input, init) {
    if (!targetsGateway(input)) return realFetch(input, init);
    const base = init?.headers ?? (input instanceof Request ? input.headers : undefined);
    const headers = new Headers(base);
    headers.set(header, key);
    return realFetch(input, { ...init, headers });
  };

  // http.request(url[, options][, cb]) or http.request(options[, cb]).
  const realHttpRequest = http.request;
  http.request = function requestWithGatewayKey(...args) {
    const first = args[0];
    let url;
    if (typeof first === "string" || first instanceof URL) url = first;
    else if (first && typeof first === "object") {
      const host = first.hostname ?? first.host ?? "localhost";
      url = `${first.protocol ?? "http:"}//${host}${first.port ? `:${first.port}` : ""}${first.path ?? "/"}`;
    }
    if (!url || !targetsGateway(url)) return realHttpRequest.apply(this, args);
    const at = typeof first === "string" || first instanceof URL ? 1 : 0;
    if (at === 1 && (typeof args[1] !== "object" || args[1] === null)) args.splice(1, 0, {});
    args[at] = { ...args[at], headers: { ...(args[at].headers || {}), [header]: key } };
    return realHttpRequest.apply(this, args);
  };

  // undici's request(url, { headers }): headers may be an object, a flat array, pairs or absent.
  try {
    const req = createRequire(process.argv[1] ?? import.meta.url);
    const undici = req("undici");
    const realRequest = undici.request;
    undici.request = function requestWithGatewayKey(url, opts = {}, ...rest) {
      if (!targetsGateway(url)) return realRequest.call(this, url, opts, ...rest);
      let headers = opts.headers;
      if (Array.isArray(headers))
        headers = Array.isArray(headers[0]) ? [...headers, [header, key]] : [...headers, header, key];
      else headers = { ...(headers || {}), [header]: key };
      return realRequest.call(this, url, { ...opts, headers }, ...rest);
    };
  } catch {
    // the harness has no undici of its own: fetch is all there is to patch
  }
}
