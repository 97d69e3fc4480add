/** Shared by the server tests: a server on a free port, an openai client, /metrics reads. */
import OpenAI from 'openai';
import { KiviServer, type ServeOptions } from '../src/server/app.js';
import { parseMetrics } from '../src/server/metrics.js';
import { bundledModel } from './helpers.js';

export const MODEL_NAME = 'llama-28m-gqa';

export async function startServer(opts: ServeOptions = {}): Promise<KiviServer> {
  return KiviServer.start(await bundledModel(), { port: 0, ...opts });
}

/** An OpenAI client that reports 429s instead of retrying them. */
export function client(server: KiviServer): OpenAI {
  return new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
}

export async function metrics(server: KiviServer): Promise<Map<string, number>> {
  const r = await fetch(`${server.url}/metrics`);
  return parseMetrics(await r.text());
}

export async function metric(server: KiviServer, name: string): Promise<number> {
  const v = (await metrics(server)).get(name);
  if (v === undefined) throw new Error(`no metric ${name}`);
  return v;
}

/** Poll until `cond` holds (the engine steps between event-loop turns). */
export async function until(cond: () => Promise<boolean> | boolean, what: string, ms = 20000): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// biome-ignore lint/suspicious/noExplicitAny: tests read the server's JSON answers field by field
export async function postJson(server: KiviServer, route: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: any }> {
  const r = await fetch(`${server.url}${route}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: r.status, json };
}
