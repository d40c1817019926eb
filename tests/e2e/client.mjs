// The client side of the end-to-end test: the MCP TypeScript SDK's own OAuth client
// (Client + StreamableHTTPClientTransport + an in-memory OAuthClientProvider), with a headless
// "browser" made of fetch calls and a cookie jar standing in for the user.
//
//   node client.mjs --mcp <MCP URL> --mode gateway --gateway-key <key> --upstream-issuer <issuer>
//                   [--upstream-client-id <id> --upstream-resource <upstream MCP URL>]
//   node client.mjs --mcp <MCP URL> --mode direct
//
// gateway: the MCP URL is the gateway's /{server}/mcp. The browser meets the gateway's consent page
//          (design §4.8), approves it with the gateway key, goes through the upstream's login and
//          consent, comes back through the gateway's /callback and lands on our redirect URI.
// direct:  the control run. The same SDK client and the same browser against the upstream MCP
//          server and oidc-provider alone: proves the harness before blaming the gateway.
//
// Prints one JSON line {"ok":true,...} and exits 0, or prints "FAIL <step>: ..." with the status,
// location and a body excerpt of the response that broke the rule, and exits 1.

import { parseArgs } from 'node:util';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { auth, UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

const { values: opts } = parseArgs({
  options: {
    mcp: { type: 'string' },
    mode: { type: 'string', default: 'gateway' },
    'gateway-key': { type: 'string' },
    'upstream-issuer': { type: 'string' },
    'upstream-client-id': { type: 'string' },
    'upstream-resource': { type: 'string' },
    // Calls spaced 2.2 s apart, so a gateway whose upstream token lives 1 s
    // (token_storage_ttl_seconds: 1) refreshes it upstream before each.
    'spaced-calls': { type: 'string', default: '0' },
    // --mode browse: only be the user's browser for an authorization URL another client printed
    // (`mcp-oauth connect`): consent, upstream login, callback, then deliver the final redirect.
    authorize: { type: 'string' },
  },
});
if (!opts.mcp || !['gateway', 'direct', 'browse'].includes(opts.mode)) {
  console.error('usage: node client.mjs --mcp URL [--mode gateway|direct] [--gateway-key KEY] [--upstream-issuer URL]');
  process.exit(2);
}
const mcpUrl = new URL(opts.mcp);
const viaGateway = opts.mode === 'gateway' || opts.mode === 'browse';
// Where the SDK asks to be sent back. Nothing listens there: the browser stops at that redirect
// and hands the code over, as a real client's loopback listener would.
const REDIRECT_URL = 'http://127.0.0.1:53682/callback';

// ---------------------------------------------------------------- failure reporting

let currentStep = 'start';
class StepFailure extends Error {}
// What the SDK and the browser sent, most recent last; printed when something fails.
const trace = [];
function record(line) {
  trace.push(line);
  if (trace.length > 60) trace.shift();
}
async function excerpt(response) {
  const body = await response.text().catch(() => '');
  return body.replace(/\s+/g, ' ').slice(0, 300);
}
// Fail the current step, describing the response that broke the rule.
async function fail(message, response) {
  let detail = '';
  if (response) {
    detail = ` [${response.status} ${response.headers.get('content-type') || ''}` +
      `${response.headers.get('location') ? ` location=${response.headers.get('location')}` : ''}] ` +
      `body: ${await excerpt(response)}`;
  }
  throw new StepFailure(`${message}${detail}`);
}
function check(condition, message) {
  if (!condition) throw new StepFailure(message);
}

// The SDK's own HTTP calls, traced (method, URL, status): discovery, registration, token, MCP.
// OAuth answers (not MCP ones) also get a body excerpt: test tokens only, and the answer's shape
// is usually what broke.
const tracingFetch = async (url, init) => {
  const response = await fetch(url, init);
  const oauth = String(url).includes('/.well-known/') || !String(url).endsWith('/mcp');
  const body = oauth ? ` ${(await response.clone().text()).replace(/\s+/g, ' ').slice(0, 200)}` : '';
  record(`sdk ${init?.method || 'GET'} ${url} -> ${response.status}${body}`);
  return response;
};

// ---------------------------------------------------------------- the headless browser

// A cookie jar with a browser's rules where they matter here: cookies belong to the host, not
// to the port (so the gateway's and oidc-provider's cookies on 127.0.0.1 share one jar, as in a
// real browser), Path is matched, Max-Age=0 / past Expires delete.
const jar = new Map(); // `${host}\t${path}\t${name}` -> { name, value, path, host, expires }
function storeCookies(url, response) {
  for (const line of response.headers.getSetCookie()) {
    const [pair, ...attributes] = line.split(';').map((s) => s.trim());
    const eq = pair.indexOf('=');
    if (eq <= 0) continue;
    const cookie = { name: pair.slice(0, eq), value: pair.slice(eq + 1), host: url.hostname, expires: Infinity };
    const dir = url.pathname.slice(0, url.pathname.lastIndexOf('/')) || '/';
    cookie.path = dir;
    for (const attribute of attributes) {
      const [k, v = ''] = attribute.split('=');
      const key = k.toLowerCase();
      if (key === 'path' && v.startsWith('/')) cookie.path = v;
      if (key === 'max-age') cookie.expires = Date.now() + Number(v) * 1000;
      if (key === 'expires' && cookie.expires === Infinity) cookie.expires = Date.parse(v);
    }
    const id = `${cookie.host}\t${cookie.path}\t${cookie.name}`;
    if (cookie.expires <= Date.now()) jar.delete(id);
    else jar.set(id, cookie);
  }
}
// The Set-Cookie lines of a response that set (not delete) a cookie, lower-cased attributes.
function cookiesSet(response) {
  return response.headers.getSetCookie()
    .map((line) => ({ name: line.split('=')[0].trim(), attributes: line.toLowerCase().split(';').map((a) => a.trim()) }))
    .filter((c) => !c.attributes.includes('max-age=0'));
}
function hasAttributes(cookie, wanted) {
  return wanted.every((w) => cookie.attributes.includes(w));
}
function cookieHeader(url) {
  const pathMatches = (p) => url.pathname === p || url.pathname.startsWith(p.endsWith('/') ? p : `${p}/`);
  return [...jar.values()]
    .filter((c) => c.host === url.hostname && c.expires > Date.now() && pathMatches(c.path))
    .sort((a, b) => b.path.length - a.path.length)
    .map((c) => `${c.name}=${c.value}`)
    .join('; ');
}

// One browser request: no automatic redirects (every hop is checked), cookies in and out.
async function browse(url, { method = 'GET', form } = {}) {
  url = new URL(url);
  const headers = { accept: 'text/html' };
  const cookies = cookieHeader(url);
  if (cookies) headers.cookie = cookies;
  let body;
  if (form) {
    // A browser's form POST carries Origin; every form here posts to its own page's origin.
    headers.origin = url.origin;
    headers['content-type'] = 'application/x-www-form-urlencoded';
    body = new URLSearchParams(form).toString();
  }
  const response = await fetch(url, { method, headers, body, redirect: 'manual' });
  storeCookies(url, response);
  record(`browser ${method} ${url.origin}${url.pathname} -> ${response.status}` +
    `${response.headers.get('location') ? ` (${String(response.headers.get('location')).slice(0, 120)})` : ''}`);
  return response;
}

function decodeEntities(text) {
  return text
    .replace(/&quot;/g, '"').replace(/&#39;|&#x27;|&apos;/g, "'")
    .replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
}
function attributesOf(tag) {
  const attributes = {};
  for (const m of tag.matchAll(/([a-zA-Z_:-]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+)))?/g)) {
    attributes[m[1].toLowerCase()] = decodeEntities(m[2] ?? m[3] ?? m[4] ?? '');
  }
  return attributes;
}
// Every <form> of a page: method, action, and its <input>s and <button>s.
function formsOf(html) {
  return [...html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)].map((m) => {
    const form = attributesOf(m[1]);
    const controls = [...m[2].matchAll(/<(input|button)\b([^>]*)>/gi)].map((c) => ({ tag: c[1].toLowerCase(), ...attributesOf(c[2]) }));
    return { method: (form.method || 'get').toLowerCase(), action: form.action, controls };
  });
}

