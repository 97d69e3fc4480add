/**
 * The compute back end: every hot loop of the model and the caches goes through this interface, so the
 * pure-TypeScript reference, WebAssembly SIMD and multi-threaded implementations are interchangeable.
 *
 * Conventions: matrices are row-major typed arrays addressed by (array, offset). Storage a kernel reads
 * should come from the same back end's allocators: a WASM back end keeps it inside its linear memory
 * and copies any other array in (and out) on every call, which is correct but slow.
 */
import type { Bits } from '../quant/quantizer.js';
import type { AttentionPlan } from './plan.js';

export interface Kernels {
  readonly name: string;
  /** Threads the back end computes on (1 for the TS reference). */
  readonly threads: number;

  /** Zeroed storage that this back end's kernels can read. */
  allocF32(n: number): Float32Array;
  allocU32(n: number): Uint32Array;
  allocU16(n: number): Uint16Array;
  /** Return storage from the alloc* functions (a no-op where the garbage collector owns it). */
  free(a: Float32Array | Uint32Array | Uint16Array): void;

  /** out[r·outDim + o] = Σ_i x[r·inDim + i] · w[o·inDim + i] (+ bias[o]); w is [outDim][inDim] as in HF Linear. */
  matmul(out: Float32Array, x: Float32Array, w: Float32Array, rows: number, inDim: number, outDim: number, bias?: Float32Array): void;

  /** act[r·I + i] = silu(g)·u with g = gu[r·2I + i], u = gu[r·2I + I + i]: the MLP's gate | up halves. */
  swiglu(act: Float32Array, gu: Float32Array, rows: number, I: number): void;

  /**
   * Attention scores against float keys for the nq query heads that share one kv head:
   * s[j·sStride + sOff + t] = scale · q[qOff + j·d ..] · K[kOff + t·d ..], t < n.
   * K is float32 or float16 bits (Uint16Array).
   */
  scoresDense(s: Float32Array, sOff: number, sStride: number, q: Float32Array, qOff: number, nq: number,
    k: Float32Array | Uint16Array, kOff: number, n: number, d: number, scale: number): void;

  /** out[oOff + j·d + c] += Σ_t p[j·pStride + pOff + t] · V[vOff + t·d + c], t < n (float32 or float16 V). */
  accumDense(out: Float32Array, oOff: number, p: Float32Array, pOff: number, pStride: number, nq: number,
    v: Float32Array | Uint16Array, vOff: number, n: number, d: number): void;

  /**
   * Scores against KIVI keys: n tokens (a multiple of G) quantized per channel in groups of G tokens,
   * codes packed per token along the channel axis ([n][d·b/32] words from cOff), float16 scale/min
   * [n/G][d] from pOff. Scales fold into the query once per group (KIVI.md §6).
   */
  scoresKivi(s: Float32Array, sOff: number, sStride: number, q: Float32Array, qOff: number, nq: number,
    codes: Uint32Array, cOff: number, scales: Uint16Array, mins: Uint16Array, pOff: number,
    n: number, d: number, bits: Bits, G: number, scale: number): void;

  /**
   * Accumulate attention-weighted KIVI values: n tokens quantized per token in groups of G channels,
   * codes [n][d·b/32] from cOff, float16 scale/min [n][d/G] from pOff. The weight folds into the scale.
   */
  accumKivi(out: Float32Array, oOff: number, p: Float32Array, pOff: number, pStride: number, nq: number,
    codes: Uint32Array, cOff: number, scales: Uint16Array, mins: Uint16Array, pIdx: number,
    n: number, d: number, bits: Bits, G: number): void;

  /**
   * Run every task of an attention plan: per task, scores over its key segments, one softmax over all
   * T tokens, then out[oOff .. oOff + nq·d) = Σ weights · values (overwritten). Tasks are independent and
   * may run in parallel; the result of each is the same however they are scheduled.
   */
  attend(plan: AttentionPlan): void;

  /** Release threads and memory; the kernels are unusable afterwards. Idempotent. */
  dispose(): void;
}
