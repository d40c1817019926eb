// The consent page (design §4.8) driven by a real Chromium: headers, rendering, approve through
// the real redirect chain (gateway → upstream /authorize → gateway /callback → client), the code
// exchange, deny, and a wrong key. Run it through scripts/consent-chromium.sh, which starts
// `mcp-oauth demo` and passes GATEWAY, GATEWAY_KEY and UPSTREAM in the environment.
//
// Not part of CI: it needs Debian's Chromium (/usr/bin/chromium) and playwright-core installed
// into target/chromium-tools/ (see docs/gateway.md, "The consent page in a real browser").

import { createRequire } from 'node:module';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(path.join(root, 'target/chromium-tools/package.json'));
const { chromium } = require('playwright-core');

const gateway = must('GATEWAY');
const key = must('GATEWAY_KEY');
const upstream = must('UPSTREAM');
const screenshot = process.env.SCREENSHOT || path.join(root, 'docs/consent-page.png');
const server = 'notes';
const issuer = `${gateway}/${server}`;
let browser = null;

function must(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`consent-chromium: ${name} is not set (run scripts/consent-chromium.sh)`);
    process.exit(2);
  }
  return value;
}

// ---------------------------------------------------------------------------------------------
// Checks: each is recorded; the run goes on after a failure where the next step does not need it.

const results = [];
function check(name, ok, detail = '') {
  results.push({ name, ok: Boolean(ok), detail });
  console.log(`  ${ok ? 'PASS' : 'FAIL'}  ${name}${detail ? `  — ${detail}` : ''}`);
  return Boolean(ok);
}

const base64url = (bytes) => Buffer.from(bytes).toString('base64url');
function pkce() {
  const verifier = base64url(randomBytes(32));
  return { verifier, challenge: base64url(createHash('sha256').update(verifier).digest()) };
}

// ---------------------------------------------------------------------------------------------
// The client's redirect catcher: a tiny HTTP server on 127.0.0.1 that records what arrives.

const caught = [];
const waiters = [];
const catcher = http.createServer((request, response) => {
  const url = new URL(request.url, 'http://127.0.0.1');
  const hit = { path: url.pathname, query: Object.fromEntries(url.searchParams) };
  caught.push(hit);
  response.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  response.end('<!doctype html><title>client callback</title><p>The client received the redirect.</p>');
  for (const waiter of waiters.splice(0)) waiter(hit);
});
await new Promise((resolve) => catcher.listen(0, '127.0.0.1', resolve));
const catcherOrigin = `http://127.0.0.1:${catcher.address().port}`;
const redirectUri = `${catcherOrigin}/callback`;

function nextCatch(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), ms);
    waiters.push((hit) => {
      clearTimeout(timer);
      resolve(hit);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Register a client (RFC 7591) with the catcher as its redirect URI.

console.log(`gateway ${gateway}, upstream ${upstream}, client redirect ${redirectUri}`);
console.log(`\nPOST ${gateway}/${server}/register`);
const registered = await fetch(`${gateway}/${server}/register`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ redirect_uris: [redirectUri], client_name: 'Chromium check' }),
});
const registration = await registered.json().catch(() => ({}));
if (!check('register: 201 with a client_id', registered.status === 201 && registration.client_id,
  `HTTP ${registered.status}`)) {
  await finish();
}
const clientId = registration.client_id;

function authorizeUrl(challenge, state = 'xyz') {
  const url = new URL(`${gateway}/${server}/authorize`);
  url.search = new URLSearchParams({
    client_id: clientId,
    redirect_uri: redirectUri,
    response_type: 'code',
    code_challenge: challenge,
    code_challenge_method: 'S256',
    state,
  }).toString();
  return url.toString();
}

const expectedPolicy =
  "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'; " +
  `form-action 'self' ${upstream} ${catcherOrigin}`;

function checkHeaders(label, response, status) {
  const headers = response.headers();
  check(`${label}: HTTP ${status}`, response.status() === status, `got ${response.status()}`);
  check(`${label}: content-type text/html; charset=utf-8`,
    headers['content-type'] === 'text/html; charset=utf-8', headers['content-type']);
  check(`${label}: Content-Security-Policy exact`, headers['content-security-policy'] === expectedPolicy,
    headers['content-security-policy']);
  check(`${label}: X-Frame-Options DENY`, headers['x-frame-options'] === 'DENY', headers['x-frame-options']);
  check(`${label}: Cache-Control no-store`, headers['cache-control'] === 'no-store', headers['cache-control']);
  check(`${label}: Referrer-Policy no-referrer`, headers['referrer-policy'] === 'no-referrer',
    headers['referrer-policy']);
}

