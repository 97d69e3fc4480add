/**
 * Saving and restoring caches (cache/file.ts) and continuing a prefill on a cache that holds tokens: a
 * restored cache continues bit for bit as the original does; files of another model or spec, another
 * version or with corrupt bytes are refused with one line and leave nothing allocated.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { KiviModel } from '../src/api.js';
import { CACHE_FORMAT_VERSION } from '../src/cache/file.js';
import type { KvCache } from '../src/cache/types.js';
import { KiviError } from '../src/util/errors.js';
import { bundledModel, golden } from './helpers.js';

const G = golden();
const PROMPT = G.windows[0]!.slice(0, 300);
const MORE = G.windows[0]!.slice(300, 420);

/** Continue a cache: a prefill chunk, then greedy decode steps; the logits of every step, concatenated. */
async function cont(m: KiviModel, cache: KvCache, steps: number): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  const [chunk] = await m.forward([{ tokens: MORE, cache, logits: 'last', mode: 'prefill' }]);
  out.push(chunk as Float32Array);
  let next = argmaxOf(chunk as Float32Array);
  for (let i = 0; i < steps; i++) {
    const [l] = await m.forward([{ tokens: [next], cache, logits: 'last' }]);
    out.push(l as Float32Array);
    next = argmaxOf(l as Float32Array);
  }
  return out;
}

function argmaxOf(a: Float32Array): number {
  let b = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[b]!) b = i;
  return b;
}

for (const kv of ['fp16', 'kivi2', 'kivi4', 'kivi:k=2,v=2,g=32,r=128,residual=fp32', 'kivi:k=4,v=2,g=64,rot=hadamard,sink=4', 'fp32', 'fake2-kC-vT']) {
  test(`${kv}: a cache saved after a prefill and restored continues exactly as the original`, async () => {
    const m = await bundledModel();
    const a = m.newCache(kv);
    await m.forward([{ tokens: PROMPT, cache: a, logits: 'none' }]);
    const file = await m.saveCache(a);
    const b = await m.restoreCache(file, kv);
    assert.equal(b.length, a.length);
    assert.equal(b.bytes(), a.bytes());
    assert.equal(b.allocatedBytes(), a.allocatedBytes());
    assert.deepEqual(await m.saveCache(b), file, 'saving the restored cache gives the same file');
    const la = await cont(m, a, 20);
    const lb = await cont(m, b, 20);
    la.forEach((x, i) => {
      assert.deepEqual(lb[i], x, `step ${i}`);
    });
    a.free();
    b.free();
    assert.equal(m.transformer.pool.allocatedBytes, 0);
  });
}

test('a continued prefill on an fp32 cache equals one prefill of the whole (exact attention both ways)', async () => {
  const m = await bundledModel();
  const a = m.newCache('fp32');
  const b = m.newCache('fp32');
  const [whole] = await m.forward([{ tokens: [...PROMPT, ...MORE], cache: a, logits: 'last' }]);
  await m.forward([{ tokens: PROMPT, cache: b, logits: 'none' }]);
  const [parts] = await m.forward([{ tokens: MORE, cache: b, logits: 'last', mode: 'prefill' }]);
  let diff = 0;
  (whole as Float32Array).forEach((x, i) => {
    diff = Math.max(diff, Math.abs(x - (parts as Float32Array)[i]!));
  });
  assert.ok(diff < 1e-4, `max logit difference ${diff}`);
  assert.equal(b.length, PROMPT.length + MORE.length);
  a.free();
  b.free();
});

test('cache files of another spec, version or model, and corrupt or truncated ones, are refused and leave nothing allocated', async () => {
  const m = await bundledModel();
  const a = m.newCache('kivi2');
  await m.forward([{ tokens: PROMPT, cache: a, logits: 'none' }]);
  const file = await m.saveCache(a);
  a.free();
  const pool = m.transformer.pool;
  const refused = async (bytes: Uint8Array, kv: string, why: RegExp) => {
    await assert.rejects(m.restoreCache(bytes, kv), (e: unknown) => e instanceof KiviError && why.test(e.message) && !e.message.includes('\n'));
    assert.equal(pool.allocatedBytes, 0, 'nothing left allocated');
  };
  await refused(file, 'kivi4', /holds a "kivi:k=2,v=2,g=32,r=128[^"]*" cache, not "kivi:k=4/);
  const newer = file.slice();
  newer[8] = CACHE_FORMAT_VERSION + 1;
  await refused(newer, 'kivi2', new RegExp(`format version ${CACHE_FORMAT_VERSION + 1}, this kivi reads version ${CACHE_FORMAT_VERSION}`));
  // Version 1 files (residual pages of 32 slots) are refused by their version, not misread.
  const old = file.slice();
  old[8] = 1;
  await refused(old, 'kivi2', /format version 1,/);
  const flipped = file.slice();
  flipped[file.length - 100] ^= 1;
  await refused(flipped, 'kivi2', /checksum mismatch/);
  await refused(file.subarray(0, file.length - 1), 'kivi2', /truncated page data/);
  await refused(file.subarray(0, 20), 'kivi2', /truncated header/);
  await refused(new TextEncoder().encode('not a cache at all, no'), 'kivi2', /no KIVICACH header/);
  // Another model: same bytes, a different fingerprint.
  const header = JSON.parse(new TextDecoder().decode(file.subarray(16, 16 + new DataView(file.buffer, file.byteOffset).getUint32(12, true))));
  assert.equal(header.model, m.fingerprint);
  const other = Object.create(m, { fingerprint: { value: '0'.repeat(64) } }) as KiviModel;
  await assert.rejects(other.restoreCache(file, 'kivi2'), /saved by another model/);
  assert.equal(pool.allocatedBytes, 0);
});
