// openai-node against the gateway: `node scenarios.mjs NAME...` runs the named scenarios (all
// at once, in one process, so the suite pays Node's start-up once) and prints one JSON object
// {name: {ok: true, value} | {ok: false, error}} to stdout for tests/interop/test_node_sdk.py.
// Env: INTEROP_BASE_URL (the gateway, ending in /v1), INTEROP_TOKENS (JSON {team: token}).
import OpenAI, { toFile } from "openai";
import { zodResponseFormat, zodTextFormat } from "openai/helpers/zod";
import { z } from "zod";

const BASE_URL = process.env.INTEROP_BASE_URL;
const TOKENS = JSON.parse(process.env.INTEROP_TOKENS ?? "{}");
const MODEL = "gpt-4o-mini";
const MESSAGES = [{ role: "user", content: "Name three colours." }];
const CUT = { "x-mock-drop-after-chunks": "5" };

function client(team = "ml", options = {}) {
  return new OpenAI({ baseURL: BASE_URL, apiKey: TOKENS[team], maxRetries: 0, ...options });
}

// A fetch that counts the SDK's attempts and keeps a copy of every response body it reads.
function recordingFetch() {
  const calls = [];
  const fetchFn = async (url, init) => {
    const response = await fetch(url, init);
    const call = { status: response.status, body: Promise.resolve(null) };
    calls.push(call);
    if (!response.body) return response;
    const [forSdk, forTest] = response.body.tee();
    call.body = new Response(forTest).text().catch((e) => `<read failed: ${e}>`);
    return new Response(forSdk, {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  };
  return { fetchFn, calls };
}

function describeError(e) {
  return {
    name: e?.constructor?.name ?? typeof e,
    isAPIError: e instanceof OpenAI.APIError,
    status: e?.status ?? null,
    code: e?.code ?? null,
    type: e?.type ?? null,
    param: e?.param ?? null,
    message: String(e?.message ?? e),
  };
}

async function thrown(promise) {
  try {
    await promise;
  } catch (e) {
    return describeError(e);
  }
  return null;
}

// A valid 8 kHz mono 16-bit WAV of silence, enough for a transcription endpoint to accept.
function silentWav(samples = 800) {
  const data = Buffer.alloc(samples * 2);
  const header = Buffer.alloc(44);
  header.write("RIFF", 0);
  header.writeUInt32LE(36 + data.length, 4);
  header.write("WAVEfmt ", 8);
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20);
  header.writeUInt16LE(1, 22);
  header.writeUInt32LE(8000, 24);
  header.writeUInt32LE(16000, 28);
  header.writeUInt16LE(2, 32);
  header.writeUInt16LE(16, 34);
  header.write("data", 36);
  header.writeUInt32LE(data.length, 40);
  return Buffer.concat([header, data]);
}

const WEATHER = {
  name: "get_weather",
  description: "Current weather in a city.",
  parameters: {
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
    additionalProperties: false,
  },
  strict: true,
};

const scenarios = {
  async models() {
    const ids = [];
    for await (const model of client().models.list()) ids.push(model.id);
    return { ids };
  },

  async chat() {
    const completion = await client().chat.completions.create({ model: MODEL, messages: MESSAGES });
    const choice = completion.choices[0];
    return { content: choice.message.content, finish: choice.finish_reason, usage: completion.usage };
  },

  async reasoning() {
    const chat = await client().chat.completions.create({ model: "o3-mini", messages: MESSAGES });
    const response = await client().responses.create({ model: "o3-mini", input: "Think first." });
    return {
      chat: chat.usage.completion_tokens_details?.reasoning_tokens ?? null,
      responses: response.usage.output_tokens_details?.reasoning_tokens ?? null,
    };
  },

  async images() {
    const result = await client().images.generate({ model: "gpt-image-1", prompt: "a dot" });
    return { b64: result.data[0].b64_json?.length ?? 0, usage: result.usage ?? null };
  },

  async timeout() {
    const error = await thrown(
      client("ml", { timeout: 200 }).chat.completions.create(
        { model: MODEL, messages: MESSAGES },
        { headers: { "x-mock-first-byte-delay-ms": "1000" } },
      ),
    );
    return { error };
  },

  async chat_stream() {
    const run = async (extra) => {
      const stream = await client().chat.completions.create({
        model: MODEL,
        messages: MESSAGES,
        stream: true,
        ...extra,
      });
      const chunks = [];
      for await (const chunk of stream) chunks.push(chunk);
      return {
        chunks: chunks.length,
        text: chunks.map((c) => c.choices[0]?.delta?.content ?? "").join(""),
        usageChunks: chunks.filter((c) => c.usage).length,
        last: { choices: chunks.at(-1).choices.length, usage: chunks.at(-1).usage ?? null },
      };
    };
    return {
      withUsage: await run({ stream_options: { include_usage: true } }),
      plain: await run({}),
    };
  },

  async chat_stream_cut() {
    const stream = await client().chat.completions.create(
      { model: MODEL, messages: MESSAGES, stream: true },
      { headers: CUT },
    );
    let received = 0;
    const error = await thrown(
      (async () => {
        for await (const _ of stream) received += 1;
      })(),
    );
    return { received, error };
  },

  async responses() {
    const response = await client().responses.create({ model: MODEL, input: "Name three colours." });
    return { status: response.status, text: response.output_text, usage: response.usage };
  },

  async responses_stream() {
    const stream = await client().responses.create({ model: MODEL, input: "Colours?", stream: true });
    const events = [];
    for await (const event of stream) events.push(event);
    return {
      types: events.map((e) => e.type),
      sequence: events.map((e) => e.sequence_number),
      usage: events.at(-1).response?.usage ?? null,
    };
  },

  async responses_stream_cut() {
    const { fetchFn, calls } = recordingFetch();
    const stream = await client("ml", { fetch: fetchFn }).responses.create(
      { model: MODEL, input: "cut", stream: true },
      { headers: CUT },
    );
    const events = [];
    const error = await thrown(
      (async () => {
        for await (const event of stream) events.push(event);
      })(),
    );
    return { events, error, raw: await calls.at(-1).body };
  },

  async embeddings() {
    const sizes = {};
    for (const model of ["text-embedding-3-small", "text-embedding-3-large"]) {
      // The SDK's default asks for base64 and decodes it to floats itself.
      const decoded = await client().embeddings.create({ model, input: "size" });
      const floats = await client().embeddings.create({
        model,
        input: "size",
        encoding_format: "float",
      });
      const [a, b] = [decoded.data[0].embedding, floats.data[0].embedding];
      sizes[model] = {
        default: a.length,
        float: b.length,
        same: a.length === b.length && a.every((x, i) => x === b[i]),
        usage: floats.usage,
      };
    }
    return sizes;
  },

  async embeddings_dimensions() {
    const sizes = {};
    for (const [model, dimensions] of [
      ["text-embedding-3-small", 256],
      ["text-embedding-3-large", 1024],
    ]) {
      const result = await client().embeddings.create({ model, input: "short", dimensions });
      sizes[model] = result.data[0].embedding.length;
    }
    return sizes;
  },

  async errors() {
    const request = { model: MODEL, messages: MESSAGES };
    const bad = new OpenAI({ baseURL: BASE_URL, apiKey: "not-a-token", maxRetries: 0 });
    return {
      auth: await thrown(bad.chat.completions.create(request)),
      permission: await thrown(client("web").chat.completions.create({ ...request, model: "gpt-5" })),
      badRequest: await thrown(client().chat.completions.create({ ...request, max_tokens: -1 })),
    };
  },

  async quota() {
    const capped = client("capped-node");
    const request = { model: MODEL, messages: MESSAGES };
    return {
      first: await thrown(capped.chat.completions.create(request)),
      second: await thrown(capped.chat.completions.create(request)),
    };
  },

  async retries() {
    const { fetchFn, calls } = recordingFetch();
    const error = await thrown(
      client("ml", { fetch: fetchFn, maxRetries: 1 }).chat.completions.create(
        { model: MODEL, messages: MESSAGES },
        { headers: { "x-mock-status": "500" } },
      ),
    );
    return { error, attempts: calls.length };
  },

  async tools() {
    const sdk = client();
    const messages = [{ role: "user", content: "What is the weather in Paris?" }];
    const tools = [{ type: "function", function: WEATHER }];
    const first = await sdk.chat.completions.create({ model: MODEL, messages, tools });
    const message = first.choices[0].message;
    const call = message.tool_calls?.[0];
    messages.push(message, {
      role: "tool",
      tool_call_id: call.id,
      content: JSON.stringify({ celsius: 21 }),
    });
    const second = await sdk.chat.completions.create({ model: MODEL, messages, tools });
    // The SDK's own agent loop: it runs the function and sends the result back by itself.
    const called = [];
    const runner = sdk.chat.completions.runTools({
      model: MODEL,
      messages: [{ role: "user", content: "Weather in Oslo?" }],
      tools: [
        {
          type: "function",
          function: {
            ...WEATHER,
            parse: JSON.parse,
            function: (args) => {
              called.push(args);
              return { celsius: 3 };
            },
          },
        },
      ],
    });
    const finalContent = await runner.finalContent();
    return {
      first: { finish: first.choices[0].finish_reason, name: call.function.name, arguments: call.function.arguments },
      second: { finish: second.choices[0].finish_reason, content: second.choices[0].message.content },
      runner: { called, finalContent },
    };
  },

  async structured() {
    const Event = z.object({
      name: z.string(),
      day: z.enum(["mon", "tue", "wed"]),
      guests: z.number().int(),
    });
    const completion = await client().chat.completions.parse({
      model: MODEL,
      messages: [{ role: "user", content: "Plan a party." }],
      response_format: zodResponseFormat(Event, "event"),
    });
    const response = await client().responses.parse({
      model: MODEL,
      input: "Plan a party.",
      text: { format: zodTextFormat(Event, "event") },
    });
    return { parsed: completion.choices[0].message.parsed, responses: response.output_parsed };
  },

  async files() {
    const sdk = client();
    const content = '{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n';
    const created = await sdk.files.create({
      file: await toFile(Buffer.from(content), "batch.jsonl"),
      purpose: "batch",
    });
    const downloaded = await (await sdk.files.content(created.id)).text();
    const retrieved = await sdk.files.retrieve(created.id);
    return { created, retrieved, same: downloaded === content };
  },

  async transcription() {
    const result = await client().audio.transcriptions.create({
      model: "whisper-1",
      file: await toFile(silentWav(), "silence.wav"),
    });
    return { text: result.text };
  },
};

const names = process.argv.slice(2);
const unknown = names.filter((name) => !(name in scenarios));
if (unknown.length) {
  console.error(`unknown scenarios: ${unknown.join(", ")}`);
  process.exit(2);
}
const entries = await Promise.all(
  names.map(async (name) => {
    try {
      return [name, { ok: true, value: await scenarios[name]() }];
    } catch (e) {
      return [name, { ok: false, error: { ...describeError(e), stack: String(e?.stack ?? "") } }];
    }
  }),
);
process.stdout.write(JSON.stringify(Object.fromEntries(entries)));