async function checkForm(label, page) {
  const form = page.locator(`form[method="post"][action="/${server}/consent"]`);
  check(`${label}: one form posting to /${server}/consent`, (await form.count()) === 1);
  const hidden = async (name) => page.locator(`form input[type="hidden"][name="${name}"]`).count();
  check(`${label}: hidden fields request and csrf`, (await hidden('request')) === 1 && (await hidden('csrf')) === 1);
  const keyField = page.locator('input[type="password"][name="gateway_key"]');
  check(`${label}: password field gateway_key visible`, (await keyField.count()) === 1 && (await keyField.isVisible()));
  const approve = page.locator('button[type="submit"][name="decision"][value="approve"], button[name="decision"][value="approve"]');
  const deny = page.locator('button[name="decision"][value="deny"]');
  check(`${label}: Approve and Deny buttons visible`,
    (await approve.count()) === 1 && (await deny.count()) === 1 && (await approve.isVisible()) && (await deny.isVisible()),
    `approve "${(await approve.first().textContent().catch(() => ''))?.trim()}", deny "${(await deny.first().textContent().catch(() => ''))?.trim()}"`);
  return { keyField, approve: approve.first(), deny: deny.first() };
}

// ---------------------------------------------------------------------------------------------
// The browser. Every console message, CSP violation and navigation is kept for the report.

browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true });
const context = await browser.newContext({ viewport: { width: 800, height: 600 } });
await context.addInitScript(() => {
  window.__violations = [];
  document.addEventListener('securitypolicyviolation', (event) => {
    window.__violations.push(`${event.violatedDirective} blocked ${event.blockedURI} (policy: ${event.originalPolicy})`);
  });
});
const consoleLines = [];
const chain = [];
function watch(page, label) {
  page.on('console', (message) => consoleLines.push(`[${label}] console.${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => consoleLines.push(`[${label}] pageerror: ${error.message}`));
  page.on('requestfailed', (request) =>
    consoleLines.push(`[${label}] request failed: ${request.method()} ${request.url().split('?')[0]} (${request.failure()?.errorText})`));
  page.on('response', (response) => {
    if (response.request().isNavigationRequest()) {
      const where = response.headers().location ? ` → ${response.headers().location.slice(0, 120)}` : '';
      chain.push(`[${label}] ${response.request().method()} ${response.url().split('?')[0]} ${response.status()}${where.split('?')[0]}`);
    }
  });
}

async function blockedReport(page, label) {
  const violations = await page.evaluate(() => window.__violations || []).catch(() => []);
  const lines = consoleLines.filter((line) => line.startsWith(`[${label}]`));
  return [...violations.map((v) => `securitypolicyviolation: ${v}`), ...lines].join('\n      ') || '(no console message)';
}

// (1) Approve: headers, rendering, screenshot, then the real redirect chain and the code exchange.
console.log('\n(1) Approve in Chromium');
const approveFlow = pkce();
const page = await context.newPage();
watch(page, 'approve');
const first = await page.goto(authorizeUrl(approveFlow.challenge));
checkHeaders('authorize page', first, 200);
const body = await page.locator('body').innerText();
check('page names the server, the client and the loopback label',
  body.includes(server) && body.includes('Chromium check') && body.includes('an application on this computer'),
  body.replace(/\s+/g, ' ').slice(0, 200));
const controls = await checkForm('authorize page', page);
await page.screenshot({ path: screenshot });
console.log(`  screenshot: ${path.relative(root, screenshot)}`);

await controls.keyField.fill(key);
const arrival = nextCatch(15000);
await controls.approve.click();
const hit = await arrival;
if (check('approve: Chromium followed consent → upstream /authorize → /callback → client', hit,
  hit ? `caught ${hit.path}` : `nothing reached the client; page at ${page.url().split('?')[0]}`)) {
  await page.waitForURL((url) => url.toString().startsWith(catcherOrigin), { timeout: 5000 }).catch(() => {});
  check('approve: code starts with mcpgw_', hit.query.code?.startsWith('mcpgw_'), hit.query.code?.slice(0, 12));
  check('approve: state=xyz', hit.query.state === 'xyz', hit.query.state);
  check(`approve: iss=${issuer}`, hit.query.iss === issuer, hit.query.iss);
  check('approve: no error', !hit.query.error, hit.query.error);
  const token = await fetch(`${gateway}/${server}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code: hit.query.code ?? '',
      code_verifier: approveFlow.verifier,
      client_id: clientId,
      redirect_uri: redirectUri,
    }),
  });
  const tokens = await token.json().catch(() => ({}));
  check('token: 200 with an mcpgw_ access token', token.status === 200 && tokens.access_token?.startsWith('mcpgw_'),
    `HTTP ${token.status}${tokens.error ? ` ${tokens.error}` : ''}, cache-control ${token.headers.get('cache-control')}`);
  if (tokens.access_token) {
    const call = await fetch(`${gateway}/${server}/mcp`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${tokens.access_token}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'add', arguments: { a: 2, b: 3 } } }),
    });
    const text = await call.text();
    check('tools/call with the gateway token: 200', call.status === 200, `HTTP ${call.status} ${text.slice(0, 100)}`);
  }
} else {
  console.log(`      ${await blockedReport(page, 'approve')}`);
}
await page.close();

