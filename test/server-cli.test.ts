/** `kivi serve` as a process: starts, answers, shuts down cleanly on SIGTERM; bad flags are one line. */

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { CLI, expectCliError, MODEL_DIR } from './helpers.js';
import { startServer } from './server-helpers.js';

const oneLineError = (args: string[], pattern: RegExp) => expectCliError(args, pattern, 60_000);

test('kivi serve: bad flags and a busy port are one-line errors', async () => {
  oneLineError(['serve', '--model', MODEL_DIR, '--kv-budget', 'lots'], /size like 2GiB/);
  oneLineError(['serve', '--model', MODEL_DIR, '--kv', 'kivi3'], /bits must be 2, 4 or 8/);
  oneLineError(['serve', '--model', MODEL_DIR, '--port', '70000'], /integer in \[0, 65535\]/);
  oneLineError(['serve', '--model', MODEL_DIR, '--max-queue', '-1'], /integer in \[0,/);
  oneLineError(['serve', '--model', '/nonexistent/model'], /does not exist/);
  oneLineError(['serve', '--model', MODEL_DIR, '--prefix-store', 'http://127.0.0.1:6379'], /must be a redis:\/\/ or rediss:\/\/ URL/);
  oneLineError(['serve', '--model', MODEL_DIR, '--prefix-store', 'redis://127.0.0.1:6379', '--prefix-cache', '1GiB'], /give one of them/);
  oneLineError(['serve', '--model', MODEL_DIR, '--prefix-block', '64'], /needs a prefix cache/);
  oneLineError(['serve', '--model', MODEL_DIR, '--prefix-cache', '1GiB', '--prefix-block', '0'], /integer in \[1,/);
  const busy = await startServer({ kv: 'fp16' });
  try {
    const port = new URL(busy.url).port;
    oneLineError(['serve', '--model', MODEL_DIR, '--port', port], new RegExp(`port ${port} .*already in use`));
  } finally {
    await busy.close();
  }
});

test('kivi serve: serves, then SIGTERM ends the running stream, frees everything and exits 0', async () => {
  const child = spawn(process.execPath, [CLI, 'serve', '--model', MODEL_DIR, '--port', '0', '--kv-budget', '256MiB'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      const m = /serving "llama-28m-gqa" at (http:\/\/\S+) \(kv kivi2, KV budget 256\.0 MiB, queue 64\)/.exec(stderr);
      if (m) resolve(m[1]!);
    });
    child.on('exit', () => reject(new Error(`serve exited: ${stderr}`)));
  });
  assert.equal((await fetch(`${url}/health`)).status, 200);
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'llama-28m-gqa', prompt: 'The', max_tokens: 1500, stream: true }),
  });
  const reader = r.body!.getReader();
  let text = new TextDecoder().decode((await reader.read()).value);
  child.kill('SIGTERM');
  for (;;) {
    const c = await reader.read();
    if (c.done) break;
    text += new TextDecoder().decode(c.value);
  }
  const events = text.split('\n\n').filter((e) => e !== '');
  assert.equal(events.at(-1), 'data: [DONE]');
  assert.match(events.at(-2)!, /the server is shutting down/);
  assert.equal(await exited, 0);
  assert.match(stderr, /SIGTERM: shutting down/);
  assert.doesNotMatch(stderr, /internal error|\n\s+at /);
});
