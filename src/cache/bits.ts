/**
 * Bits per cached element of a cache spec: codes plus metadata, averaged over keys and values, the
 * full-precision parts that a sequence holds a bounded number of (KIVI's residual) not counted — the
 * asymptotic cost per token as the context grows (KIVI.md §7: b + 32/G with float16 scale and min).
 */
import type { SpecBody } from './spec.js';

export function bitsPerElement(spec: SpecBody): number {
  switch (spec.kind) {
    case 'fp32':
      return 32;
    case 'fp16':
      return 16;
    case 'fake':
      // What the simulated format would store: b-bit codes and float16 scale/min per group.
      return spec.bits + 32 / spec.groupSize;
    case 'kivi': {
      const G = spec.groupSize;
      return (spec.kBits + 32 / G + spec.vBits + 32 / G) / 2;
    }
  }
}
