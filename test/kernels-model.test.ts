/**
 * The WebAssembly back end end to end on the bundled model: golden streaming NLLs, and the promise that
 * threads and batching never change a result (bitwise logits, identical greedy ids).
 */

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { KiviModel } from '../src/api.js';
import { parseKvSpec } from '../src/cache/spec.js';
import { streamingNll } from '../src/studies/eval/nll.js';
import { golden as loadGolden, referenceKv } from './helpers.js';

const MODEL = 'models/llama-28m-gqa';
const golden = loadGolden();

let m2: KiviModel;
let m1: KiviModel;
before(async () => {
  m2 = await KiviModel.load(MODEL, { backend: 'wasm', threads: 2 });
  m1 = await KiviModel.load(MODEL, { backend: 'wasm', threads: 1 });
});
after(() => {
  m2.dispose();
  m1.dispose();
});

for (const [kv, tol] of [
  ['fp32', 2e-3],
  ['kivi2', 5e-3],
] as const) {
  test(`wasm streaming NLL reproduces the golden ${kv} values (±${tol} nats)`, async () => {
    assert.equal(m2.backend.name, 'wasm');
    // The reference's arithmetic: a KIVI residual in float32.
    const nll = await streamingNll(m2.transformer, golden.windows, parseKvSpec(referenceKv(kv)), { prefill: 512 });
    nll.forEach((v, i) => {
      assert.ok(Math.abs(v - golden.nll[kv]![i]!) <= tol, `window ${i}: ${v} vs golden ${golden.nll[kv]![i]}`);
    });
  });
}

test('threads never change results: prefill and decode logits are bitwise equal on 1 and 2 threads', async () => {
  const ids = golden.windows[1]!;
  for (const kv of ['fp32', 'kivi2', 'kivi4', 'fp16']) {
    const logits: Buffer[] = [];
    for (const m of [m1, m2]) {
      const cache = m.newCache(kv);
      try {
        const [a] = await m.forward([{ tokens: ids.slice(0, 300), cache, logits: 'last' }]);
        const [b] = await m.forward([{ tokens: ids.slice(300, 340), cache, logits: 'all' }]);
        logits.push(Buffer.concat([Buffer.from((a as Float32Array).buffer), Buffer.from((b as Float32Array).buffer)]));
      } finally {
        cache.free();
      }
    }
    assert.ok(logits[0]!.equals(logits[1]!), `${kv}: 1 vs 2 threads`);
  }
});

test('batching never changes results: greedy ids of concurrent sequences equal each alone', async () => {
  const w = golden.windows[0]!;
  const prompts = [w.slice(0, 131), w.slice(200, 400), w.slice(500, 757)];
  for (const kv of ['fp32', 'kivi2']) {
    const opts = { maxTokens: 24, temperature: 0, ignoreEos: true, kv };
    const alone: number[][] = [];
    for (const p of prompts) alone.push((await m2.complete(p, opts)).ids);
    const together = await Promise.all(prompts.map((p) => m2.complete(p, opts)));
    together.forEach((r, i) => {
      assert.deepEqual(r.ids, alone[i], `${kv}: sequence ${i} batched vs alone`);
    });
  }
});

test('wasm greedy decoding reproduces the golden fp32 ids', async () => {
  const r = await m2.complete(golden.greedy.prompt, { maxTokens: 64, temperature: 0, ignoreEos: true, kv: 'fp32' });
  assert.deepEqual(r.ids, golden.greedy.out.fp32);
});
