// The MCP TypeScript SDK client against server-everything, every step of the protocol a client
// takes, checked on what the reference server really answers. ROUTE says where:
//   direct      ORIGIN is server-everything's own (the control run);
//   server      the gateway's per-server route /SERVER_NAME/mcp (transparent, design §4.11);
//   aggregated  the gateway's aggregating route /mcp (x-mcp-servers: SERVER_NAME), in the
//               gateway's own session, where every tool and prompt is named SERVER_NAME-….
// The client declares sampling, elicitation and roots, so the server offers the tools that ask
// the client for them; the server's requests reach the client over the tool call's stream
// (sampling, elicitation) and the session's GET stream (roots), and the client's answers go back.
// One JSON line on success; "FAIL step: why" and exit 1 otherwise. Bounded to 30 s.
//
//   node ts-client.mjs ORIGIN SERVER_NAME GATEWAY_KEY [direct|server|aggregated]
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  CreateMessageRequestSchema, ElicitRequestSchema, ListRootsRequestSchema,
} from '@modelcontextprotocol/sdk/types.js';

const [origin, server, key, route = 'aggregated'] = process.argv.slice(2);
const prefix = route === 'aggregated' ? `${server}-` : '';
const endpoint = { direct: '/mcp', server: `/${server}/mcp`, aggregated: '/mcp' }[route];
const headers = {
  direct: {},
  server: { 'x-mcp-gateway-key': key },
  aggregated: { 'x-mcp-servers': server, 'x-mcp-gateway-key': key },
}[route];
if (!endpoint) {
  console.log(`FAIL usage: unknown route ${route}`);
  process.exit(2);
}
let step = 'connect';
const fail = (why) => {
  console.log(`FAIL ${step}: ${why}`);
  process.exit(1);
};
setTimeout(() => fail('timed out after 30 s'), 30_000).unref();
const check = (ok, why) => ok || fail(why);

try {
  const client = new Client(
    { name: 'mcp-oauth-aggregated', version: '1.0.0' },
    { capabilities: { sampling: {}, elicitation: {}, roots: { listChanged: true } } },
  );
  const asked = { sampling: 0, elicitation: 0, roots: 0 };
  client.setRequestHandler(CreateMessageRequestSchema, async () => {
    asked.sampling += 1;
    return { model: 'aggregated-test', role: 'assistant', content: { type: 'text', text: 'sampled-through-the-gateway' } };
  });
  client.setRequestHandler(ElicitRequestSchema, async () => {
    asked.elicitation += 1;
    return { action: 'accept', content: { name: 'elicited-through-the-gateway' } };
  });
  client.setRequestHandler(ListRootsRequestSchema, async () => {
    asked.roots += 1;
    return { roots: [{ uri: 'file:///aggregated-root', name: 'aggregated' }] };
  });
  const transport = new StreamableHTTPClientTransport(new URL(endpoint, origin), { requestInit: { headers } });
  await client.connect(transport);
  check(transport.sessionId, 'no session was issued');
  const capabilities = client.getServerCapabilities() ?? {};
  for (const served of ['tools', 'prompts', 'resources', 'completions', 'logging']) {
    check(capabilities[served], `initialize does not advertise ${served}: ${JSON.stringify(capabilities)}`);
  }

  step = 'tools';
  const tools = (await client.listTools()).tools.map((t) => t.name);
  check(tools.includes(`${prefix}echo`), `no ${prefix}echo in ${JSON.stringify(tools)}`);
  const echoed = await client.callTool({ name: `${prefix}echo`, arguments: { message: 'aggregated' } });
  check(!echoed.isError && JSON.stringify(echoed.content).includes('aggregated'), JSON.stringify(echoed));
  for (const needs of ['trigger-sampling-request', 'trigger-elicitation-request', 'get-roots-list']) {
    check(tools.includes(`${prefix}${needs}`), `the client's capabilities did not reach the server: no ${prefix}${needs} in ${JSON.stringify(tools)}`);
  }

  step = 'progress';
  let progressed = 0;
  const long = await client.callTool(
    { name: `${prefix}trigger-long-running-operation`, arguments: { duration: 0.3, steps: 3 } },
    undefined,
    { onprogress: () => { progressed += 1; } },
  );
  check(!long.isError && progressed === 3, `${progressed} progress notifications, answer ${JSON.stringify(long)}`);

  step = 'sampling';
  const sampled = await client.callTool({ name: `${prefix}trigger-sampling-request`, arguments: { prompt: 'hi' } });
  check(JSON.stringify(sampled.content).includes('sampled-through-the-gateway'), JSON.stringify(sampled));

  step = 'elicitation';
  const elicited = await client.callTool({ name: `${prefix}trigger-elicitation-request`, arguments: {} });
  check(JSON.stringify(elicited.content).includes('elicited-through-the-gateway'), JSON.stringify(elicited));

  step = 'roots';
  const rooted = await client.callTool({ name: `${prefix}get-roots-list`, arguments: {} });
  check(JSON.stringify(rooted.content).includes('file:///aggregated-root'), JSON.stringify(rooted));

  step = 'prompts';
  const prompts = (await client.listPrompts()).prompts.map((p) => p.name);
  check(prompts.length > 0 && prompts.every((name) => name.startsWith(`${prefix}`)), `prompts not named as expected: ${JSON.stringify(prompts)}`);
  const simple = await client.getPrompt({ name: `${prefix}simple-prompt` });
  check(simple.messages?.length > 0, `prompts/get answered ${JSON.stringify(simple)}`);

  step = 'completion';
  const completed = await client.complete({
    ref: { type: 'ref/prompt', name: `${prefix}completable-prompt` },
    argument: { name: 'department', value: 'Eng' },
  });
  check(completed.completion?.values?.includes('Engineering'), `completion answered ${JSON.stringify(completed)}`);

  step = 'resources';
  const resources = (await client.listResources()).resources;
  check(resources.length > 0, 'resources/list is empty');
  const read = await client.readResource({ uri: resources[0].uri });
  check(read.contents?.[0]?.uri === resources[0].uri, `resources/read answered ${JSON.stringify(read).slice(0, 200)}`);
  const templates = (await client.listResourceTemplates()).resourceTemplates;
  check(Array.isArray(templates), 'resources/templates/list answered no list');
  await client.subscribeResource({ uri: resources[0].uri });
  await client.unsubscribeResource({ uri: resources[0].uri });

  step = 'ping';
  await client.ping();

  step = 'logging';
  await client.setLoggingLevel('info');

  step = 'close';
  await transport.terminateSession();
  await client.close();
  console.log(JSON.stringify({ ok: true, tools: tools.length, prompts: prompts.length, resources: resources.length, templates: templates.length, asked, progressed }));
  process.exit(0);
} catch (error) {
  fail(error?.message ?? String(error));
}
