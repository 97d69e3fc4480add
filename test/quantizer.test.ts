/** The quantizer's contract (docs/KIVI.md §3–4), checked as properties over random inputs. */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { f16round, fromHalfBits, toHalfBits } from '../src/quant/float16.js';
import {
  type Bits,
  dequantize,
  dequantizeCode,
  packCodes,
  packedWords,
  quantizeGroup,
  quantizePerChannel,
  quantizePerToken,
  roundHalfEven,
  unpackCodes,
} from '../src/quant/quantizer.js';
import { KiviError } from '../src/util/errors.js';

const f32 = fc.float({ min: -1000, max: 1000, noNaN: true, noDefaultInfinity: true });
const bitsArb = fc.constantFrom<Bits>(2, 4, 8);

test('float16: exact IEEE binary16 rounding at the edges', () => {
  assert.equal(fromHalfBits(toHalfBits(65504)), 65504);
  assert.equal(f16round(65519.99), 65504); // below the rounding midpoint to Inf
  assert.equal(f16round(65520), Infinity); // midpoint ties to even = Inf
  assert.equal(f16round(2 ** -24), 2 ** -24); // smallest subnormal
  assert.equal(f16round(2 ** -25), 0); // exact tie → even (0)
  assert.equal(f16round(3 * 2 ** -25), 2 ** -23); // tie between 1·2^-24 and 2·2^-24 → even (2)
  assert.equal(f16round(1 + 2 ** -11), 1); // tie → even mantissa
  assert.equal(f16round(1 + 3 * 2 ** -11), 1 + 2 ** -9); // tie → even (rounds up)
  assert.equal(f16round(-0.1), -0.0999755859375);
  assert.ok(Number.isNaN(f16round(NaN)));
  assert.equal(toHalfBits(-0), 0x8000);
});

test('float16: every half value round-trips, and rounding is to the nearest', () => {
  for (let h = 0; h < 0x7c00; h++) assert.equal(toHalfBits(fromHalfBits(h)), h);
  fc.assert(
    fc.property(fc.float({ min: -60000, max: 60000, noNaN: true }), (x) => {
      const r = f16round(x);
      const h = toHalfBits(x) & 0x7fff;
      const below = fromHalfBits(Math.max(0, h - 1)) * Math.sign(x || 1);
      const above = fromHalfBits(h + 1) * Math.sign(x || 1);
      return Math.abs(x - r) <= Math.abs(x - below) && Math.abs(x - r) <= Math.abs(x - above);
    }),
    { numRuns: 5000 },
  );
});

test('roundHalfEven rounds ties to even', () => {
  assert.deepEqual(
    [0.5, 1.5, 2.5, 3.5, -0.5, 2.4999, 2.5001].map(roundHalfEven).map((x) => x + 0),
    [0, 2, 2, 4, 0, 2, 3],
  );
});

test('quantize → dequantize error is at most half a step (plus float16 rounding of scale/min)', () => {
  fc.assert(
    fc.property(bitsArb, fc.array(f32, { minLength: 1, maxLength: 64 }), (bits, xs) => {
      const x = Float32Array.from(xs);
      const codes = new Uint8Array(x.length);
      const sc = new Uint16Array(1);
      const mn = new Uint16Array(1);
      quantizeGroup(x, 0, 1, x.length, bits, codes, 0, 1, sc, mn, 0);
      const s = fromHalfBits(sc[0]!);
      const m = fromHalfBits(mn[0]!);
      const lo = Math.min(...x);
      const hi = Math.max(...x);
      const maxCode = (1 << bits) - 1;
      // The stored min/scale differ from the exact ones by float16 rounding, which can push the top
      // of the range past the last code: that excess is the "+ float16 rounding" term.
      const f16err = Math.abs(m - lo) + maxCode * Math.abs(s - (hi - lo) / maxCode);
      for (let i = 0; i < x.length; i++) {
        assert.ok(codes[i]! <= maxCode);
        const err = Math.abs(dequantizeCode(codes[i]!, sc[0]!, mn[0]!) - x[i]!);
        assert.ok(err <= s / 2 + f16err + 1e-4 * Math.max(1, Math.abs(x[i]!)), `err ${err} > ${s / 2} + ${f16err} (bits ${bits})`);
      }
    }),
    { numRuns: 2000 },
  );
});

