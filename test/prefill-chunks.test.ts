/**
 * Chunked and continued prefill: a prompt prefilled in chunks on a grid, and a sequence started from a
 * cache restored at a chunk boundary, build bit for bit the same cache and the same tokens (logits too)
 * as the cold chunked run; admission reserves the chunked schedule exactly; the library continues a
 * saved prefix only for a prompt that begins with its tokens.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { KiviModel } from '../src/api.js';
import { peakAllocatedBytes } from '../src/cache/budget.js';
import { parseKvSpec } from '../src/cache/spec.js';
import type { KvCache } from '../src/cache/types.js';
import type { Sequence } from '../src/engine/batch.js';
import { chunkEnds } from '../src/engine/chunks.js';
import { Scheduler } from '../src/server/scheduler.js';
import { KiviError } from '../src/util/errors.js';
import { bundledModel, golden } from './helpers.js';

const G = golden();
const PROMPT = G.windows[1]!.slice(0, 300);
const B = 64;

async function finish(seq: Sequence) {
  const it = seq.stream();
  for (;;) {
    const r = await it.next();
    if (r.done) return r.value;
  }
}

function argmaxOf(a: Float32Array): number {
  let b = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[b]!) b = i;
  return b;
}

/** Prefill `ids` from cache.length in chunks on the grid, then `steps` greedy decode steps: every logits row. */
async function run(m: KiviModel, cache: KvCache, ids: number[], steps: number): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  let t = cache.length;
  for (const end of chunkEnds(t, ids.length, [B])) {
    const [l] = await m.forward([{ tokens: ids.slice(t, end), cache, logits: end === ids.length ? 'last' : 'none', mode: 'prefill' }]);
    t = end;
    if (l) out.push(l as Float32Array);
  }
  for (let i = 0; i < steps; i++) {
    const [l] = await m.forward([{ tokens: [argmaxOf(out.at(-1)!)], cache, logits: 'last' }]);
    out.push(l as Float32Array);
  }
  return out;
}

test('chunk ends: multiples of every grid, and the prompt end', () => {
  assert.deepEqual(chunkEnds(0, 300, [64]), [64, 128, 192, 256, 300]);
  assert.deepEqual(chunkEnds(192, 300, [64]), [256, 300]);
  assert.deepEqual(chunkEnds(0, 300, [128, 100]), [100, 128, 200, 256, 300]);
  assert.deepEqual(chunkEnds(0, 300, []), [300]);
  assert.deepEqual(chunkEnds(300, 300, [64]), []);
});

for (const kv of ['fp16', 'kivi2', 'kivi4']) {
  test(`${kv}: a cache restored at a block boundary and continued is bit for bit the cold chunked prefill (cache, logits, tokens)`, async () => {
    const m = await bundledModel();
    // The forward pass: logits of the last chunk and of 12 decode steps.
    const cold = m.newCache(kv);
    const coldLogits = await run(m, cold, PROMPT, 12);
    const part = m.newCache(kv);
    await run(m, part, PROMPT.slice(0, 3 * B), 0);
    const restored = await m.restoreCache(await m.saveCache(part), kv);
    part.free();
    const warmLogits = await run(m, restored, PROMPT, 12);
    coldLogits.forEach((l, i) => {
      assert.deepEqual(warmLogits[i], l, `logits row ${i}`);
    });
    assert.deepEqual(await m.saveCache(restored), await m.saveCache(cold), 'the same cache after the same tokens');
    cold.free();
    restored.free();

    // The engine: the cold run saves an image after every chunk; a run restored from each block boundary,
    // batched with an unrelated sequence, ends its prefill with the same cache and generates the same ids.
    const images = new Map<number, Uint8Array>();
    const save = async (seq: Sequence, length: number) => {
      const file = await m.saveCache(seq.cache);
      if (!seq.done) images.set(length, file);
    };
    const ref = await finish(m.engine.add(PROMPT, m.newCache(kv), { maxTokens: 16, ignoreEos: true }, { grids: [B], afterChunk: save }));
    assert.deepEqual([...images.keys()], [64, 128, 192, 256, 300]);
    assert.equal(ref.reusedTokens, 0);
    for (const k of [64, 256]) {
      const endImage: Uint8Array[] = [];
      const other = m.engine.add(G.windows[0]!.slice(0, 40), m.newCache(kv), { maxTokens: 30, ignoreEos: true });
      const seq = m.engine.add(
        PROMPT,
        await m.restoreCache(images.get(k)!, kv),
        { maxTokens: 16, ignoreEos: true },
        {
          grids: [B],
          afterChunk: async (s, length) => {
            if (length === PROMPT.length) endImage.push(await m.saveCache(s.cache));
          },
        },
      );
      const [r] = await Promise.all([finish(seq), finish(other)]);
      assert.equal(r.reusedTokens, k);
      assert.deepEqual(r.ids, ref.ids, `restored at ${k}: same tokens`);
      assert.deepEqual(endImage[0], images.get(PROMPT.length), `restored at ${k}: same cache after the prompt`);
    }
    assert.equal(m.transformer.pool.allocatedBytes, 0);
  });
}

