"""The stretch client of the end-to-end test: the MCP *Python* SDK (PyPI `mcp`) OAuth client.

Same contract as client.mjs, with the Python SDK's own flow: its `OAuthClientProvider` is an httpx2
auth that, on a 401, discovers, registers, calls our `redirect_handler` (the headless browser), then
our `callback_handler` (which returns code, state and the RFC 9207 `iss`, which the SDK checks
itself), and redeems the code.

    python client.py --mcp URL [--mode gateway|direct] [--gateway-key KEY] [--upstream-issuer URL]

Prints one JSON line {"ok": true, ...} and exits 0, or "FAIL <step>: ..." and exits 1.
"""

import argparse
import asyncio
import json
import logging
import sys
import time
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlparse

import httpx2
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

REDIRECT_URL = "http://127.0.0.1:53683/callback"
# The SDK logs a traceback for every failed flow; our one FAIL line says it better.
logging.getLogger("mcp").setLevel(logging.CRITICAL)

args_parser = argparse.ArgumentParser()
args_parser.add_argument("--mcp", required=True)
args_parser.add_argument("--mode", choices=["gateway", "direct"], default="gateway")
args_parser.add_argument("--gateway-key", default="")
args_parser.add_argument("--upstream-issuer", default="")
args_parser.add_argument("--upstream-client-id", default="")
args_parser.add_argument("--upstream-resource", default="")
opts = args_parser.parse_args()
mcp_url = urlparse(opts.mcp)
origin = f"{mcp_url.scheme}://{mcp_url.netloc}"
server_name = mcp_url.path.split("/")[1]
via_gateway = opts.mode == "gateway"

step = "start"
trace: list[str] = []


class StepFailure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise StepFailure(message)


def describe(response: httpx2.Response) -> str:
    body = " ".join(response.text.split())[:300]
    location = response.headers.get("location")
    return f" [{response.status_code} {response.headers.get('content-type', '')}{f' location={location}' if location else ''}] body: {body}"


# ---------------------------------------------------------------- the headless browser


class Forms(HTMLParser):
    """Every <form> of a page with its method, action and controls (input and button)."""

    def __init__(self, html: str):
        super().__init__()
        self.forms: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"method": attributes.get("method", "get").lower(), "action": attributes.get("action"), "controls": []})
        elif tag in ("input", "button") and self.forms:
            self.forms[-1]["controls"].append({"tag": tag, **attributes})


# httpx2 keeps cookies in an http.cookiejar, which (like a browser) keys them by host, not port.
browser = httpx2.AsyncClient(follow_redirects=False, timeout=10)


async def browse(url: str, form: dict | None = None) -> httpx2.Response:
    if form is None:
        response = await browser.get(url, headers={"accept": "text/html"})
    else:
        # A browser's form POST carries Origin; every form here posts to its own page's origin.
        parsed = urlparse(url)
        response = await browser.post(url, data=form, headers={"accept": "text/html", "origin": f"{parsed.scheme}://{parsed.netloc}"})
    trace.append(f"browser {'POST' if form is not None else 'GET'} {url.split('?')[0]} -> {response.status_code}")
    return response


async def gateway_consent(authorization_url: str) -> str:
    global step
    step = "gateway authorize (consent page)"
    page = await browse(authorization_url)
    check(page.status_code == 200 and page.headers.get("content-type", "").startswith("text/html"),
          f"GET /{server_name}/authorize should answer the consent page{describe(page)}")
    forms = [f for f in Forms(page.text).forms if f["method"] == "post" and f["action"] == f"/{server_name}/consent"]
    check(len(forms) == 1, f"no single consent form on the page{describe(page)}")
    fields = {c.get("name"): c.get("value") for c in forms[0]["controls"] if c.get("type") == "hidden"}
    check(fields.get("request") and fields.get("csrf"), "consent form lacks the hidden request/csrf fields")

    step = "gateway consent (approve)"
    approved = await browse(urljoin(authorization_url, forms[0]["action"]),
                            {"request": fields["request"], "csrf": fields["csrf"], "gateway_key": opts.gateway_key, "decision": "approve"})
    location = approved.headers.get("location", "")
    check(approved.status_code == 302 and location.startswith(f"{opts.upstream_issuer}/auth?"),
          f"approving consent should 302 to the upstream authorization endpoint{describe(approved)}")
    upstream = {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}
    if opts.upstream_client_id:
        check(upstream.get("client_id") == opts.upstream_client_id, f"upstream client_id={upstream.get('client_id')}")
    if opts.upstream_resource:
        check(upstream.get("resource") == opts.upstream_resource, f"upstream resource={upstream.get('resource')}, expected {opts.upstream_resource}")
    return location


