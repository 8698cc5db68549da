// An MCP client built on the official TypeScript SDK, for
// TestMCPNpmEndToEnd (cmd/meshagent/mcp_npm_e2e_test.go). It launches
// `meshagent mcp` over stdio, as any MCP host would, does what the test
// asks, and prints one JSON summary on stdout for the test to check. It
// decides nothing: the Go test holds the expectations.
//
//   node client.mjs '{"meshagent": BIN, "args": [...], "want": [TOOL...],
//     "echo": TOOL, "sum": TOOL, "read": TOOL, "path": FILE,
//     "long": TOOL, "longCall": {"to": AGENT, "action": SCOPE},
//     "refused": {"to": AGENT, "action": SCOPE}}'
//
// Plain ESM JavaScript: no build step.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const cfg = JSON.parse(process.argv[2]);
const deadline = Date.now() + (cfg.deadline_ms ?? 40000);

function textOf(res) {
  return (res.content ?? [])
    .filter((c) => c.type === "text")
    .map((c) => c.text)
    .join("");
}

function summary(res) {
  return { isError: res.isError === true, text: textOf(res), structured: res.structuredContent ?? null };
}

// until retries f (which returns a value, or throws) until it returns a
// value that ok accepts, or the deadline passes.
async function until(what, f, ok) {
  let last;
  for (;;) {
    try {
      last = await f();
      if (ok(last)) return last;
    } catch (e) {
      last = String(e);
    }
    if (Date.now() > deadline) {
      throw new Error(`${what}: still ${JSON.stringify(last)} at the deadline`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

const out = { ms: {} };
const t0 = Date.now();
const mark = (what) => (out.ms[what] = Date.now() - t0);
const transport = new StdioClientTransport({ command: cfg.meshagent, args: cfg.args, stderr: "inherit" });
const client = new Client({ name: "meshagent-npm-e2e", version: "1.0.0" });
try {
  await client.connect(transport);
  out.server = client.getServerVersion();
  mark("connect");

  // The per-action tools come from alice's advertisements, once her
  // daemon advertises them and `meshagent mcp` polled the mesh.
  const tools = await until(
    "tools/list",
    async () => (await client.listTools()).tools,
    (ts) => cfg.want.every((w) => ts.some((t) => t.name === w)),
  );
  out.tools = tools.map((t) => ({ name: t.name, title: t.title ?? null, description: t.description ?? "", inputSchema: t.inputSchema }));
  mark("tools");

  // Calls through the per-action tools. The first may still find no
  // handler, so echo is retried until it succeeds.
  const echo = await until(
    "echo",
    async () => summary(await client.callTool({ name: cfg.echo, arguments: { message: "hello across the mesh" } })),
    (r) => !r.isError,
  );
  out.echo = echo;
  mark("echo");
  out.sum = summary(await client.callTool({ name: cfg.sum, arguments: { a: 19, b: 23 } }));
  out.read = summary(await client.callTool({ name: cfg.read, arguments: { path: cfg.path } }));
  mark("read");

  // Refused by the mesh: an error result with the reason code, never a
  // protocol error.
  out.refused = summary(
    await client.callTool({ name: "mesh_call", arguments: { to: cfg.refused.to, action: cfg.refused.action, body: "{}" } }),
  );
  mark("refused");

  // A long call with a progress token (the SDK sets _meta.progressToken
  // when onprogress is given), through mesh_call and through the
  // per-action tool, at once: each notification must reach its own call.
  const longCall = async (name, args) => {
    const progress = [];
    const res = await client.callTool({ name, arguments: args }, undefined, {
      onprogress: (p) => progress.push(p),
      timeout: 30000,
    });
    return { ...summary(res), progress };
  };
  const longArgs = { duration: 3, steps: 6 };
  [out.long, out.longTool] = await Promise.all([
    longCall("mesh_call", { to: cfg.longCall.to, action: cfg.longCall.action, body: JSON.stringify(longArgs) }),
    longCall(cfg.long, longArgs),
  ]);
  mark("long");
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e && e.stack ? e.stack : e);
} finally {
  await client.close().catch(() => {});
}
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(out.ok ? 0 : 1);