test("admission reserves the chunked schedule: a chunked request's pages peak at exactly its reservation; a restored one within it", async () => {
  const m = await bundledModel();
  const pool = m.transformer.pool;
  for (const kv of ['kivi:k=2,v=2,g=32,r=32', 'fp16']) {
    const spec = parseKvSpec(kv);
    const s = new Scheduler(m.engine, { spec, pool, budgetBytes: 1 << 30, maxQueue: 4, newCache: () => m.newCache(kv), grids: [B] });
    for (const [p, n] of [
      [200, 20],
      [64, 1],
    ] as const) {
      const ids = PROMPT.slice(0, p);
      const need = s.reservation(p, n);
      assert.equal(need, peakAllocatedBytes(spec, pool, p + n - 1, chunkEnds(0, p, [B])));
      pool.resetPeak();
      const images: Uint8Array[] = [];
      await finish(
        await s.submit(
          ids,
          { maxTokens: n, ignoreEos: true },
          {
            afterChunk: async (seq, length) => {
              if (length === B) images.push(await m.saveCache(seq.cache));
            },
          },
        ),
      );
      assert.equal(pool.peakBytes, need, `${kv} ${p}+${n}: page peak`);
      if (p > B) {
        const image = await m.restoreCache(images[0]!, kv);
        const img = await image.save();
        image.free();
        pool.resetPeak();
        await finish(await s.submit(ids, { maxTokens: n, ignoreEos: true }, { image: img }));
        assert.ok(pool.peakBytes <= need, `${kv} ${p}+${n} restored: ${pool.peakBytes} > ${need}`);
      }
      assert.equal(pool.allocatedBytes, 0);
    }
    s.close();
  }
});

test('library: generate({ prefix }) continues a saved prefix exactly, and refuses a file for other tokens', async () => {
  const m = await bundledModel();
  const sys = PROMPT.slice(0, 2 * B);
  const cache = await m.prefill(sys, { prefillChunk: B });
  const file = await m.saveCache(cache, sys);
  await assert.rejects(m.saveCache(cache, sys.slice(1)), /holds 128 tokens, not the 127 given/);
  const bare = await m.saveCache(cache);
  cache.free();
  const a = await m.complete(PROMPT, { prefix: file, prefillChunk: B, maxTokens: 12, ignoreEos: true });
  const b = await m.complete(PROMPT, { prefillChunk: B, maxTokens: 12, ignoreEos: true });
  assert.deepEqual(a.ids, b.ids);
  assert.equal(a.reusedTokens, 2 * B);
  const refused = async (prompt: number[], prefix: Uint8Array, why: RegExp) => {
    await assert.rejects(m.complete(prompt, { prefix, maxTokens: 2 }), (e: unknown) => e instanceof KiviError && why.test(e.message));
    assert.equal(m.transformer.pool.allocatedBytes, 0);
  };
  const other = [...PROMPT];
  other[5] = other[5]! + 1;
  await refused(other, file, /does not begin with the 128 tokens the prefix holds/);
  await refused(sys, file, /prefix holds 128 tokens; the prompt of 128 must be longer/);
  await refused(PROMPT, bare, /does not say which tokens it holds/);
  await refused(PROMPT, file.subarray(0, 100), /truncated/);
});

test('--prefill-chunk interleaves: a decoding sequence gains a token at every chunk of a long prompt that joins it', async () => {
  const m = await bundledModel();
  const a = m.engine.add(G.windows[0]!.slice(0, 20), m.newCache('kivi2'), { maxTokens: 40, ignoreEos: true });
  const ait = a.stream();
  await ait.next(); // a is decoding
  const before = a.ids.length;
  const b = m.engine.add(PROMPT, m.newCache('kivi2'), { maxTokens: 1, ignoreEos: true, prefillChunk: B });
  let during = -1;
  b.onEnd(() => (during = a.ids.length - before));
  const rb = await finish(b);
  // 300 tokens in chunks of 64: 5 steps, each also decoding a.
  assert.equal(during, 5);
  assert.equal(rb.ids.length, 1);
  const ref = await m.complete(PROMPT, { kv: 'kivi2', maxTokens: 1, prefillChunk: B });
  assert.deepEqual(rb.ids, ref.ids);
  a.cancel();
  assert.equal(m.transformer.pool.allocatedBytes, 0);
});