// ---------------------------------------------------------------- the user, through the gateway

// Drives the whole authorization: returns the code that reached our redirect URI.
async function authorizeAsUser(authorizationUrl) {
  let url = authorizationUrl;
  if (viaGateway) url = await gatewayConsent(url);
  const callback = await upstreamLogin(url);
  // Direct: oidc-provider's own RFC 9207 iss must come back (the gateway will have to accept it).
  return viaGateway ? gatewayCallback(callback) : codeFrom(callback, opts['upstream-issuer']);
}

// §4.8 GET /{s}/authorize answers the consent page; POST /{s}/consent approves with the key.
let flowCookies = [];
async function gatewayConsent(authorizationUrl) {
  currentStep = 'gateway authorize (consent page)';
  const serverName = mcpUrl.pathname.split('/')[1];
  const page = await browse(authorizationUrl);
  if (page.status !== 200 || !String(page.headers.get('content-type')).startsWith('text/html')) {
    await fail(`GET ${authorizationUrl.pathname} should answer the consent page (200 text/html)`, page);
  }
  // The page's headers, as pinned by the design.
  const csp = page.headers.get('content-security-policy') || '';
  check(/default-src 'none'/.test(csp) && /frame-ancestors 'none'/.test(csp) && /form-action/.test(csp),
    `consent page Content-Security-Policy lacks default-src/frame-ancestors/form-action: "${csp}"`);
  check(page.headers.get('x-frame-options') === 'DENY', 'consent page has no X-Frame-Options: DENY');
  check(/no-store/.test(page.headers.get('cache-control') || ''), 'consent page is not Cache-Control: no-store');
  const html = await page.text();
  const forms = formsOf(html);
  const consentForms = forms.filter((f) => f.method === 'post' && f.action === `/${serverName}/consent`);
  check(consentForms.length === 1 && forms.length === 1,
    `consent page should hold exactly one <form method="post" action="/${serverName}/consent">; found ` +
    `${JSON.stringify(forms.map((f) => ({ method: f.method, action: f.action })))}; body: ${html.slice(0, 300)}`);
  const { controls } = consentForms[0];
  const hidden = (name) => controls.find((c) => c.tag === 'input' && c.type === 'hidden' && c.name === name);
  check(hidden('request')?.value, 'consent form has no hidden field "request"');
  check(hidden('csrf')?.value, 'consent form has no hidden field "csrf"');
  check(controls.some((c) => c.name === 'gateway_key' && c.type === 'password'), 'consent form has no password field "gateway_key"');
  for (const decision of ['approve', 'deny']) {
    check(controls.some((c) => c.name === 'decision' && c.value === decision), `consent form has no decision=${decision} button`);
  }

  // The csrf field matches a cookie: HttpOnly, SameSite=Strict, Path=/, Max-Age=600.
  check(cookiesSet(page).some((c) => hasAttributes(c, ['httponly', 'samesite=strict', 'path=/', 'max-age=600'])),
    `consent page set no HttpOnly SameSite=Strict Path=/ Max-Age=600 cookie: ${JSON.stringify(page.headers.getSetCookie())}`);

  const consentUrl = new URL(consentForms[0].action, authorizationUrl);
  const consentForm = (key) => ({ request: hidden('request').value, csrf: hidden('csrf').value, gateway_key: key, decision: 'approve' });

  // A wrong gateway key shows the page again with 401 (and never redirects).
  currentStep = 'gateway consent with a wrong key (expect 401 page)';
  const refused = await browse(consentUrl, { method: 'POST', form: consentForm('sk-not-the-gateway-key') });
  if (refused.status !== 401 || !String(refused.headers.get('content-type')).startsWith('text/html')) {
    await fail('a wrong gateway key should show the consent page again with 401', refused);
  }

  currentStep = 'gateway consent (approve)';
  const approved = await browse(consentUrl, { method: 'POST', form: consentForm(opts['gateway-key']) });
  const location = approved.headers.get('location');
  if (approved.status !== 302 || !location) await fail('approving consent should 302 to the upstream authorization endpoint', approved);
  // The flow-binding cookie: HttpOnly, SameSite=Lax, Path=/, Max-Age=600; cleared at /callback.
  flowCookies = cookiesSet(approved).filter((c) => hasAttributes(c, ['httponly', 'samesite=lax', 'path=/', 'max-age=600']));
  check(flowCookies.length > 0,
    `approving consent set no HttpOnly SameSite=Lax Path=/ Max-Age=600 flow-binding cookie: ${JSON.stringify(approved.headers.getSetCookie())}`);
  const upstream = new URL(location, consentUrl);
  const expectedAuthorize = new URL('/auth', opts['upstream-issuer']);
  check(upstream.origin + upstream.pathname === expectedAuthorize.href,
    `consent redirected to ${upstream.origin}${upstream.pathname}, not the upstream authorization endpoint ${expectedAuthorize.href}`);
  // What the gateway must send upstream: its own client, PKCE and callback, and the resource.
  const p = upstream.searchParams;
  const clientChallenge = new URL(authorizationUrl).searchParams.get('code_challenge');
  check(p.get('response_type') === 'code', `upstream request: response_type=${p.get('response_type')}`);
  check(p.get('code_challenge_method') === 'S256' && p.get('code_challenge'), 'upstream request has no S256 code_challenge');
  check(p.get('code_challenge') !== clientChallenge, "upstream request carries the client's own code_challenge");
  check(p.get('redirect_uri') === `${mcpUrl.origin}/callback`, `upstream redirect_uri=${p.get('redirect_uri')}, expected ${mcpUrl.origin}/callback`);
  check(p.get('state'), 'upstream request has no state');
  if (opts['upstream-client-id']) {
    check(p.get('client_id') === opts['upstream-client-id'], `upstream client_id=${p.get('client_id')}, expected the gateway's ${opts['upstream-client-id']}`);
  }
  if (opts['upstream-resource']) {
    check(p.get('resource') === opts['upstream-resource'], `upstream resource=${p.get('resource')}, expected the MCP server's ${opts['upstream-resource']}`);
  }
  record(`upstream authorization request: client_id=${p.get('client_id')} scope=${p.get('scope')} resource=${p.get('resource')}`);
  return upstream;
}

