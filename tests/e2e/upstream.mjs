// The upstream side of the end-to-end test, built only from software nobody here wrote:
//
//  * an oidc-provider authorization server (the certified OpenID Connect implementation) with a
//    static confidential client for the gateway, authorization code + PKCE, rotating refresh tokens
//    and resource indicators (RFC 8707), so that `resource=<MCP URL>` yields a JWT access token
//    whose audience is exactly the MCP server's URL;
//  * an MCP server (the TypeScript SDK's McpServer over Streamable HTTP, stateless) with one `echo`
//    tool, behind the SDK's own bearer middleware, that accepts only JWTs signed by that provider
//    whose `aud` is exactly its own URL, and serves RFC 9728 protected-resource metadata.
//
// Usage: node upstream.mjs <gateway origin>   (or GATEWAY_ORIGIN=...)
// Prints one JSON line with the URLs and client credentials, then runs until stdin closes.
// Everything listens on 127.0.0.1 on ports the system picks.

import http from 'node:http';
import { once } from 'node:events';
import Provider, { errors } from 'oidc-provider';
import express from 'express';
import * as jose from 'jose';
import { z } from 'zod';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { requireBearerAuth } from '@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js';
import { InvalidTokenError } from '@modelcontextprotocol/sdk/server/auth/errors.js';

const gatewayOrigin = process.argv[2] || process.env.GATEWAY_ORIGIN;
if (!gatewayOrigin) {
  console.error('usage: node upstream.mjs <gateway origin, e.g. http://127.0.0.1:8080>');
  process.exit(2);
}

// Fixed test values: nothing here protects anything real.
const GATEWAY_CLIENT_ID = process.env.E2E_CLIENT_ID || 'mcp-oauth-gateway';
const GATEWAY_CLIENT_SECRET = process.env.E2E_CLIENT_SECRET || 'e2e-gateway-client-secret-0001';
// A second confidential client, used only by run.sh's self-check to mint client_credentials
// tokens for the MCP server and for another audience.
const PROBE_CLIENT_ID = 'e2e-probe';
const PROBE_CLIENT_SECRET = 'e2e-probe-client-secret-0001';
const OTHER_RESOURCE = 'urn:e2e:another-resource';
const TEST_USER = 'e2e-user';
const MCP_SCOPE = 'mcp:tools';

// Bind both listeners first: the issuer and the MCP URL must carry the real ports.
async function listen(server) {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `http://127.0.0.1:${server.address().port}`;
}
const asServer = http.createServer();
const mcpServer = http.createServer();
const issuer = await listen(asServer);
const mcpOrigin = await listen(mcpServer);
const mcpUrl = `${mcpOrigin}/mcp`;
const resourceMetadataUrl = `${mcpOrigin}/.well-known/oauth-protected-resource/mcp`;

// ---------------------------------------------------------------- the authorization server

// One RSA signing key per run, generated here so nothing secret is committed.
const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(privateKey)), kid: 'e2e-1', alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: GATEWAY_CLIENT_ID,
      client_secret: GATEWAY_CLIENT_SECRET,
      redirect_uris: [`${gatewayOrigin}/callback`],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      // The gateway's default (docs/configuration.md); run.sh's config also names it.
      token_endpoint_auth_method: 'client_secret_post',
    },
    {
      client_id: PROBE_CLIENT_ID,
      client_secret: PROBE_CLIENT_SECRET,
      redirect_uris: [],
      grant_types: ['client_credentials'],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_post',
    },
  ],
  jwks: { keys: [signingJwk] },
  cookies: { keys: ['e2e-cookie-key-0001'] },
  scopes: ['openid', 'offline_access', MCP_SCOPE],
  // PKCE for every client, the gateway's confidential one included (it sends S256 anyway).
  pkce: { required: () => true },
  // Refresh tokens rotate on every use, so the gateway must keep the newest one. Any client
  // allowed the refresh_token grant gets one (not only with offline_access), so the control run's
  // SDK client, which asks for the resource's scope alone, can refresh too.
  rotateRefreshToken: true,
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Explicit lifetimes (the provider's defaults print notices): short, as a test needs.
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    ClientCredentials: 600,
    Grant: 3600,
    IdToken: 3600,
    Interaction: 600,
    RefreshToken: 86400,
    Session: 3600,
  },
  findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false }, // our own deterministic form below
    clientCredentials: { enabled: true }, // only for the probe client
    registration: { enabled: true }, // for the control run (the SDK registering itself directly)
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // A request without `resource` gets no resource-bound token (userinfo only).
      defaultResource: async (_ctx, _client, oneOf) => (oneOf ? oneOf[0] : undefined),
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource) => {
        if (resource === mcpUrl || resource === OTHER_RESOURCE) {
          return {
            scope: MCP_SCOPE,
            audience: resource,
            accessTokenTTL: 3600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        }
        throw new errors.InvalidTarget();
      },
    },
  },
});