async def upstream_login(url: str) -> str:
    """Follow oidc-provider's redirects and submit its forms until it leaves its origin."""
    global step
    step = "upstream login and consent (oidc-provider)"
    upstream = urlparse(url).netloc
    response = await browse(url)
    for _ in range(12):
        location = response.headers.get("location")
        if 300 <= response.status_code < 400 and location:
            url = urljoin(url, location)
            if urlparse(url).netloc != upstream:
                return url
            response = await browse(url)
        elif response.status_code == 200:
            forms = Forms(response.text).forms
            check(forms and forms[0]["method"] == "post", f"oidc-provider page has no form{describe(response)}")
            url = urljoin(url, forms[0]["action"])
            response = await browse(url, {})
        else:
            raise StepFailure(f"oidc-provider answered{describe(response)}")
    raise StepFailure("oidc-provider did not redirect back within 12 hops")


async def gateway_callback(url: str) -> str:
    global step
    step = "gateway callback"
    check(url.startswith(f"{origin}/callback?"), f"upstream redirected to {url}, not the gateway's /callback")
    response = await browse(url)
    check(response.status_code == 302, f"GET /callback should 302 to the client{describe(response)}")
    return urljoin(url, response.headers["location"])


final_redirect: str | None = None


async def redirect_handler(authorization_url: str) -> None:
    """The SDK asks the user to visit the URL: the headless browser does, up to our redirect URI."""
    global final_redirect
    trace.append(f"sdk redirect_handler {authorization_url.split('?')[0]}")
    url = await gateway_consent(authorization_url) if via_gateway else authorization_url
    url = await upstream_login(url)
    final_redirect = await gateway_callback(url) if via_gateway else url


async def callback_handler() -> AuthorizationCodeResult:
    global step
    step = "redirect to the client"
    check(final_redirect and final_redirect.startswith(f"{REDIRECT_URL}?"), f"final redirect goes to {final_redirect}")
    query = {k: v[0] for k, v in parse_qs(urlparse(final_redirect).query).items()}
    check("error" not in query, f"authorization failed: {query}")
    if via_gateway:
        check(query.get("iss") == f"{origin}/{server_name}", f"iss={query.get('iss')}, expected {origin}/{server_name}")
    step = "token exchange (the SDK checks state and iss, then redeems the code)"
    return AuthorizationCodeResult(code=query.get("code", ""), state=query.get("state"), iss=query.get("iss"))


# ---------------------------------------------------------------- the SDK's OAuth client


class MemoryStorage:
    """What a desktop client keeps between runs, in memory; every saved token pair is kept."""

    def __init__(self):
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None
        self.history: list[OAuthToken] = []

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens
        self.history.append(tokens)

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, client_info):
        self.client = client_info


async def echo(client: Client, text: str) -> str:
    result = await client.call_tool("echo", {"text": text})
    out = result.content[0].text if result.content else ""
    check(not result.is_error and out.startswith(f"echo: {text}"), f"echo returned {result}")
    return out


async def main():
    global step
    storage = MemoryStorage()
    provider = OAuthClientProvider(
        server_url=opts.mcp,
        client_metadata=OAuthClientMetadata(
            client_name="mcp-oauth e2e (Python SDK)",
            redirect_uris=[REDIRECT_URL],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )

    async def log_response(response: httpx2.Response):
        trace.append(f"sdk {response.request.method} {response.request.url} -> {response.status_code}")

    http = httpx2.AsyncClient(auth=provider, timeout=30, event_hooks={"response": [log_response]})

    step = "connect, authorize, tools/list, echo"
    async with Client(streamable_http_client(opts.mcp, http_client=http)) as client:
        tools = await client.list_tools()
        names = [t.name for t in tools.tools]
        check("echo" in names, f"tools/list has no echo: {names}")
        echoed = await echo(client, "hello from Python")
        first = storage.tokens
        check(first and first.refresh_token, "no refresh token stored")
        if via_gateway:
            check(first.access_token.startswith("mcpgw_") and first.refresh_token.startswith("mcpgw_"),
                  f"the client holds a token that is not the gateway's: {first.access_token[:12]}...")

        # Force the SDK's own refresh: mark the access token expired; the next request refreshes.
        step = "refresh (the SDK refreshes an expired access token)"
        provider.context.token_expiry_time = time.time() - 1
        await echo(client, "after refresh")
        second = storage.tokens
        check(second is not first and second.access_token != first.access_token, "no refresh happened")
        check(second.refresh_token and second.refresh_token != first.refresh_token, "the refresh token was not rotated")
        if via_gateway:
            check(second.access_token.startswith("mcpgw_"), "a refreshed token is not a gateway token")

    print(json.dumps({"ok": True, "mode": opts.mode, "sdk": "python", "tools": names, "echo": echoed,
                      "access_token_prefix": first.access_token[:6], "refresh_rotated": True}))


def report(message: str):
    print(f"FAIL {step}: {message}")
    for line in trace[-40:]:
        print(f"  trace: {line}")


def flatten(error: BaseException) -> BaseException:
    """The first leaf of an exception group (anyio task groups wrap what the SDK raised)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


try:
    asyncio.run(asyncio.wait_for(main(), timeout=60))
except BaseException as e:  # noqa: BLE001 - every failure is reported the same way
    e = flatten(e)
    if isinstance(e, StepFailure):
        report(str(e))
    elif isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        report("timed out after 60 s")
    else:
        report(f"{type(e).__name__}: {' '.join(str(e).split())[:600]}")
    sys.exit(1)