// oidc-provider: follow its redirects and submit each interaction's single form (login, then
// consent), until it redirects to a URL outside its origin: the callback it was asked for.
async function upstreamLogin(url) {
  currentStep = 'upstream login and consent (oidc-provider)';
  const upstreamOrigin = new URL(url).origin;
  let response = await browse(url);
  for (let hop = 0; hop < 12; hop++) {
    const location = response.headers.get('location');
    if (response.status >= 300 && response.status < 400 && location) {
      const next = new URL(location, url);
      if (next.origin !== upstreamOrigin) return next;
      url = next;
      response = await browse(url);
    } else if (response.status === 200) {
      const [form] = formsOf(await response.text());
      if (!form || form.method !== 'post') await fail(`oidc-provider page ${url} has no form to submit`, response);
      url = new URL(form.action, url);
      response = await browse(url, { method: 'POST', form: {} });
    } else {
      await fail(`oidc-provider answered ${response.status} at ${url}`, response);
    }
  }
  throw new StepFailure('oidc-provider did not redirect back within 12 hops');
}

// §4.8 GET /callback: redeems the upstream code, 302s to the client with a gateway code.
async function gatewayCallback(callbackUrl) {
  currentStep = 'gateway callback';
  check(callbackUrl.href.startsWith(`${mcpUrl.origin}/callback?`), `upstream redirected to ${callbackUrl}, not the gateway's /callback`);
  check(callbackUrl.searchParams.get('code'), `upstream callback has no code: ${callbackUrl.search}`);
  const response = await browse(callbackUrl);
  const location = response.headers.get('location');
  if (response.status !== 302 || !location) await fail('GET /callback should 302 to the client redirect URI', response);
  const stillSet = flowCookies.filter((c) => [...jar.values()].some((j) => j.name === c.name));
  check(stillSet.length === 0, `GET /callback did not clear the flow-binding cookie ${stillSet.map((c) => c.name)}`);
  const serverName = mcpUrl.pathname.split('/')[1];
  return codeFrom(new URL(location, callbackUrl), `${mcpUrl.origin}/${serverName}`);
}

