/** The WebAssembly page pool's slabs: disjoint pages, freed pages reused, empty slabs shared by every size, zeroing. */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { createCache, parseKvSpec } from '../src/cache/spec.js';
import { CacheStepper, qkvRows } from '../src/cache/step.js';
import type { KvCache } from '../src/cache/types.js';
import { createBackend } from '../src/kernels/index.js';
import { Allocator } from '../src/kernels/wasm/allocator.js';
import type { WasmBackend } from '../src/kernels/wasm/kernels.js';
import { SlabPages } from '../src/kernels/wasm/slabs.js';
import { syntheticKV } from '../src/studies/bench/measure.js';

const KiB = 1024;
const SLAB = 1024 * KiB;

function pool(): { s: SlabPages; heap: Allocator } {
  const heap = new Allocator(0, () => {});
  return { s: new SlabPages(SLAB, heap), heap };
}

test('slab pages: disjoint, inside their slabs; freeing everything leaves only empty slabs', () => {
  const sizes = [48 * KiB, 96 * KiB, 128 * KiB, 160 * KiB, 512 * KiB];
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.boolean(), fc.nat(sizes.length - 1), fc.nat()), { maxLength: 300 }), (ops) => {
      const { s } = pool();
      const live = new Map<number, number>();
      for (const [isAlloc, k, pick] of ops) {
        if (isAlloc || live.size === 0) {
          const n = sizes[k]!;
          const p = s.alloc(n);
          for (const [q, m] of live) assert.ok(p + n <= q || q + m <= p, `page ${p}+${n} overlaps ${q}+${m}`);
          live.set(p, n);
        } else {
          const keys = [...live.keys()];
          const p = keys[pick % keys.length]!;
          s.free(p);
          live.delete(p);
        }
      }
      const held = [...live.values()].reduce((a, b) => a + b, 0);
      assert.ok(s.reservedBytes() >= held);
      for (const p of live.keys()) s.free(p);
      const st = s.stats();
      assert.equal(st.pages, 0);
      assert.equal(st.emptySlabs, st.slabs, 'every slab empty again');
      assert.equal(st.reserved, st.slabs * SLAB, 'large pages went back to the heap');
    }),
    { numRuns: 200 },
  );
});

test('slab pages: a freed page is reused by its size; an empty slab by any size; nothing strands', () => {
  const { s, heap } = pool();
  // The pattern that fragmented the general heap: short-lived 128 KiB pages between 96 KiB and 48 KiB ones.
  const keep: number[] = [];
  for (let seq = 0; seq < 50; seq++) {
    const res = [s.alloc(128 * KiB), s.alloc(128 * KiB)];
    keep.push(s.alloc(96 * KiB), s.alloc(48 * KiB));
    for (const p of res) s.free(p);
  }
  // 50 × 96 KiB in slabs of 10, 50 × 48 KiB in slabs of 21, and one slab of residual pages, reused throughout.
  assert.equal(s.stats().slabs, 5 + 3 + 1);
  const top = heap.stats().top;
  for (const p of keep) s.free(p);
  assert.equal(s.stats().emptySlabs, 9);
  // Another size takes the empty slabs: no new memory.
  const big: number[] = [];
  for (let i = 0; i < 9 * 4; i++) big.push(s.alloc(256 * KiB));
  assert.equal(heap.stats().top, top, 'the heap did not grow');
  assert.equal(s.stats().emptySlabs, 0);
  assert.throws(() => s.free(12345), /not a held page/);
});

test('slab pages: only bytes that held data are reported dirty', () => {
  const { s } = pool();
  const a = s.alloc(96 * KiB);
  assert.equal(s.lastDirty, 0, 'fresh memory from the heap top is zero');
  s.free(a);
  // The slab is empty again; a page of another size over a's bytes is dirty where a was, and only there.
  s.alloc(64 * KiB);
  assert.equal(s.lastDirty, 64 * KiB);
  s.alloc(64 * KiB);
  assert.equal(s.lastDirty, 32 * KiB);
  s.alloc(64 * KiB);
  assert.equal(s.lastDirty, 0);
});

test('wasm page pool: pages come back zeroed, and a filled cache costs its pages in memory, not more', async () => {
  const B = (await createBackend({ backend: 'wasm', threads: 1 })) as WasmBackend;
  const shape = { numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 64 };
  const p = B.createPagePool(shape);
  const stepper = new CacheStepper(B, p);
  const src = syntheticKV(200, shape.numKvHeads, shape.headDim, 5);
  const rows = qkvRows(shape, 200, null, src.k, src.v);
  const caches: KvCache[] = [];
  for (let i = 0; i < 12; i++) {
    const c = createCache(parseKvSpec('kivi2'), p);
    await stepper.fill(c, rows, 200, 64);
    caches.push(c);
  }
  const held = p.allocatedBytes;
  // Every page's bytes are in use: the slabs hold them with at most one partly used slab per page size.
  assert.ok(p.reservedBytes() - held <= 3 * 4 * 2 ** 20, `${p.reservedBytes()} reserved for ${held}`);
  // A page handed out again is all zero, whatever it held.
  for (const c of caches) c.free();
  for (let i = 0; i < 40; i++) {
    const page = p.alloc(4096);
    const v = p.views(page);
    const bytes = new Uint8Array(v.u32.buffer, v.byteOffset, shape.numLayers * shape.numKvHeads * 4096);
    assert.ok(
      bytes.every((x) => x === 0),
      `page ${i} is zeroed`,
    );
    bytes.fill(7);
  }
  stepper.dispose();
  B.dispose();
});
