/**
 * Cache bytes as a function of length, without building a cache: what admission control and capacity
 * planning need. Between decode steps a cache's contents depend only on how many tokens it holds (KIVI:
 * the key residual holds T mod R tokens, the value residual min(T, R)), so these match bytes() exactly.
 */
import type { CacheDims } from './types.js';
import type { CacheSpec } from './spec.js';
import { packedWords } from '../quant/quantizer.js';

/** Bytes one sequence's cache holds after T tokens (all layers). */
export function cacheBytes(spec: CacheSpec, dims: CacheDims, T: number): number {
  const { numLayers: L, numKvHeads: kv, headDim: d } = dims;
  const perLayer = (() => {
    switch (spec.kind) {
      case 'fp32':
        return T * 2 * kv * d * 4;
      case 'fp16':
        return T * 2 * kv * d * 2;
      case 'fake':
        // Full-precision keys/values plus their dequantized shadows.
        return T * 4 * kv * d * 4;
      case 'kivi': {
        const { residual: R, groupSize: G, kBits, vBits } = spec;
        const resBytes = spec.residualDtype === 'fp16' ? 2 : 4;
        const rk = T % R;
        const kq = T - rk;
        const rv = Math.min(T, R);
        const vq = T - rv;
        const keyQ = kq * kv * packedWords(d, kBits) * 4 + (kq / G) * kv * d * 4;
        const valQ = vq * kv * (packedWords(d, vBits) * 4 + (d / G) * 4);
        return keyQ + valQ + (rk + rv) * kv * d * resBytes;
      }
    }
  })();
  return L * perLayer;
}

/**
 * The most bytes the cache holds at any length in [from, T] — a sequence prefilled with `from` tokens
 * and decoded to T. KIVI's bytes rise with length except for a drop at each key flush, so the peak is at
 * T, at `from`, or at the last length before a flush (T' ≡ R−1 mod R) in the range; teeth grow with length.
 */
export function peakCacheBytes(spec: CacheSpec, dims: CacheDims, T: number, from = 1): number {
  let peak = Math.max(cacheBytes(spec, dims, T), cacheBytes(spec, dims, Math.min(from, T)));
  if (spec.kind === 'kivi') {
    const R = spec.residual;
    const tooth = T - ((T + 1) % R);
    if (tooth >= from) peak = Math.max(peak, cacheBytes(spec, dims, tooth));
  }
  return peak;
}
