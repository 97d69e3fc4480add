/**
 * Bits per cached element of a cache spec: codes plus metadata, averaged over keys and values, the
 * full-precision parts that a sequence holds a bounded number of (KIVI's residual) not counted — the
 * asymptotic cost per token as the context grows (KIVI.md §7: b + 32/G with float16 scale and min).
 */

import { keyGroup, valueGroup, valueMeta8 } from './kivi.js';
import type { SpecBody } from './spec.js';

/** `headDim`: needed for vmeta=8, whose (lo, hi) are per token of one head (32/d bits per element). */
export function bitsPerElement(spec: SpecBody, headDim: number): number {
  switch (spec.kind) {
    case 'fp32':
      return 32;
    case 'fp16':
      return 16;
    case 'fake':
      // What the simulated format would store: b-bit codes and float16 scale/min per group.
      return spec.bits + 32 / spec.groupSize;
    case 'kivi': {
      const Gk = keyGroup(spec);
      const Gv = valueGroup(spec);
      // vmeta=8: two 8-bit codes per group plus float16 (lo, hi) per token of a head.
      const valueMeta = valueMeta8(spec) ? 16 / Gv + 32 / headDim : 32 / Gv;
      return (spec.kBits + 32 / Gk + spec.vBits + valueMeta) / 2;
    }
  }
}
