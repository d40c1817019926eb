// The MCP TypeScript SDK client against server-everything through the gateway's aggregating
// route POST /mcp (x-mcp-servers: everything): every method design §4.11 serves there, checked on
// what the reference server really answers. One JSON line on success; "FAIL step: why" and exit 1
// otherwise. Bounded to 30 s.
//
//   node aggregated.mjs GATEWAY_ORIGIN SERVER_NAME GATEWAY_KEY
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const [origin, server, key] = process.argv.slice(2);
let step = 'connect';
const fail = (why) => {
  console.log(`FAIL ${step}: ${why}`);
  process.exit(1);
};
setTimeout(() => fail('timed out after 30 s'), 30_000).unref();
const check = (ok, why) => ok || fail(why);

try {
  const client = new Client({ name: 'mcp-oauth-aggregated', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL('/mcp', origin), {
    requestInit: { headers: { 'x-mcp-servers': server, 'x-mcp-gateway-key': key } },
  }));
  const capabilities = client.getServerCapabilities() ?? {};
  for (const served of ['tools', 'prompts', 'resources', 'completions', 'logging']) {
    check(capabilities[served], `initialize does not advertise ${served}: ${JSON.stringify(capabilities)}`);
  }

  step = 'tools';
  const tools = (await client.listTools()).tools.map((t) => t.name);
  check(tools.includes(`${server}-echo`), `no ${server}-echo in ${JSON.stringify(tools)}`);
  const echoed = await client.callTool({ name: `${server}-echo`, arguments: { message: 'aggregated' } });
  check(!echoed.isError && JSON.stringify(echoed.content).includes('aggregated'), JSON.stringify(echoed));

  step = 'prompts';
  const prompts = (await client.listPrompts()).prompts.map((p) => p.name);
  check(prompts.length > 0 && prompts.every((name) => name.startsWith(`${server}-`)), `prompts not prefixed: ${JSON.stringify(prompts)}`);
  const simple = await client.getPrompt({ name: `${server}-simple-prompt` });
  check(simple.messages?.length > 0, `prompts/get answered ${JSON.stringify(simple)}`);

  step = 'completion';
  const completed = await client.complete({
    ref: { type: 'ref/prompt', name: `${server}-completable-prompt` },
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

  step = 'logging';
  await client.setLoggingLevel('info');

  await client.close();
  console.log(JSON.stringify({ ok: true, tools: tools.length, prompts: prompts.length, resources: resources.length, templates: templates.length }));
  process.exit(0);
} catch (error) {
  fail(error?.message ?? String(error));
}