test('a constant group has scale 0 and all-zero codes that dequantize to the value (to float16)', () => {
  fc.assert(
    fc.property(bitsArb, f32, fc.integer({ min: 1, max: 40 }), (bits, v, n) => {
      const x = new Float32Array(n).fill(v);
      const codes = new Uint8Array(n).fill(7);
      const sc = new Uint16Array(1);
      const mn = new Uint16Array(1);
      quantizeGroup(x, 0, 1, n, bits, codes, 0, 1, sc, mn, 0);
      assert.equal(fromHalfBits(sc[0]!), 0);
      assert.ok(codes.every((c) => c === 0));
      assert.equal(dequantizeCode(0, sc[0]!, mn[0]!) + 0, Math.fround(f16round(v)) + 0);
    }),
  );
});

test('NaN and ±Inf are rejected with a KiviError', () => {
  for (const bad of [NaN, Infinity, -Infinity]) {
    const x = Float32Array.from([1, 2, bad, 4]);
    assert.throws(() => quantizeGroup(x, 0, 1, 4, 2, new Uint8Array(4), 0, 1, new Uint16Array(1), new Uint16Array(1), 0), KiviError);
    assert.throws(() => quantizePerToken(new Float32Array(32).fill(bad), 1, 32, 32, 2), KiviError);
  }
});

test('pack/unpack round-trips for every width, little-endian within the word', () => {
  fc.assert(
    fc.property(bitsArb, fc.integer({ min: 1, max: 200 }), fc.integer(), (bits, n, seed) => {
      const codes = new Uint8Array(n);
      let s = seed;
      for (let i = 0; i < n; i++) {
        s = (Math.imul(s, 1103515245) + 12345) | 0;
        codes[i] = (s >>> 16) & ((1 << bits) - 1);
      }
      const words = new Uint32Array(packedWords(n, bits));
      packCodes(codes, 0, n, bits, words, 0);
      const back = new Uint8Array(n);
      unpackCodes(words, 0, n, bits, back, 0);
      assert.deepEqual(back, codes);
      // Element j of a word sits at bits [b·j, b·j + b).
      const per = 32 / bits;
      for (let i = 0; i < n; i++) assert.equal((words[(i / per) | 0]! >>> (bits * (i % per))) & ((1 << bits) - 1), codes[i]);
    }),
  );
  // A concrete word: codes 1,2,3,0 at 2 bits → 0b00_11_10_01.
  const w = new Uint32Array(1);
  packCodes(Uint8Array.from([1, 2, 3, 0]), 0, 4, 2, w, 0);
  assert.equal(w[0], 0b00111001);
});

test('per-token groups span G channels of one token; per-channel groups G tokens of one channel', () => {
  const T = 64;
  const d = 64;
  const G = 32;
  const x = new Float32Array(T * d);
  for (let t = 0; t < T; t++) for (let c = 0; c < d; c++) x[t * d + c] = c === 5 ? 50 * (1 + Math.sin(t * 0.37)) : Math.sin(t * 0.37 + c * 1.3);
  const pt = quantizePerToken(x, T, d, G, 2);
  const pc = quantizePerChannel(x, T, d, G, 2);
  assert.equal(pt.scales.length, T * (d / G));
  assert.equal(pc.scales.length, (T / G) * d);
  // Per-token scale of token 0's first group covers channel 5's outlier; per-channel confines it.
  assert.ok(fromHalfBits(pt.scales[0]!) > 10);
  assert.ok(fromHalfBits(pc.scales[0]!) < 1); // channel 0, tokens 0..31
  assert.ok(fromHalfBits(pc.scales[5]!) > 10); // channel 5
  // Per-channel quantization of outlier keys is more accurate than per-token (the paper's point).
  const err = (b: typeof pt) => {
    const y = dequantize(b);
    let e = 0;
    for (let i = 0; i < x.length; i++) if (i % d !== 5) e += (y[i]! - x[i]!) ** 2;
    return e;
  };
  assert.ok(err(pc) < err(pt) / 10, `per-channel error ${err(pc)} vs per-token ${err(pt)}`);
  // Each group's values are reproduced by its own scale/min: spot-check one per-channel group.
  const y = dequantize(pc);
  for (let t = 32; t < 64; t++) {
    const s = fromHalfBits(pc.scales[d + 7]!);
    assert.ok(Math.abs(y[t * d + 7]! - x[t * d + 7]!) <= s / 2 + 1e-2);
  }
});