// (2) Deny: the client gets error=access_denied with its state and the issuer.
console.log('\n(2) Deny in Chromium');
const denyPage = await context.newPage();
watch(denyPage, 'deny');
const denyResponse = await denyPage.goto(authorizeUrl(pkce().challenge, 'deny-state'));
check('deny: authorize page 200', denyResponse.status() === 200, `got ${denyResponse.status()}`);
const denyControls = await checkForm('deny page', denyPage);
await denyControls.keyField.fill(key);
const denied = nextCatch(15000);
await denyControls.deny.click();
const deniedHit = await denied;
if (check('deny: Chromium followed the redirect to the client', deniedHit,
  deniedHit ? `caught ${deniedHit.path}` : `page at ${denyPage.url().split('?')[0]}`)) {
  check('deny: error=access_denied', deniedHit.query.error === 'access_denied', deniedHit.query.error);
  check('deny: state kept', deniedHit.query.state === 'deny-state', deniedHit.query.state);
  check('deny: no code', !deniedHit.query.code);
  console.log(`      (iss: ${deniedHit.query.iss ?? 'absent'})`);
} else {
  console.log(`      ${await blockedReport(denyPage, 'deny')}`);
}
await denyPage.close();

// (3) A wrong key: the page comes back with 401 and the same contract; then the right key works.
console.log('\n(3) Wrong key in Chromium');
const wrongFlow = pkce();
const wrongPage = await context.newPage();
watch(wrongPage, 'wrong-key');
await wrongPage.goto(authorizeUrl(wrongFlow.challenge, 'wrong-state'));
const wrongControls = await checkForm('wrong-key page', wrongPage);
await wrongControls.keyField.fill('sk-not-the-key');
const [again] = await Promise.all([
  wrongPage.waitForResponse((response) => response.url() === `${gateway}/${server}/consent`, { timeout: 10000 }),
  wrongControls.approve.click(),
]);
await wrongPage.waitForLoadState('domcontentloaded');
checkHeaders('wrong key: page again', again, 401);
check('wrong key: no request reached the client', caught.every((entry) => entry.query.state !== 'wrong-state'));
const againControls = await checkForm('wrong key: page again', wrongPage);
const notice = (await wrongPage.locator('body').innerText()).replace(/\s+/g, ' ');
console.log(`      page says: ${notice.slice(0, 160)}`);
await againControls.keyField.fill(key);
const retried = nextCatch(15000);
await againControls.approve.click();
const retriedHit = await retried;
if (check('wrong key, then the right key on the page shown again: code reaches the client',
  retriedHit?.query.code?.startsWith('mcpgw_') && retriedHit.query.state === 'wrong-state',
  retriedHit ? JSON.stringify({ ...retriedHit.query, code: retriedHit.query.code?.slice(0, 12) }) : `page at ${wrongPage.url().split('?')[0]}`)) {
  // nothing more
} else if (!retriedHit) {
  console.log(`      ${await blockedReport(wrongPage, 'wrong-key')}`);
}
await wrongPage.close();

// (4) Controls: the checks above mean something only if this Chromium really applies
// `form-action` to the redirects after the submission. The same page, with one origin removed
// from its policy in the browser (the gateway is untouched), must be blocked at that hop.
console.log('\n(4) Controls: Chromium blocks a redirect that form-action does not allow');
async function control(label, dropped, state) {
  const controlPage = await context.newPage();
  watch(controlPage, label);
  await controlPage.route(`${gateway}/${server}/authorize?**`, async (route) => {
    const response = await route.fetch();
    const headers = response.headers();
    headers['content-security-policy'] = headers['content-security-policy'].replace(` ${dropped}`, '');
    await route.fulfill({ response, headers });
  });
  await controlPage.goto(authorizeUrl(pkce().challenge, state));
  await controlPage.locator('input[name="gateway_key"]').fill(key);
  const arrived = nextCatch(5000);
  await controlPage.locator('button[name="decision"][value="approve"]').click();
  const controlHit = await arrived;
  await controlPage.waitForTimeout(500);
  const report = await blockedReport(controlPage, label);
  check(`control without ${dropped} in form-action: blocked, nothing reaches the client`, !controlHit,
    controlHit ? `the client got ${JSON.stringify(controlHit.query)}` : '');
  check(`control without ${dropped}: Chromium reports the form-action violation`, /form-action/.test(report),
    report.split('\n')[0].slice(0, 300));
  await controlPage.close();
}
await control('control-upstream', upstream, 'control-upstream');
await control('control-client', catcherOrigin, 'control-client');

await finish();

async function finish() {
  if (chain.length) console.log(`\nNavigations seen by Chromium:\n  ${chain.join('\n  ')}`);
  // Chromium's verbose DOM hints ("Password forms should have … username fields") are left out.
  const noisy = consoleLines.filter((line) => !line.includes('favicon') && !line.includes('console.verbose'));
  if (noisy.length) console.log(`\nConsole and network messages:\n  ${noisy.join('\n  ')}`);
  await browser?.close().catch(() => {});
  catcher.closeAllConnections();
  await new Promise((resolve) => catcher.close(resolve));
  const failed = results.filter((result) => !result.ok).length;
  console.log(`\nconsent-chromium: ${results.length - failed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}
