/** Generation: sampling, stop strings, streaming, batching, cancellation, and the CLI's JSON contract. */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { Sampler } from '../src/engine/sampling.js';
import { StopMatcher } from '../src/engine/stop.js';
import { bundledModel, golden, kivi, MODEL_DIR, tmpDir } from './helpers.js';

const PROMPT = 'The President of the United States said that';

test('seeded sampling is reproducible; top-k 1 is greedy', async () => {
  const m = await bundledModel();
  const a = await m.complete(PROMPT, { maxTokens: 12, temperature: 0.9, topP: 0.95, seed: 7, ignoreEos: true });
  const b = await m.complete(PROMPT, { maxTokens: 12, temperature: 0.9, topP: 0.95, seed: 7, ignoreEos: true });
  const c = await m.complete(PROMPT, { maxTokens: 12, temperature: 0.9, topP: 0.95, seed: 8, ignoreEos: true });
  assert.deepEqual(a.ids, b.ids);
  assert.notDeepEqual(a.ids, c.ids);
  const greedy = await m.complete(PROMPT, { maxTokens: 12, ignoreEos: true });
  const topk1 = await m.complete(PROMPT, { maxTokens: 12, temperature: 1.3, topK: 1, seed: 3, ignoreEos: true });
  assert.deepEqual(topk1.ids, greedy.ids);
});

test('sampler: top-k and top-p restrict the candidates', () => {
  const logits = Float32Array.from([5, 4, 3, -10, -10, -10]);
  const seen = new Set<number>();
  const s = new Sampler({ temperature: 1, topK: 2, seed: 1 });
  for (let i = 0; i < 500; i++) seen.add(s.sample(logits));
  assert.deepEqual([...seen].sort(), [0, 1]);
  // p(0) ≈ 0.665: top-p 0.5 keeps only token 0.
  const p = new Sampler({ temperature: 1, topP: 0.5, seed: 1 });
  for (let i = 0; i < 200; i++) assert.equal(p.sample(logits), 0);
  // Frequencies follow the softmax.
  const f = new Sampler({ temperature: 1, seed: 2 });
  let zeros = 0;
  for (let i = 0; i < 4000; i++) if (f.sample(logits) === 0) zeros++;
  assert.ok(Math.abs(zeros / 4000 - 0.665) < 0.03, `${zeros / 4000}`);
});

test('stop matcher holds back partial matches and cuts at the stop string', () => {
  const s = new StopMatcher(['END', '\n\n']);
  assert.deepEqual(s.push('Hello E'), { emit: 'Hello ', stopped: false });
  assert.deepEqual(s.push('N'), { emit: '', stopped: false });
  assert.deepEqual(s.push('x'), { emit: 'ENx', stopped: false });
  assert.deepEqual(s.push(' a\n'), { emit: ' a', stopped: false });
  assert.deepEqual(s.push('\nmore'), { emit: '', stopped: true });
  assert.equal(s.fullText, 'Hello ENx a');
});

test('stop strings end generation; streamed chunks add up to the text', async () => {
  const m = await bundledModel();
  const full = await m.complete(PROMPT, { maxTokens: 30, ignoreEos: true });
  const words = full.text.trim().split(/\s+/);
  const stop = words[Math.min(4, words.length - 1)]!;
  let streamed = '';
  const it = m.generate(PROMPT, { maxTokens: 30, ignoreEos: true, stop: [stop] });
  let r = await it.next();
  while (!r.done) {
    streamed += r.value.text;
    r = await it.next();
  }
  assert.equal(r.value.finishReason, 'stop');
  assert.equal(streamed, r.value.text);
  assert.equal(r.value.text, full.text.slice(0, full.text.indexOf(stop)));
});

test('batched generation gives every sequence exactly what it gets alone', async () => {
  const m = await bundledModel();
  const prompts = ['Once upon a time', 'The pass key is 12345. Remember it.', PROMPT, 'import os\nimport'];
  const alone = [];
  for (const p of prompts) alone.push(await m.complete(p, { maxTokens: 10 + alone.length * 3, ignoreEos: true, kv: 'kivi2' }));
  const together = await Promise.all(prompts.map((p, i) => m.complete(p, { maxTokens: 10 + i * 3, ignoreEos: true, kv: 'kivi2' })));
  for (let i = 0; i < prompts.length; i++) assert.deepEqual(together[i]!.ids, alone[i]!.ids, prompts[i]);
  assert.equal(m.engine.size, 0);
});

test('aborting or abandoning a generation frees its cache', async () => {
  const m = await bundledModel();
  const ac = new AbortController();
  const it = m.generate(PROMPT, { maxTokens: 50, signal: ac.signal, ignoreEos: true });
  await it.next();
  ac.abort();
  let r = await it.next();
  while (!r.done) r = await it.next();
  assert.equal(r.value.finishReason, 'abort');
  assert.ok(r.value.ids.length < 50);
  assert.equal(m.engine.size, 0);
  // Breaking out of a for-await loop cancels too.
  for await (const _ of m.generate(PROMPT, { maxTokens: 50 })) break;
  assert.equal(m.engine.size, 0);
});

test('CLI generate --json prints the documented fields; kv_bytes for kivi2 is ≥ 3.4× below fp16 on a 2000-token prompt', () => {
  const tmp = tmpDir();
  const file = path.join(tmp, 'prompt.json');
  const G = golden();
  // A real 2000-token prompt: the longest golden pass-key prompt.
  const { prompt, key } = G.passkey.find((p) => p.prompt.length === 2000)!;
  fs.writeFileSync(file, JSON.stringify(prompt));
  const run = (kv: string) => {
    const r = kivi(['generate', '--model', MODEL_DIR, '--prompt-ids', file, '--max-tokens', '6', '--ignore-eos', '--kv', kv, '--json']);
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 1);
    return JSON.parse(lines[0]!);
  };
  const fp16 = run('fp16');
  const kivi2 = run('kivi2');
  const kivi2f = run('kivi:k=2,v=2,g=32,r=128,residual=fp32');
  for (const j of [fp16, kivi2, kivi2f]) {
    for (const k of ['ids', 'text', 'prompt_tokens', 'kv', 'kv_bytes', 'prefill_tokens_per_s', 'decode_tokens_per_s']) assert.ok(k in j, k);
    assert.equal(j.prompt_tokens, 2000);
    assert.equal(j.ids.length, 6);
    assert.ok(j.prefill_tokens_per_s > 0 && j.decode_tokens_per_s > 0);
  }
  assert.equal(kivi2.kv, 'kivi2');
  // fp16: 2005 tokens × 8 layers × 2 (K,V) × 2 kv heads × 128 × 2 bytes.
  assert.equal(fp16.kv_bytes, 2005 * 8 * 2 * 2 * 128 * 2);
  assert.ok(fp16.kv_bytes / kivi2.kv_bytes >= 3.4, `fp16/kivi2 = ${fp16.kv_bytes / kivi2.kv_bytes}`);
  // The named kivi2 keeps its residual in float16: smaller than with the reference's float32 residual.
  assert.ok(kivi2.kv_bytes < kivi2f.kv_bytes);
  for (const j of [fp16, kivi2, kivi2f]) assert.ok(j.text.trim().startsWith(key), `${j.kv}: ${j.text}`);
});