// The redirect to our redirect URI: code, our state, and (RFC 9207) the expected iss.
let expectedState;
function codeFrom(url, expectedIss) {
  currentStep = 'redirect to the client';
  check(url.origin + url.pathname === REDIRECT_URL, `final redirect goes to ${url.origin}${url.pathname}, not ${REDIRECT_URL}: ${url}`);
  check(!url.searchParams.get('error'), `authorization failed: ${url.search}`);
  check(url.searchParams.get('code'), `final redirect has no code: ${url.search}`);
  check(url.searchParams.get('state') === expectedState, `state=${url.searchParams.get('state')}, expected ${expectedState}`);
  if (expectedIss) check(url.searchParams.get('iss') === expectedIss, `iss=${url.searchParams.get('iss')}, expected ${expectedIss}`);
  return url.searchParams.get('code');
}

// ---------------------------------------------------------------- the SDK's OAuth client

// An in-memory OAuthClientProvider: what a desktop MCP client keeps between runs.
let pendingCode;
let lastAuthorizationUrl;
const store = {};
const oauthProvider = {
  get redirectUrl() { return REDIRECT_URL; },
  get clientMetadata() {
    return {
      client_name: 'mcp-oauth e2e (TypeScript SDK)',
      redirect_uris: [REDIRECT_URL],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  },
  state() { expectedState = `e2e-${Math.random().toString(36).slice(2)}`; return expectedState; },
  clientInformation() { return store.client; },
  saveClientInformation(info) { store.client = info; },
  tokens() { return store.tokens; },
  saveTokens(tokens) { store.tokens = tokens; },
  saveCodeVerifier(verifier) { store.verifier = verifier; },
  codeVerifier() { return store.verifier; },
  saveDiscoveryState(state) { store.discovery = state; },
  discoveryState() { return store.discovery; },
  // The SDK hands us the authorization URL; the "user" completes it in the headless browser.
  async redirectToAuthorization(authorizationUrl) {
    record(`sdk redirectToAuthorization ${authorizationUrl.origin}${authorizationUrl.pathname}`);
    lastAuthorizationUrl = authorizationUrl;
    pendingCode = await authorizeAsUser(authorizationUrl);
  },
};

function newTransport() {
  return new StreamableHTTPClientTransport(mcpUrl, { authProvider: oauthProvider, fetch: tracingFetch });
}

async function connect() {
  const client = new Client({ name: 'mcp-oauth-e2e', version: '1.0.0' });
  await client.connect(newTransport());
  return client;
}

async function callEcho(client, text) {
  const result = await client.callTool({ name: 'echo', arguments: { text } });
  const out = result.content?.[0]?.text || '';
  check(!result.isError && out.startsWith(`echo: ${text}`), `echo returned ${JSON.stringify(result).slice(0, 300)}`);
  return out;
}

// --mode browse: the user's browser for another client. Its final redirect goes to that client's
// loopback listener, which must answer it.
async function browseOnly() {
  const authorizeUrl = new URL(opts.authorize);
  const upstream = await gatewayConsent(authorizeUrl);
  const callback = await upstreamLogin(upstream);
  currentStep = 'gateway callback';
  const response = await browse(callback);
  const location = response.headers.get('location');
  if (response.status !== 302 || !location) await fail('GET /callback should 302 to the client redirect URI', response);
  const back = new URL(location, callback);
  check(back.searchParams.get('code')?.startsWith('mcpgw_'), `the client gets no gateway code: ${back.search}`);
  currentStep = "delivering the redirect to the client's loopback listener";
  const delivered = await fetch(back, { redirect: 'manual' });
  check(delivered.status === 200, `the client's loopback listener answered ${delivered.status}`);
  console.log(JSON.stringify({ ok: true, mode: 'browse', redirect: `${back.origin}${back.pathname}` }));
}

async function main() {
  if (opts.mode === 'browse') return browseOnly();
  // 1. Unauthenticated connect: 401, discovery, registration, then the browser authorization.
  currentStep = 'first connect (expect the SDK to start authorization)';
  const firstTransport = newTransport();
  try {
    await new Client({ name: 'mcp-oauth-e2e', version: '1.0.0' }).connect(firstTransport);
    throw new StepFailure('connected without any authorization: the MCP URL is not protected');
  } catch (e) {
    if (e instanceof StepFailure) throw e;
    if (!(e instanceof UnauthorizedError)) throw e;
  }
  check(pendingCode, 'the SDK never asked to redirect the user');
  record(`registered client_id=${String(store.client?.client_id).slice(0, 24)}...`);

  // 2. The code reaches the SDK, which redeems it at the token endpoint.
  currentStep = 'token exchange (transport.finishAuth)';
  await firstTransport.finishAuth(pendingCode);
  const first = store.tokens;
  check(first?.access_token, 'no access token stored after finishAuth');
  if (viaGateway) {
    check(first.access_token.startsWith('mcpgw_'), `the client holds an access token that is not the gateway's: ${first.access_token.slice(0, 12)}...`);
    check(first.refresh_token?.startsWith('mcpgw_'), `the client holds a refresh token that is not the gateway's: ${String(first.refresh_token).slice(0, 12)}...`);
  } else {
    check(first.refresh_token, 'the upstream issued no refresh token');
  }

  // 3. Reconnect with the token: initialize, list tools, call echo.
  currentStep = 'authorized MCP session (initialize, tools/list, tools/call)';
  const client = await connect();
  const { tools } = await client.listTools();
  check(tools.some((t) => t.name === 'echo'), `tools/list has no echo: ${JSON.stringify(tools.map((t) => t.name))}`);
  const echoed = await callEcho(client, viaGateway ? 'hello through the gateway' : 'hello, directly');

  // 3a. Spaced calls: each one makes the gateway refresh its upstream token (run.sh counts the
  // refreshes at the provider). The client sees nothing of it.
  for (let i = 1; i <= Number(opts['spaced-calls']); i++) {
    currentStep = `spaced call ${i} (the gateway refreshes upstream first)`;
    await new Promise((resolve) => setTimeout(resolve, 2200));
    await callEcho(client, `spaced call ${i}`);
  }

  // 3a'. The aggregating route: the same SDK client at the gateway's POST /mcp with the gateway
  // key and x-mcp-servers (LiteLLM's aggregated endpoint). The key signs in as the identity that
  // approved the consent above, so the gateway uses that identity's newest grant (design §4.8);
  // the tool is listed with the server's prefix and the call is routed back to it.
  let aggregatedEcho = null;
  if (viaGateway && opts['gateway-key']) {
    currentStep = 'aggregated route (POST /mcp: initialize, tools/list, tools/call)';
    const serverName = mcpUrl.pathname.split('/')[1];
    const aggregated = new Client({ name: 'mcp-oauth-e2e-aggregated', version: '1.0.0' });
    await aggregated.connect(new StreamableHTTPClientTransport(new URL('/mcp', mcpUrl), {
      requestInit: { headers: { 'x-mcp-servers': serverName, 'x-mcp-gateway-key': opts['gateway-key'] } },
      fetch: tracingFetch,
    }));
    const listed = (await aggregated.listTools()).tools.map((t) => t.name);
    check(listed.includes(`${serverName}-echo`), `the aggregated tools/list has no ${serverName}-echo: ${JSON.stringify(listed)}`);
    const result = await aggregated.callTool({ name: `${serverName}-echo`, arguments: { text: 'through the aggregated route' } });
    const out = result.content?.[0]?.text || '';
    check(!result.isError && out.startsWith('echo: through the aggregated route'), `the aggregated call returned ${JSON.stringify(result).slice(0, 300)}`);
    record(`aggregated route: ${listed.length} tool(s), ${serverName}-echo answered`);
    aggregatedEcho = out;
    await aggregated.close();
  }

  // 3b. The user may also say no: deny sends the client error=access_denied with its state and
  // the gateway's iss, and no code. (The same authorization URL again: nothing is stored per
  // request, the page seals it.)
  if (viaGateway) {
    currentStep = 'gateway consent (deny)';
    const page = await browse(lastAuthorizationUrl);
    if (page.status !== 200) await fail('GET authorize for the deny check should answer the consent page', page);
    const [form] = formsOf(await page.text());
    const value = (name) => form?.controls.find((c) => c.name === name)?.value;
    const denied = await browse(new URL(form.action, lastAuthorizationUrl), {
      method: 'POST', form: { request: value('request'), csrf: value('csrf'), gateway_key: '', decision: 'deny' },
    });
    const location = denied.headers.get('location');
    if (denied.status !== 302 || !location) await fail('denying consent should 302 to the client', denied);
    const back = new URL(location);
    const serverName = mcpUrl.pathname.split('/')[1];
    check(back.origin + back.pathname === REDIRECT_URL, `deny redirected to ${back.origin}${back.pathname}, not ${REDIRECT_URL}`);
    check(back.searchParams.get('error') === 'access_denied' && !back.searchParams.get('code'),
      `deny answered ${back.search}, expected error=access_denied and no code`);
    check(back.searchParams.get('state') === lastAuthorizationUrl.searchParams.get('state'), `deny lost the client's state: ${back.search}`);
    check(back.searchParams.get('iss') === `${mcpUrl.origin}/${serverName}`, `deny iss=${back.searchParams.get('iss')}`);
  }

  // 4. Refresh through the SDK's own refresh path (auth() with a stored refresh token).
  currentStep = 'refresh (SDK auth() with the stored refresh token)';
  const outcome = await auth(oauthProvider, { serverUrl: mcpUrl, fetchFn: tracingFetch });
  check(outcome === 'AUTHORIZED', `refresh answered ${outcome}`);
  const second = store.tokens;
  check(second.access_token !== first.access_token, 'refresh returned the same access token');
  check(second.refresh_token && second.refresh_token !== first.refresh_token, 'the refresh token was not rotated');
  if (viaGateway) {
    check(second.access_token.startsWith('mcpgw_') && second.refresh_token.startsWith('mcpgw_'),
      'a refreshed token is not a gateway token');
  }
  currentStep = 'MCP call with the refreshed access token';
  const refreshed = await connect();
  await callEcho(refreshed, 'after refresh');

  // 5. Sign out (RFC 7009): revoking the refresh token ends the grant, so the access token that
  // came with it stops working too (every use checks that the grant is live, design §4.8).
  if (viaGateway) {
    currentStep = 'revoke (POST /{s}/revoke with the refresh token)';
    const serverName = mcpUrl.pathname.split('/')[1];
    const revoked = await tracingFetch(`${mcpUrl.origin}/${serverName}/revoke`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token: second.refresh_token, token_type_hint: 'refresh_token', client_id: store.client.client_id }),
    });
    if (revoked.status !== 200) await fail('revocation should answer 200', revoked);
    currentStep = 'an MCP call after revocation (expect the 401 challenge)';
    const after = await tracingFetch(mcpUrl, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${second.access_token}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }),
    });
    if (after.status !== 401 || !/^Bearer /i.test(after.headers.get('www-authenticate') || '')) {
      await fail('the access token of a revoked grant should get 401 with a Bearer challenge', after);
    }
  }

  await client.close();
  await refreshed.close();
  console.log(JSON.stringify({
    ok: true,
    mode: opts.mode,
    mcp: mcpUrl.href,
    tools: tools.map((t) => t.name),
    echo: echoed,
    ...(aggregatedEcho ? { aggregated_echo: aggregatedEcho } : {}),
    access_token_prefix: first.access_token.slice(0, 6),
    refresh_rotated: true,
  }));
}

// Bounded: a hang anywhere is a failure, not a stuck CI.
const deadline = setTimeout(() => {
  console.log(`FAIL ${currentStep}: timed out after 60 s`);
  for (const line of trace) console.log(`  trace: ${line}`);
  process.exit(1);
}, 60_000);
try {
  await main();
  clearTimeout(deadline);
  // E2E_VERBOSE=1: the whole exchange, also on success (stderr, so the result stays the last line).
  if (process.env.E2E_VERBOSE) for (const line of trace) console.error(`  trace: ${line}`);
  process.exit(0);
} catch (e) {
  clearTimeout(deadline);
  // An SDK error on one line: its name, message and where it was thrown.
  const where = e instanceof StepFailure ? '' : ` (at ${String(e.stack).split('\n').find((l) => l.includes(' at '))?.trim().replace(/^at /, '')})`;
  console.log(`FAIL ${currentStep}: ${e instanceof StepFailure ? e.message : `${e.name}: ${String(e.message).replace(/\s+/g, ' ').slice(0, 600)}${where}`}`);
  for (const line of trace) console.log(`  trace: ${line}`);
  process.exit(1);
}