// Interactions: one tiny HTML form per prompt, auto-approving the fixed test user. A headless
// client completes each by POSTing the page's only form (with the provider's cookies).
provider.use(async (ctx, next) => {
  const match = /^\/interaction\/([^/]+)$/.exec(ctx.path);
  if (!match) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt } = details;
  if (ctx.method === 'GET') {
    ctx.type = 'html';
    ctx.body = `<!doctype html><title>${prompt.name}</title>
<form method="post" action="/interaction/${match[1]}"><button type="submit">${prompt.name} as ${TEST_USER}</button></form>`;
    return undefined;
  }
  if (ctx.method !== 'POST') return next();
  let result;
  if (prompt.name === 'login') {
    result = { login: { accountId: TEST_USER } };
  } else if (prompt.name === 'consent') {
    // Grant exactly what is missing: the OIDC scopes and the resource server's scopes.
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  } else {
    ctx.status = 400;
    ctx.body = `unexpected prompt ${prompt.name}`;
    return undefined;
  }
  await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
  ctx.respond = false; // interactionFinished wrote the 303 itself
  return undefined;
});

// What the provider saw, per client: token grants by type, token errors, revoked grants and
// revocation requests. run.sh
// reads it (GET {MCP origin}/e2e/stats) to prove the gateway refreshed upstream with the newest
// rotated refresh token (reusing a consumed one is an error here, and revokes the grant).
const stats = {};
const count = (clientId, key) => {
  stats[clientId] ??= {};
  stats[clientId][key] = (stats[clientId][key] || 0) + 1;
};
// Requests to the revocation endpoint (RFC 7009), by client and status.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/token/revocation') count(ctx.oidc?.client?.clientId || '-', `revocation_${ctx.status}`);
});
provider.on('grant.success', (ctx) => count(ctx.oidc.client?.clientId, ctx.oidc.params.grant_type));
provider.on('grant.error', (ctx, err) => count(ctx.oidc.client?.clientId || '-', `error:${err.error || err.message}`));
provider.on('grant.revoked', (ctx) => count(ctx.oidc.client?.clientId || '-', 'grant_revoked'));
// Dynamic registrations whose redirect URI is the gateway's callback: the gateway registering itself.
provider.on('registration_create.success', (_ctx, client) => {
  if (client.redirectUris.includes(`${gatewayOrigin}/callback`)) count('gateway-registrations', client.clientId);
});
// Last: Koa composes the middleware above when the callback is made.
asServer.on('request', provider.callback());

// ---------------------------------------------------------------- the MCP server

// Verify with the keys the provider publishes, as any resource server would.
const publicJwks = jose.createRemoteJWKSet(new URL(`${issuer}/jwks`));

// The token check an audience-aware MCP server does: signature by the issuer's key, the issuer,
// a JWT access token (RFC 9068 `at+jwt`), not expired, and `aud` exactly this server's URL.
const verifier = {
  async verifyAccessToken(token) {
    let payload;
    try {
      ({ payload } = await jose.jwtVerify(token, publicJwks, { issuer, typ: 'at+jwt' }));
    } catch (e) {
      throw new InvalidTokenError(`token rejected: ${e.code || e.message}`);
    }
    const aud = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
    if (aud.length !== 1 || aud[0] !== mcpUrl) {
      throw new InvalidTokenError('token audience is not this server');
    }
    return {
      token,
      clientId: String(payload.client_id),
      scopes: typeof payload.scope === 'string' ? payload.scope.split(' ') : [],
      expiresAt: payload.exp,
      resource: new URL(mcpUrl),
    };
  },
};

const app = express();
app.use(express.json());

// RFC 9728: the path-suffixed document and the root one say the same.
const protectedResourceMetadata = {
  resource: mcpUrl,
  authorization_servers: [issuer],
  scopes_supported: [MCP_SCOPE],
  bearer_methods_supported: ['header'],
};
app.get(['/.well-known/oauth-protected-resource/mcp', '/.well-known/oauth-protected-resource'], (_req, res) => {
  res.json(protectedResourceMetadata);
});

app.get('/e2e/stats', (_req, res) => res.json(stats));

// Stateless Streamable HTTP: a fresh McpServer and transport per request.
function newMcpServer() {
  const server = new McpServer({ name: 'e2e-notes', version: '1.0.0' });
  server.registerTool(
    'echo',
    { description: 'Echoes its text back', inputSchema: { text: z.string() } },
    async ({ text }, extra) => ({
      content: [{ type: 'text', text: `echo: ${text} (as ${extra.authInfo?.clientId})` }],
    }),
  );
  return server;
}
app.all('/mcp', requireBearerAuth({ verifier, resourceMetadataUrl, expectedResource: new URL(mcpUrl) }), async (req, res) => {
  const server = newMcpServer();
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
  res.on('close', () => {
    transport.close();
    server.close();
  });
  try {
    await server.connect(transport);
    await transport.handleRequest(req, res, req.body);
  } catch (e) {
    if (!res.headersSent) res.status(500).json({ error: String(e) });
  }
});
mcpServer.on('request', app);

// ---------------------------------------------------------------- report and wait

console.log(JSON.stringify({
  issuer,
  authorization_endpoint: `${issuer}/auth`,
  token_endpoint: `${issuer}/token`,
  revocation_endpoint: `${issuer}/token/revocation`,
  mcp_url: mcpUrl,
  client_id: GATEWAY_CLIENT_ID,
  client_secret: GATEWAY_CLIENT_SECRET,
  probe_client_id: PROBE_CLIENT_ID,
  probe_client_secret: PROBE_CLIENT_SECRET,
  other_resource: OTHER_RESOURCE,
}));

// Run until whoever started us closes our stdin (run.sh keeps a pipe open; a trap closes it).
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
