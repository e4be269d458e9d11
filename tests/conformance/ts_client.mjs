// A TypeScript-SDK client (the SDK that the Inspector, Claude Code, VS Code and Cursor build on)
// against a real `vlm-agent serve`: every tool, resource, prompt and completion, and every kind of
// error, with the SDK's own checks on (callTool validates structured content against the tool's
// output schema once tools/list has been read).
//
// node ts_client.mjs PLAN.json  ->  one JSON object on stdout, one entry per transport in the plan:
//   {"stdio": {"command", "args", "env"}, "http": {"url", "token"}, "image", "missing", "outside"}

import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));
// Tiny models on a busy machine: generous, and reset by every progress notification.
const slow = { timeout: 300_000, resetTimeoutOnProgress: true };

function shape(result) {
  return {
    isError: result.isError === true,
    text: result.content.filter((block) => block.type === "text").map((block) => block.text).join("\n"),
    types: result.content.map((block) => block.type),
    links: result.content.filter((block) => block.type === "resource_link").map((block) => block.uri),
    structured: result.structuredContent ?? null,
    meta: result._meta ?? null,
  };
}

// What a user of this SDK gets: the result, or the error the SDK (or the server) raised.
async function attempt(work) {
  try {
    return { ok: await work() };
  } catch (error) {
    return { thrown: { code: error.code ?? null, message: String(error.message ?? error) } };
  }
}

async function session(transport) {
  const client = new Client({ name: "vlm-agent-ts-test", version: "1.0.0" });
  await client.connect(transport);
  const out = { protocolVersion: transport.protocolVersion ?? null };
  try {
    const tools = await client.listTools();
    out.tools = tools.tools.map((tool) => ({ name: tool.name, outputSchema: Boolean(tool.outputSchema) }));
    const progress = { describe: 0 };
    const call = (name, args, onprogress) =>
      attempt(async () => shape(await client.callTool({ name, arguments: args }, undefined, { ...slow, onprogress })));
    out.calls = {
      describe: await call("describe", { images: [plan.image], prompt: "What is it?", max_new_tokens: 4 },
        () => { progress.describe += 1; }),
      ocr: await call("ocr", { image: plan.image, max_new_tokens: 4 }),
      ocr_rapidocr: await call("ocr", { image: plan.image, engine: "rapidocr" }),
      detect: await call("detect", { image: plan.image, labels: ["cat"], max_new_tokens: 4 }),
      compare_budgets: await call("compare_budgets", { image: plan.image, budgets: [70, 140], max_new_tokens: 2 }),
      chat: await call("chat", { message: "What is this?", images: [plan.image], max_new_tokens: 4 }),
    };
    out.progress = progress;
    out.errors = {
      missing_file: await call("ocr", { image: plan.missing, max_new_tokens: 4 }),
      outside_allowed: await call("ocr", { image: plan.outside, max_new_tokens: 4 }),
      unknown_image_id: await call("describe", { images: ["img_0000000000000000"], max_new_tokens: 4 }),
      bad_budget: await call("describe", { images: [plan.image], budget: 123, max_new_tokens: 4 }),
      wrong_type: await call("ocr", { image: plan.image, temperature: "hot" }),
      missing_argument: await call("detect", { image: plan.image }),
      unknown_tool: await call("nope", {}),
      unknown_prompt: await attempt(() => client.getPrompt({ name: "nope", arguments: {} })),
      missing_prompt_argument: await attempt(() => client.getPrompt({ name: "read_text", arguments: {} })),
      unknown_resource: await attempt(() => client.readResource({ uri: "vlm-agent://pictures/nope.png" })),
    };
    const model = await client.readResource({ uri: "vlm-agent://model" }, slow);
    out.model = JSON.parse(model.contents[0].text);
    const [link] = out.calls.detect.ok?.links ?? [];
    if (link) {
      const picture = await client.readResource({ uri: link });
      out.picture = { uri: link, mimeType: picture.contents[0].mimeType, bytes: Buffer.from(picture.contents[0].blob, "base64").length };
    }
    out.resources = (await client.listResources()).resources.map((resource) => resource.uri);
    out.templates = (await client.listResourceTemplates()).resourceTemplates.map((template) => template.uriTemplate);
    out.prompts = (await client.listPrompts()).prompts.map((prompt) => prompt.name);
    const prompt = await client.getPrompt({ name: "find_objects", arguments: { image: plan.image, labels: "cat, dog" } });
    out.prompt = prompt.messages.map((message) => message.content.text ?? "");
    const completed = await client.complete({
      ref: { type: "ref/prompt", name: "describe" }, argument: { name: "budget", value: "" },
    });
    out.completion = completed.completion.values;
  } finally {
    await client.close();
  }
  return out;
}

const report = {};
if (plan.stdio) {
  report.stdio = await session(new StdioClientTransport({ ...plan.stdio, stderr: "inherit" }));
}
if (plan.http) {
  const headers = plan.http.token ? { Authorization: `Bearer ${plan.http.token}` } : {};
  report.http = await session(new StreamableHTTPClientTransport(new URL(plan.http.url), { requestInit: { headers } }));
}
process.stdout.write(JSON.stringify(report) + "\n");
